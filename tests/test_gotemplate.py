"""The Go text/template subset: Ollama library templates with hand-derived renderings, the
language constructs one by one, and the errors that must surface at create time."""

# ruff: noqa: E501  (the library templates below are kept verbatim, long lines included)

from __future__ import annotations

import pytest

from registry.gotemplate import TemplateError, check, is_passthrough, parse, render_chat

# --- real Ollama library templates -------------------------------------------------------------

CHATML = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""

CHATML_LEGACY = """{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ .Response }}<|im_end|>
"""

LLAMA3_INSTRUCT = """{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}<|start_header_id|>assistant<|end_header_id|>

"""

LLAMA3_LEGACY = """{{ if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>{{ end }}{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>

{{ .Prompt }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>

{{ .Response }}<|eot_id|>"""

LLAMA31_TOOLS = """{{- if or .System .Tools }}<|start_header_id|>system<|end_header_id|>
{{- if .System }}

{{ .System }}
{{- end }}
{{- if .Tools }}

Cutting Knowledge Date: December 2023

When you receive a tool call response, use the output to format an answer to the orginal user question.

You are a helpful assistant with tool calling capabilities.
{{- end }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>
{{- if and $.Tools $last }}

Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.

Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. Do not use variables.

{{ range $.Tools }}
{{- . }}
{{ end }}
Question: {{ .Content }}<|eot_id|>
{{- else }}

{{ .Content }}<|eot_id|>
{{- end }}{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>
{{- if .ToolCalls }}
{{ range .ToolCalls }}
{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}
{{- else }}

{{ .Content }}
{{- end }}{{ if not $last }}<|eot_id|>{{ end }}
{{- else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}
{{- end }}"""

GEMMA3 = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""

GEMMA_LEGACY = """<start_of_turn>user
{{ if .System }}{{ .System }} {{ end }}{{ .Prompt }}<end_of_turn>
<start_of_turn>model
{{ .Response }}<end_of_turn>
"""

MISTRAL_TOOLS = """{{- if .Messages }}
{{- range $index, $_ := .Messages }}
{{- if eq .Role "user" }}
{{- if and (eq (len (slice $.Messages $index)) 1) $.Tools }}[AVAILABLE_TOOLS] {{ $.Tools }}[/AVAILABLE_TOOLS]
{{- end }}[INST] {{ if and $.System (eq (len (slice $.Messages $index)) 1) }}{{ $.System }}

{{ end }}{{ .Content }}[/INST]
{{- else if eq .Role "assistant" }}
{{- if .Content }} {{ .Content }}
{{- else if .ToolCalls }}[TOOL_CALLS] [
{{- range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{- end }}]
{{- end }}</s>
{{- else if eq .Role "tool" }}[TOOL_RESULTS] {"content": {{ .Content }}} [/TOOL_RESULTS]
{{- end }}
{{- end }}
{{- else }}[INST] {{ if .System }}{{ .System }}

{{ end }}{{ .Prompt }}[/INST]
{{- end }} {{ .Response }}
{{- if .Response }}</s>
{{- end }}"""

MISTRAL_LEGACY = "[INST] {{ if .System }}{{ .System }} {{ end }}{{ .Prompt }} [/INST]"

CHAT = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi there!"},
    {"role": "user", "content": "How are you?"},
]

TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather",
    "parameters": {"type": "object", "required": ["city"],
                   "properties": {"city": {"type": "string", "description": "The city"}}}}}
TOOL_JSON = ('{"type":"function","function":{"name":"get_weather","description":"Get the '
             'weather","parameters":{"type":"object","required":["city"],"properties":{"city":'
             '{"type":"string","description":"The city"}}}}}')
