"""Docker v2 image manifests with Ollama's media types (the JSON under manifests/)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MEDIA_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_PROJECTOR = "application/vnd.ollama.image.projector"
MEDIA_ADAPTER = "application/vnd.ollama.image.adapter"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_PROMPT = "application/vnd.ollama.image.prompt"  # older alias of MEDIA_TEMPLATE
MEDIA_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
MEDIA_LICENSE = "application/vnd.ollama.image.license"
MEDIA_MESSAGES = "application/vnd.ollama.image.messages"
MEDIA_DRAFT = "application/vnd.ollama.image.draft"
MEDIA_TENSOR = "application/vnd.ollama.image.tensor"
MEDIA_JSON = "application/vnd.ollama.image.json"
MEDIA_EMBED = "application/vnd.ollama.image.embed"  # obsolete; ignored when read

SCHEMA_VERSION = 2


def compact_json(obj: Any) -> bytes:
    """JSON as Go's encoding/json writes it: no spaces, non-ASCII kept as UTF-8."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Layer:
    """One manifest entry: a blob plus what it holds. `from_` is "from" in JSON."""

    media_type: str
    digest: str
    size: int
    from_: str | None = None
    name: str | None = None  # tensor path, only for safetensors tensor layers

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.from_:
            out["from"] = self.from_
        if self.name:
            out["name"] = self.name
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Layer:
        return cls(
            media_type=str(data.get("mediaType", "")),
            digest=str(data.get("digest", "")),
            size=int(data.get("size", 0)),
            from_=data.get("from") or None,
            name=data.get("name") or None,
        )


@dataclass(frozen=True)
class Manifest:
    config: Layer
    layers: list[Layer] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "schemaVersion": SCHEMA_VERSION,
            "mediaType": MEDIA_MANIFEST,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }

    def to_bytes(self) -> bytes:
        return compact_json(self.to_json())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            raise ValueError("manifest has no config")
        return cls(
            config=Layer.from_json(data["config"]),
            layers=[Layer.from_json(item) for item in data.get("layers") or []],
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        return cls.from_json(json.loads(raw))

    def all_layers(self) -> list[Layer]:
        """Config first, then the layers: every blob this manifest needs."""
        return [self.config, *self.layers]

    def digests(self) -> set[str]:
        return {layer.digest for layer in self.all_layers()}

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.all_layers())

    def find(self, media_type: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.media_type == media_type]
