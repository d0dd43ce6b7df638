"""Tool calling: tools into the prompt, calls out of the model's text, calls forced by a grammar.

Every model family writes tool calls its own way, and its template shows how: Qwen wraps a JSON
object in `<tool_call>` tags, Mistral writes `[TOOL_CALLS]` and a JSON array, Llama 3.1 the bare
object. Rather than keep a table of formats, `call_format` renders the model's template twice,
once with an assistant turn that makes a sample call and once with a plain reply, and reads the
call's opening and closing text off the difference. `CallParser` then finds calls in that format
as the text streams in, and `forced_call_grammar` makes a model write one (`tool_choice`).
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from registry import gotemplate
from registry.store import LocalModel
from shared.errors import BadRequest
from shared.prompt import render_jinja

Message = dict[str, Any]
Tool = dict[str, Any]


# --- the request side ----------------------------------------------------------------------------


def check_tools(raw: Any) -> list[Tool]:
    """`tools` as function tools in Ollama's shape; anything malformed is a 400 naming it."""
    if raw is None or raw == []:
        return []
    if not isinstance(raw, list):
        raise BadRequest("tools must be an array")
    tools: list[Tool] = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise BadRequest(f"tools[{i}] must be an object of type function")
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise BadRequest(f"tools[{i}].function.name is required")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise BadRequest(f"tools[{i}].function.parameters must be a JSON schema object")
        tools.append({"type": "function", "function": fn})
    return tools


def tool_names(tools: list[Tool]) -> list[str]:
    return [tool["function"]["name"] for tool in tools]


def check_tool_choice(raw: Any, tools: list[Tool]) -> str | None:
    """`tool_choice` as None (the model decides), "none", "required" or a function's name."""
    if raw is None or raw == "auto":
        return None
    if raw == "none":
        return raw
    if not tools:
        raise BadRequest("tool_choice needs tools to choose from")
    if raw == "required":
        return raw
    name = None
    if isinstance(raw, dict):
        fn = raw.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str) or not name:
        raise BadRequest('tool_choice must be "none", "auto", "required" or '
                         '{"type": "function", "function": {"name": ...}}')
    if name not in tool_names(tools):
        raise BadRequest(f"tool_choice names {name!r}, which is not in tools")
    return name


# --- the model's call format ---------------------------------------------------------------------


@dataclass(frozen=True)
class CallFormat:
    """How a model writes a call: `opening` JSON-object `closing`, keys as named here."""

    opening: str = ""  # e.g. "<tool_call>" or "[TOOL_CALLS]"; "" for a bare JSON object
    closing: str = ""  # e.g. "</tool_call>"
    name_key: str = "name"
    arguments_key: str = "arguments"
    xml: bool = False  # Qwen3-Coder's <function=...><parameter=...> blocks (gateway/xmlcalls.py)


BARE_JSON = CallFormat()
QWEN3_CODER = CallFormat("<tool_call>", "</tool_call>", xml=True)
PYTHON_TAG = "<|python_tag|>"  # Llama 3.1's token before a call (its bare-JSON format)

_PROBE_NAME = "corral_probe_function"
_PROBE_ARGS = {"corral_probe_argument": "corral_probe_value"}
_PROBE_TOOL: Tool = {"type": "function", "function": {
    "name": _PROBE_NAME, "description": "probe",
    "parameters": {"type": "object", "properties": {"corral_probe_argument": {"type": "string"}}}}}


def call_format(model: LocalModel) -> CallFormat:
    """The call format of the template the model's chats render with (its Go TEMPLATE, else the
    GGUF's Jinja chat template)."""
    if model.config.get("parser") == "qwen3-coder":  # Ollama's built-in parser by name
        return QWEN3_CODER
    if model.config.get("renderer") == "qwen3-coder" and not model.config.get("parser"):
        return QWEN3_CODER  # (its prompt asks for these calls)
    template = model.template
    if not gotemplate.is_passthrough(template):
        return _go_call_format(template or "")
    info = model.gguf
    if info is not None and info.chat_template:
        return _jinja_call_format(info.chat_template)
    return BARE_JSON


