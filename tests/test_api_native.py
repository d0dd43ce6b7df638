"""Native API features over HTTP against a live server: `format`, `context` continuation, the
legacy /api/embeddings, and a long prompt read in chunks while another stream keeps flowing."""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from datetime import UTC, datetime

import httpx
import jsonschema
import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.e2e

MODEL = "gemma3:270m"
GREEDY = {"temperature": 0}


def post(server: LiveServer, path: str, body: dict) -> dict:
    reply = httpx.post(server.url + path, json={"model": MODEL, "stream": False, **body},
                       timeout=300)
    assert reply.status_code == 200, reply.text
    return reply.json()


# --- format ------------------------------------------------------------------------------------


def test_format_json_on_generate(corral_server: LiveServer) -> None:
    # An example keeps the tiny model's object short; unconstrained, it would go on to write
    # "Another person as JSON:" and more, where the grammar ends the reply with the object.
    reply = post(corral_server, "/api/generate", {
        "prompt": 'A person as JSON: {"name": "Ann", "age": 31}\nAnother person as JSON:',
        "raw": True, "format": "json", "options": {**GREEDY, "num_predict": 64}})
    assert reply["done_reason"] == "stop", reply["response"]
    assert reply["response"].startswith("{") and isinstance(json.loads(reply["response"]), dict)


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12},
                   "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_format_schema_on_chat(corral_server: LiveServer) -> None:
    reply = post(corral_server, "/api/chat", {
        "messages": [{"role": "user", "content": "Describe a person."}], "format": PERSON,
        "options": {**GREEDY, "num_predict": 64}})
    content = reply["message"]["content"]
    assert reply["done_reason"] == "stop", content
    person = json.loads(content)
    jsonschema.validate(person, PERSON)
    assert list(person) == ["name", "age"]  # the schema's order, as Ollama's grammar writes it


def test_bad_format_is_400(corral_server: LiveServer) -> None:
    reply = httpx.post(corral_server.url + "/api/generate", timeout=60, json={
        "model": MODEL, "prompt": "x", "stream": False, "format": "yaml"})
    assert reply.status_code == 400 and "format" in reply.json()["error"]


# --- context -----------------------------------------------------------------------------------


def test_generate_context_continues_the_conversation(corral_server: LiveServer) -> None:
    first = post(corral_server, "/api/generate", {
        "prompt": "My name is Ada.", "options": {**GREEDY, "num_predict": 8}})
    context = first["context"]
    assert context and len(context) == first["prompt_eval_count"] - 1 + first["eval_count"]

    ask = {"prompt": "What is my name?", "options": {**GREEDY, "num_predict": 4}}
    alone = post(corral_server, "/api/generate", ask)
    after = post(corral_server, "/api/generate", {**ask, "context": context})
    # The earlier exchange is read before the new turn: exactly its tokens more ...
    assert after["prompt_eval_count"] == alone["prompt_eval_count"] + len(context)
    # ... and the new context carries it on, so a third turn can follow.
    assert after["context"][:len(context)] == context
    assert len(after["context"]) == after["prompt_eval_count"] - 1 + after["eval_count"]


def test_a_context_that_is_not_token_ids_is_a_400(corral_server: LiveServer) -> None:
    body = {"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 2}}
    for context in ([10**30], [-1], ["a"], [1.5], [10**9]):  # the last: past the vocabulary
        reply = httpx.post(corral_server.url + "/api/generate", json={**body, "context": context},
                           timeout=120)
        assert reply.status_code == 400, (context, reply.text)
        assert "context" in reply.json()["error"]
    assert httpx.post(corral_server.url + "/api/generate", json=body, timeout=120
                      ).status_code == 200  # the runner serves on


# --- legacy embeddings -------------------------------------------------------------------------


def test_legacy_embeddings(corral_server: LiveServer) -> None:
    legacy = post(corral_server, "/api/embeddings", {"prompt": "hello world"})
    assert list(legacy) == ["embedding"]
    vector = legacy["embedding"]
    assert len(vector) == 640 and all(isinstance(v, float) for v in vector)
    norm = math.sqrt(sum(v * v for v in vector))
    assert abs(norm - 1.0) > 1e-3  # as Ollama's: not normalized, unlike /api/embed
    [unit] = post(corral_server, "/api/embed", {"input": "hello world"})["embeddings"]
    assert all(abs(v / norm - u) < 1e-4 for v, u in zip(vector, unit, strict=True))
    other = post(corral_server, "/api/embeddings", {"prompt": "good morning"})["embedding"]
    assert other != vector
    assert post(corral_server, "/api/embeddings", {"prompt": ""}) == {"embedding": []}


# --- a long prompt read in chunks --------------------------------------------------------------


def _ns(created_at: str) -> int:
    """An RFC 3339 time with nanoseconds, as corral writes `created_at`, in ns since the epoch."""
    whole, _, fraction = created_at.rstrip("Z").partition(".")
    seconds = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return int(seconds) * 10**9 + int(fraction.ljust(9, "0")[:9])


def test_long_prompt_is_read_in_chunks_while_another_stream_flows(corral_server: LiveServer
                                                                    ) -> None:
    """While a long prompt is read, a stream already generating keeps getting tokens: its
    tokens are counted between the start of the long prompt's reading and its first token, by
    the server's own clock on each line (`created_at`) and its `prompt_eval_duration`."""
    flowing: list[int] = []  # created_at of each token line of the generating stream
    stop = threading.Event()

    def generate_until_stopped() -> None:
        with httpx.stream("POST", corral_server.url + "/api/generate", timeout=300, json={
                "model": MODEL, "prompt": "Count: 1, 2, 3,", "raw": True,
                "options": {**GREEDY, "num_predict": 100_000}}) as reply:
            for line in reply.iter_lines():
                flowing.append(_ns(json.loads(line)["created_at"]))
                if stop.is_set():
                    return  # leaving the stream cancels it

    reader = threading.Thread(target=generate_until_stopped)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while len(flowing) < 3:  # it is generating
            assert reader.is_alive() and time.monotonic() < deadline, "the stream never flowed"
            time.sleep(0.05)
        # A fresh start (nothing cached can shorten the reading), then ~1500 tokens of text.
        words = " ".join(f"{w}{i % 7}" for i, w in enumerate(["river", "stone", "bridge",
                                                              "market", "mill"] * 120))
        long_prompt = f"{uuid.uuid4().hex} {words}\nSummary:"
        with httpx.stream("POST", corral_server.url + "/api/generate", timeout=600, json={
                "model": MODEL, "prompt": long_prompt, "raw": True,
                "options": {**GREEDY, "num_predict": 2}}) as reply:
            lines = [json.loads(line) for line in reply.iter_lines()]
    finally:
        stop.set()
        reader.join(timeout=300)
    done = lines[-1]
    assert done["done"] and done["prompt_eval_count"] > 1000, done
    first_token = _ns(lines[0]["created_at"])
    reading_began = first_token - done["prompt_eval_duration"]
    during = [t for t in flowing if reading_began < t < first_token]
    # Read whole, the prompt would hold every other stream for its one long step; read in
    # chunks (128 tokens while others stream), the other stream gets a token between chunks.
    assert len(during) >= 4, (len(during), done["prompt_eval_count"])