CALL = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
TOOL_CHAT = [
    {"role": "user", "content": "Weather?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "content": "22C"},
]

LLAMA31_TOOL_TEXT = (
    "\n\nCutting Knowledge Date: December 2023\n\nWhen you receive a tool call response, use "
    "the output to format an answer to the orginal user question.\n\nYou are a helpful "
    "assistant with tool calling capabilities.")


def test_chatml() -> None:
    assert render_chat(CHATML, CHAT) == (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n"
        "<|im_start|>user\nHello<|im_end|>\n"
        "<|im_start|>assistant\nHi there!<|im_end|>\n"
        "<|im_start|>user\nHow are you?<|im_end|>\n"
        "<|im_start|>assistant\n")


def test_chatml_legacy_runs_once_per_turn_and_cuts_after_response() -> None:
    assert render_chat(CHATML_LEGACY, CHAT) == (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n"
        "<|im_start|>user\nHello<|im_end|>\n"
        "<|im_start|>assistant\nHi there!<|im_end|>\n"
        "<|im_start|>user\nHow are you?<|im_end|>\n"
        "<|im_start|>assistant\n")


def test_llama3_instruct() -> None:
    assert render_chat(LLAMA3_INSTRUCT, CHAT) == (
        "<|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHi there!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_llama3_legacy() -> None:
    assert render_chat(LLAMA3_LEGACY, CHAT) == (
        "<|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHi there!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_llama31_tools_on_the_last_user_turn() -> None:
    messages = [{"role": "system", "content": "S"},
                {"role": "user", "content": "Weather in Paris?"}]
    assert render_chat(LLAMA31_TOOLS, messages, tools=[TOOL]) == (
        "<|start_header_id|>system<|end_header_id|>\n\nS" + LLAMA31_TOOL_TEXT + "<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please "
        "respond with a JSON for a function call with its proper arguments that best answers "
        "the given prompt.\n\nRespond in the format {\"name\": function name, \"parameters\": "
        "dictionary of argument name and its value}. Do not use variables.\n\n"
        + TOOL_JSON + "\n\nQuestion: Weather in Paris?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_llama31_tool_call_and_result() -> None:
    assert render_chat(LLAMA31_TOOLS, TOOL_CHAT, tools=[TOOL]) == (
        "<|start_header_id|>system<|end_header_id|>" + LLAMA31_TOOL_TEXT + "<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWeather?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "get_weather", "parameters": {"city":"Paris"}}<|eot_id|>'
        "<|start_header_id|>ipython<|end_header_id|>\n\n22C<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_llama31_without_system_or_tools() -> None:
    assert render_chat(LLAMA31_TOOLS, [{"role": "user", "content": "Hi"}]) == (
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_gemma3() -> None:
    assert render_chat(GEMMA3, CHAT) == (
        "<start_of_turn>user\nYou are helpful.<end_of_turn>\n"
        "<start_of_turn>user\nHello<end_of_turn>\n"
        "<start_of_turn>model\nHi there!<end_of_turn>\n"
        "<start_of_turn>user\nHow are you?<end_of_turn>\n"
        "<start_of_turn>model\n")


def test_gemma_legacy() -> None:
    assert render_chat(GEMMA_LEGACY, CHAT) == (
        "<start_of_turn>user\nYou are helpful. Hello<end_of_turn>\n"
        "<start_of_turn>model\nHi there!<end_of_turn>\n"
        "<start_of_turn>user\nHow are you?<end_of_turn>\n"
        "<start_of_turn>model\n")


def test_mistral() -> None:
    assert render_chat(MISTRAL_TOOLS, CHAT) == (
        "[INST] Hello[/INST] Hi there!</s>[INST] You are helpful.\n\nHow are you?[/INST] ")


def test_mistral_tools() -> None:
    assert render_chat(MISTRAL_TOOLS, [{"role": "user", "content": "Weather?"}],
                       tools=[TOOL]) == (
        f"[AVAILABLE_TOOLS] [{TOOL_JSON}][/AVAILABLE_TOOLS][INST] Weather?[/INST] ")
    assert render_chat(MISTRAL_TOOLS, TOOL_CHAT, tools=[TOOL]) == (
        '[INST] Weather?[/INST][TOOL_CALLS] [{"name": "get_weather", "arguments": '
        '{"city":"Paris"}}]</s>[TOOL_RESULTS] {"content": 22C} [/TOOL_RESULTS] ')


def test_mistral_legacy_gets_response_appended() -> None:
    assert render_chat(MISTRAL_LEGACY, CHAT) == (
        "[INST] You are helpful. Hello [/INST]Hi there![INST] How are you? [/INST]")


@pytest.mark.parametrize("template", [CHATML, CHATML_LEGACY, LLAMA3_INSTRUCT, LLAMA3_LEGACY,
                                      LLAMA31_TOOLS, GEMMA3, GEMMA_LEGACY, MISTRAL_TOOLS,
                                      MISTRAL_LEGACY])
def test_library_templates_pass_the_create_check(template: str) -> None:
    check(template)


def test_consecutive_messages_of_one_role_are_merged() -> None:
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                {"role": "tool", "content": "t1"}, {"role": "tool", "content": "t2"}]
    out = render_chat("{{ range .Messages }}[{{ .Role }}:{{ .Content }}]{{ end }}", messages)
    assert out == "[user:a\n\nb][tool:t1][tool:t2]"


def test_system_collects_all_system_messages() -> None:
    messages = [{"role": "system", "content": "one"}, {"role": "user", "content": "u"},
                {"role": "system", "content": "two"}]
    out = render_chat("{{ .System }}|{{ len .Messages }}", messages)
    assert out == "one\n\ntwo|3"


def test_fill_in_the_middle() -> None:
    tpl = "<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>"
    assert render_chat(tpl, [], prompt="def f(", suffix="return x") == \
        "<PRE> def f( <SUF>return x <MID>"


# --- language constructs -----------------------------------------------------------------------


def run(template: str, **values: object) -> str:
    """Execute with Ollama's top-level values (plus any given)."""
    from registry.gotemplate import _values

    return parse(template).execute(_values(**values))


def test_trim_markers() -> None:
    assert run("a  \n {{- .System -}} \n  b", System="X") == "aXb"
    assert run("a {{ .System }} b", System="X") == "a X b"
    assert run("{{- /* a comment */ -}}\n x") == "x"
    assert run("a{{/* c */}}b") == "ab"


def test_if_else_if_else() -> None:
    tpl = "{{ if eq .System \"a\" }}A{{ else if eq .System \"b\" }}B{{ else }}C{{ end }}"
    assert [run(tpl, System=s) for s in "abc"] == ["A", "B", "C"]


def test_with_and_else_with() -> None:
    tpl = "{{ with .System }}[{{ . }}]{{ else with .Prompt }}({{ . }}){{ else }}-{{ end }}"
    assert run(tpl, System="s") == "[s]"
    assert run(tpl, Prompt="p") == "(p)"
    assert run(tpl) == "-"


def test_range_forms() -> None:
    assert run("{{ range $i, $x := slice .Messages 0 }}{{ $i }}{{ end }}") == ""
    assert run("{{ range .Messages }}x{{ else }}empty{{ end }}") == "empty"
    assert run("{{ range 3 }}{{ . }}{{ end }}") == "012"
    assert run("{{ range $v := 3 }}{{ $v }}{{ end }}") == "012"
    tpl = "{{ range $i, $m := .Messages }}{{ if eq $i 1 }}{{ continue }}{{ end }}" \
          "{{ if eq $i 3 }}{{ break }}{{ end }}{{ $m.Role }}{{ $.System }};{{ end }}"
    from registry.gotemplate import _message

    messages = [_message({"role": r, "content": ""}) for r in ("a", "b", "c", "d", "e")]
    assert run(tpl, Messages=messages, System="!") == "a!;c!;"


def test_variables_scope_and_assignment() -> None:
    tpl = "{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ $y := 3 }}{{ $y }}{{ end }}{{ $x }}"
    assert run(tpl) == "32"
    # A variable declared in an if's pipeline is visible in its else branch too.
    assert run("{{ if $v := .System }}{{ $v }}{{ else }}<{{ $v }}>{{ end }}") == "<>"


def test_functions() -> None:
    assert run('{{ eq 1 2 3 1 }} {{ ne "a" "b" }} {{ lt 1 2 }} {{ le 2 2 }} {{ gt 1 2 }}'
               ' {{ ge 3 2 }}') == "true true true true false true"
    assert run("{{ and 1 0 2 }} {{ or 0 \"\" \"x\" }} {{ not 0 }} {{ and 1 2 }}") == \
        "0 x true 2"
    assert run('{{ len "héllo" }} {{ index "abc" 1 }} {{ slice "hello" 1 3 }}') == "6 98 el"
    assert run('{{ print "a" 1 2 "b" }}|{{ println 1 "x" }}|{{ printf "%s-%d-%v-%q" "s" 3 true'
               ' "q" }}') == 'a1 2b|1 x\n|s-3-true-"q"'
    assert run("{{ 3 | printf \"%d!\" }} {{ .System | len }}", System="abc") == "3! 3"
    assert run("{{ json .System }}", System="<a&b>") == '"\\u003ca\\u0026b\\u003e"'


def test_and_or_short_circuit() -> None:
    # Without short-circuiting `index .Messages 0` would fail on an empty list.
    assert run("{{ if and .Messages (index .Messages 0) }}x{{ else }}y{{ end }}") == "y"
    assert run("{{ or .System (index .Messages 0) }}", System="s") == "s"


def test_paren_field_access_and_literals() -> None:
    from registry.gotemplate import _message

    messages = [_message({"role": "user", "content": "hi"})]
    assert run("{{ (index .Messages 0).Content }}", Messages=messages) == "hi"
    assert run("{{ `raw\\n` }}{{ \"esc\\n\" }}{{ 0x10 }} {{ 1.5 }} {{ 'a' }} {{ nil }}") == \
        "raw\\nesc\n16 1.5 97 <nil>"


def test_tool_call_arguments_print_as_json_and_index_as_a_map() -> None:
    msgs = [{"role": "assistant", "content": "", "tool_calls": [CALL]}]
    tpl = ("{{ range .Messages }}{{ range .ToolCalls }}{{ .Function.Arguments }} "
           "{{ .Function.Arguments.city }} {{ .Function.Arguments.nope }}{{ end }}{{ end }}")
    assert render_chat(tpl, msgs) == '{"city":"Paris"} Paris <no value>'


# --- tools as Ollama's fixed structs (issue 26) ----------------------------------------------

# The part of Ollama's gpt-oss template that lists a tool's parameters: it ranges over a
# property's `type` and indexes it (Ollama's api.PropertyType is a list of strings).
GPT_OSS_PARAMS = """{{- range .Tools }}type {{ .Function.Name }} = (_: {
{{- range $name, $prop := .Function.Parameters.Properties }}
{{- if $prop.Description }}
// {{ $prop.Description }}
{{- end }}
{{ $name }}: {{ if gt (len $prop.Type) 1 }}{{ range $i, $t := $prop.Type }}{{ if $i }} | {{ end }}{{ $t }}{{ end }}{{ else }}{{ index $prop.Type 0 }}{{ end }},
{{- end }}
}) => any;
{{ end }}"""


def test_a_property_type_is_a_list_of_strings() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {
            "unit": {"type": "string", "description": "C or F"},
            "days": {"type": ["integer", "null"]}}}}}
    check(GPT_OSS_PARAMS)  # accepted at create
    assert render_chat(GPT_OSS_PARAMS, [{"role": "user", "content": "x"}], tools=[tool]) == (
        "type f = (_: {\ndays: integer | null,\n// C or F\nunit: string,\n}) => any;\n")
    tpl = "{{ range .Tools }}{{ range .Function.Parameters.Properties }}[{{ .Type }}]{{ end }}{{ end }}"
    assert render_chat(tpl, [], tools=[tool]) == "[[integer null]][string]"


def test_tools_print_as_ollamas_structs() -> None:
    """Field order fixed, description/parameters.type/properties always there, unknown keys
    dropped, properties with sorted keys; a property's own fields omitted when empty."""
    tool = {"function": {"parameters": {"properties": {
                "zeta": {"type": "string", "x-extra": 1, "description": "z"},
                "alpha": {"enum": ["a", "b"], "type": "string"}},
            "required": ["zeta"], "additionalProperties": False, "type": "object"},
            "name": "f", "strict": True}, "type": "function"}
    bare = {"type": "function", "function": {"name": "g"}}
    assert render_chat("{{ .Tools }}", [{"role": "user", "content": "x"}],
                       tools=[tool, bare]) == (
        '[{"type":"function","function":{"name":"f","description":"","parameters":{'
        '"type":"object","required":["zeta"],"properties":{"alpha":{"type":"string",'
        '"enum":["a","b"]},"zeta":{"type":"string","description":"z"}}}}},'
        '{"type":"function","function":{"name":"g","description":"","parameters":{'
        '"type":"","properties":null}}}]')
    one = "{{ range .Tools }}{{ . }}|{{ .Function.Parameters.Properties }}{{ end }}"
    assert render_chat(one, [], tools=[bare]) == (
        '{"type":"function","function":{"name":"g","description":"","parameters":{'
        '"type":"","properties":null}}}|{}')


def test_tool_call_arguments_print_with_sorted_keys() -> None:
    call = {"function": {"name": "f", "arguments": {"b": 1, "a": {"y": 2, "x": 1}}}}
    msgs = [{"role": "assistant", "content": "", "tool_calls": [call]}]
    tpl = ("{{ range .Messages }}{{ range .ToolCalls }}{{ .Function.Arguments }} "
           "{{ range $k, $v := .Function.Arguments }}{{ $k }};{{ end }}{{ end }}{{ end }}")
    assert render_chat(tpl, msgs) == '{"a":{"x":1,"y":2},"b":1} a;b;'


def test_to_typescript_type() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {
            "a": {"type": ["integer", "null"]}, "b": {"type": "array"}, "c": {},
            "d": {"anyOf": [{"type": "string"}, {"type": "object"}]}}}}}
    tpl = ("{{ range .Tools }}{{ range $n, $p := .Function.Parameters.Properties }}"
           "{{ $n }}={{ toTypeScriptType $p }};{{ end }}{{ end }}")
    assert render_chat(tpl, [], tools=[tool]) == (
        "a=number | null;b=any[];c=any;d=string | Record<string, any>;")


