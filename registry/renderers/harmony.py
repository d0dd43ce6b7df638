"""gpt-oss's prompt in OpenAI's harmony format, as Ollama writes it for gpt-oss (its gpt-oss
TEMPLATE: the tests render that template with registry/gotemplate.py and compare, byte for
byte).

    <|start|>system<|message|>You are ChatGPT, ... Current date: ...\\n\\nReasoning: medium
    \\n\\n# Valid channels: analysis, commentary, final. ...<|end|>
    <|start|>developer<|message|># Tools\\n\\n## functions\\n\\nnamespace functions { ... }
    \\n\\n# Instructions\\n\\n<system prompt><|end|>
    <|start|>user<|message|>...<|end|>
    <|start|>assistant<|channel|>analysis<|message|>...<|end|>       (thinking)
    <|start|>assistant<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>
        {...}<|call|>                                                 (a call, on one line)
    <|start|>functions.NAME to=assistant<|message|>...<|end|>       (the tool's result)
    <|start|>assistant<|channel|>final<|message|>...<|end|>
    <|start|>assistant

The system messages become the developer message's instructions; the `think` level sets the
`Reasoning:` line (true and "medium" medium, "max" high as Ollama maps it; false leaves the
line out: gpt-oss cannot stop thinking, Ollama sends no effort then). Messages are collated as
Ollama collates them for a template (consecutive turns of one role joined by a blank line).
Earlier thinking is shown only after the last user message. A conversation that ends with an
assistant turn is continued (prefill): that turn is left open, with Ollama's quirk that every
`final` (or `analysis`) message then goes without its `<|end|>`.

Unlike Ollama's template, the built-in tools (`python`, `browser.*`) get no sections of their
own: they are listed, and called, as functions like any other.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Any

from registry.gotemplate import _collate, _go_json, _json_map, _to_typescript_type, _tool

Message = dict[str, Any]

IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
KNOWLEDGE_CUTOFF = "2024-06"
CHANNELS = ("# Valid channels: analysis, commentary, final. "
            "Channel must be included for every message.")
CALLS_TO_FUNCTIONS = "Calls to these tools must go to the commentary channel: 'functions'."


def reasoning_effort(think: bool | str | None) -> str | None:
    """The `Reasoning:` level for a think value; None: no line (think false)."""
    if think is False:
        return None
    if isinstance(think, str) and think:
        return "high" if think == "max" else think  # harmony knows low, medium, high
    return "medium"


def _system(effort: str | None, has_tools: bool, today: str) -> str:
    text = f"{IDENTITY}\nKnowledge cutoff: {KNOWLEDGE_CUTOFF}\nCurrent date: {today}"
    if effort:
        text += f"\n\nReasoning: {effort}"
    text += "\n\n" + CHANNELS
    if has_tools:
        text += "\n" + CALLS_TO_FUNCTIONS
    return f"<|start|>system<|message|>{text}<|end|>"


def _namespace(tools: Sequence[dict[str, Any]]) -> str:
    """The tools as harmony's TypeScript-like `namespace functions`, each property's type by
    Ollama's toTypeScriptType, properties in sorted order (a Go map in the template)."""
    parts = ["# Tools\n\n## functions\n\nnamespace functions {"]
    for raw in tools:
        fn = _tool(raw)["Function"]
        parts.append("\n")
        if fn["Description"]:
            parts.append(f"\n// {fn['Description']}")
        properties = fn["Parameters"]["Properties"]
        if properties:
            parts.append(f"\ntype {fn['Name']} = (_: {{")
            for name, prop in properties.items():
                if prop["Description"]:
                    parts.append(f"\n  // {prop['Description']}")
                parts.append(f"\n  {name}: {_to_typescript_type(prop)},")
            parts.append("\n}) => any;")
        else:
            parts.append(f"\ntype {fn['Name']} = () => any;")
    parts.append("\n\n} // namespace functions")
    return "".join(parts)


def _developer(tools: Sequence[dict[str, Any]], system: str) -> str:
    if not tools and not system:
        return ""
    text = _namespace(tools) if tools else ""
    if system:
        text += f"\n\n# Instructions\n\n{system}"
    return f"<|start|>developer<|message|>{text}<|end|>"


def _call(call: Any) -> str:
    fn = call.get("function") if isinstance(call, dict) else None
    fn = fn if isinstance(fn, dict) else {}
    arguments = _go_json(_json_map(fn.get("arguments")))
    return (f"<|start|>assistant<|channel|>commentary to=functions.{fn.get('name') or ''} "
            f"<|constrain|>json<|message|>{arguments}<|call|>")


def render(messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None,
           think: bool | str | None = None, *, today: _dt.date | None = None) -> str:
    system, collated = _collate(messages)
    tools = list(tools or [])
    date = (today or _dt.date.today()).isoformat()
    out = [_system(reasoning_effort(think), bool(tools), date), _developer(tools, system)]

    last_user = max((i for i, m in enumerate(collated) if m["role"] == "user"), default=-1)
    last = collated[-1] if collated else {}
    prefill_content = last.get("role") == "assistant" and bool(last.get("content"))
    prefill_thinking = (last.get("role") == "assistant" and not prefill_content
                        and bool(last.get("thinking")))
    for i, message in enumerate(collated):
        role, content = message["role"], message["content"]
        if role == "user":
            out.append(f"<|start|>user<|message|>{content}<|end|>")
        elif role == "tool":
            name = str(message.get("tool_name") or message.get("name") or "")
            out.append(f"<|start|>functions.{name} to=assistant<|message|>{content}<|end|>")
        elif role == "assistant":
            thinking = str(message.get("thinking") or "")
            if thinking and i > last_user:  # earlier turns' thinking is dropped
                out.append("<|start|>assistant<|channel|>analysis<|message|>" + thinking
                           + ("" if prefill_thinking else "<|end|>"))
            if content:
                out.append("<|start|>assistant<|channel|>final<|message|>" + content
                           + ("" if prefill_content else "<|end|>"))
            calls = message.get("tool_calls")
            out.extend(_call(c) for c in (calls if isinstance(calls, list) else []))
        # (system messages are the instructions above; other roles are not shown)
    if not (prefill_content or prefill_thinking):
        out.append("<|start|>assistant")
    return "".join(out)
