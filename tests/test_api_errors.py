"""Bad input gets Ollama's `{"error": ...}` with the right status, never a crash."""

from __future__ import annotations

import httpx
import pytest

from gateway.hostcheck import host_allowed
from tests.conftest import LiveServer

pytestmark = pytest.mark.e2e

MODEL = "gemma3:270m"


@pytest.mark.parametrize(("path", "body", "status", "needle"), [
    ("/api/generate", b"", 400, "missing request body"),
    ("/api/generate", b"{not json", 400, "invalid JSON"),
    ("/api/generate", b"[1, 2]", 400, "JSON object"),
    ("/api/generate", b'{"prompt": "hi"}', 400, "model is required"),
    ("/api/generate", b'{"model": "bad name!!", "prompt": "hi"}', 400, "invalid model name"),
    ("/api/generate", b'{"model": "gemma3:270m", "prompt": "hi", "options": {"top_k": "x"}}',
     400, 'option "top_k" must be of type int'),
    ("/api/generate", b'{"model": "gemma3:270m", "prompt": "hi", "keep_alive": "soon"}',
     400, "keep_alive"),
    ("/api/generate", b'{"model": "gemma3:270m", "prompt": "hi", "raw": true, "system": "x"}',
     400, "raw mode does not support"),
    ("/api/generate", b'{"model": "gemma3:270m", "prompt": 5}', 400, "prompt"),
    ("/api/chat", b'{"model": "gemma3:270m", "messages": "hi"}', 400, "messages"),
    ("/api/chat", b'{"model": "gemma3:270m", "messages": [{"content": "x"}]}', 400, "role"),
    ("/api/chat", b'{"model": "gemma3:270m", "messages": [{"role": "user", "content": "x"}], '
     b'"tools": [{"type": "function", "function": {"name": "f"}}]}', 400, "does not support tools"),
    ("/api/chat", b'{"model": "gemma3:270m", "think": true, "messages": []}', 400,
     "does not support thinking"),
    ("/api/embed", b'{"model": "gemma3:270m", "input": 5}', 400, "invalid input type"),
    ("/api/show", b"{}", 400, "model is required"),
    ("/api/show", b'{"model": "no-such-model"}', 404, "not found"),
    ("/api/copy", b'{"source": "no-such-model", "destination": "x:y"}', 404, "not found"),
    ("/api/copy", b'{"source": "gemma3:270m"}', 400, "destination"),
])
def test_bad_requests(corral_server: LiveServer, path: str, body: bytes, status: int,
                      needle: str) -> None:
    reply = httpx.post(corral_server.url + path, content=body, timeout=30)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert needle in error


def test_delete_unknown_is_404(corral_server: LiveServer) -> None:
    reply = httpx.request("DELETE", corral_server.url + "/api/delete",
                          json={"model": "no-such-model"})
    assert reply.status_code == 404
    assert reply.json() == {"error": "model 'no-such-model' not found"}


def test_wrong_method_and_unknown_path(corral_server: LiveServer) -> None:
    assert httpx.get(corral_server.url + "/api/generate").status_code == 405
    missing = httpx.get(corral_server.url + "/api/nope")
    assert missing.status_code == 404 and "error" in missing.json()


def test_openai_errors_use_openai_shape(corral_server: LiveServer) -> None:
    reply = httpx.post(corral_server.url + "/v1/chat/completions", content=b"{oops")
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] is None


def test_cors_allows_local_origins_only(corral_server: LiveServer) -> None:
    ok = httpx.options(corral_server.url + "/api/tags", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET"})
    assert ok.headers.get("access-control-allow-origin") == "http://localhost:3000"
    denied = httpx.options(corral_server.url + "/api/tags", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in denied.headers


def test_truncate_false_rejects_long_prompt(corral_server: LiveServer) -> None:
    # A runner already loaded with a larger context serves num_ctx 128 without a reload (and the
    # prompt would fit it): unload first, so that this request loads the model at 128.
    httpx.post(corral_server.url + "/api/generate", timeout=60,
               json={"model": MODEL, "keep_alive": 0})
    corral_server.wait_ps(MODEL, lambda entry: entry is None)
    reply = httpx.post(corral_server.url + "/api/generate", timeout=60, json={
        "model": MODEL, "prompt": "word " * 300, "raw": True, "truncate": False, "stream": False,
        "options": {"num_ctx": 128, "num_predict": 1}})
    assert reply.status_code == 400
    assert "context length" in reply.json()["error"]


@pytest.mark.parametrize(("host", "allowed"), [
    ("localhost:11434", True), ("127.0.0.1", True), ("[::1]:8080", True), ("::1", True),
    ("10.1.2.3:11434", True), ("192.168.0.9", True), ("0.0.0.0", True), ("box.local", True),
    ("api.internal:80", True), ("app.localhost", True), ("THIS-HOST", True), ("", True),
    ("evil.example", False), ("evil.example:11434", False), ("8.8.8.8", False),
    ("localhost.evil.example", False),
])
def test_host_header_guard(host: str, allowed: bool) -> None:
    assert host_allowed(host, "this-host") is allowed


def test_loopback_server_refuses_foreign_host_headers(corral_server: LiveServer) -> None:
    assert httpx.get(corral_server.url + "/api/version").status_code == 200
    for path in ("/api/version", "/v1/models"):
        rebound = httpx.get(corral_server.url + path, headers={"Host": "evil.example"})
        assert rebound.status_code == 403 and "DNS-rebinding" in rebound.json()["error"]
    local = httpx.get(corral_server.url + "/", headers={"Host": "localhost:11434"})
    assert local.status_code == 200


def test_what_the_long_fuzz_run_found_is_a_400(corral_server: LiveServer) -> None:
    """Two 500s schemathesis found: an integer past 64 bits anywhere in a chat (the runner's
    wire format carries 64-bit integers), and a /v1 tool call id that is not a string."""
    call = {"function": {"name": "f", "index": -38629767628575119194980352, "arguments": {}}}
    reply = httpx.post(corral_server.url + "/api/chat", timeout=120, json={
        "model": MODEL, "stream": False, "options": {"num_predict": 2},
        "messages": [{"role": "assistant", "content": "", "tool_calls": [call]},
                     {"role": "user", "content": "Hi"}]})
    assert reply.status_code == 400, reply.text
    assert reply.json() == {"error": "a number in the request is out of range"}
    reply = httpx.post(corral_server.url + "/v1/chat/completions", timeout=120, json={
        "model": MODEL, "max_tokens": 2, "messages": [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": [None], "type": "function", "function": {"name": "f", "arguments": ""}}]},
            {"role": "user", "content": "Hi"}]})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["message"] == "tool call id must be a string"
