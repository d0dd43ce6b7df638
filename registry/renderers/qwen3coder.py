# ruff: noqa: E501  (the model's call instructions, kept as its renderer writes them)
"""Qwen3-Coder's prompt, as Ollama's `qwen3-coder` renderer writes it
(model/renderers/qwen3coder.go): ChatML turns, the tools as XML in the system turn, earlier
calls as `<tool_call><function=NAME><parameter=KEY>` blocks, consecutive tool results in one
user turn. The first system message wins (a default one when only tools are given); `think`
is not used. A conversation ending with an assistant turn is continued (prefill).

Properties and arguments keep the order they were sent in (Ollama's ordered maps); a
property's or the parameters' other keys (enum, items, required, ...) follow in the order of
Ollama's structs, objects and lists as Go's compact JSON, scalars as Go prints them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from registry.gofmt import go_v
from registry.gotemplate import _go_json, _property, _sorted_json

Message = dict[str, Any]

DEFAULT_SYSTEM = ("You are Qwen, a helpful AI assistant that can interact with a computer to "
                  "solve tasks.")
CALL_INSTRUCTIONS = """

If you choose to call a function ONLY reply in the following format with NO suffix:

<tool_call>
<function=example_function_name>
<parameter=example_parameter_1>
value_1
</parameter>
<parameter=example_parameter_2>
This is the value for the second parameter
that can span
multiple lines
</parameter>
</function>
</tool_call>

<IMPORTANT>
Reminder:
- Function calls MUST follow the specified format: an inner <function=...></function> block must be nested within <tool_call></tool_call> XML tags
- Required parameters MUST be specified
- You may provide optional reasoning for your function call in natural language BEFORE the function call, but NOT after
- If there is no function call available, answer the question like normal with your current knowledge and do not tell the user about function calls
</IMPORTANT>"""


def _value(value: Any) -> str:
    """A value as Ollama's renderer prints it: strings bare, objects and lists as JSON."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return _go_json(_sorted_json(value))
    return go_v(value)


def _extra_keys(shown: dict[str, Any], handled: tuple[str, ...]) -> str:
    return "".join(f"\n<{key}>{_value(value)}</{key}>" for key, value in shown.items()
                   if key not in handled and value is not None)


def _type(kind: list[str]) -> str:
    return kind[0] if len(kind) == 1 else _go_json(list(kind))


def _tools(tools: Sequence[dict[str, Any]]) -> str:
    parts = ["\n\n# Tools\n\nYou have access to the following functions:\n\n<tools>"]
    for tool in tools:
        fn = tool.get("function") if isinstance(tool.get("function"), dict) else {}
        params = fn.get("parameters") if isinstance(fn.get("parameters"), dict) else {}
        parts.append(f"\n<function>\n<name>{fn.get('name') or ''}</name>")
        if fn.get("description"):
            parts.append(f"\n<description>{fn['description']}</description>")
        parts.append("\n<parameters>")
        properties = params.get("properties") if isinstance(params.get("properties"),
                                                            dict) else {}
        for name, raw in properties.items():
            prop = _property(raw)
            parts.append(f"\n<parameter>\n<name>{name}</name>")
            if prop["Type"]:
                parts.append(f"\n<type>{_type(prop['Type'])}</type>")
            if prop["Description"]:
                parts.append(f"\n<description>{prop['Description']}</description>")
            parts.append(_extra_keys(prop.json_value, ("type", "description")))
            parts.append("\n</parameter>")
        # the parameters' own keys past type and properties: $defs, items, required
        shown = {"$defs": params.get("$defs"), "items": params.get("items"),
                 "required": [str(r) for r in params.get("required") or []] or None}
        parts.append(_extra_keys(shown, ()))
        parts.append("\n</parameters>\n</function>")
    parts.append("\n</tools>")
    parts.append(CALL_INSTRUCTIONS)
    return "".join(parts)


def _arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    return raw if isinstance(raw, dict) else {}


def _calls(calls: list[Any]) -> str:
    parts = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        fn = fn if isinstance(fn, dict) else {}
        parts.append(f"\n<tool_call>\n<function={fn.get('name') or ''}>")
        for key, value in _arguments(fn.get("arguments")).items():
            parts.append(f"\n<parameter={key}>\n{_value(value)}\n</parameter>")
        parts.append("\n</function>\n</tool_call>")
    return "".join(parts)


def render(messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None,
           think: bool | str | None = None) -> str:
    del think  # Qwen3-Coder does not think
    system = ""
    turns: list[Message] = []
    for message in messages:
        if message.get("role") != "system":
            turns.append(message)
        elif not system:
            system = str(message.get("content") or "")
    out: list[str] = []
    if system or tools:
        out.append("<|im_start|>system\n" + (system or DEFAULT_SYSTEM))
        if tools:
            out.append(_tools(tools))
        out.append("<|im_end|>\n")
    for i, message in enumerate(turns):
        role = str(message.get("role") or "")
        content = str(message.get("content") or "")
        last = i == len(turns) - 1
        prefill = last and role == "assistant"
        calls = message.get("tool_calls")
        if role == "assistant" and isinstance(calls, list) and calls:
            out.append("<|im_start|>assistant\n" + (content + "\n" if content else "")
                       + _calls(calls) + "<|im_end|>\n")
        elif role == "assistant":
            out.append("<|im_start|>assistant\n" + content + ("" if prefill else "<|im_end|>\n"))
        elif role == "tool":  # consecutive results share one user turn
            if i == 0 or turns[i - 1].get("role") != "tool":
                out.append("<|im_start|>user")
            out.append(f"\n<tool_response>\n{content}\n</tool_response>")
            if last or turns[i + 1].get("role") != "tool":
                out.append("<|im_end|>\n")
        else:
            out.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
        if last and not prefill:
            out.append("<|im_start|>assistant\n")
    return "".join(out)
