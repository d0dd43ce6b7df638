"""Tool calling without a server: call formats read off templates, the streaming call parser, and
request checks."""

from __future__ import annotations

import json

import pytest

from gateway.tools import (
    BARE_JSON,
    CallFormat,
    CallParser,
    _go_call_format,
    _jinja_call_format,
    check_tool_choice,
    check_tools,
    forced_call_grammar,
)
from shared.errors import BadRequest

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}},
                                       "required": ["zone"]}}}

# A Gemma-turn template that wraps each call in <tool_call> tags (the e2e tests use it too).
GEMMA_TOOLS = """{{- if .Tools }}<start_of_turn>user
Functions:
{{ range .Tools }}{{ . }}
{{ end }}Call one with <tool_call>{"name": NAME, "arguments": ARGS}</tool_call>.<end_of_turn>
{{ end }}
{{- range .Messages }}
{{- if eq .Role "user" }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ else if eq .Role "assistant" }}<start_of_turn>model
{{ if .ToolCalls }}{{ range .ToolCalls }}<tool_call>{"name": "{{ .Function.Name }}", \
"arguments": {{ .Function.Arguments }}}</tool_call>{{ end }}{{ else }}{{ .Content }}{{ end }}\
<end_of_turn>
{{ else if eq .Role "tool" }}<start_of_turn>user
<tool_response>{{ .Content }}</tool_response><end_of_turn>
{{ end }}
{{- end }}<start_of_turn>model
"""

# Qwen 2.5's Ollama template, abridged: one <tool_call> block around each call, ChatML turns.
QWEN = """{{- if .Messages }}{{- if or .System .Tools }}<|im_start|>system
{{ .System }}{{- if .Tools }}
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}{{ end }}"""

# Llama 3.1 style: the bare JSON object, with "parameters" for the arguments.
LLAMA = """{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ if .ToolCalls }}{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", \
"parameters": {{ .Function.Arguments }}}{{ end }}{{ else }}{{ .Content }}{{ end }}<|eot_id|>
{{- end }}<|start_header_id|>assistant<|end_header_id|>

"""

# Mistral style: [TOOL_CALLS] and a JSON array.
MISTRAL = """{{- range .Messages }}{{ if eq .Role "user" }}[INST] {{ .Content }}[/INST]\
{{ else if eq .Role "assistant" }}{{ if .ToolCalls }}[TOOL_CALLS][{{ range .ToolCalls }}\
{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}{{ end }}]\
{{ else }}{{ .Content }}{{ end }}</s>{{ end }}{{ end }}"""

# A Hugging Face style Jinja chat template (the GGUF's own).
JINJA = """{% for m in messages %}<|im_start|>{{ m.role }}
{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>
{{ {"name": c.function.name, "arguments": c.function.arguments} | tojson }}
</tool_call>{% endfor %}{% else %}{{ m.content }}{% endif %}<|im_end|>
{% endfor %}<|im_start|>assistant
"""


@pytest.mark.parametrize(("template", "expected"), [
    (GEMMA_TOOLS, CallFormat("<tool_call>", "</tool_call>")),
    (QWEN, CallFormat("<tool_call>", "</tool_call>")),
    (LLAMA, CallFormat("", "", "name", "parameters")),
    (MISTRAL, CallFormat("[TOOL_CALLS]", "")),
    ("{{ range .Messages }}{{ .Content }}{{ end }}", BARE_JSON),  # cannot show calls
])
def test_call_format_is_read_off_the_go_template(template: str, expected: CallFormat) -> None:
    assert _go_call_format(template) == expected


def test_call_format_of_a_jinja_template() -> None:
    assert _jinja_call_format(JINJA) == CallFormat("<tool_call>", "</tool_call>")


def feed_in_pieces(parser: CallParser, text: str, size: int) -> tuple[str, list[dict]]:
    content, calls = [], []
    for i in range(0, len(text), size):
        part, found = parser.feed(text[i:i + size])
        content.append(part)
        calls += found
    part, found = parser.finish()
    return "".join(content) + part, calls + found


