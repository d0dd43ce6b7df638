"""gpt-oss's harmony format, read out of the reply as Ollama's harmony parser does
(harmony/harmonyparser.go): the reply is a run of messages,

    <|channel|>analysis<|message|>...<|end|><|start|>assistant<|channel|>final<|message|>...

the first one's `<|start|>assistant` being the prompt's end. The `analysis` channel is the
thinking, `final` the content, and a `commentary` message addressed `to=functions.NAME` (in its
header, with `<|constrain|>json`) a tool call whose body is the arguments' JSON. `<|call|>` and
`<|return|>` end the reply (end-of-generation tokens: they never reach the text). Text is given
out as it arrives; a call when its message ends. A call whose arguments do not parse, or that
names no offered tool, goes out as content.

Used for models whose template speaks harmony (`<|start|>`, `<|end|>` and `<|channel|>` in it,
Ollama's heuristic) or whose PARSER is `harmony` (or RENDERER, with no PARSER).
"""

from __future__ import annotations

import json
import re
from typing import Any

from gateway.tools import Message, Tool, new_call_id, partial_suffix

START, END, MESSAGE, CHANNEL = "<|start|>", "<|end|>", "<|message|>", "<|channel|>"
_RECIPIENT = re.compile(r"to=(?:functions\.)?([^\s<]+)")


def speaks_harmony(template: str | None, parser: str | None,
                   renderer: str | None = None) -> bool:
    """Ollama's test (a harmony template, or PARSER harmony); and a prompt written by the
    `harmony` renderer gets a reply in harmony, whatever the template."""
    if parser == "harmony" or (renderer == "harmony" and not parser):
        return True
    return bool(template) and all(tag in template for tag in (START, END, CHANNEL))


class HarmonyParser:
    """Splits a streamed harmony reply: feed/finish give (thinking, content), as
    ThinkingParser's do; `take_calls` the calls completed so far."""

    def __init__(self, tools: list[Tool] | None = None,
                 rename: dict[str, str] | None = None, last: Message | None = None) -> None:
        """`tools` as the prompt named them; `rename` maps those names back to the request's
        (registry/renderers/harmony.py's harmony_tools). `last`: the chat's last message; an
        assistant turn there is continued (prefill), so the reply starts inside its message:
        `final` when it has content, else `analysis` when it has thinking (as Ollama's
        AddImplicitStartOrPrefill)."""
        self.names = {t["function"]["name"] for t in tools or []}
        self.rename = rename or {}
        self._buffer = ""
        self._in_header = True  # the prompt opened the first message
        self._channel = ""
        if last is not None and last.get("role") == "assistant":
            if last.get("content"):
                self._in_header, self._channel = False, "final"
            elif last.get("thinking"):
                self._in_header, self._channel = False, "analysis"
        self._recipient: str | None = None
        self._body: list[str] = []  # a tool call's arguments so far
        self._calls: list[Message] = []
        self._count = 0

    def feed(self, text: str) -> tuple[str, str]:
        self._buffer += text
        return self._drain(final=False)

    def finish(self) -> tuple[str, str]:
        thinking, content = self._drain(final=True)
        if self._recipient is not None:
            content += self._end_call()
        return thinking, content

    def take_calls(self) -> list[Message]:
        calls, self._calls = self._calls, []
        return calls

    def _drain(self, *, final: bool) -> tuple[str, str]:
        thinking: list[str] = []
        content: list[str] = []
        while self._buffer:
            if self._in_header:
                at = self._buffer.find(MESSAGE)
                if at < 0:
                    if final:  # a header that never ended: nothing to show
                        self._buffer = ""
                    break
                self._header(self._buffer[:at])
                self._buffer, self._in_header = self._buffer[at + len(MESSAGE):], False
                continue
            at = self._buffer.find(END)
            if at >= 0:
                body, rest = self._buffer[:at], self._buffer[at + len(END):]
            else:
                keep = 0 if final else partial_suffix(self._buffer, END)
                body, rest = self._buffer[:len(self._buffer) - keep], None
            if self._recipient is not None:
                self._body.append(body)
            elif self._channel == "analysis":
                thinking.append(body)
            else:
                content.append(body)
            if rest is None:
                self._buffer = self._buffer[len(body):]
                break
            if self._recipient is not None:
                content.append(self._end_call())
            # the next message: "<|start|>assistant<|channel|>..." up to its <|message|>
            start = rest.find(START)
            self._buffer = rest[start + len(START):] if start >= 0 else rest
            self._in_header, self._channel = True, ""
        return "".join(thinking), "".join(content)

    def _header(self, raw: str) -> None:
        raw = raw.replace("<|constrain|>", " <|constrain|>")
        at = raw.find(CHANNEL)
        self._channel = raw[at + len(CHANNEL):].split()[0] if at >= 0 and \
            raw[at + len(CHANNEL):].split() else ""
        match = _RECIPIENT.search(raw)
        self._recipient = match.group(1) if match else None
        self._body = []

    def _end_call(self) -> str:
        """The finished call message: a call, or its text as content when it is not one."""
        name, raw = self._recipient, "".join(self._body)
        self._recipient, self._body = None, []
        try:
            arguments: Any = json.loads(raw) if raw.strip() else {}
        except ValueError:
            arguments = None
        if name not in self.names or not isinstance(arguments, dict):
            return raw
        self._calls.append({"id": new_call_id(), "function": {
            "index": self._count, "name": self.rename.get(name, name), "arguments": arguments}})
        self._count += 1
        return ""


class HarmonyCalls:
    """CallParser's interface over a HarmonyParser: passes the content on, adds its calls."""

    def __init__(self, harmony: HarmonyParser) -> None:
        self.harmony = harmony

    def feed(self, text: str) -> tuple[str, list[Message]]:
        return text, self.harmony.take_calls()

    def finish(self) -> tuple[str, list[Message]]:
        return "", self.harmony.take_calls()
