"""OpenAI's Responses API end to end, with the official `openai` client: create, stream, forced
function calls and their follow-up turns (stateless, and chained by previous_response_id with the
prompt cache), structured output, reasoning items on a thinking model, the errors, the store
(kept per API key, on disk, bounded) and the teams features on the route.

The bundled model has no chat template and no tool or thinking format: as in test_api_tools.py
and test_api_thinking.py, models are made from it with a Go TEMPLATE that has them. It does not
stop on its own at temperature 0 (it repeats the prompt), so replies that must end `completed`
are kept short by a JSON schema (the grammar ends them) or by a forced call.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import ollama
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.responses import request as rq
from gateway.responses.store import ResponseStore
from shared.errors import BadRequest
from tests.conftest import LiveServer, start_server
from tests.test_api_thinking import HISTORY, TEMPLATE
from tests.test_auth import keys_cli
from tests.test_tools import GEMMA_TOOLS

MODEL = "gemma3:270m"
TOOLS_MODEL = "corral-responses-tools:test"
THINKER = "corral-responses-thinker:test"
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}
TIME = {"type": "function", "name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}
CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                         "country": {"type": "string", "maxLength": 20}},
        "required": ["city", "country"], "additionalProperties": False}
CITY_FORMAT = {"format": {"type": "json_schema", "name": "city", "schema": CITY, "strict": True}}
SCHEMA_ASK = "Name a city and its country."


# --- the request translation, without a server -------------------------------------------


def test_input_items_become_native_messages() -> None:
    thinking = rq.encrypt_thinking("It is sunny there.")
    items = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text",
                                                              "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in "},
                                     {"type": "input_text", "text": "Paris?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": thinking},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "call_a", "name": "get_weather",
         "arguments": '{"city": "Paris"}'},
        {"type": "function_call", "call_id": "call_b", "name": "spawn", "namespace": "agents",
         "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
        {"type": "reasoning", "id": "rs_2", "summary": [],
         "encrypted_content": "gAAAA-someone-elses-blob"},  # not ours: left out
        {"type": "function_call_output", "call_id": "call_b",
         "output": [{"type": "input_text", "text": "spawned"}]},
    ]
    assert rq.input_messages(items, []) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Checking.", "thinking": "It is sunny there.",
         "tool_calls": [
             {"id": "call_a", "function": {"index": 0, "name": "get_weather",
                                           "arguments": {"city": "Paris"}}},
             {"id": "call_b", "function": {"index": 1, "name": "agents.spawn",
                                           "arguments": {}}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_a",
         "tool_name": "get_weather"},
        {"role": "tool", "content": "spawned", "tool_call_id": "call_b",
         "tool_name": "agents.spawn"}]
    # A call's output may answer a call of an earlier turn (previous_response_id's history).
    history = [{"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_x", "function": {"name": "get_time", "arguments": {}}}]}]
    assert rq.input_messages([{"type": "function_call_output", "call_id": "call_x",
                               "output": "noon"}], history)[0]["tool_name"] == "get_time"


@pytest.mark.parametrize(("raw", "message"), [
    (5, "input must be a string or an array"),
    ([{"role": "robot", "content": "hi"}], "input[0].role must be one of"),
    ([{"role": "user", "content": [{"type": "input_image", "image_url": "data:x"}]}],
     "invalid image input"),
    ([{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}],
     "image URLs are not currently supported"),
    ([{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}],
     "files are not supported here"),
    ([{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}],
     "input_file is not supported"),
    ([{"type": "function_call_output", "call_id": "call_nope", "output": "x"}],
     "No tool call found for function call output"),
    ([{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}],
     "arguments must be a JSON object"),
    ([{"type": "web_search_call", "id": "ws"}], 'input item type "web_search_call" is not'),
])
def test_bad_input_items_are_clear_400s(raw: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=message.replace("[", r"\[").replace("(", r"\(")):
        rq.input_messages(raw, [])


def test_tools_namespaces_and_built_ins() -> None:
    tools, namespaced = rq.function_tools([
        WEATHER, {"type": "namespace", "name": "agents", "description": "Sub-agents",
                  "tools": [{"type": "function", "name": "spawn", "parameters": {
                      "type": "object", "properties": {}}}]}])
    assert [t["function"]["name"] for t in tools] == ["get_weather", "agents.spawn"]
    assert tools[0]["function"]["parameters"] == WEATHER["parameters"]
    assert namespaced == {"agents.spawn": ("agents", "spawn")}
    for built_in in ("web_search", "file_search", "computer_use_preview", "code_interpreter",
                     "mcp", "image_generation", "local_shell", "custom"):
        with pytest.raises(BadRequest, match=f'tool type "{built_in}" is not supported'):
            rq.function_tools([WEATHER, {"type": built_in}])
    assert rq.tool_choice({"type": "function", "name": "get_weather"}) == {
        "type": "function", "function": {"name": "get_weather"}}
    with pytest.raises(BadRequest, match="not supported"):
        rq.tool_choice({"type": "web_search_preview"})


def test_store_is_bounded_private_and_per_owner(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "responses", limit=4000, ttl=3600)
    record = {"response": {"id": "resp_a"}, "conversation": [{"role": "user",
                                                              "content": "x" * 900}]}
    assert store.put("alice", "resp_a", record)
    assert store.get("alice", "resp_a") == record
    assert store.get("bob", "resp_a") is None  # another key: not found
    assert not store.delete("bob", "resp_a") and store.get("alice", "resp_a") == record
    [path] = (tmp_path / "responses").glob("*/resp_a.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert store.get("alice", "../../etc/passwd") is None and store.get("alice", "resp_/x") is None
    # Over the size limit: the oldest go first.
    for i in range(6):
        assert store.put("alice", f"resp_{i}", record)
        os.utime(tmp_path / "responses" / path.parent.name / f"resp_{i}.json",
                 (time.time() - 100 + i, time.time() - 100 + i))
    store.sweep()
    kept = sorted(p.stem for p in (tmp_path / "responses").glob("*/resp_*.json"))
    assert 0 < len(kept) <= 4 and "resp_5" in kept and "resp_0" not in kept
    # Past its age: not found, and removed.
    old = time.time() - 7200
    os.utime(tmp_path / "responses" / path.parent.name / "resp_5.json", (old, old))
    assert store.get("alice", "resp_5") is None
    assert not (tmp_path / "responses" / path.parent.name / "resp_5.json").exists()
    # Off (CORRAL_RESPONSES_STORE=0): nothing is kept.
    assert not ResponseStore(tmp_path / "off", limit=0, ttl=3600).put("a", "resp_z", record)
    assert not (tmp_path / "off").exists()


# --- a live server -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def native(corral_server: LiveServer) -> ollama.Client:
    return ollama.Client(host=corral_server.url)


@pytest.fixture(scope="module")
def client(corral_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=corral_server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def tools_model(native: ollama.Client) -> Iterator[str]:
    native.create(TOOLS_MODEL, from_=MODEL, template=GEMMA_TOOLS,
                  parameters={"temperature": 0, "num_predict": 48})
    yield TOOLS_MODEL
    native.delete(TOOLS_MODEL)


@pytest.fixture(scope="module")
def thinker(native: ollama.Client) -> Iterator[str]:
    native.create(THINKER, from_=MODEL, template=TEMPLATE,
                  parameters={"temperature": 0, "num_predict": 14})
    yield THINKER
    native.delete(THINKER)


def _events(stream: Any) -> list[Any]:
    events = list(stream)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    return events


@pytest.mark.e2e
def test_create_gives_a_response_object(client: openai.OpenAI) -> None:
    reply = client.responses.create(model=MODEL, input=SCHEMA_ASK, text=CITY_FORMAT,
                                    instructions="Answer with JSON.", temperature=0,
                                    metadata={"ticket": "42"}, user="someone")
    assert reply.id.startswith("resp_") and reply.object == "response"
    assert reply.status == "completed" and reply.incomplete_details is None
    assert reply.model == MODEL and reply.instructions == "Answer with JSON."
    assert reply.metadata == {"ticket": "42"} and reply.user == "someone"
    assert abs(reply.created_at - time.time()) < 600
    [message] = reply.output
    assert message.type == "message" and message.role == "assistant"
    assert message.status == "completed" and message.id.startswith("msg_")
    [part] = message.content
    assert part.type == "output_text" and part.text == reply.output_text
    jsonschema.validate(json.loads(reply.output_text), CITY)  # the grammar kept to the schema
    usage = reply.usage
    assert usage is not None and usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert usage.input_tokens_details.cached_tokens >= 0
    # json_object: any JSON object.
    loose = client.responses.create(model=MODEL, input=SCHEMA_ASK, temperature=0,
                                    max_output_tokens=40,
                                    text={"format": {"type": "json_object"}})
    assert loose.output_text.lstrip().startswith("{")


@pytest.mark.e2e
def test_stream_gives_the_typed_events_in_order(client: openai.OpenAI) -> None:
    events = _events(client.responses.create(model=MODEL, input=SCHEMA_ASK, text=CITY_FORMAT,
                                             temperature=0, stream=True))
    kinds = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas and kinds == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", *["response.output_text.delta"] * len(deltas),
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
    created, final = events[0].response, events[-1].response
    assert created.status == "in_progress" and created.output == [] and created.usage is None
    assert final.id == created.id and final.status == "completed"
    item = events[2].item
    assert item.type == "message" and item.status == "in_progress"
    text = "".join(d.delta for d in deltas)
    assert all(d.item_id == item.id and d.output_index == 0 for d in deltas)
    assert events[-4].text == text and events[-2].item.content[0].text == text
    assert final.output_text == text and final.usage.output_tokens > 0
    jsonschema.validate(json.loads(text), CITY)
    # The SDK's own stream helper accumulates the same response.
    with client.responses.stream(model=MODEL, input=SCHEMA_ASK, text=CITY_FORMAT,
                                 temperature=0) as stream:
        assert stream.get_final_response().output_text == text


@pytest.mark.e2e
def test_max_output_tokens_makes_it_incomplete(client: openai.OpenAI) -> None:
    reply = client.responses.create(model=MODEL, input="Why is the sky blue?",
                                    max_output_tokens=3)
    assert reply.status == "incomplete"
    assert reply.incomplete_details is not None
    assert reply.incomplete_details.reason == "max_output_tokens"
    assert reply.usage.output_tokens == 3 and reply.output[0].status == "incomplete"
    events = _events(client.responses.create(model=MODEL, input="Why is the sky blue?",
                                             max_output_tokens=3, stream=True))
    assert events[-1].type == "response.incomplete"  # as OpenAI ends such a stream
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


@pytest.mark.e2e
def test_forced_function_call_then_its_output_by_previous_response_id(
        client: openai.OpenAI, tools_model: str) -> None:
    first = client.responses.create(
        model=tools_model, input="What is the weather in Paris?", tools=[WEATHER, TIME],
        tool_choice={"type": "function", "name": "get_weather"}, parallel_tool_calls=False,
        instructions="You help with the weather.")
    assert first.status == "completed"
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id.startswith("call_")
    assert call.id.startswith("fc_") and call.status == "completed"
    arguments = json.loads(call.arguments)  # the grammar kept it to the schema
    assert list(arguments) == ["city"] and isinstance(arguments["city"], str)

    # The next turn sends only the call's output; the stored turn supplies the rest, and the
    # prompt cache the tokens read before.
    second = client.responses.create(
        model=tools_model, previous_response_id=first.id, tools=[WEATHER, TIME],
        instructions="You help with the weather.", max_output_tokens=12,
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": json.dumps({"temperature": 21, "sky": "clear"})}])
    assert second.previous_response_id == first.id
    assert second.output[0].type == "message" and second.output_text
    assert second.usage.input_tokens > first.usage.input_tokens
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens // 2
    assert client.responses.retrieve(first.id).output[0].call_id == call.call_id

    # The same turn stateless, as Codex sends it (store: false, the whole history as items):
    # the same prompt, so the same count, and nothing is kept.
    stateless = client.responses.create(
        model=tools_model, store=False, tools=[WEATHER, TIME], max_output_tokens=12,
        instructions="You help with the weather.", include=["reasoning.encrypted_content"],
        input=[{"role": "user", "content": "What is the weather in Paris?"},
               {"type": "function_call", "call_id": call.call_id, "name": call.name,
                "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id,
                "output": json.dumps({"temperature": 21, "sky": "clear"})}])
    assert stateless.usage.input_tokens == second.usage.input_tokens
    assert stateless.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(stateless.id)


@pytest.mark.e2e
def test_streamed_function_call(client: openai.OpenAI, tools_model: str) -> None:
    events = _events(client.responses.create(
        model=tools_model, input="What is the weather in Paris?", tools=[WEATHER],
        tool_choice="required", parallel_tool_calls=False, stream=True))
    kinds = [e.type for e in events]
    assert kinds[-5:] == ["response.output_item.added", "response.function_call_arguments.delta",
                          "response.function_call_arguments.done", "response.output_item.done",
                          "response.completed"]
    added, delta, done, item_done = events[-5:-1]
    assert added.item.type == "function_call" and added.item.arguments == ""
    assert delta.item_id == done.item_id == added.item.id == item_done.item.id
    assert delta.delta == done.arguments == item_done.item.arguments
    assert json.loads(done.arguments).keys() == {"city"}
    [call] = [i for i in events[-1].response.output if i.type == "function_call"]
    assert call.call_id == item_done.item.call_id and call.name == "get_weather"


@pytest.mark.e2e
def test_tool_choice_none_and_required(client: openai.OpenAI, tools_model: str) -> None:
    none = client.responses.create(model=tools_model, input="What is the weather in Paris?",
                                   tools=[WEATHER], tool_choice="none", max_output_tokens=8)
    assert all(item.type == "message" for item in none.output)
    required = client.responses.create(model=tools_model, input="What time is it in Tokyo?",
                                       tools=[WEATHER, TIME], tool_choice="required",
                                       parallel_tool_calls=False)
    assert [i.type for i in required.output] == ["function_call"]
    assert required.output[0].name in ("get_weather", "get_time")


@pytest.mark.e2e
def test_store_retrieve_delete(client: openai.OpenAI) -> None:
    reply = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2)
    assert reply.store is True
    again = client.responses.retrieve(reply.id)
    assert again.id == reply.id and again.output_text == reply.output_text
    assert again.usage.output_tokens == reply.usage.output_tokens
    deleted = client.responses.delete(reply.id)
    assert deleted is None  # the SDK returns nothing for a delete
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.retrieve(reply.id)
    assert err.value.body["message"] == f"Response with id '{reply.id}' not found."
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(reply.id)
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.create(model=MODEL, input="Hi", previous_response_id=reply.id)
    assert err.value.body["param"] == "previous_response_id"
    off = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(off.id)


@pytest.mark.e2e
@pytest.mark.parametrize(("body", "status", "message"), [
    ({"model": "no-such-model:1", "input": "Hi"}, 404, "model 'no-such-model:1' not found"),
    ({"input": "Hi"}, 400, "model is required"),
    ({"model": MODEL}, 400, "input is required"),
    ({"model": MODEL, "input": 5}, 400, "input must be a string or an array"),
    ({"model": MODEL, "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}]}, 400,
     "this model is missing data required for image input"),
    ({"model": MODEL, "input": "Hi", "tools": [{"type": "web_search"}]}, 400,
     'tool type "web_search" is not supported'),
    ({"model": MODEL, "input": "Hi", "tools": [WEATHER]}, 400, "does not support tools"),
    ({"model": MODEL, "input": "Hi", "tool_choice": "required"}, 400,
     "tool_choice needs tools"),
    ({"model": MODEL, "input": "Hi", "text": {"format": {"type": "xml"}}}, 400,
     "text.format.type must be"),
    ({"model": MODEL, "input": "Hi", "reasoning": {"effort": "extreme"}}, 400,
     "invalid reasoning.effort"),
    ({"model": MODEL, "input": "Hi", "max_output_tokens": 0}, 400, "at least 1"),
    ({"model": MODEL, "input": "Hi", "background": True}, 400, "background"),
    ({"model": MODEL, "input": "Hi", "metadata": {"k": 5}}, 400, "metadata"),
    ({"model": MODEL, "input": "Hi", "previous_response_id": "resp_unknown"}, 404,
     "Previous response with id 'resp_unknown' not found."),
])
def test_errors_in_openais_shape(corral_server: LiveServer, body: dict[str, Any], status: int,
                                 message: str) -> None:
    reply = httpx.post(corral_server.url + "/v1/responses", json=body, timeout=60)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert message in error["message"]
    assert error["type"] == {400: "invalid_request_error", 404: "not_found_error"}[status]


@pytest.mark.e2e
def test_sdk_raises_its_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model:1", input="Hi")
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model=MODEL, input="Hi", tools=[{"type": "file_search",
                                                                  "vector_store_ids": ["v"]}])
    assert "only function tools" in err.value.message


@pytest.mark.e2e
def test_codex_fields_are_accepted(client: openai.OpenAI) -> None:
    """What Codex CLI sends beside its input (recorded from codex-cli 0.171 on the wire)."""
    reply = client.responses.create(
        model=MODEL, input=[{"type": "message", "role": "developer", "content": [
            {"type": "input_text", "text": "You are a coding agent."}]},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "say hi"}]}],
        tools=[{"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents",
                "tools": []}],
        tool_choice="auto", parallel_tool_calls=True, store=False,
        reasoning={"summary": "auto"}, include=["reasoning.encrypted_content"],
        prompt_cache_key="01a25175-7f48-7b81-b318-a6311a4e1c91", max_output_tokens=2,
        extra_body={"client_metadata": {"x-codex-window-id": "w:0"}},
        extra_headers={"originator": "codex_exec", "session-id": "s", "x-codex-beta-features":
                       "remote_compaction_v2"})
    assert reply.status == "incomplete" and reply.prompt_cache_key is not None


@pytest.mark.e2e
def test_reasoning_items_on_a_thinking_model(client: openai.OpenAI, native: ollama.Client,
                                             thinker: str) -> None:
    ask = [*HISTORY, {"role": "user", "content": "What is 4+4?"}]
    expected = native.chat(thinker, messages=ask)  # the native reply to the same prompt
    items: list[dict[str, Any]] = []
    for message in HISTORY:
        if message.get("thinking"):
            items.append({"type": "reasoning", "id": "rs_x", "summary": [], "content": [
                {"type": "reasoning_text", "text": message["thinking"]}]})
        items.append({"role": message["role"], "content": message["content"]})
    items.append({"role": "user", "content": "What is 4+4?"})
    reply = client.responses.create(model=thinker, input=items, temperature=0,
                                    include=["reasoning.encrypted_content"])
    reasoning, message = reply.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_")
    assert reasoning.content[0].text == expected.message.thinking
    assert message.type == "message" and reply.output_text == expected.message.content
    assert reply.usage.input_tokens == expected.prompt_eval_count
    assert 0 < reply.usage.output_tokens_details.reasoning_tokens < reply.usage.output_tokens
    assert reasoning.encrypted_content  # the thinking, for a client that keeps nothing here

    # Streamed: the reasoning item first, its text as reasoning_text deltas.
    events = _events(client.responses.create(model=thinker, input=items, stream=True,
                                             temperature=0))
    kinds = [e.type for e in events]
    assert kinds[2] == "response.output_item.added" and events[2].item.type == "reasoning"
    thought = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    said = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert thought == expected.message.thinking and said == expected.message.content
    assert kinds.index("response.reasoning_text.done") < kinds.index(
        "response.output_text.delta")

    # The reasoning item sent back (as Codex does, by its encrypted_content) is shown to the
    # model again: a longer prompt than without it.
    follow = [*items, reasoning.model_dump(exclude_none=True, exclude={"content"}),
              {"role": "assistant", "content": reply.output_text},
              {"role": "user", "content": "What is 1+1?"}]
    bare = [item for item in follow if item.get("id") != reasoning.id]
    with_it = client.responses.create(model=thinker, input=follow, max_output_tokens=1)
    without = client.responses.create(model=thinker, input=bare, max_output_tokens=1)
    assert with_it.usage.input_tokens > without.usage.input_tokens + 5

    # effort none switches thinking off; an effort for a model that cannot think is dropped.
    off = client.responses.create(model=thinker, input=items, reasoning={"effort": "none"},
                                  temperature=0)
    assert [i.type for i in off.output] == ["message"]
    plain = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2,
                                    reasoning={"effort": "high", "summary": "auto"})
    assert [i.type for i in plain.output] == ["message"]


# --- keys, limits, metrics and the access log ---------------------------------------------


@pytest.fixture(scope="module")
def team(models_dir: Path, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[LiveServer, dict[str, str]]]:
    folder = tmp_path_factory.mktemp("responses-team")
    keys = folder / "keys.json"
    secrets = {}
    for name, flags in {"root": ["--admin"], "alice": ["--models", MODEL], "bob": [],
                        "carol": ["--models", "other:1b"], "limited": ["--rpm", "1"]}.items():
        secrets[name] = keys_cli(keys, "create", name, *flags).strip().splitlines()[-1]
    server = start_server(models_dir, folder / "serve.log", CORRAL_KEYS_FILE=str(keys),
                          CORRAL_ACCESS_LOG=str(folder / "access.log"),
                          CORRAL_RESPONSES_DIR=str(folder / "responses"),
                          OLLAMA_KEEP_ALIVE="10m")
    try:
        yield server, secrets
    finally:
        server.stop()


def _as(team: tuple[LiveServer, dict[str, str]], name: str) -> openai.OpenAI:
    server, secrets = team
    return openai.OpenAI(base_url=server.url + "/v1", api_key=secrets[name], max_retries=0)


@pytest.mark.e2e
def test_a_key_reads_only_its_own_responses(team: tuple[LiveServer, dict[str, str]]) -> None:
    server, _ = team
    alice, bob = _as(team, "alice"), _as(team, "bob")
    mine = alice.responses.create(model=MODEL, input="Hi", max_output_tokens=2)
    assert alice.responses.retrieve(mine.id).id == mine.id
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.create(model=MODEL, input="Hi", previous_response_id=mine.id)
    assert alice.responses.retrieve(mine.id).id == mine.id  # bob's delete did nothing
    files = list((Path(server.env["CORRAL_RESPONSES_DIR"])).glob(f"*/{mine.id}.json"))
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong",
                      max_retries=0).responses.retrieve(mine.id)


@pytest.mark.e2e
def test_models_limits_metrics_and_access_log(team: tuple[LiveServer, dict[str, str]]) -> None:
    server, secrets = team
    with pytest.raises(openai.PermissionDeniedError):
        _as(team, "carol").responses.create(model=MODEL, input="Hi", max_output_tokens=2)
    limited = _as(team, "limited")
    limited.responses.create(model=MODEL, input="Hi", max_output_tokens=2)
    with pytest.raises(openai.RateLimitError) as err:
        limited.responses.create(model=MODEL, input="Hi", max_output_tokens=2)
    assert err.value.response.headers["x-ratelimit-limit-requests"] == "1"
    bob = _as(team, "bob")
    streamed = _events(bob.responses.create(model=MODEL, input="Hi", max_output_tokens=3,
                                            stream=True))
    reply_id = streamed[-1].response.id
    bob.responses.retrieve(reply_id)

    scrape = httpx.get(server.url + "/metrics", timeout=30,
                       headers={"Authorization": f"Bearer {secrets['root']}"})
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(scrape.text)
               for s in family.samples}

    def requests(**labels: str) -> float:
        return samples.get(("corral_requests_total", frozenset(labels.items())), 0.0)

    assert requests(route="/v1/responses", model=MODEL, status="200", key="bob") >= 1
    assert requests(route="/v1/responses", model="", status="429", key="limited") >= 1
    assert requests(route="/v1/responses", model="", status="403", key="carol") >= 1
    assert requests(route="/v1/responses/{response_id}", model="", status="200",
                    key="bob") >= 1
    assert samples[("corral_generation_tokens_total",
                    frozenset({"model": MODEL, "key": "bob"}.items()))] >= 3

    lines = [json.loads(line) for line in
             Path(server.env["CORRAL_ACCESS_LOG"]).read_text().splitlines()]
    # (bob's other request on the route, in the test before, was a 404)
    [entry] = [e for e in lines if e["key"] == "bob" and e["route"] == "/v1/responses"
               and e["status"] == 200]
    assert entry["generated_tokens"] == 3
    assert entry["prompt_tokens"] > 0 and entry["first_token_s"] is not None
    usage = keys_cli(Path(server.env["CORRAL_KEYS_FILE"]), "usage", "bob")
    assert MODEL in usage