@functools.lru_cache(maxsize=32)
def _go_call_format(template: str) -> CallFormat:
    return probe_call_format(lambda msgs, tools: gotemplate.render_chat(template, msgs,
                                                                        tools=tools))


@functools.lru_cache(maxsize=32)
def _jinja_call_format(template: str) -> CallFormat:
    return probe_call_format(lambda msgs, tools: render_jinja(
        template, msgs, bos_token="", eos_token="", tools=tools).text)


def probe_call_format(render: Callable[[list[Message], list[Tool]], str]) -> CallFormat:
    """Render a chat whose assistant turn calls a probe function, and the same chat with a plain
    reply; the call's JSON object and the text around it that differs are the format."""
    question = {"role": "user", "content": "corral_probe_question"}
    follow_up = {"role": "user", "content": "corral_probe_follow_up"}
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_probe", "function": {"name": _PROBE_NAME, "arguments": _PROBE_ARGS}}]}
    reply = {"role": "assistant", "content": "corral_probe_reply"}
    try:
        with_call = render([question, call, follow_up], [_PROBE_TOOL])
        plain = render([question, reply, follow_up], [_PROBE_TOOL])
    except Exception:  # noqa: BLE001 - a template that cannot show calls: try bare JSON
        return BARE_JSON
    if f"<function={_PROBE_NAME}>" in with_call:  # Qwen3-Coder's XML calls
        return QWEN3_CODER
    head = len(os.path.commonprefix([with_call, plain]))
    tail = len(os.path.commonprefix([with_call[::-1], plain[::-1]]))
    at = with_call.find(_PROBE_NAME, head)
    # The call is the outermost JSON object around the probe's name.
    start, end = with_call.find("{", head), None
    while 0 <= start < at:
        end = _object_end(with_call, start)
        if end is not None and end > at:
            break
        start, end = with_call.find("{", start + 1), None
    if end is None:
        return BARE_JSON
    try:
        obj = json.loads(with_call[start:end])
    except ValueError:
        return BARE_JSON
    if not isinstance(obj, dict):
        return BARE_JSON
    keys = {value if isinstance(value, str) else json.dumps(value): key
            for key, value in obj.items()}
    return CallFormat(
        opening=with_call[head:start].strip().rstrip("[").strip(),
        closing=with_call[end:max(end, len(with_call) - tail)].strip().lstrip("]").strip(),
        name_key=keys.get(_PROBE_NAME, "name"),
        arguments_key=keys.get(json.dumps(_PROBE_ARGS), "arguments"),
    )


def _object_end(text: str, start: int) -> int | None:
    """The index just past the JSON object that opens at `start`, or None if it is unfinished.
    Braces inside strings do not count."""
    depth = 0
    in_string = escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


# --- forcing a call ------------------------------------------------------------------------------


def forced_call_grammar(fmt: CallFormat, tools: list[Tool], choice: str, *,
                        parallel: bool) -> str:
    """GBNF that makes the reply a call ("required": of any tool; else of the named one), with
    the arguments following the tool's parameter schema."""
    from shared.grammar import tool_call_grammar  # loads llama.cpp: only when a call is forced

    schemas = []
    for tool in tools:
        fn = tool["function"]
        if choice != "required" and fn["name"] != choice:
            continue
        schemas.append({
            "type": "object",
            "properties": {fmt.name_key: {"const": fn["name"]},
                           fmt.arguments_key: fn.get("parameters") or {"type": "object"}},
            "required": [fmt.name_key, fmt.arguments_key],
        })
    return tool_call_grammar(schemas, opening=fmt.opening, closing=fmt.closing,
                             parallel=parallel and choice == "required")


# --- the reply side ------------------------------------------------------------------------------

_ID_CHARS = string.ascii_lowercase + string.digits


def new_call_id() -> str:
    """Like Ollama's: `call_` and 8 lowercase alphanumerics."""
    return "call_" + "".join(secrets.choice(_ID_CHARS) for _ in range(8))


