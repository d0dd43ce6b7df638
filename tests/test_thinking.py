"""Thinking without a server: the `think` value, markers read off templates, the streaming
splitter, the think fields in Go and Jinja templates, and thinking composed with tool calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.inference import Generation, Thinking, ThinkUse, ToolCalls, check_messages
from gateway.thinking import (
    Markers,
    ThinkingParser,
    _go_markers,
    _jinja_markers,
    check_think,
    jinja_variables,
    opens_thinking,
    resolve_think,
    takes_levels,
)
from gateway.tools import CallFormat, CallParser
from registry import gotemplate
from shared import protocol as p
from shared.errors import BadRequest
from shared.prompt import render_jinja
from tests.test_tools import WEATHER

THINK = Markers("<think>", "</think>")

# Ollama's qwen3 template, abridged: thinking of the last turns shown, `think: false` closes an
# empty block in the prompt.
QWEN3 = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if (and $.IsThinkSet (and .Thinking $last)) -}}
<think>{{ .Thinking }}</think>
{{ end -}}
{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ if and $.IsThinkSet (not $.Think) -}}
<think>

</think>

{{ end -}}
{{ end }}
{{- end }}"""

# Magistral's style: [THINK] tags right after the instruction's closing bracket.
MAGISTRAL = """{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}[INST]{{ .Content }}[/INST]
{{- else if eq .Role "assistant" }}{{ if .Thinking }}[THINK]{{ .Thinking }}[/THINK]{{ end }}\
{{ .Content }}{{ if not $last }}</s>{{ end }}{{ end }}{{ end }}"""

# A template that grades thinking (gpt-oss style) and opens the block itself when asked to think.
GRADED = """{{ range .Messages }}{{ .Role }}: {{ if .Thinking }}<think>{{ .Thinking }}</think>\
{{ end }}{{ .Content }}
{{ end }}{{ if .Think }}Reasoning: {{ .ThinkLevel }}
<think>{{ end }}"""

# Qwen3's Jinja template, abridged: an assistant turn after the last question shows its
# reasoning_content, always between <think> tags (empty ones when there is none).
QWEN3_JINJA = """{%- for message in messages %}{%- if message.role == 'user' %}<|im_start|>user
{{ message.content }}<|im_end|>
{% elif message.role == 'assistant' %}<|im_start|>assistant
<think>
{{ (message.reasoning_content or '').strip('\\n') }}
</think>

{{ message.content }}<|im_end|>
{% endif %}{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant
{% if enable_thinking is defined and enable_thinking is false %}<think>

</think>

{% endif %}{%- endif %}"""

# DeepSeek-R1's Jinja template, abridged: earlier thinking is cut off, and the prompt itself opens
# the thinking block.
DEEPSEEK_JINJA = """{% for m in messages %}{% if m.role == 'user' %}<|User|>{{ m.content }}\
{% else %}{% set c = m.content %}{% if '</think>' in c %}{% set c = c.split('</think>')[-1] %}\
{% endif %}<|Assistant|>{{ c }}<|end|>{% endif %}{% endfor %}\
{% if add_generation_prompt %}<|Assistant|><think>
{% endif %}"""


def split(parser: ThinkingParser, text: str, step: int) -> tuple[str, str]:
    thinking: list[str] = []
    content: list[str] = []
    for i in range(0, len(text), step):
        a, b = parser.feed(text[i:i + step])
        thinking.append(a)
        content.append(b)
    a, b = parser.finish()
    return "".join(thinking + [a]), "".join(content + [b])


# --- the splitter --------------------------------------------------------------------------------


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_thinking_is_split_from_the_answer_at_any_chunking(step: int) -> None:
    text = "  <think>\n Let me see: 2+2.\n\n</think>\n\nThe answer is 4 <b>."
    assert split(ThinkingParser(THINK), text, step) == ("Let me see: 2+2.",
                                                         "The answer is 4 <b>.")


@pytest.mark.parametrize("step", [1, 4, 1000])
def test_a_reply_that_starts_inside_the_block(step: int) -> None:
    text = "\nI should add. </thi nk> is not a tag.\n</think>Four."
    assert split(ThinkingParser(THINK, inside=True), text, step) == (
        "I should add. </thi nk> is not a tag.", "Four.")


def test_a_reply_without_the_opening_is_all_content() -> None:
    assert split(ThinkingParser(THINK), "<thin air> and <think>", 1) == (
        "", "<thin air> and <think>")
    assert split(ThinkingParser(THINK), "\n  Hello", 1) == ("", "\n  Hello")


