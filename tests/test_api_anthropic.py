"""The Anthropic Messages API (/v1/messages) end to end, with the official `anthropic` SDK.

The bundled model is a small pre-trained one: these tests check shapes and behaviour (event
order, stop reasons, usage that adds up, calls forced by the grammar, errors as the SDK's own
exception classes), not what it says. Tools need a template that can show them, and thinking a
template that opens a thinking block: both are made from the bundled GGUF as the OpenAI and
native tests make them (tests/test_api_tools.py, tests/test_api_thinking.py). Keys, limits, the
access log, metrics and a full queue (529) run on a server of their own with one slot.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import pytest

from tests.conftest import LiveServer, start_server
from tests.test_api_thinking import HISTORY
from tests.test_api_thinking import TEMPLATE as THINKING_TEMPLATE
from tests.test_auth import keys_cli
from tests.test_supervisor import corral_ps
from tests.test_tools import GEMMA_TOOLS

pytestmark = pytest.mark.e2e

MODEL = "gemma3:270m"
TOOLS_MODEL = "corral-anthropic-tools:test"
THINKER = "corral-anthropic-thinker:test"
HI = [{"role": "user", "content": "Say hi"}]
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}
TIME = {"name": "get_time", "description": "The time in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]}}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(corral_server: LiveServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=corral_server.url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def tools_model(corral_server: LiveServer) -> Iterator[str]:
    native = ollama.Client(host=corral_server.url)
    native.create(TOOLS_MODEL, from_=MODEL, template=GEMMA_TOOLS,
                  parameters={"temperature": 0})
    yield TOOLS_MODEL
    native.delete(TOOLS_MODEL)


@pytest.fixture(scope="module")
def thinker(corral_server: LiveServer) -> Iterator[str]:
    native = ollama.Client(host=corral_server.url)
    native.create(THINKER, from_=MODEL, template=THINKING_TEMPLATE,
                  parameters={"temperature": 0})
    yield THINKER
    native.delete(THINKER)


def sse(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """A streamed reply's events as (event name, data); each data's `type` is its name."""
    events = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"]
        events.append((lines["event"], data))
    return events


def check_order(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Anthropic's grammar of a stream: message_start, pings, blocks (start, deltas, stop, with
    indices counting up from 0), message_delta, message_stop. Returns the blocks as built."""
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    blocks: list[dict[str, Any]] = []
    open_block = None
    for name, data in events[1:-2]:
        if name == "ping":
            assert open_block is None and not blocks  # only while the prompt is read
        elif name == "content_block_start":
            assert open_block is None and data["index"] == len(blocks)
            open_block = dict(data["content_block"])
            blocks.append(open_block)
        elif name == "content_block_delta":
            assert open_block is not None and data["index"] == len(blocks) - 1
            delta = data["delta"]
            kind = delta["type"]
            if kind == "text_delta":
                open_block["text"] += delta["text"]
            elif kind == "thinking_delta":
                open_block["thinking"] += delta["thinking"]
            elif kind == "signature_delta":
                open_block["signature"] = delta["signature"]
            else:
                assert kind == "input_json_delta"
                open_block["json"] = open_block.get("json", "") + delta["partial_json"]
        else:
            assert name == "content_block_stop" and data["index"] == len(blocks) - 1
            open_block = None
    assert open_block is None
    return blocks


# --- create, stream, stop reasons, usage ---------------------------------------------------------


def test_create_replies_in_anthropics_shape(client: anthropic.Anthropic) -> None:
    reply = client.messages.create(model=MODEL, max_tokens=6, messages=HI)
    assert reply.id.startswith("msg_") and reply.type == "message"
    assert reply.role == "assistant" and reply.model == MODEL
    [block] = reply.content
    assert block.type == "text" and block.text
    # The pre-trained model does not end its turn in 6 tokens.
    assert reply.stop_reason == "max_tokens" and reply.stop_sequence is None
    assert reply.usage.output_tokens == 6
    # The prompt is what count_tokens says, split into what was read and what came from the
    # prompt cache.
    counted = client.messages.count_tokens(model=MODEL, messages=HI).input_tokens
    assert reply.usage.input_tokens + reply.usage.cache_read_input_tokens == counted
    assert reply.usage.cache_creation_input_tokens == 0