def test_cut_after_response_inside_a_branch() -> None:
    tpl = "{{ if .Prompt }}U:{{ .Prompt }} A:{{ .Response }} END{{ end }} TAIL"
    assert render_chat(tpl, [{"role": "user", "content": "q"}]) == "U:q A:"


def test_passthrough_detection() -> None:
    assert is_passthrough(None)
    assert is_passthrough("{{ .Prompt }}")
    assert is_passthrough(" {{- .Prompt -}}\n")
    assert not is_passthrough("{{ .System }} {{ .Prompt }}")


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("template", "message"), [
    ("{{ .System ", "unclosed action"),
    ("{{ end }}", "unexpected {{end}}"),
    ("{{ if .System }}x", "missing {{end}}"),
    ("{{ nope .System }}", 'function "nope" not defined'),
    ("{{ $x }}", 'undefined variable "$x"'),
    ("{{ $x = 1 }}", 'undefined variable "$x"'),
    ('{{ template "x" }}', "{{template}} is not supported"),
    ('{{ define "x" }}{{ end }}', "{{define}} is not supported"),
    ("{{ block \"x\" . }}{{ end }}", "{{block}} is not supported"),
    ("{{ html .System }}", 'function "html" is not supported'),
    ("{{ .Bogus }}", 'unknown field ".Bogus"'),
    ("{{ .System .Prompt }}", "can't give argument to non-function"),
    ("{{ break }}", "outside {{range}}"),
    ("\n\n{{ if }}{{ end }}", "line 3: missing value for if"),
    ("{{ \"unterminated }}", "unterminated quoted string"),
])
def test_parse_errors(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        parse(template)
    assert message in str(info.value)


def test_check_catches_execution_errors() -> None:
    with pytest.raises(TemplateError, match="index out of range"):
        check("{{ (index .Messages 7).Content }}")
    with pytest.raises(TemplateError, match="incompatible types"):
        check('{{ if eq (len .Messages) "1" }}{{ end }}')
    with pytest.raises(TemplateError, match="can't evaluate field"):
        check("{{ range .Messages }}{{ .Function }}{{ end }}")
