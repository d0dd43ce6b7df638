# ruff: noqa: E501  (harmony's built-in tool sections, kept as the template writes them)
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

The built-in tools (`python`, `browser.search`, `browser.open`, `browser.find`), when a request
offers tools by those names, get harmony's own sections in the system message, are called on
the `analysis` channel and answer as themselves, as in Ollama's template.
"""

from __future__ import annotations

import datetime as _dt
import unicodedata
from collections.abc import Sequence
from typing import Any

from registry.gotemplate import _collate, _go_json, _json_map, _to_typescript_type, _tool

Message = dict[str, Any]

IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
KNOWLEDGE_CUTOFF = "2024-06"
CHANNELS = ("# Valid channels: analysis, commentary, final. "
            "Channel must be included for every message.")
CALLS_TO_FUNCTIONS = "Calls to these tools must go to the commentary channel: 'functions'."


BROWSER = ("browser.search", "browser.open", "browser.find")
BUILTIN = (*BROWSER, "python")

# harmony's sections for the built-in tools (the text of Ollama's gpt-oss template)
_BROWSER_HEAD = """

## browser

// Tool for browsing.
// The cursor appears in brackets before each browsing display, like [cursor].
// Cite information from the tool using the line-citation format shown by the browser output.
// Do not quote more than 10 words directly from the tool output.
// sources=web (default: web)
namespace browser {"""
_BROWSER_FUNCTIONS = {
    "browser.search": """

// Searches for information related to query and displays topn results.
type search = (_: {
query: string,
topn?: number, // default: 10
source?: string,
}) => any;""",
    "browser.open": """

// Opens the link id from the page indicated by cursor starting at line number loc, showing num_lines lines.
// If cursor is not provided, the most recent page is implied.
// If id is a string, it is treated as a fully qualified URL associated with source.
// If loc is not provided, the viewport will be positioned at the beginning of the document or centered on the most relevant passage, if available.
// Use this function without id to scroll to a new location of an opened page.
type open = (_: {
id?: number | string, // default: -1
cursor?: number, // default: -1
loc?: number, // default: -1
num_lines?: number, // default: -1
view_source?: boolean, // default: false
source?: string,
}) => any;""",
    "browser.find": """

// Finds exact matches of pattern in the current page, or the page given by cursor.
type find = (_: {
pattern: string,
cursor?: number, // default: -1
}) => any;""",
}
_PYTHON = """

## python

Use this tool to execute Python code in your chain of thought. The code will not be shown to the user. This tool should be used for internal reasoning, but not for code that is intended to be visible to the user (e.g. when creating plots, tables, or files).

When you send a message containing Python code to python, it will be executed in a stateful Jupyter notebook environment. python will respond with the output of the execution or time out after 120.0 seconds. The drive at '/mnt/data' can be used to save and persist user files. Internet access for this session is UNKNOWN. Depends on the cluster."""


def _name(tool: Any) -> str:
    fn = tool.get("function") if isinstance(tool, dict) else None
    return str(fn.get("name") or "") if isinstance(fn, dict) else ""


def _builtin_sections(names: set[str]) -> str:
    """The system message's `# Tools` for the built-in tools offered; "" when none."""
    if not names & set(BUILTIN):
        return ""
    text = "\n\n# Tools"
    if names & set(BROWSER):
        text += _BROWSER_HEAD + "".join(_BROWSER_FUNCTIONS[n] for n in BROWSER if n in names)
        text += "\n\n} // namespace browser"
    if "python" in names:
        text += _PYTHON
    return text


def reasoning_effort(think: bool | str | None) -> str | None:
    """The `Reasoning:` level for a think value; None: no line (think false)."""
    if think is False:
        return None
    if isinstance(think, str) and think:
        return "high" if think == "max" else think  # harmony knows low, medium, high
    return "medium"


def _system(effort: str | None, names: set[str], has_functions: bool, today: str) -> str:
    text = f"{IDENTITY}\nKnowledge cutoff: {KNOWLEDGE_CUTOFF}\nCurrent date: {today}"
    if effort:
        text += f"\n\nReasoning: {effort}"
    text += _builtin_sections(names)
    text += "\n\n" + CHANNELS
    if has_functions:
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
    name = str(fn.get("name") or "")
    # a built-in tool is called on the analysis channel, by its own name
    channel, to = ("analysis", name) if name in BUILTIN else ("commentary", f"functions.{name}")
    return (f"<|start|>assistant<|channel|>{channel} to={to} "
            f"<|constrain|>json<|message|>{arguments}<|call|>")


def render(messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None,
           think: bool | str | None = None, *, today: _dt.date | None = None) -> str:
    system, collated = _collate(messages)
    names = {_name(t) for t in tools or []}
    functions = [t for t in tools or [] if _name(t) not in BUILTIN]
    date = (today or _dt.date.today()).isoformat()
    out = [_system(reasoning_effort(think), names, bool(functions), date),
           _developer(functions, system)]

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
            sender = name if name in BUILTIN else f"functions.{name}"
            out.append(f"<|start|>{sender} to=assistant<|message|>{content}<|end|>")
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


# --- function names -----------------------------------------------------------------------------


def _identifier(name: str) -> str:
    """A tool's name as a TypeScript identifier, as Ollama's harmony parser makes it: spaces,
    dashes and dots become underscores, other characters that are not letters, digits, `_` or
    `$` go, a leading digit gets an underscore, nothing left is "unnamed"."""
    kept = []
    for ch in name:
        if ch in " -.":
            kept.append("_")
        elif ch in "_$" or unicodedata.category(ch)[0] == "L" or unicodedata.category(ch) == "Nd":
            kept.append(ch)
    candidate = "".join(kept)
    if not candidate:
        return "unnamed"
    return "_" + candidate if candidate[0] in "0123456789" else candidate


def harmony_tools(tools: Sequence[dict[str, Any]]
                  ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The tools under the names harmony's prompt gives them (Ollama's FunctionNameMap: `get-
    weather` is `get_weather`, a clash gets `_2`, `_3`; built-in tools keep theirs), and the
    map back from those names to the request's, for the calls the model writes."""
    renamed: list[dict[str, Any]] = []
    back: dict[str, str] = {}
    for tool in tools:
        name = _name(tool)
        if not name:
            renamed.append(tool)
            continue
        derived = base = _identifier(name)
        count = 2
        while derived in back:
            derived = f"{base}_{count}"
            count += 1
        if name in BUILTIN:
            derived = name
        back[derived] = name
        if derived != name:
            tool = {**tool, "function": {**tool["function"], "name": derived}}
        renamed.append(tool)
    return renamed, back