def test_a_repeated_prompt_is_read_from_the_prompt_cache(client: anthropic.Anthropic) -> None:
    long = [{"role": "user", "content": "Tell me about the sea. " * 40}]
    first = client.messages.create(model=MODEL, max_tokens=2, messages=long)
    second = client.messages.create(model=MODEL, max_tokens=2, messages=long)
    total = first.usage.input_tokens + first.usage.cache_read_input_tokens
    assert second.usage.input_tokens + second.usage.cache_read_input_tokens == total
    assert second.usage.cache_read_input_tokens > total // 2  # read again, not recomputed


def test_stream_events_come_in_order(corral_server: LiveServer,
                                     client: anthropic.Anthropic) -> None:
    reply = httpx.post(corral_server.url + "/v1/messages", timeout=120, json={
        "model": MODEL, "max_tokens": 8, "messages": HI, "stream": True})
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = sse(reply)
    [block] = check_order(events)
    assert block["type"] == "text" and block["text"]
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == []
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 8 and delta["usage"]["input_tokens"] >= 0
    # The SDK's stream helper builds the same message.
    with client.messages.stream(model=MODEL, max_tokens=8, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.content[0].text == text and final.stop_reason == "max_tokens"
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens == \
        client.messages.count_tokens(model=MODEL, messages=HI).input_tokens


def test_pings_only_while_a_long_prompt_is_read(corral_server: LiveServer) -> None:
    long = "The history of the river and the town beside it. " * 300  # thousands of tokens
    sent = time.monotonic()
    first_block = None
    events = []
    with httpx.stream("POST", corral_server.url + "/v1/messages?beta=true", timeout=300, json={
            "model": MODEL, "max_tokens": 2, "stream": True,
            "messages": [{"role": "user", "content": long + str(time.time())}]}) as reply:
        assert reply.status_code == 200
        text = ""
        for chunk in reply.iter_text():
            text += chunk
            if first_block is None and "content_block_start" in text:
                first_block = time.monotonic() - sent
    events = sse(httpx.Response(200, text=text))
    check_order(events)
    pings = [name for name, _ in events if name == "ping"]
    # A reply that took more than START_WAIT + PING_EVERY seconds to start had pings meanwhile.
    assert first_block is not None
    if first_block > 1.0 + 5.0 + 1.0:
        assert pings
    assert events[-2][1]["usage"]["input_tokens"] > 1000


def test_stop_sequences(client: anthropic.Anthropic) -> None:
    ask = [{"role": "user", "content": "Write the numbers from one to twenty."}]
    reference = client.messages.create(model=MODEL, max_tokens=24, messages=ask,
                                       extra_body={"temperature": 0})
    text = reference.content[0].text
    words = text.split()
    assert len(words) >= 3, text
    stop = words[2]  # a word the same (greedy) reply is sure to write
    cut = text.index(stop)
    reply = client.messages.create(model=MODEL, max_tokens=24, messages=ask,
                                   extra_body={"temperature": 0},
                                   stop_sequences=["<never written>", stop])
    assert reply.stop_reason == "stop_sequence" and reply.stop_sequence == stop
    assert "".join(b.text for b in reply.content) == text[:cut]
    with client.messages.stream(model=MODEL, max_tokens=24, messages=ask,
                                extra_body={"temperature": 0},
                                stop_sequences=[stop]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop


def test_system_blocks_and_a_system_message_reach_the_prompt(client: anthropic.Anthropic) -> None:
    plain = client.messages.count_tokens(model=MODEL, messages=HI).input_tokens
    with_system = client.messages.count_tokens(
        model=MODEL, messages=HI,
        system=[{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Answer in French."}]).input_tokens
    assert with_system > plain
    inline = client.messages.count_tokens(model=MODEL, messages=[
        {"role": "system", "content": "You are terse.\nAnswer in French."}, *HI]).input_tokens
    assert inline == with_system


def test_what_claude_code_sends_is_accepted(corral_server: LiveServer) -> None:
    """The fields Claude Code 2.x puts in every request (seen on the wire), to a model without
    thinking: accepted, and the thinking and effort asked for are dropped quietly."""
    body = {
        "model": MODEL, "max_tokens": 4, "stream": True,
        "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1"},
                   {"type": "text", "text": "You are Claude Code.",
                    "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>Be brief.</system-reminder>"},
            {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}],
        "metadata": {"user_id": "user_abc_account__session_123"},
        "thinking": {"type": "adaptive"}, "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "temperature": 1,
    }
    reply = httpx.post(corral_server.url + "/v1/messages?beta=true", json=body, timeout=120,
                       headers={"anthropic-version": "2023-06-01",
                                "anthropic-beta": "claude-code-20250219,context-management-"
                                                  "2025-06-27,effort-2025-11-24",
                                "authorization": "Bearer whatever", "x-app": "cli"})
    assert reply.status_code == 200, reply.text
    blocks = check_order(sse(reply))
    assert [b["type"] for b in blocks] == ["text"]


# --- tools ---------------------------------------------------------------------------------------


def test_forced_tool_use_gives_parsed_input(client: anthropic.Anthropic, tools_model: str
                                            ) -> None:
    reply = client.messages.create(model=tools_model, max_tokens=48, messages=QUESTION,
                                   tools=[WEATHER, TIME],
                                   tool_choice={"type": "tool", "name": "get_time"})
    assert reply.stop_reason == "tool_use"
    calls = [b for b in reply.content if b.type == "tool_use"]
    assert calls and all(c.name == "get_time" for c in calls)
    assert calls[0].id.startswith("toolu_") and len(calls[0].id) > 10
    assert list(calls[0].input) == ["city"] and isinstance(calls[0].input["city"], str)
    # `any` with parallel use switched off: exactly one call.
    single = client.messages.create(
        model=tools_model, max_tokens=48, messages=QUESTION, tools=[WEATHER],
        tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert [b.type for b in single.content] == ["tool_use"] and single.stop_reason == "tool_use"


def test_tool_use_streams_as_input_json(corral_server: LiveServer, tools_model: str) -> None:
    reply = httpx.post(corral_server.url + "/v1/messages", timeout=120, json={
        "model": tools_model, "max_tokens": 48, "messages": QUESTION, "stream": True,
        "tools": [WEATHER], "tool_choice": {"type": "any", "disable_parallel_tool_use": True}})
    events = sse(reply)
    blocks = check_order(events)
    [call] = [b for b in blocks if b["type"] == "tool_use"]
    assert call["name"] == "get_weather" and call["id"].startswith("toolu_")
    assert call["input"] == {} and list(json.loads(call["json"])) == ["city"]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_a_tool_result_turn(client: anthropic.Anthropic, tools_model: str) -> None:
    call = client.messages.create(model=tools_model, max_tokens=48, messages=QUESTION,
                                  tools=[WEATHER], tool_choice={"type": "any"})
    use = next(b for b in call.content if b.type == "tool_use")
    history: list[Any] = [*QUESTION, {"role": "assistant", "content": call.content}]

    def answer(result: Any, is_error: bool = False) -> list[Any]:
        return [*history, {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": use.id, "content": result,
             "is_error": is_error}]}]

    reply = client.messages.create(model=tools_model, max_tokens=16, tools=[WEATHER],
                                   tool_choice={"type": "none"},
                                   messages=answer("Sunny and 22 degrees"))
    assert reply.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in reply.content] == ["text"]
    # The result reached the prompt, as a string or as text blocks; an error is marked.
    count = client.messages.count_tokens
    short = count(model=tools_model, tools=[WEATHER], messages=answer("Sunny")).input_tokens
    longer = count(model=tools_model, tools=[WEATHER],
                   messages=answer("Sunny and 22 degrees")).input_tokens
    blocks = count(model=tools_model, tools=[WEATHER], messages=answer(
        [{"type": "text", "text": "Sunny and 22 degrees"}])).input_tokens
    failed = count(model=tools_model, tools=[WEATHER],
                   messages=answer("Sunny", is_error=True)).input_tokens
    assert short < longer == blocks and failed > short


# --- thinking ------------------------------------------------------------------------------------


def ask_thinker() -> list[dict[str, Any]]:
    """The thinking tests' history in Anthropic's shape: earlier thinking as thinking blocks."""
    messages: list[dict[str, Any]] = []
    for m in HISTORY:
        if m["role"] == "assistant":
            messages.append({"role": "assistant", "content": [
                {"type": "thinking", "thinking": m["thinking"], "signature": "x"},
                {"type": "text", "text": m["content"]}]})
        else:
            messages.append(m)
    return [*messages, {"role": "user", "content": "What is 4+4?"}]


def test_thinking_on_a_thinking_model(client: anthropic.Anthropic, corral_server: LiveServer,
                                      thinker: str) -> None:
    reply = client.messages.create(model=thinker, max_tokens=24, messages=ask_thinker(),
                                   thinking={"type": "enabled", "budget_tokens": 1024})
    assert [b.type for b in reply.content][:1] == ["thinking"]
    thinking = reply.content[0]
    assert "plus" in thinking.thinking and "<think>" not in thinking.thinking
    assert thinking.signature
    streamed = httpx.post(corral_server.url + "/v1/messages", timeout=120, json={
        "model": thinker, "max_tokens": 24, "messages": ask_thinker(), "stream": True,
        "thinking": {"type": "enabled", "budget_tokens": 1024}})
    events = sse(streamed)
    blocks = check_order(events)
    assert blocks[0]["type"] == "thinking" and blocks[0]["thinking"] == thinking.thinking
    assert blocks[0]["signature"] == thinking.signature
    deltas = [d["delta"]["type"] for n, d in events if n == "content_block_delta"
              and d["index"] == 0]
    assert deltas[-1] == "signature_delta" and set(deltas[:-1]) == {"thinking_delta"}
    # Switched off: no thinking block, and a shorter prompt (the template opened no block).
    off = client.messages.create(model=thinker, max_tokens=8, messages=ask_thinker(),
                                 thinking={"type": "disabled"})
    assert "thinking" not in [b.type for b in off.content]


def test_thinking_on_a_model_that_cannot_think(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="does not support thinking"):
        client.messages.create(model=MODEL, max_tokens=4, messages=HI,
                               thinking={"type": "enabled", "budget_tokens": 1024})
    # What Claude Code sends to every model is dropped quietly for this one.
    reply = client.messages.create(model=MODEL, max_tokens=4, messages=HI,
                                   thinking={"type": "adaptive"},
                                   output_config={"effort": "high"})
    assert [b.type for b in reply.content] == ["text"]


# --- models and errors ---------------------------------------------------------------------------


def test_models_list_in_anthropics_shape_when_asked(corral_server: LiveServer,
                                                    client: anthropic.Anthropic) -> None:
    page = client.models.list()
    assert MODEL in [m.id for m in page.data] and page.has_more is False
    assert all(m.type == "model" for m in page.data)
    assert client.models.retrieve(MODEL).display_name == MODEL
    openai_shape = httpx.get(corral_server.url + "/v1/models").json()
    assert openai_shape["object"] == "list"


@pytest.mark.parametrize(("body", "message"), [
    ({"messages": HI}, "max_tokens"),
    ({"max_tokens": 0, "messages": HI}, "max_tokens"),
    ({"max_tokens": 4, "messages": []}, "messages"),
    ({"max_tokens": 4, "messages": [{"role": "robot", "content": "hi"}]}, "role"),
    ({"max_tokens": 4, "messages": HI, "temperature": 2}, "temperature"),
    ({"max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "http://127.0.0.1/x.png"}}]}]},
     "image URLs are not currently supported"),
    ({"max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "iVBORw0KGgo="}}]}]},
     "this model is missing data required for image input"),
    ({"max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "hologram"}]}]}, "unknown content block type"),
    ({"max_tokens": 4, "messages": HI, "tools": [{"type": "web_search_20250305",
                                                   "name": "web_search"}]}, "server tool"),
    ({"max_tokens": 4, "messages": HI, "tool_choice": {"type": "any"}}, "needs tools"),
    ({"max_tokens": 4, "messages": HI, "thinking": {"type": "sometimes"}}, "thinking.type"),
    ({"max_tokens": 4, "messages": HI, "stop_sequences": "x"}, "stop_sequences"),
])
def test_bad_requests_are_invalid_request_errors(corral_server: LiveServer, body: dict,
                                                 message: str) -> None:
    client = anthropic.Anthropic(base_url=corral_server.url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.BadRequestError, match=message) as err:
        client.post("/v1/messages", body={"model": MODEL, **body}, cast_to=httpx.Response)
    assert err.value.body["type"] == "error"
    assert err.value.body["error"]["type"] == "invalid_request_error"


def test_unknown_model_and_route_are_not_found_errors(client: anthropic.Anthropic,
                                                      corral_server: LiveServer) -> None:
    with pytest.raises(anthropic.NotFoundError) as err:
        client.messages.create(model="no-such-model", max_tokens=4, messages=HI)
    assert err.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="no-such-model", messages=HI)
    bad_json = httpx.post(corral_server.url + "/v1/messages", content=b"{nope",
                          headers={"content-type": "application/json"})
    assert bad_json.status_code == 400
    assert bad_json.json()["error"]["type"] == "invalid_request_error"


# --- keys, limits, a full queue ------------------------------------------------------------------

KEYS = {"root": ["--admin"], "alice": ["--models", MODEL], "bob": ["--models", "other:1b"],
        "limited": ["--rpm", "1"]}


@pytest.fixture(scope="module")
def team(models_dir: Path, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[LiveServer, dict[str, str]]]:
    folder = tmp_path_factory.mktemp("anthropic-team")
    keys = folder / "keys.json"
    secrets = {name: keys_cli(keys, "create", name, *flags).strip().splitlines()[-1]
               for name, flags in KEYS.items()}
    server = start_server(models_dir, folder / "serve.log", CORRAL_KEYS_FILE=str(keys),
                          OLLAMA_NUM_PARALLEL="1", OLLAMA_MAX_QUEUE="1",
                          OLLAMA_KEEP_ALIVE="10m", CORRAL_ACCESS_LOG=str(folder / "access.log"))
    try:
        yield server, secrets
    finally:
        server.stop()


def keyed(server: LiveServer, key: str | None = None, token: str | None = None
          ) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=key, auth_token=token,
                               max_retries=0)


def test_keys_in_x_api_key_or_bearer(team: tuple[LiveServer, dict[str, str]]) -> None:
    server, secrets = team
    by_header = keyed(server, key=secrets["alice"]).messages.create(
        model=MODEL, max_tokens=2, messages=HI)
    assert by_header.usage.output_tokens == 2
    by_bearer = keyed(server, token=secrets["alice"]).messages.create(  # Claude Code's way
        model=MODEL, max_tokens=2, messages=HI)
    assert by_bearer.usage.output_tokens == 2
    with pytest.raises(anthropic.AuthenticationError) as err:
        keyed(server, key="sk-not-a-key").messages.create(model=MODEL, max_tokens=2, messages=HI)
    assert err.value.body["error"]["type"] == "authentication_error"
    missing = httpx.post(server.url + "/v1/messages", json={
        "model": MODEL, "max_tokens": 2, "messages": HI})
    assert missing.status_code == 401 and "x-api-key" in missing.json()["error"]["message"]
    # An Anthropic client listing models gets the error in Anthropic's shape too.
    with pytest.raises(anthropic.AuthenticationError):
        keyed(server, key="sk-not-a-key").models.list()


def test_a_model_the_key_may_not_use_is_a_permission_error(
        team: tuple[LiveServer, dict[str, str]]) -> None:
    server, secrets = team
    with pytest.raises(anthropic.PermissionDeniedError) as err:
        keyed(server, key=secrets["bob"]).messages.create(model=MODEL, max_tokens=2, messages=HI)
    assert err.value.body["error"]["type"] == "permission_error"
    with pytest.raises(anthropic.PermissionDeniedError):
        keyed(server, key=secrets["bob"]).messages.count_tokens(model=MODEL, messages=HI)
    assert [m.id for m in keyed(server, key=secrets["bob"]).models.list().data] == []


def test_limits_are_rate_limit_errors_with_anthropics_headers(
        team: tuple[LiveServer, dict[str, str]]) -> None:
    server, secrets = team
    client = keyed(server, key=secrets["limited"])
    first = client.messages.with_raw_response.create(model=MODEL, max_tokens=2, messages=HI)
    assert first.headers["anthropic-ratelimit-requests-limit"] == "1"
    assert first.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert first.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert "x-ratelimit-limit-requests" not in first.headers
    with pytest.raises(anthropic.RateLimitError) as err:
        client.messages.create(model=MODEL, max_tokens=2, messages=HI)
    assert err.value.body["error"]["type"] == "rate_limit_error"
    assert 1 <= int(err.value.response.headers["retry-after"]) <= 60
    assert err.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"


def test_a_full_queue_is_an_overloaded_error(team: tuple[LiveServer, dict[str, str]]) -> None:
    server, secrets = team
    root = {"Authorization": f"Bearer {secrets['root']}"}
    hold = httpx.stream("POST", server.url + "/api/generate", headers=root, timeout=120, json={
        "model": MODEL, "prompt": "1, 2, 3,", "raw": True,
        "options": {"num_predict": 100_000, "temperature": 0}})

    def queued() -> int:
        return httpx.post(server.url + "/api/generate", headers=root, timeout=120, json={
            "model": MODEL, "prompt": "1,", "raw": True, "stream": False,
            "options": {"num_predict": 1}}).status_code

    ps = {"Authorization": root["Authorization"]}
    with concurrent.futures.ThreadPoolExecutor(1) as pool, hold as running:
        assert running.status_code == 200
        wait_ps(server, ps, corral_ps(active=1, queued=0))
        waiting = pool.submit(queued)
        wait_ps(server, ps, corral_ps(active=1, queued=1))  # the queue is full
        client = keyed(server, key=secrets["alice"])
        with pytest.raises(anthropic.OverloadedError) as err:
            client.messages.create(model=MODEL, max_tokens=2, messages=HI)
        assert err.value.status_code == 529
        assert err.value.body["error"]["type"] == "overloaded_error"
        # Streamed, the queue answers before the stream starts: the same status.
        with pytest.raises(anthropic.OverloadedError), \
                client.messages.stream(model=MODEL, max_tokens=2, messages=HI) as stream:
            stream.get_final_message()
        running.close()
        assert waiting.result() == 200


def wait_ps(server: LiveServer, headers: dict[str, str], ready: Any) -> None:
    deadline = time.monotonic() + 120
    while True:
        models = httpx.get(server.url + "/api/ps", headers=headers, timeout=30).json()["models"]
        entry = next((m for m in models if m["name"] == MODEL), None)
        if ready(entry):
            return
        assert time.monotonic() < deadline, entry
        time.sleep(0.05)


def test_usage_metrics_and_access_log_name_the_route(
        team: tuple[LiveServer, dict[str, str]]) -> None:
    server, secrets = team
    keyed(server, key=secrets["alice"]).messages.create(model=MODEL, max_tokens=3, messages=HI)
    usage = keys_cli(Path(server.env["CORRAL_KEYS_FILE"]), "usage", "alice")
    assert "alice" in usage
    scrape = httpx.get(server.url + "/metrics", timeout=30,
                       headers={"Authorization": f"Bearer {secrets['root']}"}).text
    assert 'route="/v1/messages"' in scrape
    lines = [json.loads(line) for line in
             Path(server.env["CORRAL_ACCESS_LOG"]).read_text().splitlines()]
    mine = [entry for entry in lines if entry["route"] == "/v1/messages"
            and entry["key"] == "alice" and entry["status"] == 200]
    assert mine and mine[-1]["model"] == MODEL and mine[-1]["generated_tokens"] == 3
