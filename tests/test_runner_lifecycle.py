"""Runner processes: a crash mid-stream, client disconnects, and no orphans after shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import LiveServer, start_server

pytestmark = pytest.mark.e2e

MODEL = "gemma3:270m"


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False


def _load(server: LiveServer) -> list[int]:
    reply = httpx.post(server.url + "/api/generate", json={"model": MODEL}, timeout=120)
    assert reply.json()["done_reason"] == "load"
    pids = server.runner_pids()
    assert len(pids) == 1
    return pids


def test_runner_killed_mid_stream_then_recovers(fresh_server: LiveServer) -> None:
    [runner] = _load(fresh_server)
    body = {"model": MODEL, "prompt": "Count: 1, 2, 3,", "raw": True,
            "options": {"num_predict": 2000, "temperature": 0}}
    lines = []
    with httpx.stream("POST", fresh_server.url + "/api/generate", json=body, timeout=60) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            lines.append(json.loads(line))
            if len(lines) == 5:
                os.kill(runner, signal.SIGKILL)
    assert "error" in lines[-1], lines[-1]
    assert "terminated" in lines[-1]["error"]
    assert not any(line.get("done") for line in lines)

    # The next request starts a fresh runner and works.
    reply = httpx.post(fresh_server.url + "/api/generate", timeout=120, json={
        "model": MODEL, "prompt": "Hello", "stream": False, "options": {"num_predict": 4}})
    assert reply.status_code == 200 and reply.json()["done"]
    assert fresh_server.runner_pids() and runner not in fresh_server.runner_pids()


def test_disconnect_cancels_sequence(one_slot_server: LiveServer) -> None:
    server = one_slot_server
    continuation = _greedy_continuation(server)
    with httpx.stream("POST", server.url + "/api/generate", json=_long_request(True),
                      timeout=120) as reply:
        assert reply.status_code == 200
        for n, _ in enumerate(reply.iter_lines()):
            if n == 3:
                break  # closing the stream drops the connection
    _assert_cancelled(server, continuation)


def test_no_runner_survives_server_stop(fresh_server: LiveServer) -> None:
    [runner] = _load(fresh_server)
    fresh_server.stop()
    assert fresh_server.proc.returncode == 0
    assert _gone(runner)


def test_no_runner_survives_server_sigkill(fresh_server: LiveServer) -> None:
    [runner] = _load(fresh_server)
    fresh_server.proc.kill()
    fresh_server.proc.wait()
    assert _gone(runner)  # the runner asked the kernel for SIGTERM when its parent dies


def test_keep_alive_expiry_unloads_idle_runner(fresh_server: LiveServer) -> None:
    reply = httpx.post(fresh_server.url + "/api/generate", timeout=120, json={
        "model": MODEL, "prompt": "Hi", "stream": False, "keep_alive": "1s",
        "options": {"num_predict": 2}})
    assert reply.status_code == 200
    [runner] = fresh_server.runner_pids()
    expires = httpx.get(fresh_server.url + "/api/ps").json()["models"][0]["expires_at"]
    assert expires.endswith("Z")
    assert _gone(runner, timeout=15)
    assert httpx.get(fresh_server.url + "/api/ps").json() == {"models": []}


def test_client_gone_before_first_token_cancels(one_slot_server: LiveServer) -> None:
    """A request still waiting for its first token (or collecting a non-streamed reply) is
    cancelled when its client disconnects, instead of generating for nobody."""
    server = one_slot_server
    continuation = _greedy_continuation(server)
    host, port = server.host.rsplit(":", 1)
    body = json.dumps(_long_request(False)).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: " + server.host.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        # Admitted (and far from done): now the client goes away.
        server.wait_ps(MODEL, lambda e: e is not None and e["corral"]["active"] == 1)
    _assert_cancelled(server, continuation)


# --- cancellation, judged by what the one slot's cache holds afterwards ------------------------
#
# With one slot, a sequence that keeps generating for nobody would hold the slot until its
# num_predict. Whether it stopped is read from the runner's own state, not from timing: a
# follow-up prompt that is the first prompt plus its greedy continuation gets from the prefix
# cache exactly what the slot computed, so a cancelled sequence leaves only a few generated
# tokens there, one that ran on leaves all of them.

COUNT = "Count: 1, 2, 3,"
CONTINUATION = 96  # tokens of greedy continuation the follow-up prompt carries


@pytest.fixture(scope="module")
def one_slot_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[LiveServer]:
    # The prompt cache beyond the slots is off: it would keep the reference reply's state and
    # hand it to the follow-up, whatever the cancelled sequence left in the slot.
    server = start_server(models_dir, tmp_path_factory.mktemp("one-slot") / "serve.log",
                          OLLAMA_NUM_PARALLEL="1", CORRAL_PROMPT_CACHE="0")
    try:
        _load(server)
        yield server
    finally:
        server.stop()


def _long_request(stream: bool) -> dict:
    # Far longer than CONTINUATION: run to its end, it would fill the follow-up's whole prefix.
    return {"model": MODEL, "prompt": COUNT, "raw": True, "stream": stream,
            "options": {"num_predict": 4 * CONTINUATION, "temperature": 0}}


def _greedy_continuation(server: LiveServer) -> str:
    reply = httpx.post(server.url + "/api/generate", timeout=300, json={
        "model": MODEL, "prompt": COUNT, "raw": True, "stream": False,
        "options": {"num_predict": CONTINUATION, "temperature": 0}}).json()
    assert reply["eval_count"] == CONTINUATION, reply
    return reply["response"]


def _assert_cancelled(server: LiveServer, continuation: str) -> None:
    # The gateway let go of the request ...
    server.wait_ps(MODEL, lambda e: e is not None and e["corral"]["active"] == 0
                   and e["corral"]["queued"] == 0)
    # ... and the runner stopped it: the slot holds the prompt and the few tokens generated
    # before the cancel, far from the whole continuation.
    reply = httpx.post(server.url + "/api/generate", timeout=600, json={
        "model": MODEL, "prompt": COUNT + continuation, "raw": True, "stream": False,
        "options": {"num_predict": 1, "temperature": 0}}).json()
    total, cached = reply["prompt_eval_count"], reply["prompt_eval_cached_count"]
    assert total > CONTINUATION
    assert cached < total - CONTINUATION // 2, \
        f"{cached} of {total} prompt tokens were cached: the sequence ran on after its client left"