def test_text_that_may_begin_a_marker_is_held_until_it_is_clear() -> None:
    parser = ThinkingParser(THINK, inside=True)
    assert parser.feed("Hmm </th") == ("Hmm", "")
    assert parser.thinking
    assert parser.feed("ink> ok") == ("", "ok")
    assert not parser.thinking
    start = ThinkingParser(THINK)
    assert start.feed(" <thi") == ("", "")  # maybe the opening
    assert start.feed("s is") == ("", " <this is")


def test_unfinished_thinking_is_thinking_at_the_end() -> None:
    parser = ThinkingParser(THINK, inside=True)
    assert parser.feed("still going  ") == ("still going", "")
    assert parser.finish() == ("", "")
    other = ThinkingParser(Markers("[THINK]", "[/THINK]"))
    assert split(other, "[THINK]a [/THI", 2) == ("a [/THI", "")


def test_opens_thinking_looks_at_the_prompts_end() -> None:
    assert opens_thinking("<|Assistant|><think>\n", THINK)
    assert not opens_thinking("<think>\n\n</think>\n\n", THINK)


# --- markers from templates ----------------------------------------------------------------------


def test_markers_from_go_templates() -> None:
    assert _go_markers(QWEN3) == THINK
    assert _go_markers(MAGISTRAL) == Markers("[THINK]", "[/THINK]")
    assert _go_markers(GRADED) == THINK
    assert _go_markers("{{ range .Messages }}{{ .Content }}{{ end }}") is None


def test_markers_from_jinja_templates() -> None:
    assert _jinja_markers(QWEN3_JINJA) == THINK  # written either way: the tags around it
    assert _jinja_markers(DEEPSEEK_JINJA) == THINK
    assert _jinja_markers("{% for m in messages %}{{ m.content }}{% endfor %}") is None


# --- the think value -----------------------------------------------------------------------------


def test_think_values() -> None:
    assert [check_think(v) for v in (None, True, False, "low", "max")] == [
        None, True, False, "low", "max"]
    with pytest.raises(BadRequest, match='invalid think value: "extreme"'):
        check_think("extreme")
    with pytest.raises(BadRequest, match="think must be a boolean or string"):
        check_think(1)


def _model(template: str | None = None, chat_template: str | None = None,
           capabilities: tuple[str, ...] = ("completion", "thinking")) -> Any:
    return SimpleNamespace(template=template, capabilities=list(capabilities),
                           gguf=SimpleNamespace(chat_template=chat_template), config={})


def test_resolve_think_defaults_and_refusals() -> None:
    thinker = _model(QWEN3)
    assert resolve_think(thinker, None, "m") is True  # a thinking model thinks by default
    assert resolve_think(thinker, False, "m") is False
    with pytest.raises(BadRequest, match='think value "high" is not supported for this model'):
        resolve_think(thinker, "high", "m")
    assert resolve_think(_model(GRADED), "high", "m") == "high"
    assert resolve_think(_model(None, QWEN3_JINJA + "{{ reasoning_effort }}"), "low", "m") == "low"
    plain = _model("{{ .Prompt }}", capabilities=("completion",))
    assert resolve_think(plain, None, "m") is None
    assert resolve_think(plain, False, "m") is False
    with pytest.raises(BadRequest, match='"m" does not support thinking'):
        resolve_think(plain, True, "m")


def test_levels_follow_the_template_chats_use() -> None:
    assert takes_levels(_model(GRADED))
    assert not takes_levels(_model(QWEN3, "{{ reasoning_effort }}"))  # the Go template wins
    assert takes_levels(_model("{{ .Prompt }}", "{{ reasoning_effort }}"))


def test_think_in_go_templates() -> None:
    chat = [{"role": "user", "content": "Hi"}]
    assert gotemplate.render_chat(GRADED, chat, think=True).endswith("Reasoning: medium\n<think>")
    assert gotemplate.render_chat(GRADED, chat, think="high").endswith("Reasoning: high\n<think>")
    assert gotemplate.render_chat(GRADED, chat, think=False) == "user: Hi\n"
    probe = "{{ .Think }} {{ .IsThinkSet }} [{{ .ThinkLevel }}]"
    assert gotemplate.render_chat(probe, chat) == "false false []"
    assert gotemplate.render_chat(probe, chat, think=False) == "false true []"
    assert gotemplate.render_chat(probe, chat, think="low") == "true true [low]"
    # Earlier thinking is rendered back; `think: false` closes an empty block.
    history = [*chat, {"role": "assistant", "content": "Hello", "thinking": "Be kind."}]
    assert "<think>Be kind.</think>\nHello" in gotemplate.render_chat(QWEN3, history, think=True)
    assert gotemplate.render_chat(QWEN3, chat, think=False).endswith(
        "assistant\n<think>\n\n</think>\n\n")


