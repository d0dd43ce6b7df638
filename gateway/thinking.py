"""Thinking models: the `think` value, the markers around a model's thinking, and a splitter.

Reasoning models (Qwen3, DeepSeek-R1, Magistral, ...) write their thinking between markers before
the answer: `<think>`...`</think>`, `[THINK]`...`[/THINK]`, ... Rather than keep a table of
models, `thinking_markers` reads the markers off the template the way `gateway.tools` reads call
formats: it renders an assistant turn that carries a probe thought, and the text that wraps the
thought is the pair of markers. `ThinkingParser` then splits the streamed reply into thinking and
content as it arrives. A template may open the thinking block itself (DeepSeek-R1's ends its
prompt with `<think>`), so the reply starts inside it.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.tools import partial_suffix
from registry import gotemplate, renderers
from registry.store import LocalModel
from shared.errors import BadRequest
from shared.prompt import render_jinja

Message = dict[str, Any]
ThinkValue = bool | str | None  # what `think` says: off/on, a level, or not set

LEVELS = ("low", "medium", "high", "max")
_LEVELS_TEXT = '"high", "medium", "low", "max", true, or false'


# --- the request side ----------------------------------------------------------------------------


def check_think(raw: Any) -> ThinkValue:
    """`think` as Ollama reads it: a boolean or a level; anything else is a 400."""
    if raw is None or isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        if raw not in LEVELS:
            raise BadRequest(f'invalid think value: "{raw}" (must be {_LEVELS_TEXT})')
        return raw
    raise BadRequest(f"think must be a boolean or string ({_LEVELS_TEXT})")


def resolve_think(model: LocalModel, raw: Any, name: str) -> ThinkValue:
    """The think value a request runs with. As in Ollama: a thinking model thinks unless told
    not to; `think` on a model that cannot is a 400, and so is a level for a model whose
    template only switches thinking on and off."""
    value = check_think(raw)
    if "thinking" not in model.capabilities:
        if value:
            raise BadRequest(f'"{name}" does not support thinking')
        return value
    if value is None:
        return True
    if isinstance(value, str) and not takes_levels(model):
        raise BadRequest(f'think value "{value}" is not supported for this model')
    return value


def is_on(value: ThinkValue) -> bool:
    return bool(value)  # True or any level


def jinja_variables(value: ThinkValue) -> dict[str, Any]:
    """What a GGUF's Jinja template is given (llama.cpp's `chat_template_kwargs` names)."""
    if value is None:
        return {}
    variables: dict[str, Any] = {"enable_thinking": is_on(value)}
    if is_on(value):
        variables["reasoning_effort"] = gotemplate.think_level(value)
    return variables


def _uses_go_template(model: LocalModel) -> bool:
    return not gotemplate.is_passthrough(model.template)


def takes_levels(model: LocalModel) -> bool:
    """Whether the model's template grades thinking (`.ThinkLevel`, `reasoning_effort`), or
    its renderer does (harmony's `Reasoning:` line)."""
    renderer = model.config.get("renderer")
    if renderer and renderer in renderers.RENDERERS:
        return renderer in renderers.LEVELLED
    if _uses_go_template(model):
        return ".ThinkLevel" in (model.template or "")
    info = model.gguf
    return bool(info and info.chat_template and "reasoning_effort" in info.chat_template)


# --- the model's markers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Markers:
    opening: str  # e.g. "<think>"
    closing: str  # e.g. "</think>"


# Pairs from reasoning models' templates, for a template that does not show earlier turns'
# thinking (so probing finds nothing) but still names its markers.
KNOWN_PAIRS = (
    Markers("<think>", "</think>"),
    Markers("[THINK]", "[/THINK]"),
    Markers("<thought>", "</thought>"),
    Markers("<seed:think>", "</seed:think>"),
    Markers("<|begin_of_thought|>", "<|end_of_thought|>"),
    Markers("◁think▷", "◁/think▷"),
)

_PROBE_THOUGHT = "corral_probe_thought"
_PROBE_REPLY = "corral_probe_reply"
_TAG_LIKE = re.compile(r"^\S*[>\]▷]$")  # a word that ends like a tag: "<think>", "[THINK]"


def thinking_markers(model: LocalModel) -> Markers | None:
    """The markers of the template the model's chats render with (its Go TEMPLATE, else the
    GGUF's Jinja template); None when it shows none, or the model has a renderer (its format
    is read by its own parser: harmony's channels)."""
    if renderers.renderer_of(model.config) is not None:
        return None
    if _uses_go_template(model):
        return _go_markers(model.template or "")
    info = model.gguf
    if info is not None and info.chat_template:
        return _jinja_markers(info.chat_template)
    return None


@functools.lru_cache(maxsize=32)
def _go_markers(template: str) -> Markers | None:
    return probe_markers(lambda msgs: gotemplate.render_chat(template, msgs, think=True),
                         template)


@functools.lru_cache(maxsize=32)
def _jinja_markers(template: str) -> Markers | None:
    return probe_markers(lambda msgs: render_jinja(
        template, msgs, bos_token="", eos_token="", variables=jinja_variables(True)).text,
        template)


def probe_markers(render: Callable[[list[Message]], str], source: str) -> Markers | None:
    """Render a chat whose last assistant turn thought a probe thought, and the same turn
    without it; the text that differs around the thought is the pair of markers. A template that
    drops the thought (or cannot render) falls back to a known pair named in its `source`."""
    question = {"role": "user", "content": "corral_probe_question"}
    plain = {"role": "assistant", "content": _PROBE_REPLY}
    # Jinja templates read `reasoning_content` (Qwen3, DeepSeek) or `thinking` (gpt-oss).
    thought = {**plain, "thinking": _PROBE_THOUGHT, "reasoning_content": _PROBE_THOUGHT}
    try:
        with_thought = render([question, thought])
        without = render([question, plain])
    except Exception:  # noqa: BLE001 - a template that cannot render this: fall back
        with_thought = without = ""
    at = with_thought.find(_PROBE_THOUGHT)
    if at >= 0:
        end = at + len(_PROBE_THOUGHT)
        head = len(os.path.commonprefix([with_thought, without]))
        tail = len(os.path.commonprefix([with_thought[::-1], without[::-1]]))
        # Before the thought: what only the thought's rendering added. After it: what stands
        # between it and the reply (the common tail may share a tag's last character, as
        # `[/INST]` and `[/THINK]` do). Where the template writes the markers either way
        # (Qwen3's empty `<think></think>`), the tag-like words right around the thought.
        reply = with_thought.find(_PROBE_REPLY, end)
        stop = reply if reply >= 0 else max(end, len(with_thought) - tail)
        opening = with_thought[min(head, at):at].strip() or _tag_before(with_thought[:at])
        closing = with_thought[end:stop].strip() or _tag_after(with_thought[end:])
        if opening and closing and opening != closing:
            return Markers(opening, closing)
    for pair in KNOWN_PAIRS:
        if pair.opening in source and pair.closing in source:
            return pair
    return None


def _tag_before(text: str) -> str:
    words = text.split()
    return words[-1] if words and _TAG_LIKE.match(words[-1]) else ""


def _tag_after(text: str) -> str:
    words = text.split()
    return words[0] if words and _TAG_LIKE.match(words[0]) else ""


def opens_thinking(prompt: str, markers: Markers) -> bool:
    """Whether the prompt itself opened the thinking block, so the reply starts inside it."""
    return prompt.rstrip().endswith(markers.opening)


# --- the reply side ------------------------------------------------------------------------------

_START, _THINKING, _AFTER, _CONTENT = range(4)


class ThinkingParser:
    """Splits a streamed reply into thinking and content.

    A reply that starts (after whitespace) with the opening marker thinks until the closing
    marker; anything else is all content. Text that could be the start of a marker is held back
    until it is clearly not one, and so is whitespace around the thinking, which is trimmed.
    """

    def __init__(self, markers: Markers, *, inside: bool = False) -> None:
        self.markers = markers
        self._state = _THINKING if inside else _START
        self._buffer = ""
        self._trim = True  # whitespace at the start of the thinking goes

    @property
    def thinking(self) -> bool:
        """Whether the reply is still (or may still be) in its thinking block."""
        return self._state in (_START, _THINKING)

    def feed(self, text: str) -> tuple[str, str]:
        """(thinking, content) that can go out now."""
        self._buffer += text
        return self._drain(final=False)

    def finish(self) -> tuple[str, str]:
        return self._drain(final=True)

    def _drain(self, *, final: bool) -> tuple[str, str]:
        thinking: list[str] = []
        content: list[str] = []
        opening, closing = self.markers.opening, self.markers.closing
        while self._buffer or final:
            text = self._buffer
            if self._state == _START:
                stripped = text.lstrip()
                if stripped.startswith(opening):
                    self._buffer, self._state = stripped[len(opening):], _THINKING
                    continue
                if not final and opening.startswith(stripped):
                    break  # nothing yet, or maybe the opening marker: wait
                self._state = _CONTENT
            elif self._state == _THINKING:
                if self._trim:
                    text = self._buffer = text.lstrip()
                    if not text and not final:
                        break
                    self._trim = False
                at = text.find(closing)
                if at >= 0:
                    thinking.append(text[:at].rstrip())
                    self._buffer, self._state = text[at + len(closing):], _AFTER
                    continue
                if final:
                    thinking.append(text.rstrip())
                    self._buffer = ""
                    break
                # Hold what may begin the closing marker, and trailing whitespace (it may be the
                # last of the thinking, which is trimmed).
                body = text[:len(text) - partial_suffix(text, closing)]
                out = body.rstrip()
                thinking.append(out)
                self._buffer = text[len(out):]
                break
            elif self._state == _AFTER:
                self._buffer = text.lstrip()
                if not self._buffer and not final:
                    break
                self._state = _CONTENT
            else:
                content.append(text)
                self._buffer = ""
                break
        return "".join(thinking), "".join(content)