class CallParser:
    """Splits a streamed reply into content and tool calls.

    Text that might be the start of a call is held back until it is clearly not one (or the reply
    ends); a call is given out as soon as its JSON object is complete. Objects that do not name
    one of the tools, or do not parse, go out as content, unchanged.
    """

    def __init__(self, fmt: CallFormat, tools: list[Tool]) -> None:
        self.fmt = fmt
        self.names = set(tool_names(tools))
        self.count = 0  # calls found so far
        self._buffer = ""
        self._in_calls = False
        self._decided = False  # bare-JSON format: whether the reply's start was looked at

    def feed(self, text: str) -> tuple[str, list[Message]]:
        self._buffer += text
        return self._drain(final=False)

    def finish(self) -> tuple[str, list[Message]]:
        return self._drain(final=True)

    def _drain(self, *, final: bool) -> tuple[str, list[Message]]:
        content: list[str] = []
        calls: list[Message] = []
        while self._buffer:
            if not self._in_calls:
                if not self._scan(content, final):
                    break
            elif not self._take_call(content, calls, final):
                break
        return "".join(content), calls

    def _scan(self, content: list[str], final: bool) -> bool:
        """Outside calls: pass content on up to an opening. True to go on draining."""
        opening, text = self.fmt.opening, self._buffer
        if opening:
            at = text.find(opening)
            if at >= 0:
                content.append(text[:at])
                self._buffer, self._in_calls = text[at + len(opening):], True
                return True
            keep = 0 if final else partial_suffix(text, opening)
            content.append(text[:len(text) - keep])
            self._buffer = text[len(text) - keep:]
            return False
        # Bare JSON: a call only where the reply begins with one (after Llama 3.1's
        # <|python_tag|>, which it may write before a call).
        stripped = text.lstrip()
        if not self._decided and stripped.startswith(PYTHON_TAG):
            stripped = stripped[len(PYTHON_TAG):].lstrip()
        elif not self._decided and not final and stripped and PYTHON_TAG.startswith(stripped):
            return False  # maybe the tag: wait
        if self._decided or final or (stripped and stripped[0] not in "{["):
            self._decided = True
            content.append(text)
            self._buffer = ""
            return False
        if not stripped:
            return False  # only whitespace so far: wait
        self._decided, self._in_calls, self._buffer = True, True, stripped
        return True

    def _take_call(self, content: list[str], calls: list[Message], final: bool) -> bool:
        """Inside calls: take the next complete object. True to go on draining."""
        text = self._skip_separators(self._buffer)
        if not text:
            self._buffer = ""
            return False
        if not final and any(tag.startswith(text) for tag in (self.fmt.opening,
                                                              self.fmt.closing) if tag):
            self._buffer = text  # maybe the start of a tag: wait for more
            return False
        if text[0] != "{":  # more prose after the calls
            self._buffer, self._in_calls = text, False
            return True
        end = _object_end(text, 0)
        if end is None:
            if final:  # an unfinished call is just text
                content.append(self.fmt.opening + text)
                self._buffer = ""
            else:
                self._buffer = text
            return False
        call = self._as_call(text[:end])
        if call is None:
            content.append(self.fmt.opening + text[:end])
            self._in_calls = False
        else:
            calls.append(call)
        self._buffer = text[end:]
        return True

    def _skip_separators(self, text: str) -> str:
        """Whitespace, list punctuation and repeated opening/closing tags between calls."""
        while True:
            before = text
            text = text.lstrip(" \t\r\n,[]")
            for tag in (self.fmt.opening, self.fmt.closing):
                if tag and text.startswith(tag):
                    text = text[len(tag):]
            if text == before:
                return text

    def _as_call(self, raw: str) -> Message | None:
        try:
            obj = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(obj, dict):
            return None
        if isinstance(obj.get("function"), dict):  # {"function": {"name", "arguments"}}
            obj = obj["function"]
        name = obj.get(self.fmt.name_key, obj.get("name"))
        arguments = obj.get(self.fmt.arguments_key,
                            obj.get("arguments", obj.get("parameters", {})))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if name not in self.names or not isinstance(arguments, dict):
            return None
        call = {"id": new_call_id(),
                "function": {"index": self.count, "name": name, "arguments": arguments}}
        self.count += 1
        return call


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0
