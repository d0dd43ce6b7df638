"""Qwen3-Coder's tool calls: XML-like blocks, not JSON, parsed as Ollama's `qwen3-coder` parser
does (model/parsers/qwen3coder.go):

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    </function>
    </tool_call>

A parameter's text loses one leading and one trailing newline and is typed by the tool's schema
("null" is null; then boolean, integer, number, array, object, string, in that order of
precedence). Text before a call loses its trailing whitespace, text after it its leading
whitespace. A block that does not parse, or names no offered tool, goes out as text.
"""

from __future__ import annotations

import json
import re
from typing import Any

from gateway.tools import Message, Tool, new_call_id, partial_suffix

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_FUNCTION = re.compile(r"^\s*<function=([^>\n]+)>(.*?)</function>\s*$", re.DOTALL)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>(.*?)</parameter>", re.DOTALL)


def typed_value(raw: str, types: list[str]) -> Any:
    """The parameter's text as the schema's type says (Ollama's parseTypedToolValue)."""
    if raw.lower() == "null":
        return None
    if not types:
        return raw
    only = len(types) == 1
    if "boolean" in types:
        if raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        if only:
            return False
    if "integer" in types:
        try:
            return int(raw)
        except ValueError:
            if only:
                return raw
    if "number" in types:
        try:
            value = float(raw)
            return int(value) if value.is_integer() else value
        except ValueError:
            if only:
                return raw
    for kind, shape in (("array", list), ("object", dict)):
        if kind in types:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
            if isinstance(parsed, shape):
                return parsed
            if only:
                return raw
    return raw


def _types(schema: Any) -> list[str]:
    if not isinstance(schema, dict):
        return []
    if schema.get("anyOf"):
        return [t for sub in schema["anyOf"] for t in _types(sub)]
    kind = schema.get("type")
    return [kind] if isinstance(kind, str) else [str(t) for t in kind or []]


class XmlCallParser:
    """CallParser's interface (feed/finish: content, calls) for Qwen3-Coder's format."""

    def __init__(self, tools: list[Tool]) -> None:
        self.tools = {t["function"]["name"]: t["function"] for t in tools}
        self.count = 0
        self._buffer = ""
        self._inside = False
        self._after_call = False

    def feed(self, text: str) -> tuple[str, list[Message]]:
        self._buffer += text
        return self._drain(final=False)

    def finish(self) -> tuple[str, list[Message]]:
        return self._drain(final=True)

    def _drain(self, *, final: bool) -> tuple[str, list[Message]]:
        content: list[str] = []
        calls: list[Message] = []
        while True:
            text = self._buffer
            if self._after_call:  # whitespace after a call goes, however the text arrives
                text = self._buffer = text.lstrip()
                self._after_call = not text
            if not self._inside:
                at = text.find(OPEN)
                if at >= 0:
                    content.append(text[:at].rstrip())
                    self._buffer, self._inside = text[at + len(OPEN):], True
                    continue
                keep = 0 if final else partial_suffix(text, OPEN)
                if not final:  # trailing whitespace waits: a call may follow it
                    keep = len(text) - len(text[:len(text) - keep].rstrip())
                content.append(text[:len(text) - keep])
                self._buffer = text[len(text) - keep:]
                break
            end = text.find(CLOSE)
            if end < 0:
                if final:  # an unfinished call is text
                    content.append(OPEN + text)
                    self._buffer = ""
                break
            call = self._as_call(text[:end])
            if call is None:
                content.append(OPEN + text[:end + len(CLOSE)])
            else:
                calls.append(call)
            self._buffer, self._inside = text[end + len(CLOSE):], False
            self._after_call = call is not None
        return "".join(content), calls

    def _as_call(self, raw: str) -> Message | None:
        match = _FUNCTION.match(raw)
        if match is None or match.group(1).strip() not in self.tools:
            return None
        name = match.group(1).strip()
        properties = (self.tools[name].get("parameters") or {}).get("properties") or {}
        arguments: dict[str, Any] = {}
        for key, value in _PARAMETER.findall(match.group(2)):
            key = key.strip()
            value = value.removeprefix("\n").removesuffix("\n")
            arguments[key] = typed_value(value, _types(properties.get(key)))
        call = {"id": new_call_id(),
                "function": {"index": self.count, "name": name, "arguments": arguments}}
        self.count += 1
        return call
