# ruff: noqa: E501  (expected prompts are kept verbatim)
"""Ollama's built-in renderers (registry/renderers/): the prompts byte for byte, and the
RENDERER/PARSER names at create and in /api/show.

harmony (gpt-oss): Ollama renders gpt-oss with its TEMPLATE, so each case renders Ollama's own
gpt-oss template (tests/gptoss_template.py) with the Go template engine and compares; a few
cases also spell the prompt out. qwen3-coder: the expected prompts are the cases of Ollama's
own renderer tests (model/renderers/qwen3coder_test.go)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from registry import gotemplate
from registry.create import spec_from_request
from registry.renderers import capabilities, check_names, harmony, qwen3coder, render
from shared.errors import BadRequest
from tests.conftest import LiveServer, start_server
from tests.families import create, upload
from tests.gptoss_template import GPT_OSS_TEMPLATE
from tests.tinymodels import GPT_OSS, QWEN3_FAMILY, Family, _vocab, piece_text, write_gguf

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


def _builtin(name: str) -> dict[str, Any]:
    """One of harmony's built-in tools, offered by its name (as Ollama's clients offer them)."""
    return {"type": "function", "function": {"name": name, "description": "built in",
                                             "parameters": {"type": "object", "properties": {
                                                 "query": {"type": "string"}}}}}
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
    "built-in tools with functions": (USER, [_builtin("browser.search"), WEATHER,
                                            _builtin("python")], "low"),
    "built-in tools alone": (USER, [_builtin("browser.find"), _builtin("browser.open")], True),
    "built-in calls and results": (
        [*USER, {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "python", "arguments": {"code": "1+1"}}},
            {"function": {"name": "browser.search", "arguments": {"query": "x"}}}]},
         {"role": "tool", "tool_name": "python", "content": "2"},
         {"role": "tool", "tool_name": "browser.search", "content": "[0] x"}],
        [_builtin("python"), _builtin("browser.search"), NOW], "high"),
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


# --- through a live server: tiny models that name a RENDERER ------------------------------------

OPTS = {"temperature": 0, "num_predict": 16}
ANSWER = ["<|channel|>", "analysis<|message|>", "Paris is in France.", "<|end|>",
          "<|start|>assistant<|channel|>final<|message|>", "It is sunny."]
XML_CALL = ["Checking.", "<tool_call>", "\n<function=get_weather>\n<parameter=city>\nParis\n"
            "</parameter>\n</function>\n", "</tool_call>"]


def token_ids(family: Family, text: str, script: list[str]) -> list[int]:
    """`text` in the tiny model's vocabulary: special tokens whole, every other byte its own
    token (the tiny BPE vocabularies merge nothing a prompt holds)."""
    index = {piece: i for i, piece in enumerate(_vocab(family, script)[0])}
    specials = sorted((t for t, _ in family.specials), key=len, reverse=True)
    ids: list[int] = []
    at = 0
    while at < len(text):
        special = next((s for s in specials if text.startswith(s, at)), None)
        if special is not None:
            ids.append(index[special])
            at += len(special)
        else:
            ids.extend(index[piece_text(family, chr(b))] for b in text[at].encode())
            at += 1
    return ids


def prompt_of(done: dict[str, Any]) -> list[int]:
    return done["context"][:len(done["context"]) - done["eval_count"]]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    models = tmp_path_factory.mktemp("renderer-models")
    log = tmp_path_factory.mktemp("renderer-logs") / "serve.log"
    server = start_server(models, log, OLLAMA_KEEP_ALIVE="5m")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("renderer-ggufs")


def post(server: LiveServer, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=120)


@pytest.mark.e2e
def test_create_refuses_unknown_names_and_show_lists_them(live: LiveServer,
                                                          ggufs: Path) -> None:
    path = write_gguf(GPT_OSS, ggufs / "names.gguf")
    files = {path.name: upload(live, path)}
    for extra, error in (({"renderer": "nope"}, 'unknown renderer "nope"'),
                         ({"parser": "qwen9"}, 'unknown parser "qwen9"')):
        resp = post(live, "/api/create", {"model": "bad", "files": files, "stream": False,
                                          **extra})
        assert resp.status_code == 400 and resp.json()["error"].startswith(error), resp.text
    digest = files[path.name]
    resp = post(live, "/api/create", {"model": "bad", "stream": False,
                                      "modelfile": f"FROM @{digest}\nRENDERER nope\n"})
    assert resp.status_code == 400 and 'unknown renderer "nope"' in resp.json()["error"]
    assert post(live, "/api/show", {"model": "bad"}).status_code == 404  # nothing was made

    # (a template that shows thinking: the renderer writes the prompts, so it offers none)
    resp = post(live, "/api/create", {"model": "named", "stream": False, "modelfile":
                                      f"FROM @{digest}\nRENDERER qwen3-coder\nPARSER qwen3-coder\n"
                                      'TEMPLATE "{{ range .Messages }}{{ .Thinking }}'
                                      '{{ .Content }}{{ end }}"\n'})
    assert resp.status_code == 200, resp.text
    shown = post(live, "/api/show", {"model": "named"}).json()
    assert (shown["renderer"], shown["parser"]) == ("qwen3-coder", "qwen3-coder")
    assert "RENDERER qwen3-coder\nPARSER qwen3-coder\n" in shown["modelfile"]
    assert "tools" in shown["capabilities"] and "thinking" not in shown["capabilities"]
    # a model made FROM it keeps them, as in Ollama
    assert post(live, "/api/create", {"model": "child", "from": "named",
                                      "stream": False}).status_code == 200
    child = post(live, "/api/show", {"model": "child"}).json()
    assert (child["renderer"], child["parser"]) == ("qwen3-coder", "qwen3-coder")


@pytest.mark.e2e
def test_harmony_renderer_writes_the_prompt_and_its_reply_is_read(live: LiveServer,
                                                                 ggufs: Path) -> None:
    model = create(live, GPT_OSS, ggufs, name="tiny-gpt-oss-renderer", template="",
                   renderer="harmony", script=ANSWER)
    shown = post(live, "/api/show", {"model": model}).json()
    assert shown["renderer"] == "harmony" and "parser" not in shown
    assert {"completion", "tools", "thinking"} <= set(shown["capabilities"])

    def expected(messages: list[dict[str, Any]], tools: Any, think: Any) -> list[int]:
        return token_ids(GPT_OSS, harmony.render(messages, tools, think), ANSWER)

    hello = [{"role": "user", "content": "Hello"}]
    done = post(live, "/api/generate", {"model": model, "prompt": "Hello", "think": "low",
                                        "stream": False, "options": OPTS}).json()
    assert prompt_of(done) == expected(hello, None, "low")
    assert (done["thinking"], done["response"]) == ("Paris is in France.", "It is sunny.")

    # chat: tools and a history with thinking, calls and results, think true (medium)
    reply = post(live, "/api/chat", {"model": model, "messages": HISTORY, "tools": [WEATHER],
                                     "stream": False, "options": OPTS}).json()
    assert reply["prompt_eval_count"] == len(expected(HISTORY, [WEATHER], True))
    assert reply["message"]["thinking"] == "Paris is in France."
    assert reply["message"]["content"] == "It is sunny."
    # think false: no Reasoning line (gpt-oss thinks anyway: Ollama neither refuses it nor
    # hides the thinking)
    off = post(live, "/api/chat", {"model": model, "messages": hello, "think": False,
                                   "stream": False, "options": OPTS}).json()
    assert off["prompt_eval_count"] == len(expected(hello, None, False))
    assert off["message"]["content"] == "It is sunny."

    client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused")
    for effort, think in (("high", "high"), ("low", "low"), ("none", False)):
        completion = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hello"}], temperature=0,
            max_tokens=16, reasoning_effort=effort)  # type: ignore[arg-type]
        assert completion.usage is not None
        assert completion.usage.prompt_tokens == len(expected(hello, None, think)), effort
        assert completion.choices[0].message.content == "It is sunny."
    response = client.responses.create(model=model, input="Hello", temperature=0,
                                       max_output_tokens=16, reasoning={"effort": "high"})
    assert response.usage is not None
    assert response.usage.input_tokens == len(expected(hello, None, "high"))
    assert response.output_text == "It is sunny."


@pytest.mark.e2e
def test_qwen3_coder_renderer_writes_the_prompt_and_its_calls_are_read(live: LiveServer,
                                                                      ggufs: Path) -> None:
    model = create(live, QWEN3_FAMILY, ggufs, name="tiny-qwen3-coder-renderer", template="",
                   renderer="qwen3-coder", script=XML_CALL)
    tool = _fn("get_weather", "The weather in a city", {"city": {"type": "string"}},
               ["city"])
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris?"}]
    body = {"model": model, "messages": messages, "tools": [tool], "options": OPTS}
    reply = post(live, "/api/chat", {**body, "stream": False}).json()
    text = render("qwen3-coder", messages, [tool], None)
    assert reply["prompt_eval_count"] == len(token_ids(QWEN3_FAMILY, text, XML_CALL))
    message = reply["message"]
    assert message["content"] == "Checking."
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]] \
        == [("get_weather", {"city": "Paris"})]
    with httpx.stream("POST", live.url + "/api/chat", json=body, timeout=120) as resp:
        lines = [json.loads(line) for line in resp.iter_lines() if line]
    calls = [c for x in lines for c in x["message"].get("tool_calls", [])]
    assert [c["function"]["arguments"] for c in calls] == [{"city": "Paris"}]


def test_a_harmony_template_gets_max_as_high(ollama_gpt_oss: Any) -> None:
    """Ollama maps think "max" to "high" for a gpt-oss template too (harmony has no "max")."""
    from types import SimpleNamespace

    from gateway.inference import Inference

    model: Any = SimpleNamespace(config={}, template=GPT_OSS_TEMPLATE)
    text = Inference.template_prompt(None, model, USER, None, "max")  # type: ignore[arg-type]
    assert text is not None and "\n\nReasoning: high\n\n" in text
    assert text == ollama_gpt_oss(USER, None, "high")


@pytest.mark.e2e
def test_harmony_calls_with_a_required_tool_choice(live: LiveServer, ggufs: Path) -> None:
    """tool_choice on a harmony model: the JSON-call grammar made it write no harmony message
    at all (an empty reply, no call), so no grammar forces the call; the call the model writes
    is read from its channel."""
    script = ["<|channel|>", "commentary to=functions.get_weather <|constrain|>json<|message|>",
              '{"city": ', '"Paris"}']
    model = create(live, GPT_OSS, ggufs, name="tiny-gpt-oss-renderer-call", template="",
                   renderer="harmony", script=script)
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused")
    tools: Any = [WEATHER]
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        completion = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Weather?"}], tools=tools,
            tool_choice=choice, temperature=0, max_tokens=24)  # type: ignore[arg-type]
        call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        assert json.loads(call.function.arguments) == {  # type: ignore[union-attr]
            "city": "Paris"}

    # A tool whose name is no TypeScript identifier: the prompt names it `get_weather`, as
    # Ollama's harmony parser renames it, and the call comes back under the request's name.
    dashed = {"type": "function", "function": {**WEATHER["function"], "name": "get-weather"}}
    hello = [{"role": "user", "content": "Hello"}]
    reply = post(live, "/api/chat", {"model": model, "messages": hello, "tools": [dashed],
                                     "stream": False, "options": OPTS}).json()
    renamed = harmony.harmony_tools([dashed])[0]
    assert renamed[0]["function"]["name"] == "get_weather"
    text = harmony.render(hello, renamed, True)
    assert reply["prompt_eval_count"] == len(token_ids(GPT_OSS, text, script))
    assert [(c["function"]["name"], c["function"]["arguments"])
            for c in reply["message"]["tool_calls"]] == [("get-weather", {"city": "Paris"})]



@pytest.mark.e2e
def test_harmony_prefill_is_continued(live: LiveServer, ggufs: Path) -> None:
    """A chat that ends with an assistant turn: the prompt leaves its final message open and the
    reply is read as more of it (without this, the reply was taken for a message header and
    lost)."""
    model = create(live, GPT_OSS, ggufs, name="tiny-gpt-oss-prefill", template="",
                   renderer="harmony", script=[" here.", "<|end|>"])
    messages = [{"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "I will start"}]  # (ends as prompts do: "t")
    reply = post(live, "/api/chat", {"model": model, "messages": messages, "stream": False,
                                     "options": OPTS}).json()
    text = harmony.render(messages, None, True)
    assert text.endswith("<|channel|>final<|message|>I will start")
    assert reply["prompt_eval_count"] == len(token_ids(GPT_OSS, text, [" here.", "<|end|>"]))
    assert reply["message"]["content"] == " here."

# --- harmony's function names: Ollama's harmony parser tests (FunctionNameMap) ------------------


@pytest.mark.parametrize(("name", "identifier"), [
    ("get weather", "get_weather"), ("get-weather", "get_weather"), ("get.weather", "get_weather"),
    ("get weather!", "get_weather"), ("a🫠bc", "abc"), ("🫠", "unnamed"), ("123", "_123"),
    ("$", "$"), ("𝓸𝓵𝓵𝓪𝓶𝓪", "𝓸𝓵𝓵𝓪𝓶𝓪"), ("ⓞⓛⓛⓐⓜⓐ123", "_123")])
def test_harmony_identifiers(name: str, identifier: str) -> None:
    assert harmony._identifier(name) == identifier


@pytest.mark.parametrize(("names", "renamed"), [
    (["get weather", "get weather"], ["get_weather", "get_weather_2"]),
    (["get weather", "get_weather", "get-weather"], ["get_weather", "get_weather_2", "get_weather_3"]),
    (["get weather", "get_weather", "get-weather", "something-different"],
     ["get_weather", "get_weather_2", "get_weather_3", "something_different"]),
    (["a", "a", "b", "a", "a", "b", "a"], ["a", "a_2", "b", "a_3", "a_4", "b_2", "a_5"]),
    (["browser.open", "python", "not.a.built-in.function", "browser.not_a_real_built_in"],
     ["browser.open", "python", "not_a_built_in_function", "browser_not_a_real_built_in"])])
def test_harmony_tool_names(names: list[str], renamed: list[str]) -> None:
    tools = [{"type": "function", "function": {"name": n}} for n in names]
    out, back = harmony.harmony_tools(tools)
    assert [t["function"]["name"] for t in out] == renamed
    assert back[renamed[-1]] == names[-1]
    assert [t["function"]["name"] for t in tools] == names  # the request's own are untouched
