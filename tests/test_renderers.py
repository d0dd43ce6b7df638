# ruff: noqa: E501  (expected prompts are kept verbatim)
"""Ollama's built-in renderers (registry/renderers/): the prompts byte for byte, and the
RENDERER/PARSER names at create and in /api/show.

harmony (gpt-oss): Ollama renders gpt-oss with its TEMPLATE, so each case renders Ollama's own
gpt-oss template (tests/gptoss_template.py) with the Go template engine and compares; a few
cases also spell the prompt out. qwen3-coder: the expected prompts are the cases of Ollama's
own renderer tests (model/renderers/qwen3coder_test.go)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from registry import gotemplate
from registry.create import spec_from_request
from registry.renderers import capabilities, check_names, harmony, qwen3coder, render
from shared.errors import BadRequest
from tests.gptoss_template import GPT_OSS_TEMPLATE

TODAY = dt.date(2026, 1, 2)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather",
    "parameters": {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string", "description": "The city"},
        "unit": {"type": "string", "enum": ["C", "F"]},
        "days": {"type": ["integer", "null"], "description": "How many days"},
        "where": {"anyOf": [{"type": "string"}, {"type": "object"}]},
        "tags": {"type": "array", "items": {"type": "string"}}}}}}
NOW = {"type": "function", "function": {"name": "now"}}  # no description, no parameters
CALL = {"function": {"name": "get_weather", "arguments": {"unit": "C", "city": "Paris <&>"}}}


@pytest.fixture
def ollama_gpt_oss(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Ollama's gpt-oss template as Ollama renders it (its `currentDate` fixed to TODAY; a
    `think` of "max" is "high" there, as Ollama maps it for harmony before rendering)."""
    monkeypatch.setitem(gotemplate._FUNCS, "currentDate", TODAY.isoformat)

    def render_ollama(messages: list[dict[str, Any]], tools: Any = None, think: Any = None
                      ) -> str:
        think = "high" if think == "max" else think
        return gotemplate.render_chat(GPT_OSS_TEMPLATE, messages, tools=tools, think=think)
    return render_ollama


def ours(messages: list[dict[str, Any]], tools: Any = None, think: Any = None) -> str:
    return harmony.render(messages, tools, think, today=TODAY)


USER = [{"role": "user", "content": "Hello"}]
HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "thinking": "I should call the tool.",
     "tool_calls": [CALL]},
    {"role": "tool", "tool_name": "get_weather", "content": '{"sky": "clear"}'},
    {"role": "assistant", "content": "It is clear.", "thinking": "Now answer."},
    {"role": "user", "content": "And tomorrow?"},
]

HARMONY_CASES: dict[str, tuple[list[dict[str, Any]], Any, Any]] = {
    "plain chat": (USER, None, None),
    "think true": (USER, None, True),
    "think false": (USER, None, False),
    "think low": (USER, None, "low"),
    "think medium": (USER, None, "medium"),
    "think high": (USER, None, "high"),
    "think max": (USER, None, "max"),
    "system as developer instructions": (
        [{"role": "system", "content": "Be brief."}, *USER], None, True),
    "two system messages": (
        [{"role": "system", "content": "A."}, *USER, {"role": "system", "content": "B."}],
        None, "low"),
    "tools": (USER, [WEATHER, NOW], True),
    "tools and system": ([{"role": "system", "content": "Be brief."}, *USER], [NOW], "high"),
    "history with calls and results": (HISTORY, [WEATHER], True),
    "history, thinking before the last user dropped": (HISTORY[:5] + [HISTORY[1]], None, True),
    "consecutive users collated": (USER + [{"role": "user", "content": "Again"}], None, True),
    "prefill content": (USER + [{"role": "assistant", "content": "Sure"}], None, True),
    "prefill thinking": (USER + [{"role": "assistant", "content": "", "thinking": "Hm"}],
                         None, True),
    "two calls in a turn": (
        [*USER, {"role": "assistant", "content": "", "tool_calls": [
            CALL, {"function": {"name": "now", "arguments": {}}}]},
         {"role": "tool", "tool_name": "get_weather", "content": "sun"},
         {"role": "tool", "tool_name": "now", "content": "noon"}], [WEATHER, NOW], True),
}


