"""gpt-oss's harmony replies split into thinking, content and calls (gateway/harmony.py), in any
pieces, as Ollama's harmony parser splits them."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.harmony import HarmonyParser, speaks_harmony

TOOLS = [{"type": "function", "function": {"name": "get_weather"}}]
REPLY = ("<|channel|>analysis<|message|>Think <b>.<|end|><|start|>assistant<|channel|>final"
         "<|message|>Answer.<|end|><|start|>assistant<|channel|>commentary "
         'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}')


def run(text: str, size: int) -> tuple[str, str, list[dict[str, Any]]]:
    parser = HarmonyParser(TOOLS)
    thinking, content = [], []
    for i in range(0, len(text), size):
        t, c = parser.feed(text[i:i + size])
        thinking.append(t)
        content.append(c)
    t, c = parser.finish()
    return "".join(thinking) + t, "".join(content) + c, parser.take_calls()


@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_channels_in_any_pieces(size: int) -> None:
    thinking, content, calls = run(REPLY, size)
    assert thinking == "Think <b>." and content == "Answer."
    assert [c["function"]["arguments"] for c in calls] == [{"city": "Paris"}]
    assert calls[0]["function"]["name"] == "get_weather"


def test_a_call_that_is_not_one_is_content() -> None:
    bad = REPLY.replace('{"city": "Paris"}', '{"city": ')
    assert run(bad, 3)[1:] == ('Answer.{"city": ', [])
    unknown = REPLY.replace("get_weather", "launch")
    assert run(unknown, 1000)[1:] == ('Answer.{"city": "Paris"}', [])


def test_which_templates_speak_harmony() -> None:
    assert speaks_harmony("<|start|>x<|channel|>y<|end|>", None)
    assert speaks_harmony("{{ .Prompt }}", "harmony")
    assert not speaks_harmony("<|im_start|>{{ .Prompt }}<|im_end|>", None)


def test_calls_are_named_back_to_the_requests_names() -> None:
    """The prompt named the tool `get_weather` (harmony's identifier for `get-weather`, as
    Ollama renames it): the call goes out under the request's name."""
    parser = HarmonyParser(TOOLS, {"get_weather": "get-weather"})
    parser.feed(REPLY)
    parser.finish()
    assert [c["function"]["name"] for c in parser.take_calls()] == ["get-weather"]


@pytest.mark.parametrize(("last", "split"), [
    ({"role": "assistant", "content": "Sure"}, ("", " thing.")),
    ({"role": "assistant", "content": "", "thinking": "Hm"}, (" more", "")),
    ({"role": "user", "content": "Hi"}, ("", ""))])
def test_a_prefilled_turn_is_continued(last: dict[str, Any], split: tuple[str, str]) -> None:
    """The prompt left the last assistant message open (prefill): the reply goes on inside it,
    in the final channel after content, in analysis after thinking only (Ollama's
    AddImplicitStartOrPrefill); any other last message: the reply opens a message."""
    parser = HarmonyParser(TOOLS, None, last)
    text = " thing." if last.get("content") else " more" if last.get("thinking") else "x"
    got = parser.feed(text + "<|end|>")
    rest = parser.finish()
    assert (got[0] + rest[0], got[1] + rest[1]) == split
