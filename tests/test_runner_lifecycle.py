"""Runner processes: a crash mid-stream, client disconnects, and no orphans after shutdown."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import psutil
import pytest

from tests.conftest import LiveServer

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


def test_disconnect_cancels_sequence(fresh_server: LiveServer) -> None:
    _load(fresh_server)
    body = {"model": MODEL, "prompt": "Count: 1, 2, 3,", "raw": True,
            "options": {"num_predict": 3000, "temperature": 0}}
    with httpx.stream("POST", fresh_server.url + "/api/generate", json=body, timeout=60) as reply:
        for n, _ in enumerate(reply.iter_lines()):
            if n == 3:
                break  # closing the stream drops the connection
    # With the first sequence cancelled, the runner (one slot) serves the next one at once.
    started = time.monotonic()
    reply = httpx.post(fresh_server.url + "/api/generate", timeout=60, json={
        "model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 2}})
    assert reply.status_code == 200
    # 3000 tokens would take far longer than this if the first request were still running.
    assert time.monotonic() - started < 20


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


def test_client_gone_before_first_token_cancels(fresh_server: LiveServer) -> None:
    """A request still waiting for its first token (or collecting a non-streamed reply) is
    cancelled when its client disconnects, instead of generating for nobody."""
    _load(fresh_server)
    body = {"model": MODEL, "prompt": "Count: 1, 2, 3,", "raw": True, "stream": False,
            "options": {"num_predict": 5000, "temperature": 0}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(fresh_server.url + "/api/generate", json=body, timeout=2)
    # The runner is idle again soon after the client left.
    [runner] = fresh_server.runner_pids()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if psutil.Process(runner).cpu_percent(interval=0.5) < 20:
            break
    else:
        pytest.fail("the runner kept generating after the client disconnected")