@pytest.mark.parametrize("case", list(HARMONY_CASES))
def test_harmony_is_ollamas_gpt_oss_template(ollama_gpt_oss: Any, case: str) -> None:
    messages, tools, think = HARMONY_CASES[case]
    assert ours(messages, tools, think) == ollama_gpt_oss(messages, tools, think)


def test_harmony_plain_chat_spelled_out() -> None:
    assert ours(USER) == (
        "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
        "Knowledge cutoff: 2024-06\nCurrent date: 2026-01-02\n\nReasoning: medium\n\n"
        "# Valid channels: analysis, commentary, final. Channel must be included for every "
        "message.<|end|><|start|>user<|message|>Hello<|end|><|start|>assistant")


@pytest.mark.parametrize(("think", "line"), [
    (None, "\n\nReasoning: medium"), (True, "\n\nReasoning: medium"), ("low", "\n\nReasoning: low"),
    ("medium", "\n\nReasoning: medium"), ("high", "\n\nReasoning: high"),
    ("max", "\n\nReasoning: high"), (False, "")])
def test_harmony_reasoning_line(think: Any, line: str) -> None:
    assert f"Current date: 2026-01-02{line}\n\n# Valid channels" in ours(USER, None, think)


def test_harmony_tools_and_history_spelled_out() -> None:
    text = ours(HISTORY, [WEATHER, NOW], "high")
    assert text == (
        "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
        "Knowledge cutoff: 2024-06\nCurrent date: 2026-01-02\n\nReasoning: high\n\n"
        "# Valid channels: analysis, commentary, final. Channel must be included for every message.\n"
        "Calls to these tools must go to the commentary channel: 'functions'.<|end|>"
        "<|start|>developer<|message|># Tools\n\n## functions\n\nnamespace functions {\n\n"
        "// Get the current weather\ntype get_weather = (_: {\n"
        "  // The city\n  city: string,\n"
        "  // How many days\n  days: number | null,\n"
        "  tags: any[],\n"
        "  unit: string,\n"
        "  where: string | Record<string, any>,\n"
        "}) => any;\n\n"
        "type now = () => any;\n\n} // namespace functions\n\n# Instructions\n\nBe brief.<|end|>"
        "<|start|>user<|message|>Weather in Paris?<|end|>"
        # thinking before the last user message is dropped; the call's arguments are Go's JSON
        '<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json'
        '<|message|>{"city":"Paris \\u003c\\u0026\\u003e","unit":"C"}<|call|>'
        '<|start|>functions.get_weather to=assistant<|message|>{"sky": "clear"}<|end|>'
        "<|start|>assistant<|channel|>final<|message|>It is clear.<|end|>"
        "<|start|>user<|message|>And tomorrow?<|end|><|start|>assistant")


def test_harmony_thinking_after_the_last_user_message_is_kept() -> None:
    text = ours(HISTORY[:5], [WEATHER], True)
    assert ("<|start|>assistant<|channel|>analysis<|message|>I should call the tool.<|end|>"
            "<|start|>assistant<|channel|>commentary to=functions.get_weather") in text
    assert text.endswith("<|start|>assistant<|channel|>analysis<|message|>Now answer.<|end|>"
                         "<|start|>assistant<|channel|>final<|message|>It is clear.")


# --- qwen3-coder: Ollama's renderer test cases ---------------------------------------------

CALL_FORMAT = """If you choose to call a function ONLY reply in the following format with NO suffix:

<tool_call>
<function=example_function_name>
<parameter=example_parameter_1>
value_1
</parameter>
<parameter=example_parameter_2>
This is the value for the second parameter
that can span
multiple lines
</parameter>
</function>
</tool_call>

<IMPORTANT>
Reminder:
- Function calls MUST follow the specified format: an inner <function=...></function> block must be nested within <tool_call></tool_call> XML tags
- Required parameters MUST be specified
- You may provide optional reasoning for your function call in natural language BEFORE the function call, but NOT after
- If there is no function call available, answer the question like normal with your current knowledge and do not tell the user about function calls
</IMPORTANT>"""


def _fn(name: str, description: str, properties: dict[str, Any],
        required: list[str] | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        params["required"] = required
    return {"type": "function", "function": {"name": name, "description": description,
                                             "parameters": params}}


def _call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"function": {"name": name, "arguments": arguments}}


