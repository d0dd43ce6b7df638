"""Responses recorded from Ollama 0.32.15 (tests/golden/ollama, see its README.txt) replayed
against corral: every key Ollama sends must be there with the same JSON type and format (a
timestamp stays an RFC 3339 timestamp, an integer stays an integer), and the framing must match
(content types, NDJSON lines, SSE events ending in `data: [DONE]`, Go's compact JSON with
`\\u003c`-style escapes). Extra keys are corral's and allowed.

The recording served a model created with `FROM <gguf>` only, for which Ollama writes
`TEMPLATE {{ .Prompt }}`; the same model is created here under the same name.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.http import dumps
from registry.manifest import MEDIA_TEMPLATE, Manifest
from registry.store import Store
from tests.conftest import LiveServer

pytestmark = pytest.mark.e2e

GOLDEN = Path(__file__).parent / "golden" / "ollama"
NAME = "gemma3-270m"  # the recorded model's name

_FORMATS = {
    "timestamp": re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$"),
    "sha256 hex": re.compile(r"^[0-9a-f]{64}$"),
    "chat completion id": re.compile(r"^chatcmpl-\d+$"),
    "completion id": re.compile(r"^cmpl-\d+$"),
}


def shape_problems(golden: Any, ours: Any, where: str = "$") -> list[str]:
    """How `ours` differs in shape from `golden`: missing keys, other JSON types, other string
    formats, an empty list where Ollama sent items. Values themselves may differ."""
    if golden is None:
        return []  # Ollama sent null: it says nothing about the type
    if isinstance(golden, dict):
        if not isinstance(ours, dict):
            return [f"{where}: expected an object, got {type(ours).__name__}"]
        problems = []
        for key, value in golden.items():
            if key not in ours:
                problems.append(f"{where}.{key}: missing")
            else:
                problems += shape_problems(value, ours[key], f"{where}.{key}")
        return problems
    if isinstance(golden, list):
        if not isinstance(ours, list):
            return [f"{where}: expected an array, got {type(ours).__name__}"]
        if golden and not ours:
            return [f"{where}: empty where Ollama sent items"]
        return [p for i, item in enumerate(ours) for p in shape_problems(golden[0], item,
                                                                          f"{where}[{i}]")]
    if isinstance(golden, bool):
        ok = isinstance(ours, bool)
    elif isinstance(golden, int):
        ok = isinstance(ours, int) and not isinstance(ours, bool)
    elif isinstance(golden, float):
        ok = isinstance(ours, int | float) and not isinstance(ours, bool)
    else:
        assert isinstance(golden, str)
        if not isinstance(ours, str):
            return [f"{where}: expected a string, got {type(ours).__name__}"]
        for name, pattern in _FORMATS.items():
            if pattern.match(golden) and not pattern.match(ours):
                return [f"{where}: {ours!r} is not a {name} like {golden!r}"]
        return []
    return [] if ok else [f"{where}: expected {type(golden).__name__}, got {ours!r}"]


def is_go_json(text: str) -> bool:
    """Written as Go's encoding/json writes it: compact, `<`, `>`, `&` escaped."""
    return text == dumps(json.loads(text))


def test_shape_problems_catch_what_they_should() -> None:
    golden = {"a": 1, "b": 0.5, "c": "2026-11-24T21:16:00.25Z", "d": [{"e": True}], "f": None}
    assert shape_problems(golden, {**golden, "extra": 1}) == []
    assert shape_problems(golden, {**golden, "a": 1.0}) == ["$.a: expected int, got 1.0"]
    assert shape_problems(golden, {**golden, "b": 2}) == []  # Go writes 2.0 as 2
    assert shape_problems(golden, {**golden, "c": "yesterday"})[0].startswith("$.c: 'yesterday'")
    assert shape_problems(golden, {**golden, "d": [{"e": 1}]}) == ["$.d[0].e: expected bool, "
                                                                  "got 1"]
    assert shape_problems(golden, {**golden, "d": []}) == ["$.d: empty where Ollama sent items"]
    assert shape_problems(golden, {"b": 0.5, "c": "2026-01-01T00:00:00Z", "d": [], "f": 3}) == [
        "$.a: missing", "$.d: empty where Ollama sent items"]
    assert is_go_json('{"a":"\\u003cb\\u003e"}') and not is_go_json('{"a": "<b>"}')


# --- recordings ----------------------------------------------------------------------------


def recording(name: str) -> dict[str, Any]:
    return json.loads((GOLDEN / name).read_text())


def streamed(name: str) -> tuple[dict[str, Any], str]:
    """A recorded stream: its request and headers (from the comment lines) and its body."""
    lines = (GOLDEN / name).read_text().split("\n")
    meta = {"request": json.loads(lines[1].removeprefix("# request: ")),
            "headers": json.loads(lines[3].removeprefix("# headers: "))}
    return meta, "\n".join(lines[4:])


@pytest.fixture(scope="module")
def server(corral_server: LiveServer) -> Any:
    """The shared server with the recorded model as Ollama stores it: the bundled GGUF under a
    TEMPLATE layer holding `{{ .Prompt }}`. (corral's own create writes no layer for that
    template, so the manifest is written here the way Ollama writes it.)"""
    store = Store(corral_server.models)
    base = store.get("gemma3:270m").manifest
    template = store.write_blob_bytes(b"{{ .Prompt }}").layer(MEDIA_TEMPLATE)
    store.write_manifest(NAME, Manifest(base.config, [*base.layers, template]))
    yield corral_server
    httpx.request("DELETE", corral_server.url + "/api/delete", json={"model": NAME}, timeout=60)


