"""Ollama's on-disk model store (OLLAMA_MODELS).

Layout: blobs/sha256-<hex> and manifests/<host>/<namespace>/<model>/<tag>.

The layout is byte-compatible with Ollama's, so a corral store and an Ollama store can be the same
directory. Every write is temp file + os.replace, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from registry import renderers
from registry.blobs import Blob, BlobWriter, blob_filename, fsync_dir, parse_digest
from registry.gguf_info import GGUFInfo, read_gguf_safe, served
from registry.gguf_info import capabilities as gguf_capabilities
from registry.manifest import (
    MEDIA_ADAPTER,
    MEDIA_CONFIG,
    MEDIA_DRAFT,
    MEDIA_EMBED,
    MEDIA_JSON,
    MEDIA_LICENSE,
    MEDIA_MANIFEST,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_PROJECTOR,
    MEDIA_PROMPT,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    MEDIA_TENSOR,
    Layer,
    Manifest,
    compact_json,
)
from registry.names import ModelName
from registry.timefmt import ns_to_datetime, rfc3339_nano
from shared.errors import BadRequest, NotFound

__all__ = [
    "MEDIA_ADAPTER",
    "MEDIA_CONFIG",
    "MEDIA_DRAFT",
    "MEDIA_EMBED",
    "MEDIA_JSON",
    "MEDIA_LICENSE",
    "MEDIA_MANIFEST",
    "MEDIA_MESSAGES",
    "MEDIA_MODEL",
    "MEDIA_PARAMS",
    "MEDIA_PROJECTOR",
    "MEDIA_PROMPT",
    "MEDIA_SYSTEM",
    "MEDIA_TEMPLATE",
    "MEDIA_TENSOR",
    "Blob",
    "BlobWriter",
    "Layer",
    "LocalModel",
    "Manifest",
    "Store",
    "model_details",
    "rfc3339_nano",
    "tags_entry",
]


@dataclass(eq=False)
class LocalModel:
    """A manifest found in the store plus lazily read views of its layers."""

    name: ModelName
    manifest: Manifest
    digest: str  # hex sha256 of the manifest file bytes (the ID `ollama list` shows)
    modified_at: datetime  # UTC, manifest mtime (microseconds)
    modified_ns: int  # same mtime in nanoseconds, for Go-style RFC3339Nano output
    size: int  # config + all layers
    store: Store = field(repr=False)

    # Layer readers. Blobs are immutable (content-addressed), so caching per instance is safe.

    def _layer_path(self, layer: Layer) -> Path:
        return self.store.blob_path(layer.digest)

    def _read_text(self, layer: Layer) -> str | None:
        try:
            return self._layer_path(layer).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError, BadRequest):
            return None

    def _read_json(self, layer: Layer) -> Any:
        text = self._read_text(layer)
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return None

    def _paths(self, media_type: str) -> list[Path]:
        return [self._layer_path(layer) for layer in self.manifest.find(media_type)]

    @cached_property
    def model_path(self) -> Path | None:
        paths = self._paths(MEDIA_MODEL)
        return paths[0] if paths else None

    @cached_property
    def projector_paths(self) -> list[Path]:
        return self._paths(MEDIA_PROJECTOR)

    @cached_property
    def adapter_paths(self) -> list[Path]:
        return self._paths(MEDIA_ADAPTER)

    @cached_property
    def config(self) -> dict[str, Any]:
        data = self._read_json(self.manifest.config)
        return data if isinstance(data, dict) else {}

    @cached_property
    def params(self) -> dict[str, Any]:
        for layer in self.manifest.find(MEDIA_PARAMS):
            data = self._read_json(layer)
            if isinstance(data, dict):
                return data
        return {}

    @cached_property
    def template(self) -> str | None:
        for layer in self.manifest.layers:
            if layer.media_type in (MEDIA_TEMPLATE, MEDIA_PROMPT):
                return self._read_text(layer)
        return None

    @cached_property
    def system(self) -> str | None:
        for layer in self.manifest.find(MEDIA_SYSTEM):
            return self._read_text(layer)
        return None

    @cached_property
    def license(self) -> list[str]:
        texts = (self._read_text(layer) for layer in self.manifest.find(MEDIA_LICENSE))
        return [text for text in texts if text is not None]

    @cached_property
    def messages(self) -> list[dict[str, Any]]:
        for layer in self.manifest.find(MEDIA_MESSAGES):
            data = self._read_json(layer)
            if isinstance(data, list):
                return [m for m in data if isinstance(m, dict)]
        return []

    @property
    def gguf(self) -> GGUFInfo | None:
        """Metadata of the model GGUF (cached in gguf_info), None if absent or unreadable."""
        return read_gguf_safe(self.model_path) if self.model_path else None

    @property
    def projector_gguf(self) -> GGUFInfo | None:
        """Metadata of the vision projector GGUF (the first PROJECTOR layer), None if none."""
        paths = self.projector_paths
        return read_gguf_safe(paths[0]) if paths else None

    @cached_property
    def capabilities(self) -> list[str]:
        stored = self.config.get("capabilities")
        if isinstance(stored, list) and stored:
            # set explicitly at create time (`info` override)
            caps = served([str(c) for c in stored])
        else:
            info = self.gguf
            if info is None:
                return []
            # (a RENDERER writes the prompts: what the templates offer does not count)
            by_template = renderers.renderer_of(self.config) is None
            caps = gguf_capabilities(info, self.template, templates=by_template)
            if "completion" in caps:  # what a RENDERER or PARSER lets the model do
                caps += [c for c in renderers.capabilities(self.config) if c not in caps]
        # vision: exactly the models with a projector layer, whose images the runner reads with
        # libmtmd (runner/process/vision.py); a one-file model's vision block is not readable.
        if self.projector_paths and "vision" not in caps:
            caps.append("vision")
        return caps

    def display(self) -> str:
        return self.name.display()


def model_details(model: LocalModel, *, with_lengths: bool = False) -> dict[str, Any]:
    """`details`: /api/tags adds context/embedding length; /api/show and /api/ps do not."""
    cfg = model.config
    details: dict[str, Any] = {
        "parent_model": cfg.get("parent_model", "") or "",
        "format": cfg.get("model_format", "") or "",
        "family": cfg.get("model_family", "") or "",
        "families": cfg.get("model_families"),
        "parameter_size": cfg.get("model_type", "") or "",
        "quantization_level": cfg.get("file_type", "") or "",
    }
    if with_lengths:
        ctx, emb = cfg.get("context_length"), cfg.get("embedding_length")
        if not ctx or not emb:
            info = model.gguf  # older configs lack them; the GGUF header knows
            if info is not None:
                ctx = ctx or info.context_length
                emb = emb or info.embedding_length
        if ctx:
            details["context_length"] = int(ctx)
        if emb:
            details["embedding_length"] = int(emb)
    return details


def tags_entry(model: LocalModel) -> dict[str, Any]:
    """One element of GET /api/tags `models`, field for field as Ollama sends it."""
    display = model.name.display()
    entry: dict[str, Any] = {
        "name": display,
        "model": display,
        "modified_at": rfc3339_nano(model.modified_ns),
        "size": model.size,
        "digest": model.digest,
        "details": model_details(model, with_lengths=True),
    }
    caps = model.capabilities
    if caps:
        entry["capabilities"] = caps
    return entry


class Store:
    """The model store rooted at `root` (Settings.models)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.blobs_dir = self.root / "blobs"
        self.manifests_dir = self.root / "manifests"
        # One lock for manifest changes and blob pruning, so a delete never prunes a blob that a
        # concurrent write_manifest is about to reference.
        self._lock = threading.RLock()

    # ----- blobs -----

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / blob_filename(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def blob_writer(self) -> BlobWriter:
        """For streaming bodies: write() chunks then commit(expected_digest)."""
        return BlobWriter(self.blobs_dir)

    def write_blob(self, chunks: Iterable[bytes], expected_digest: str | None = None) -> Blob:
        """Store a blob from chunks; with an expected digest an existing blob is not re-read."""
        if expected_digest is not None:
            path = self.blob_path(expected_digest)  # also validates the digest format
            if path.is_file():
                return Blob("sha256:" + parse_digest(expected_digest), path.stat().st_size)
        with self.blob_writer() as writer:
            for chunk in chunks:
                writer.write(chunk)
            return writer.commit(expected_digest)

    def write_blob_bytes(self, data: bytes) -> Blob:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        return self.write_blob([data], digest)

    def write_json_blob(self, obj: Any) -> Blob:
        return self.write_blob_bytes(compact_json(obj))

    def read_blob(self, digest: str) -> bytes:
        try:
            return self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFound(f'blob "{digest}" not found') from None

    # ----- manifests -----

    def _manifest_file(self, name: ModelName) -> Path:
        return self.manifests_dir.joinpath(*name.manifest_path().parts)

    def _resolve(self, name: ModelName) -> ModelName | None:
        """The stored spelling of `name`: exact part first, else a case-insensitive match."""
        parts = name.manifest_path().parts
        found: list[str] = []
        current = self.manifests_dir
        for depth, part in enumerate(parts):
            try:
                entries = os.listdir(current)
            except OSError:
                return None
            if part in entries:
                match = part
            else:
                folded = part.casefold()
                match = next((e for e in sorted(entries) if e.casefold() == folded), None)
                if match is None:
                    return None
            current = current / match
            is_last = depth == len(parts) - 1
            if (is_last and not current.is_file()) or (not is_last and not current.is_dir()):
                return None
            found.append(match)
        host, namespace, model, tag = found
        return ModelName(host, namespace, model, tag, name.scheme)

    @staticmethod
    def _as_name(name: str | ModelName) -> ModelName:
        return name if isinstance(name, ModelName) else ModelName.parse(name)

    def _load(self, name: ModelName) -> LocalModel:
        path = self._manifest_file(name)
        raw = path.read_bytes()
        st = path.stat()
        manifest = Manifest.from_bytes(raw)
        return LocalModel(
            name=name,
            manifest=manifest,
            digest=hashlib.sha256(raw).hexdigest(),
            modified_at=ns_to_datetime(st.st_mtime_ns),
            modified_ns=st.st_mtime_ns,
            size=manifest.size,
            store=self,
        )

    def find(self, name: str | ModelName) -> LocalModel | None:
        """The model, or None. An invalid name string raises BadRequest."""
        resolved = self._resolve(self._as_name(name))
        if resolved is None:
            return None
        try:
            return self._load(resolved)
        except (OSError, ValueError, TypeError):
            return None  # vanished or corrupt manifest: treat as absent

    def get(self, name: str | ModelName, *, error_name: str | None = None) -> LocalModel:
        """The model or NotFound("model '<x>' not found"); x is what was typed unless error_name."""
        model = self.find(name)
        if model is None:
            shown = error_name if error_name is not None else str(name)
            raise NotFound(f"model '{shown}' not found")
        return model

    def _iter_manifest_files(self) -> Iterator[tuple[ModelName, Path]]:
        base = self.manifests_dir
        if not base.is_dir():
            return
        for path in base.glob("*/*/*/*"):
            if not path.is_file() or path.name.startswith(".tmp-"):
                continue
            host, namespace, model, tag = path.relative_to(base).parts
            try:
                name = ModelName.parse(f"{host}/{namespace}/{model}:{tag}")
            except BadRequest:
                continue  # Ollama skips (and logs) manifests whose path is not a valid name
            yield name, path

    def list(self) -> list[LocalModel]:
        """Every readable model, most recently modified first."""
        models: list[LocalModel] = []
        for name, _path in self._iter_manifest_files():
            with contextlib.suppress(OSError, ValueError, TypeError):
                models.append(self._load(name))
        models.sort(key=lambda m: m.modified_ns, reverse=True)
        return models

    def locked(self) -> threading.RLock:
        """The lock under which manifests are written and unused blobs removed: hold it to make
        "check the blobs, write the manifest, drop what the old one used" one step."""
        return self._lock

    def write_manifest(self, name: str | ModelName, manifest: Manifest) -> LocalModel:
        """Atomically (re)write a manifest; an existing case-variant of the name is overwritten."""
        return self.write_manifest_bytes(self._as_name(name), manifest.to_bytes())

    def write_manifest_bytes(self, name: ModelName, raw: bytes) -> LocalModel:
        """`write_manifest` for bytes kept as they are (a registry's: the digest, which is the
        model's ID, must not change)."""
        with self._lock:
            target = self._resolve(name) or name
            path = self._manifest_file(target)
            atomic_write(path, raw)
            return self._load(target)

    def copy(self, src: str | ModelName, dst: str | ModelName) -> LocalModel:
        """Copy the manifest only; blobs are shared. 404 `model "<src>" not found`."""
        dst_name = self._as_name(dst)
        src_model = self.find(src)
        if src_model is None:
            raise NotFound(f'model "{src}" not found')
        raw = self._manifest_file(src_model.name).read_bytes()
        return self.write_manifest_bytes(dst_name, raw)

    def delete(self, name: str | ModelName) -> None:
        """Remove the manifest, prune empty dirs and the blobs no other manifest uses."""
        with self._lock:
            model = self.find(name)
            if model is None:
                raise NotFound(f"model '{name}' not found")
            path = self._manifest_file(model.name)
            path.unlink()
            self._prune_manifest_dirs(path.parent)
            self.remove_unused_blobs(model.manifest.digests())

    def remove_unused_blobs(self, digests: set[str]) -> list[str]:
        """Remove those of `digests` that no manifest names any more; the removed ones."""
        removed = []
        with self._lock:
            for digest in sorted(digests - self._digests_in_use()):
                with contextlib.suppress(OSError, BadRequest):
                    if self.has_blob(digest):
                        self.blob_path(digest).unlink()
                        removed.append(digest)
        return removed

    def _digests_in_use(self) -> set[str]:
        used: set[str] = set()
        for _name, path in self._iter_manifest_files():
            try:
                used |= Manifest.from_bytes(path.read_bytes()).digests()
            except (OSError, ValueError, TypeError):
                continue
        return used

    def _prune_manifest_dirs(self, start: Path) -> None:
        """Remove empty directories from `start` up to (not including) manifests/."""
        current = start
        while current != self.manifests_dir and self.manifests_dir in current.parents:
            try:
                current.rmdir()
            except OSError:
                return  # not empty (or gone): stop climbing
            current = current.parent

    def prune(self, min_age_s: float = 3600.0) -> list[Path]:
        """Startup cleanup like Ollama's: unreferenced blobs and stale temp files older than
        `min_age_s`, plus empty manifest dirs. The age guard spares uploads still in flight."""
        removed: list[Path] = []
        with self._lock:
            in_use = {parse_digest(d) for d in self._digests_in_use() if _valid_digest(d)}
            cutoff = time.time() - min_age_s
            if self.blobs_dir.is_dir():
                for path in self.blobs_dir.iterdir():
                    try:
                        if not path.is_file() or path.stat().st_mtime > cutoff:
                            continue
                        hex_part = path.name.removeprefix("sha256-")
                        is_blob = path.name.startswith("sha256-") and _valid_digest(
                            "sha256:" + hex_part
                        )
                        if is_blob and hex_part.lower() in in_use:
                            continue
                        path.unlink()
                        removed.append(path)
                    except OSError:
                        continue
            if self.manifests_dir.is_dir():
                dirs = [p for p in self.manifests_dir.rglob("*") if p.is_dir()]
                for d in sorted(dirs, key=lambda p: -len(p.parts)):  # deepest first
                    with contextlib.suppress(OSError):
                        d.rmdir()
        return removed


def _valid_digest(digest: str) -> bool:
    try:
        parse_digest(digest)
    except BadRequest:
        return False
    return True


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write via a temp file in the same directory, fsync, then os.replace. The temp file has
    `mode` from its creation (mkstemp makes it 0600), so a secret is never readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