QWEN3_CODER_CASES: dict[str, tuple[list[dict[str, Any]], Any, str]] = {
    "basic": (
        [{"role": "system", "content": "You are a helpful assistant."},
         {"role": "user", "content": "Hello, how are you?"}], None,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "Hello, how are you?<|im_end|>\n<|im_start|>assistant\n"),
    "with tools and response": (
        [{"role": "system", "content": "You are a helpful assistant with access to tools."},
         {"role": "user", "content": "What is the weather like in San Francisco?"},
         {"role": "assistant", "content": "I'll check the weather in San Francisco for you.",
          "tool_calls": [_call("get_weather", {"unit": "fahrenheit"})]},
         {"role": "tool", "tool_name": "get_weather", "content": '{"location": "San Francisco, CA", "temperature": 68, "condition": "partly cloudy", "humidity": 65, "wind_speed": 12}'},
         {"role": "user", "content": "That sounds nice! What about New York?"}],
        [_fn("get_weather", "Get the current weather in a given location",
             {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"],
                       "description": "The unit of temperature"}}, ["unit"])],
        f"""<|im_start|>system
You are a helpful assistant with access to tools.

# Tools

You have access to the following functions:

<tools>
<function>
<name>get_weather</name>
<description>Get the current weather in a given location</description>
<parameters>
<parameter>
<name>unit</name>
<type>string</type>
<description>The unit of temperature</description>
<enum>["celsius","fahrenheit"]</enum>
</parameter>
<required>["unit"]</required>
</parameters>
</function>
</tools>

{CALL_FORMAT}<|im_end|>
<|im_start|>user
What is the weather like in San Francisco?<|im_end|>
<|im_start|>assistant
I'll check the weather in San Francisco for you.

<tool_call>
<function=get_weather>
<parameter=unit>
fahrenheit
</parameter>
</function>
</tool_call><|im_end|>
<|im_start|>user
<tool_response>
{{"location": "San Francisco, CA", "temperature": 68, "condition": "partly cloudy", "humidity": 65, "wind_speed": 12}}
</tool_response><|im_end|>
<|im_start|>user
That sounds nice! What about New York?<|im_end|>
<|im_start|>assistant
"""),
    "parallel tool calls": (
        [{"role": "system", "content": "You are a helpful assistant with access to tools."},
         {"role": "user", "content": "call double(1) and triple(2)"},
         {"role": "assistant", "content": "I'll call double(1) and triple(2) for you.",
          "tool_calls": [_call("double", {"number": "1"}), _call("triple", {"number": "2"})]},
         {"role": "tool", "tool_name": "double", "content": '{"number": 2}'},
         {"role": "tool", "tool_name": "triple", "content": '{"number": 6}'}],
        [_fn("double", "Double a number",
             {"number": {"type": "string", "description": "The number to double"}}),
         _fn("triple", "Triple a number",
             {"number": {"type": "string", "description": "The number to triple"}})],
        f"""<|im_start|>system
You are a helpful assistant with access to tools.

# Tools

You have access to the following functions:

<tools>
<function>
<name>double</name>
<description>Double a number</description>
<parameters>
<parameter>
<name>number</name>
<type>string</type>
<description>The number to double</description>
</parameter>
</parameters>
</function>
<function>
<name>triple</name>
<description>Triple a number</description>
<parameters>
<parameter>
<name>number</name>
<type>string</type>
<description>The number to triple</description>
</parameter>
</parameters>
</function>
</tools>

{CALL_FORMAT}<|im_end|>
<|im_start|>user
call double(1) and triple(2)<|im_end|>
<|im_start|>assistant
I'll call double(1) and triple(2) for you.

<tool_call>
<function=double>
<parameter=number>
1
</parameter>
</function>
</tool_call>
<tool_call>
<function=triple>
<parameter=number>
2
</parameter>
</function>
</tool_call><|im_end|>
<|im_start|>user
<tool_response>
{{"number": 2}}
</tool_response>
<tool_response>
{{"number": 6}}
</tool_response><|im_end|>
<|im_start|>assistant
"""),
    "prefill": (
        [{"role": "system", "content": "You are a helpful assistant."},
         {"role": "user", "content": "Tell me something interesting."},
         {"role": "assistant", "content": "I'll tell you something interesting about cats"}],
        None,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "Tell me something interesting.<|im_end|>\n<|im_start|>assistant\n"
        "I'll tell you something interesting about cats"),
    "complex tool call arguments should remain json encoded": (
        [{"role": "user", "content": "call tool"},
         {"role": "assistant", "content": "",
          "tool_calls": [_call("echo", {"payload": {"foo": "bar"}})]},
         {"role": "tool", "tool_name": "echo", "content": '{"payload": {"foo": "bar"}}'}],
        None,
        "<|im_start|>user\ncall tool<|im_end|>\n<|im_start|>assistant\n\n<tool_call>\n"
        '<function=echo>\n<parameter=payload>\n{"foo":"bar"}\n</parameter>\n</function>\n'
        "</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n"
        '{"payload": {"foo": "bar"}}\n</tool_response><|im_end|>\n<|im_start|>assistant\n'),
}


