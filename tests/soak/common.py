"""What the soak scenarios share: the result row, servers with a temp folder of their own, stream
clients in threads, and the leak checks."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.conftest import LiveServer, start_server
from tests.test_pull_push import clone_bundled

MODEL = "gemma3:270m"


@dataclass
class Scale:
    """How much each scenario does: `make soak` or the two-minute `make soak-quick`."""

    kills: int
    requests: int
    concurrency: int
    warmup: int  # requests before the gateway's RSS is first measured
    disconnects: int
    crashes: int  # server kills during pull and create, together
    hangs: int

    @classmethod
    def full(cls) -> Scale:
        return cls(kills=50, requests=1000, concurrency=64, warmup=64, disconnects=200,
                   crashes=20, hangs=3)

    @classmethod
    def quick(cls) -> Scale:
        return cls(kills=2, requests=100, concurrency=64, warmup=16, disconnects=24,
                   crashes=2, hangs=1)


@dataclass
class Row:
    scenario: str
    runs: str
    ok: bool | None  # None: could not run here (said why in `figures`)
    figures: str
    problems: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


@contextlib.contextmanager
def soak_server(folder: Path, source_models: Path, *, clone: bool = True, **env: str
                ) -> Iterator[LiveServer]:
    """A server on a loopback port with its own store (the bundled model hard-linked from
    `source_models`) and its own TMPDIR, so that its runtime folder and temp files can be
    checked. Stopped (SIGTERM, then SIGKILL) on the way out."""
    models = folder / "models"
    if clone and not models.exists():
        clone_bundled(source_models, models)
    tmpdir = folder / "tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    server = start_server(models, folder / "serve.log", TMPDIR=str(tmpdir),
                          **{"OLLAMA_KEEP_ALIVE": "-1", **env})
    try:
        yield server
    finally:
        server.stop()


def restart(server: LiveServer, log_name: str) -> LiveServer:
    """The same store and settings, a fresh process (after the old one was killed)."""
    env = {k: v for k, v in server.env.items() if k.startswith(("OLLAMA_", "CORRAL_", "TMPDIR"))}
    env.pop("OLLAMA_HOST", None)
    env.pop("OLLAMA_MODELS", None)
    return start_server(server.models, server.log.with_name(log_name), **env)


def kill_server(server: LiveServer) -> None:
    """SIGKILL the gateway and its runners (they would follow it through PDEATHSIG anyway)."""
    runners = server.runner_pids()
    with contextlib.suppress(ProcessLookupError):
        server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    for pid in runners:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_gone(runners)


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Those of `pids` still running (not reaped, not zombie) after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if _alive(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def runtime_sockets(server: LiveServer) -> list[Path]:
    """The ipc sockets in the server's runtime folder (one per live runner)."""
    tmpdir = Path(server.env["TMPDIR"])
    return sorted(tmpdir.glob("corral-*/*.sock"))


def temp_leftovers(server: LiveServer) -> list[Path]:
    """Temp files of unfinished writes in the store."""
    return [p for p in server.models.rglob(".tmp-*")]


class Streamer(threading.Thread):
    """One streamed request in a thread: its lines as they come, how it ended."""

    def __init__(self, url: str, path: str, body: dict[str, Any], timeout: float = 120.0,
                 stop_after: int | None = None) -> None:
        super().__init__(daemon=True)
        self.url, self.path, self.body, self.timeout = url, path, body, timeout
        self.stop_after = stop_after
        self.lines: list[dict[str, Any]] = []
        self.status: int | None = None
        self.error: str | None = None  # an error line, an error status, or a broken connection
        self.first = threading.Event()

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.url + self.path, json=self.body,
                              timeout=self.timeout) as reply:
                self.status = reply.status_code
                if reply.status_code != 200:
                    self.error = reply.read().decode(errors="replace")
                    return
                for line in reply.iter_lines():
                    if not line.strip():
                        continue
                    data = json.loads(line)
                    self.lines.append(data)
                    self.first.set()
                    if "error" in data:
                        self.error = data["error"]
                    if self.stop_after is not None and len(self.lines) >= self.stop_after:
                        return  # leaving the block closes the connection mid-stream
        except (httpx.HTTPError, ValueError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.first.set()

    @property
    def done(self) -> bool:
        return bool(self.lines) and bool(self.lines[-1].get("done"))


def generate(url: str, prompt: str = "Once upon a time", num_predict: int = 4,
             timeout: float = 120.0, **extra: Any) -> httpx.Response:
    return httpx.post(url + "/api/generate", timeout=timeout, json={
        "model": MODEL, "prompt": prompt, "raw": True, "stream": False,
        "options": {"num_predict": num_predict, "temperature": 0}, **extra})


def runner_counts(server: LiveServer) -> tuple[int, int, dict[str, int] | None]:
    """(active, queued) as the gateway counts them, and the runner's own last report."""
    models = httpx.get(server.url + "/api/ps", timeout=30).json()["models"]
    entry = next((m for m in models if m["name"] == MODEL), None)
    if entry is None:
        return 0, 0, None
    corral = entry["corral"]
    reported = corral["runners"][0].get("reported") if corral["runners"] else None
    return corral["active"], corral["queued"], reported
