"""Fixtures that run a real `corral serve` on a loopback port with the bundled model.

The server is a subprocess with its own temporary OLLAMA_MODELS; it is stopped by PID, and the
runner processes it started are checked to be gone.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 120.0


@dataclass
class LiveServer:
    url: str
    host: str  # host:port, as OLLAMA_HOST
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    models: Path
    log: Path

    def runner_pids(self) -> list[int]:
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [c.pid for c in children if "runner.worker" in " ".join(c.cmdline())]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models: Path, log: Path, root: Path = ROOT, **extra_env: str) -> LiveServer:
    """`corral serve` from the checkout at `root` (another one: benchmarks comparing versions)."""
    port = free_port()
    host = f"127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    # No API keys unless a test asks: never the machine's own keys file or CORRAL_API_KEY.
    env.pop("CORRAL_API_KEY", None)
    env["CORRAL_KEYS_FILE"] = str(log.with_name(log.name + ".no-keys.json"))
    env.update({"OLLAMA_HOST": host, "OLLAMA_MODELS": str(models), **extra_env})
    env["PYTHONPATH"] = str(root)
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], cwd=root, env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = LiveServer(f"http://{host}", host, env, proc, models, log)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"corral serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(server.url + "/", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"corral serve did not answer in {START_TIMEOUT}s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One models folder for the session: the bundled model is imported into it once."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def corral_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("logs") / "serve.log"
    server = start_server(models_dir, log, OLLAMA_KEEP_ALIVE="10m")
    try:
        yield server
    finally:
        runners = server.runner_pids()
        server.stop()
        for pid in runners:  # the server must not leave runners behind
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


@pytest.fixture
def fresh_server(models_dir: Path, tmp_path: Path) -> Iterator[LiveServer]:
    """A server of its own, for tests that kill or stop it."""
    server = start_server(models_dir, tmp_path / "serve.log")
    try:
        yield server
    finally:
        server.stop()