def test_think_in_jinja_templates() -> None:
    assert jinja_variables(None) == {}
    assert jinja_variables(False) == {"enable_thinking": False}
    assert jinja_variables(True) == {"enable_thinking": True, "reasoning_effort": "medium"}
    assert jinja_variables("high") == {"enable_thinking": True, "reasoning_effort": "high"}
    chat = [{"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello", "thinking": "Be kind."},
            {"role": "user", "content": "Bye"}]
    off = render_jinja(QWEN3_JINJA, chat, bos_token="", eos_token="",
                       variables=jinja_variables(False)).text
    assert "<think>\nBe kind.\n</think>\n\nHello" in off  # thinking as reasoning_content
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    on = render_jinja(QWEN3_JINJA, chat, bos_token="", eos_token="",
                      variables=jinja_variables(True)).text
    assert on.endswith("<|im_start|>assistant\n")


def test_message_thinking_must_be_text() -> None:
    assert check_messages([{"role": "assistant", "content": "a", "thinking": "b"}])[0][
        "thinking"] == "b"
    with pytest.raises(BadRequest, match="thinking must be a string"):
        check_messages([{"role": "assistant", "content": "a", "thinking": 1}])


# --- thinking and tool calls together ------------------------------------------------------------


async def _stream(pieces: list[str]) -> AsyncIterator[list[p.Chunk | p.Done]]:
    """What the runner client yields: the messages that arrived together (one each here)."""
    for piece in pieces:
        yield [p.Chunk(0, piece)]
    yield [p.Done(0, "stop", 1, 1, len(pieces), 1)]


def _events(pieces: list[str], *, inside: bool, tools: bool) -> list[Any]:
    async def run() -> list[Any]:
        think = ThinkUse(True, THINK)
        parser = CallParser(CallFormat("<tool_call>", "</tool_call>"), [WEATHER]) if tools else None

        async def count(text: str) -> int:
            return len(text.split())

        generation = await Generation.start(_stream(pieces), parser, think.parser(inside), count)
        events = [event async for event in generation]
        return [*events, generation.thinking_tokens]

    return asyncio.run(run())


def test_a_call_after_the_thinking_block_is_a_call() -> None:
    reply = '<think>\nIt is about weather. <tool_call>not yet\n</think>\n<tool_call>{"name": ' \
            '"get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    pieces = [reply[i:i + 5] for i in range(0, len(reply), 5)]
    *events, tokens = _events(pieces, inside=False, tools=True)
    thinking = "".join(e.text for e in events if isinstance(e, Thinking))
    assert thinking == "It is about weather. <tool_call>not yet"
    [calls] = [e.calls for e in events if isinstance(e, ToolCalls)]
    assert calls[0]["function"]["name"] == "get_weather"
    assert calls[0]["function"]["arguments"] == {"city": "Paris"}
    assert not [e for e in events if isinstance(e, p.Chunk)]
    assert isinstance(events[-1], p.Done)
    assert tokens == 6  # the counter saw the thinking text


def test_thinking_events_come_before_content() -> None:
    *events, _ = _events(["Hmm, ", "four.", "</think>", "\n4"], inside=True, tools=False)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Thinking", "Thinking", "Chunk", "Done"]
    assert [e.text for e in events[:3]] == ["Hmm,", " four.", "4"]


def test_without_thinking_markers_no_parser() -> None:
    assert ThinkUse(True, None).parser(False) is None
    assert ThinkUse(False, THINK).parser(True) is None
    assert ThinkUse("high", THINK).constrained().value is False
    assert ThinkUse(None, None).constrained().value is None



def test_cli_think_flag_takes_a_value_only_after_equals() -> None:
    from gateway.cli import build_parser, parse

    parser = build_parser()
    args = parse(parser, ["run", "m", "--think", "why?"])  # as Ollama's: "why?" is the prompt
    assert (args.think, args.prompt) == ("true", ["why?"])
    args = parse(parser, ["run", "m", "--think=high", "--hidethinking", "why", "so?"])
    assert (args.think, args.hidethinking, args.prompt) == ("high", True, ["why", "so?"])
    with pytest.raises(SystemExit):
        parse(parser, ["run", "m", "--thinking"])