@pytest.mark.parametrize("case", list(QWEN3_CODER_CASES))
def test_qwen3_coder_renderer_as_ollamas_tests(case: str) -> None:
    messages, tools, expected = QWEN3_CODER_CASES[case]
    assert render("qwen3-coder", messages, tools, None) == expected


@pytest.mark.parametrize(("value", "text"), [
    ("foo", "foo"), ({"foo": "bar"}, '{"foo":"bar"}'), (1, "1"), (True, "true"),
    (None, "null"), (1.5, "1.5"), ([1, "a"], '[1,"a"]')])
def test_qwen3_coder_argument_values(value: Any, text: str) -> None:
    assert qwen3coder._value(value) == text


@pytest.mark.parametrize(("kind", "text"), [
    (["string"], "string"), (["string", "number"], '["string","number"]')])
def test_qwen3_coder_definition_types(kind: list[str], text: str) -> None:
    assert qwen3coder._type(kind) == text


def test_qwen3_coder_tools_alone_get_the_default_system_and_properties_keep_their_order() -> None:
    tool = _fn("f", "", {"zeta": {"type": "integer"}, "alpha": {"type": ["string", "null"]}})
    text = render("qwen3-coder", [{"role": "user", "content": "x"}], [tool], "high")
    assert text.startswith("<|im_start|>system\nYou are Qwen, a helpful AI assistant that can "
                           "interact with a computer to solve tasks.\n\n# Tools")
    assert ("<function>\n<name>f</name>\n<parameters>\n<parameter>\n<name>zeta</name>\n"
            "<type>integer</type>\n</parameter>\n<parameter>\n<name>alpha</name>\n"
            '<type>["string","null"]</type>\n</parameter>\n</parameters>\n</function>') in text


def test_qwen3_coder_tool_response_has_no_trailing_newline() -> None:
    text = render("qwen3-coder", [
        {"role": "user", "content": "call tool"},
        {"role": "assistant", "content": "", "tool_calls": [_call("echo", {"payload": "ok"})]},
        {"role": "tool", "tool_name": "echo", "content": '{"payload":"ok"}'}], None, None)
    assert "</tool_response><|im_end|>" in text and "</tool_response>\n<|im_end|>" not in text


# --- names ------------------------------------------------------------------------------------


def test_unknown_names_are_refused_at_create() -> None:
    base = {"model": "m", "from": "base"}
    with pytest.raises(BadRequest, match='unknown renderer "nope"'):
        spec_from_request({**base, "renderer": "nope"})
    with pytest.raises(BadRequest, match='unknown parser "qwen9"'):
        spec_from_request({**base, "parser": "qwen9"})
    with pytest.raises(BadRequest, match='unknown renderer "nope"'):
        spec_from_request({"model": "m", "modelfile": "FROM base\nRENDERER nope\n"})
    spec = spec_from_request({"model": "m", "modelfile":
                              "FROM base\nRENDERER harmony\nPARSER harmony\n"})
    assert (spec.renderer, spec.parser) == ("harmony", "harmony")
    check_names("qwen3-coder", "qwen3-coder")


def test_capabilities_of_renderers_and_parsers() -> None:
    assert capabilities({"renderer": "harmony"}) == ["tools", "thinking"]
    assert capabilities({"renderer": "qwen3-coder", "parser": "qwen3-coder"}) == ["tools"]
    assert capabilities({"renderer": "unknown-one"}) == []
