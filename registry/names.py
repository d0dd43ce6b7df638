"""Model names in Ollama's grammar: `[scheme://][host/][namespace/]model[:tag]`.

Parsing goes right to left (as Ollama does) so that a `:port` in the host is never taken for a tag:
the tag is only split off when the last `:` comes after the last `/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from shared.errors import BadRequest

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
DEFAULT_SCHEME = "https"

INVALID_NAME = "invalid model name"

_HOST_MAX = 350
_PART_MAX = 80


def _is_word_char(ch: str) -> bool:
    # ASCII only: Ollama checks bytes, so "é" is never a valid name character.
    return ch.isascii() and (ch.isalnum() or ch == "_")


def _valid_part(text: str, kind: str) -> bool:
    """Ollama's per-part rules; `kind` is one of host, namespace, model, tag."""
    limit = _HOST_MAX if kind == "host" else _PART_MAX
    if not 1 <= len(text) <= limit or not _is_word_char(text[0]):
        return False
    for ch in text[1:]:
        if _is_word_char(ch) or ch == "-":
            continue
        if ch == "." and kind != "namespace":
            continue
        if ch == ":" and kind == "host":  # host:port
            continue
        return False
    return True


@dataclass(frozen=True)
class ModelName:
    """A fully qualified model name; build one with `ModelName.parse`."""

    host: str
    namespace: str
    model: str
    tag: str
    scheme: str = DEFAULT_SCHEME

    @classmethod
    def parse(cls, text: str) -> ModelName:
        """Parse and fill defaults; raise BadRequest("invalid model name") when any part is bad."""
        if not isinstance(text, str):
            raise BadRequest(INVALID_NAME)
        rest = text
        tag = DEFAULT_TAG
        if rest.rfind(":") > rest.rfind("/"):
            rest, tag = rest.rsplit(":", 1)
            if not tag:
                raise BadRequest(INVALID_NAME)  # "model:" promises a tag and gives none

        host, namespace, scheme = DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_SCHEME
        if "/" in rest:
            rest, model = rest.rsplit("/", 1)
            if "/" in rest:
                host_part, namespace = rest.rsplit("/", 1)
                if "://" in host_part:
                    scheme, host = host_part.split("://", 1)
                    scheme = scheme.lower()
                    if scheme not in ("http", "https"):
                        raise BadRequest(INVALID_NAME)
                else:
                    host = host_part
            else:
                namespace = rest
        else:
            model = rest

        name = cls(host=host, namespace=namespace, model=model, tag=tag, scheme=scheme)
        if not (
            _valid_part(host, "host")
            and _valid_part(namespace, "namespace")
            and _valid_part(model, "model")
            and _valid_part(tag, "tag")
        ):
            raise BadRequest(INVALID_NAME)
        return name

    @classmethod
    def is_valid(cls, text: str) -> bool:
        try:
            cls.parse(text)
        except BadRequest:
            return False
        return True

    def display(self) -> str:
        """Shortest form: default host and namespace dropped, tag always shown."""
        if self.host.lower() != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace.lower() != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        else:
            prefix = ""
        return f"{prefix}{self.model}:{self.tag}"

    def full(self) -> str:
        """host/namespace/model:tag, every part spelled out (no scheme)."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def manifest_path(self) -> PurePosixPath:
        """Path of the manifest relative to `<models>/manifests`."""
        return PurePosixPath(self.host, self.namespace, self.model, self.tag)

    def key(self) -> tuple[str, str, str, str]:
        """Case-folded parts: two names are the same model when their keys are equal."""
        return (
            self.host.casefold(),
            self.namespace.casefold(),
            self.model.casefold(),
            self.tag.casefold(),
        )

    def __str__(self) -> str:
        return self.display()