TAGGED = CallFormat("<tool_call>", "</tool_call>")


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_parser_splits_content_and_calls_however_the_text_is_cut(size: int) -> None:
    reply = ('Let me look. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris {x}"}}'
             '</tool_call>\n<tool_call>{"name": "get_time", "arguments": "{}"}</tool_call> Done.')
    content, calls = feed_in_pieces(CallParser(TAGGED, [WEATHER, TIME]), reply, size)
    assert content == "Let me look. Done."
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert calls[0]["function"]["arguments"] == {"city": "Paris {x}"}
    assert calls[1]["function"] == {"index": 1, "name": "get_time", "arguments": {}}
    assert all(c["id"].startswith("call_") and len(c["id"]) == 13 for c in calls)


def test_a_call_is_given_out_as_soon_as_its_object_closes() -> None:
    parser = CallParser(TAGGED, [WEATHER])
    assert parser.feed("<tool_") == ("", [])  # might be the opening: held back
    assert parser.feed('call>{"name": "get_weather", "arguments": {"city"') == ("", [])
    content, calls = parser.feed(': "Oslo"}}')
    assert content == "" and calls[0]["function"]["arguments"] == {"city": "Oslo"}


def test_text_that_only_looks_like_a_call_stays_content() -> None:
    unknown = '<tool_call>{"name": "launch", "arguments": {}}</tool_call>'
    content, calls = feed_in_pieces(CallParser(TAGGED, [WEATHER]), unknown, 4)
    assert calls == [] and "launch" in content
    cut_off = 'Sure <tool_call>{"name": "get_weather", "argu'
    content, calls = feed_in_pieces(CallParser(TAGGED, [WEATHER]), cut_off, 5)
    assert calls == [] and content == cut_off
    assert feed_in_pieces(CallParser(TAGGED, [WEATHER]), "a <tool", 3) == ("a <tool", [])


def test_bare_json_calls_only_where_the_reply_starts() -> None:
    fmt = CallFormat("", "", "name", "parameters")
    call = '  {"name": "get_weather", "parameters": {"city": "Rome"}}'
    content, calls = feed_in_pieces(CallParser(fmt, [WEATHER]), call, 3)
    assert content == "" and calls[0]["function"]["arguments"] == {"city": "Rome"}
    prose = 'The answer is {"name": "get_weather", "parameters": {}}'
    assert feed_in_pieces(CallParser(fmt, [WEATHER]), prose, 3) == (prose, [])
    listed = '[{"name": "get_weather", "parameters": {"city": "A"}}, ' \
             '{"name": "get_weather", "parameters": {"city": "B"}}]'
    _, calls = feed_in_pieces(CallParser(fmt, [WEATHER]), listed, 6)
    assert [c["function"]["arguments"]["city"] for c in calls] == ["A", "B"]


def test_check_tools_and_tool_choice() -> None:
    assert check_tools(None) == [] and check_tools([WEATHER]) == [WEATHER]
    for bad in ("x", [{"type": "retrieval"}], [{"type": "function", "function": {}}],
                [{"type": "function", "function": {"name": "f", "parameters": "no"}}]):
        with pytest.raises(BadRequest):
            check_tools(bad)
    tools = [WEATHER, TIME]
    assert check_tool_choice(None, tools) is None and check_tool_choice("auto", tools) is None
    assert check_tool_choice("required", tools) == "required"
    assert check_tool_choice({"type": "function", "function": {"name": "get_time"}},
                             tools) == "get_time"
    with pytest.raises(BadRequest, match="not in tools"):
        check_tool_choice({"type": "function", "function": {"name": "nope"}}, tools)
    with pytest.raises(BadRequest):
        check_tool_choice("sometimes", tools)
    with pytest.raises(BadRequest, match="needs tools"):
        check_tool_choice("required", [])
    assert check_tool_choice("none", []) == "none"


def test_forced_grammar_names_only_the_chosen_function() -> None:
    one = forced_call_grammar(TAGGED, [WEATHER, TIME], "get_time", parallel=True)
    assert '"<tool_call>"' in one and '"</tool_call>"' in one
    assert "get_time" in one and "get_weather" not in one and "{0,3}" not in one
    both = forced_call_grammar(TAGGED, [WEATHER, TIME], "required", parallel=True)
    assert "get_time" in both and "get_weather" in both and "{0,3}" in both
    assert json.dumps("city")[1:-1] in both  # the arguments follow the parameter schema
