"""Ollama's built-in renderers and parsers, by the names a Modelfile's `RENDERER` and `PARSER`
(and /api/create's `renderer`/`parser`) give them.

A renderer writes a model's prompt in code instead of a Go TEMPLATE (Ollama's
model/renderers/): when a model names one, its chats and prompts are rendered with it and the
template is not used. A parser reads the model's reply (thinking, content, tool calls); the
parsers themselves live in the gateway (gateway/harmony.py, gateway/xmlcalls.py), this module
only knows their names and what they let a model do.

corral has the renderers `qwen3-coder` (Ollama's) and `harmony` (gpt-oss: Ollama renders it
with the model's TEMPLATE, which `harmony` writes byte for byte), and the parsers `harmony` and
`qwen3-coder`. Any other name is refused at create.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

from registry.renderers import harmony, qwen3coder
from shared.errors import BadRequest

log = logging.getLogger("corral.renderers")

Message = dict[str, Any]
Renderer = Callable[[Sequence[Message], Sequence[dict[str, Any]] | None, bool | str | None], str]

RENDERERS: dict[str, Renderer] = {
    "harmony": harmony.render,
    "qwen3-coder": qwen3coder.render,
}
PARSERS = ("harmony", "qwen3-coder")

# What a renderer or parser lets a model do (Ollama: a parser's HasToolSupport and
# HasThinkingSupport become the model's capabilities).
_CAPABILITIES: dict[str, tuple[str, ...]] = {"harmony": ("tools", "thinking"),
                                             "qwen3-coder": ("tools",)}
# Renderers whose prompt grades thinking (`think` "low"/"medium"/"high").
LEVELLED = frozenset({"harmony"})


def check_names(renderer: str | None, parser: str | None) -> None:
    """400 for a renderer or parser corral does not have (Ollama's words for an unknown one)."""
    if renderer and renderer not in RENDERERS:
        raise BadRequest(f'unknown renderer "{renderer}" (corral has: '
                         + ", ".join(sorted(RENDERERS)) + ")")
    if parser and parser not in PARSERS:
        raise BadRequest(f'unknown parser "{parser}" (corral has: '
                         + ", ".join(sorted(PARSERS)) + ")")


def capabilities(config: dict[str, Any]) -> list[str]:
    """The capabilities a model's renderer and parser add."""
    caps: list[str] = []
    for key in ("renderer", "parser"):
        for cap in _CAPABILITIES.get(str(config.get(key) or ""), ()):
            if cap not in caps:
                caps.append(cap)
    return caps


def renderer_of(config: dict[str, Any]) -> Renderer | None:
    """The model's renderer, or None (no RENDERER, or one corral does not have: a model pulled
    from elsewhere; its chats then use its template or the GGUF's chat template)."""
    name = config.get("renderer")
    if not name:
        return None
    found = RENDERERS.get(str(name))
    if found is None:
        _warn_unknown(str(name))
    return found


@functools.lru_cache(maxsize=16)
def _warn_unknown(name: str) -> None:  # (once per name)
    log.warning("unknown renderer %r: using the model's template instead", name)


def render(name: str, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None,
           think: bool | str | None) -> str:
    return RENDERERS[name](messages, tools, think)
