"""Qwen3-Coder's XML tool calls (gateway/xmlcalls.py), as Ollama's qwen3-coder parser reads
them: streamed in any pieces, typed by the tool's schema, malformed blocks kept as text."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.xmlcalls import XmlCallParser, typed_value

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"},
        "hours": {"type": "array"}, "extra": {"anyOf": [{"type": "number"}, {"type": "null"}]},
    }}}}]
CALL = ("<tool_call>\n<function=get_weather>\n<parameter=city>\nNew York\n</parameter>\n"
        "<parameter=days>\n3\n</parameter>\n<parameter=metric>\ntrue\n</parameter>\n"
        "<parameter=hours>\n[1, 2]\n</parameter>\n<parameter=extra>\n2.5\n</parameter>\n"
        "</function>\n</tool_call>")
ARGS = {"city": "New York", "days": 3, "metric": True, "hours": [1, 2], "extra": 2.5}


def run(pieces: list[str]) -> tuple[str, list[dict[str, Any]]]:
    parser = XmlCallParser(TOOLS)
    text, calls = [], []
    for piece in pieces:
        t, c = parser.feed(piece)
        text.append(t)
        calls += c
    t, c = parser.finish()
    return "".join(text) + t, calls + c


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_calls_in_any_pieces(size: int) -> None:
    reply = "Let me look.\n\n" + CALL + "\n" + CALL.replace("New York", "Paris") + "\nDone."
    text, calls = run([reply[i:i + size] for i in range(0, len(reply), size)])
    assert text == "Let me look.Done."
    assert [c["function"]["arguments"] for c in calls] == [ARGS, {**ARGS, "city": "Paris"}]
    assert [c["function"]["index"] for c in calls] == [0, 1]
    assert all(c["id"].startswith("call_") for c in calls)


def test_malformed_and_unknown_calls_are_text() -> None:
    unknown = CALL.replace("get_weather", "launch_rocket")
    assert run([unknown]) == (unknown, [])
    broken = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis"
    assert run([broken]) == (broken, [])


def test_values_typed_as_ollama_types_them() -> None:
    assert typed_value("NULL", ["string"]) is None
    assert typed_value("yes", ["boolean"]) is False  # the only type: false, as Ollama
    assert typed_value("12", ["string", "number"]) == 12
    assert typed_value("1.5", ["integer"]) == "1.5"
    assert typed_value('{"a": 1}', ["object"]) == {"a": 1}
    assert typed_value("x", []) == "x"