def replay(server: LiveServer, method: str, path: str, body: Any) -> httpx.Response:
    return httpx.request(method, server.url + path, json=body, timeout=300)


JSON_RECORDINGS = [
    "api_version.json", "api_tags.json", "api_show.json", "api_show_unknown_model_404.json",
    "api_generate_nostream.json", "api_generate_empty_prompt_load.json",
    "api_generate_unknown_model_404.json", "api_chat_nostream.json", "api_ps_loaded.json",
    "v1_models.json", "v1_chat_completions_nostream.json", "v1_completions_nostream.json",
    "v1_chat_unknown_model_404.json",
]


@pytest.mark.parametrize("name", JSON_RECORDINGS)
def test_json_replies_have_ollamas_shape(server: LiveServer, name: str) -> None:
    golden = recording(name)
    request = golden["request"]
    if name == "api_ps_loaded.json":  # something must be loaded
        replay(server, "POST", "/api/generate", {"model": NAME})
    reply = replay(server, request["method"], request["path"], request["body"])
    assert reply.status_code == golden["status"], reply.text
    assert reply.headers["content-type"] == golden["headers"]["content-type"]
    assert is_go_json(reply.text)
    assert shape_problems(golden["response"], reply.json()) == []


def _ndjson(text: str) -> list[dict[str, Any]]:
    assert text.endswith("\n")
    lines = text[:-1].split("\n")
    assert all(is_go_json(line) for line in lines)
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("name", ["api_generate_stream.ndjson", "api_chat_stream.ndjson"])
def test_ndjson_streams_have_ollamas_shape(server: LiveServer, name: str) -> None:
    meta, body = streamed(name)
    golden = _ndjson(body)
    path = "/api/generate" if name.startswith("api_generate") else "/api/chat"
    reply = replay(server, "POST", path, meta["request"])
    assert reply.status_code == 200
    assert reply.headers["content-type"] == meta["headers"]["content-type"]
    ours = _ndjson(reply.text)
    assert len(ours) >= 2 and not any(line["done"] for line in ours[:-1]) and ours[-1]["done"]
    for line in ours[:-1]:
        assert shape_problems(golden[0], line) == []
    assert shape_problems(golden[-1], ours[-1]) == []


def _sse(text: str) -> list[Any]:
    assert text.endswith("data: [DONE]\n\n")
    events = text.split("\n\n")[:-1]
    assert all(event.startswith("data: ") for event in events)
    payloads = [event.removeprefix("data: ") for event in events[:-1]]
    assert all(is_go_json(payload) for payload in payloads)
    return [json.loads(payload) for payload in payloads]


@pytest.mark.parametrize("name", ["v1_chat_completions_stream.sse",
                                  "v1_chat_completions_stream_usage.sse"])
def test_sse_streams_have_ollamas_shape(server: LiveServer, name: str) -> None:
    meta, body = streamed(name)
    golden = _sse(body)
    reply = replay(server, "POST", "/v1/chat/completions", meta["request"])
    assert reply.status_code == 200
    assert reply.headers["content-type"] == meta["headers"]["content-type"] == "text/event-stream"
    ours = _sse(reply.text)
    usage = "include_usage" in json.dumps(meta["request"])
    if usage:  # the last event: no choices, the usage
        assert ours[-1]["choices"] == [] and shape_problems(golden[-1], ours[-1]) == []
        golden, ours = golden[:-1], ours[:-1]
    finish, ours = ours[-1], ours[:-1]
    assert finish["choices"][0]["finish_reason"] in ("stop", "length")
    assert shape_problems(golden[-1], finish) == []
    assert shape_problems(golden[0], ours[0]) == []  # the first delta names the role
    for event in ours[1:]:
        assert shape_problems(golden[1], event) == []


# --- behaviour the recordings pinned down -----------------------------------------------------


def test_generate_renders_the_prompt_template_as_written(server: LiveServer) -> None:
    """TEMPLATE {{ .Prompt }} is the prompt itself, not wrapped in Gemma's chat turns: the same
    tokens Ollama read, and a context without BOS."""
    golden = recording("api_generate_nostream.json")
    reply = replay(server, "POST", "/api/generate", golden["request"]["body"]).json()
    expected = golden["response"]
    assert reply["prompt_eval_count"] == expected["prompt_eval_count"] == 12
    n_prompt = expected["prompt_eval_count"] - 1  # BOS is counted but not in the context
    assert reply["context"][:n_prompt] == expected["context"][:n_prompt]
    assert len(reply["context"]) == n_prompt + reply["eval_count"]


def test_model_without_template_keeps_the_family_format(server: LiveServer) -> None:
    """The bundled model has no TEMPLATE layer: /api/generate wraps the prompt in Gemma's turns
    (more tokens than the prompt alone)."""
    body = {**recording("api_generate_nostream.json")["request"]["body"], "model": "gemma3:270m"}
    reply = replay(server, "POST", "/api/generate", body).json()
    assert reply["prompt_eval_count"] > 12


def test_escapes_like_go(server: LiveServer) -> None:
    reply = replay(server, "POST", "/v1/chat/completions", {
        "model": NAME, "messages": [{"role": "<wizard>&", "content": "hi"}]})
    assert reply.status_code == 400
    assert "'\\u003cwizard\\u003e\\u0026'" in reply.text
    assert reply.json()["error"]["message"].startswith("Invalid value: '<wizard>&'.")
