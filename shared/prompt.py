"""Turn chat messages into the prompt text a model was trained on.

A GGUF's own `tokenizer.chat_template` (Jinja) wins, rendered in a sandbox. A GGUF without one gets
its family's turn format: Gemma's `<start_of_turn>`/`<end_of_turn>` turns, or ChatML for families
we know no format for. Each format also names the stop strings that end an assistant turn.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.errors import BadRequest

# jinja2 is imported where a template is compiled or rendered: the gateway imports this module
# and needs Jinja only for models whose GGUF template it must probe (tools, thinking).

Message = dict[str, Any]


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    stops: tuple[str, ...]  # strings that end the assistant's turn in this format


GEMMA_FAMILIES = frozenset({"gemma", "gemma2", "gemma3", "gemma3n", "gemma-embedding"})


def _text(message: Message) -> str:
    content = message.get("content") or ""
    return content if isinstance(content, str) else str(content)


def _tool_call_json(call: dict[str, Any]) -> str:
    """One call as `{"name": ..., "arguments": {...}}`, the shape tool-trained models emit."""
    function = call.get("function") or call
    if not isinstance(function, dict):
        function = {}
    arguments = function.get("arguments") or {}
    if isinstance(arguments, str):  # OpenAI clients send arguments as a JSON string
        with contextlib.suppress(ValueError):  # not JSON: keep the string
            arguments = json.loads(arguments)
    return json.dumps({"name": function.get("name", ""), "arguments": arguments},
                      ensure_ascii=False)


def _assistant_text(message: Message) -> str:
    """An assistant turn's text: its content, then each tool call it made on a line of its own."""
    calls = [_tool_call_json(c) for c in message.get("tool_calls") or () if isinstance(c, dict)]
    return "\n".join(part for part in (_text(message), *calls) if part)


def render_gemma(messages: Sequence[Message]) -> RenderedPrompt:
    """Gemma's turns. Gemma has no system role: system text opens the first user turn."""
    system = "\n\n".join(_text(m) for m in messages if m.get("role") == "system")
    parts: list[str] = []
    for message in messages:
        role = message.get("role")
        if role == "system":
            continue
        if role == "assistant":
            parts.append(f"<start_of_turn>model\n{_assistant_text(message)}<end_of_turn>\n")
            continue
        content = _text(message)  # user and tool turns: Gemma has no tool role
        if system:  # first user (or tool) turn carries the system text
            content, system = f"{system}\n\n{content}", ""
        parts.append(f"<start_of_turn>user\n{content}<end_of_turn>\n")
    if system:  # only system messages were given
        parts.append(f"<start_of_turn>user\n{system}<end_of_turn>\n")
    parts.append("<start_of_turn>model\n")
    return RenderedPrompt("".join(parts), ("<end_of_turn>",))


def render_chatml(messages: Sequence[Message]) -> RenderedPrompt:
    parts = []
    for message in messages:
        role = message.get("role", "user")
        text = _assistant_text(message) if role == "assistant" else _text(message)
        parts.append(f"<|im_start|>{role}\n{text}<|im_end|>\n")
    parts.append("<|im_start|>assistant\n")
    return RenderedPrompt("".join(parts), ("<|im_end|>",))


def _raise_exception(message: str) -> None:
    from jinja2 import TemplateError

    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def _compile(template: str):  # noqa: ANN202 - jinja2.Template
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def _jinja_message(message: Message) -> Message:
    """Earlier thinking under both names Jinja templates read: `reasoning_content` (Qwen3,
    DeepSeek) and `thinking` (gpt-oss)."""
    thinking = message.get("thinking")
    if thinking and "reasoning_content" not in message:
        return {**message, "reasoning_content": thinking}
    return message


def render_jinja(
    template: str, messages: Sequence[Message], *, bos_token: str, eos_token: str,
    tools: list[dict[str, Any]] | None = None, variables: dict[str, Any] | None = None,
) -> RenderedPrompt:
    """`variables` are extra template inputs (llama.cpp's `chat_template_kwargs`), such as
    `enable_thinking` and `reasoning_effort`."""
    from jinja2 import TemplateError

    try:
        text = _compile(template).render(
            **(variables or {}), messages=[_jinja_message(m) for m in messages], tools=tools,
            bos_token=bos_token, eos_token=eos_token, add_generation_prompt=True,
        )
    except TemplateError as exc:
        raise BadRequest(f"template error: {exc}") from None
    # The tokenizer adds BOS itself; a template that writes it too would double it.
    if bos_token and text.startswith(bos_token):
        text = text[len(bos_token):]
    stops = (eos_token,) if eos_token else ()
    return RenderedPrompt(text, stops)


def render_messages(
    messages: Sequence[Message], *, chat_template: str | None, family: str,
    bos_token: str = "", eos_token: str = "", tools: list[dict[str, Any]] | None = None,
    variables: dict[str, Any] | None = None,
) -> RenderedPrompt:
    if chat_template:
        return render_jinja(chat_template, messages, bos_token=bos_token, eos_token=eos_token,
                            tools=tools, variables=variables)
    if family in GEMMA_FAMILIES:
        return render_gemma(messages)
    return render_chatml(messages)
