"""Tool calling end to end, with the official `openai` and `ollama` clients.

The bundled GGUF has no chat template, so these tests create a model from it with a Go TEMPLATE
that can show tools (tests/test_tools.py's GEMMA_TOOLS). The 270M model does not call tools on
its own; `tool_choice` forces it through a grammar, and the `ollama` round trip shows it an
earlier call in the history, which it then imitates.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from openai.types.chat.chat_completion import Choice

from tests.conftest import LiveServer
from tests.test_create import write_tiny_gguf
from tests.test_tools import GEMMA_TOOLS, TIME, WEATHER

pytestmark = pytest.mark.e2e

MODEL = "gemma3:270m"
TOOLS_MODEL = "corral-tools:test"
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def tools_model(corral_server: LiveServer) -> Iterator[str]:
    client = ollama.Client(host=corral_server.url)
    client.create(TOOLS_MODEL, from_=MODEL, template=GEMMA_TOOLS,
                  parameters={"temperature": 0, "num_predict": 48})
    yield TOOLS_MODEL
    client.delete(TOOLS_MODEL)


@pytest.fixture
def client(corral_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=corral_server.url + "/v1", api_key="unused", max_retries=0)


def test_required_tool_choice_gives_a_well_formed_call_then_an_answer(
        client: openai.OpenAI, corral_server: LiveServer, tools_model: str) -> None:
    assert "tools" in ollama.Client(host=corral_server.url).show(tools_model).capabilities
    reply = client.chat.completions.create(
        model=tools_model, messages=QUESTION, tools=[WEATHER], tool_choice="required",
        parallel_tool_calls=False)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)  # the grammar kept it to the schema
    assert list(arguments) == ["city"] and isinstance(arguments["city"], str)

    # Second turn: the assistant's call and the tool's result go back; the model answers.
    answer = client.chat.completions.create(model=tools_model, tools=[WEATHER], messages=[
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 C"},
    ], max_tokens=16)
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.choices[0].message.tool_calls is None
    assert answer.usage.prompt_tokens > reply.usage.prompt_tokens  # the history was rendered


def test_named_tool_choice_calls_that_function(client: openai.OpenAI, tools_model: str) -> None:
    reply = client.chat.completions.create(
        model=tools_model, messages=QUESTION, tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls = reply.choices[0].message.tool_calls
    assert calls and {c.function.name for c in calls} == {"get_time"}
    assert all(isinstance(json.loads(c.function.arguments), dict) for c in calls)


def test_tool_calls_stream(client: openai.OpenAI, tools_model: str) -> None:
    chunks = list(client.chat.completions.create(
        model=tools_model, messages=QUESTION, tools=[WEATHER], tool_choice="required",
        parallel_tool_calls=False, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    streamed = [call for d in deltas for call in (d.tool_calls or [])]
    assert len(streamed) == 1 and streamed[0].index == 0
    assert streamed[0].function.name == "get_weather"
    assert "city" in json.loads(streamed[0].function.arguments)
    assert deltas[0].role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


# An earlier exchange that shows the small model how a call looks: it then writes one itself.
SHOWN_A_CALL = [
    {"role": "user", "content": "What is the weather in Rome?"},
    {"role": "assistant", "content": "", "tool_calls": [{
        "id": "call_rome", "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": "Rome"})}}]},
    {"role": "tool", "content": "Rainy in Rome", "tool_call_id": "call_rome"},
    {"role": "assistant", "content": "It is rainy in Rome."},
    *QUESTION,
]


def test_tool_choice_none_and_auto_answer_in_text(client: openai.OpenAI, tools_model: str
                                                  ) -> None:
    def ask(messages: list[dict], choice: str) -> Choice:
        return client.chat.completions.create(  # greedy: OpenAI's default temperature is 1
            model=tools_model, messages=messages, tools=[WEATHER], tool_choice=choice,
            max_tokens=32, temperature=0).choices[0]

    # Asked plainly, the model answers in text whatever the choice.
    for choice in ("none", "auto"):
        answer = ask(QUESTION, choice)
        assert answer.finish_reason in ("stop", "length") and answer.message.tool_calls is None
        assert answer.message.content and answer.message.content.strip(), choice
    # Shown a call, it writes one: "auto" gives it as a tool call ...
    auto = ask(SHOWN_A_CALL, "auto")
    assert auto.finish_reason in ("tool_calls", "length")  # as Ollama: "length" passes through
    [call, *_] = auto.message.tool_calls or [None]
    assert call is not None and call.function.name == "get_weather"
    # ... "none" never does: whatever the model writes stays text.
    none = ask(SHOWN_A_CALL, "none")
    assert none.finish_reason in ("stop", "length") and none.message.tool_calls is None
    assert none.message.content and none.message.content.strip()


def test_tools_need_a_template_that_can_show_them(client: openai.OpenAI,
                                                  corral_server: LiveServer) -> None:
    with pytest.raises(openai.BadRequestError, match="does not support tools"):
        client.chat.completions.create(model=MODEL, messages=QUESTION, tools=[WEATHER])
    native = ollama.Client(host=corral_server.url)
    with pytest.raises(ollama.ResponseError) as err:
        native.chat(MODEL, messages=QUESTION, tools=[WEATHER])
    assert err.value.status_code == 400
    assert err.value.error == "registry.ollama.ai/library/gemma3:270m does not support tools"


@pytest.mark.parametrize("tool_choice", [
    "sometimes", {"type": "function", "function": {"name": "launch"}}])
def test_bad_tool_choice_is_400(client: openai.OpenAI, tools_model: str, tool_choice: object
                                ) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=tools_model, messages=QUESTION, tools=[WEATHER],
                                       tool_choice=tool_choice)  # type: ignore[arg-type]
    assert err.value.body["type"] == "invalid_request_error"


def get_weather(city: str) -> str:
    """Get the weather in a city.

    Args:
      city: The city
    """
    return f"Sunny in {city}"


def test_ollama_client_tool_round_trip(corral_server: LiveServer, tools_model: str) -> None:
    client = ollama.Client(host=corral_server.url)
    # An earlier exchange in the history shows the small model how a call looks.
    history = [
        {"role": "user", "content": "What is the weather in Rome?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "content": "Rainy in Rome", "tool_name": "get_weather"},
        {"role": "assistant", "content": "It is rainy in Rome."},
        *QUESTION,
    ]
    reply = client.chat(tools_model, messages=history, tools=[get_weather])
    [call, *_] = reply.message.tool_calls or [None]
    assert call is not None and call.function.name == "get_weather"
    assert isinstance(call.function.arguments, dict) and "city" in call.function.arguments

    streamed = [c.message.tool_calls for c in client.chat(tools_model, messages=history,
                                                           tools=[get_weather], stream=True)]
    first = next(calls for calls in streamed if calls)
    assert first[0].function == call.function  # same call, in a chunk of its own

    result = get_weather(**call.function.arguments)
    answer = client.chat(tools_model, messages=[
        *history, reply.message, {"role": "tool", "content": result, "tool_name": "get_weather"}],
        options={"num_predict": 8})
    assert answer.done and answer.message.role == "assistant"


# A GGUF's own Jinja chat template that shows tools and calls (the runner renders it).
JINJA_TOOLS = """{% if tools %}T:{% for t in tools %}{{ t.function.name }};{% endfor %}
{% endif %}{% for m in messages %}{{ m.role }}:{% if m.tool_calls %}{% for c in m.tool_calls %}\
<call>{{ {"name": c.function.name, "arguments": c.function.arguments} | tojson }}</call>\
{% endfor %}{% else %}{{ m.content }}{% endif %}
{% endfor %}assistant:"""


def test_tools_through_a_gguf_jinja_template(corral_server: LiveServer, tmp_path: Path
                                              ) -> None:
    native = ollama.Client(host=corral_server.url)
    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf", chat_template=JINJA_TOOLS)
    digest = native.create_blob(gguf_path)
    native.create("corral-jinja-tools", files={"tiny.gguf": digest})
    try:
        assert "tools" in native.show("corral-jinja-tools").capabilities
        short_city = {"type": "function", "function": {
            "name": "get_weather", "parameters": {
                "type": "object", "required": ["city"],
                "properties": {"city": {"type": "string", "maxLength": 4}}}}}
        ask = [{"role": "user", "content": "weather?"}]
        plain = native.chat("corral-jinja-tools", messages=ask, options={"num_predict": 1})
        reply = httpx.post(corral_server.url + "/api/chat", timeout=120, json={
            "model": "corral-jinja-tools", "messages": ask, "tools": [short_city],
            "tool_choice": "required", "stream": False,
            "options": {"num_predict": 80, "temperature": 0}}).json()
        # The tools reached the Jinja template: the prompt grew by their listing.
        assert reply["prompt_eval_count"] > plain.prompt_eval_count
        # Even a random tiny model writes a well-formed call in the template's <call> format.
        [call] = reply["message"]["tool_calls"]
        assert call["function"]["name"] == "get_weather"
        assert list(call["function"]["arguments"]) == ["city"]
        assert len(call["function"]["arguments"]["city"]) <= 4
    finally:
        native.delete("corral-jinja-tools")


def test_long_chat_through_a_go_template_drops_whole_old_messages(corral_server: LiveServer
                                                                   ) -> None:
    client = ollama.Client(host=corral_server.url)
    client.create("corral-short-ctx", from_=MODEL, template=GEMMA_TOOLS,
                  parameters={"num_ctx": 256, "temperature": 0, "num_predict": 2})
    try:
        history = []
        for i in range(12):
            history += [{"role": "user", "content": f"Question {i}: tell me about the river "
                                                    "town, its bridge, market and old mill."},
                        {"role": "assistant", "content": f"Answer {i}: it grew along the water "
                                                         "with warehouses and a stone bridge."}]
        history.append({"role": "user", "content": "And the harbour wall?"})
        reply = client.chat("corral-short-ctx", messages=history)
        # Old messages were dropped whole until the prompt fit: it fills most of the context.
        # (Cutting tokens instead keeps the first 4 and about half the context from the end.)
        assert 200 < reply.prompt_eval_count <= 255
    finally:
        client.delete("corral-short-ctx")
