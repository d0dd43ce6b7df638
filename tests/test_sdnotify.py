"""sd_notify: the messages corral sends to systemd, with this test playing systemd's side of the
NOTIFY_SOCKET datagram socket (unit tests of gateway/sdnotify.py, then a live `corral serve`)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from gateway.sdnotify import Notifier, ready_when_listening, run_watchdog
from tests.conftest import free_port, start_server


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: collects (monotonic time, {KEY: value}) datagrams."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self.on_ready: list[Callable[[dict[str, str]], None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
            if "READY" in fields:
                for hook in self.on_ready:
                    hook(fields)
            self.messages.append((time.monotonic(), fields))

    def wait_for(self, key: str, timeout: float = 30.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, fields in list(self.messages):
                if key in fields:
                    return fields
            time.sleep(0.02)
        raise AssertionError(f"no {key} from corral in {timeout}s: {self.messages}")

    def keys(self) -> list[str]:
        """The order of the notifications, one key per datagram (the first line's)."""
        return [next(iter(fields)) for _, fields in self.messages]

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=2)


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(str(tmp_path / "notify.sock"))
    yield fake
    fake.close()


def test_ready_status_stopping_watchdog_datagrams(systemd: FakeSystemd) -> None:
    notifier = Notifier(systemd.address, watchdog_usec=2_000_000)
    assert notifier.status("loading\nthe store")
    assert notifier.ready("listening")
    assert notifier.watchdog()
    assert notifier.stopping()
    systemd.wait_for("STOPPING")
    notifier.close()
    fields = [f for _, f in systemd.messages]
    # A newline inside STATUS would start a new assignment: it is folded into a space.
    assert fields[0] == {"STATUS": "loading the store"}
    assert fields[1] == {"READY": "1", "MAINPID": str(os.getpid()), "STATUS": "listening"}
    assert fields[2] == {"WATCHDOG": "1"}
    assert fields[3] == {"STOPPING": "1"}
    assert notifier.watchdog_interval == 1.0


def test_abstract_socket_address() -> None:
    address = f"@corral-test-{uuid.uuid4().hex}"
    fake = FakeSystemd(address)
    try:
        assert Notifier(address).ready()
        assert fake.wait_for("READY")["READY"] == "1"
    finally:
        fake.close()


def test_without_systemd_nothing_is_sent_and_nothing_fails(tmp_path: Path) -> None:
    quiet = Notifier.from_env({})
    assert not quiet.enabled and quiet.watchdog_interval is None
    assert not quiet.ready("x") and not quiet.watchdog()
    # systemd gone (the socket path has no listener): serving goes on, the send reports False.
    gone = Notifier(str(tmp_path / "nobody.sock"))
    assert not gone.status("hello")


def test_from_env_takes_the_variables_away_from_child_processes() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000",
           "WATCHDOG_PID": str(os.getpid()), "OTHER": "x"}
    notifier = Notifier.from_env(env)
    assert env == {"OTHER": "x"}
    assert notifier.address == "/run/systemd/notify"
    assert notifier.watchdog_interval == 15.0
    # A watchdog meant for another process (WATCHDOG_PID) is not ours to feed.
    other = Notifier.from_env({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000",
                               "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_interval is None
    assert Notifier.from_env({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "nonsense"}
                             ).watchdog_interval is None


async def test_ready_only_once_the_port_listens(systemd: FakeSystemd) -> None:
    port = free_port()
    notifier = Notifier(systemd.address)
    task = asyncio.create_task(ready_when_listening(notifier, "0.0.0.0", port, "up"))
    await asyncio.sleep(0.3)
    assert not systemd.messages  # nothing listens yet: no READY
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
    try:
        await asyncio.wait_for(task, 5)
        assert await asyncio.to_thread(systemd.wait_for, "READY", 5) == {
            "READY": "1", "MAINPID": str(os.getpid()), "STATUS": "up"}
    finally:
        server.close()


async def test_watchdog_pings_at_half_the_timeout(systemd: FakeSystemd) -> None:
    notifier = Notifier(systemd.address, watchdog_usec=200_000)  # a ping every 0.1 s
    assert notifier.watchdog_interval == pytest.approx(0.1)
    task = asyncio.create_task(run_watchdog(notifier))
    # Ordered by what arrives, not by a sleep: a busy machine only delays the pings.
    deadline = time.monotonic() + 30
    while len(pings := [t for t, f in systemd.messages if f == {"WATCHDOG": "1"}]) < 5:
        assert time.monotonic() < deadline, f"only {len(pings)} pings in 30 s"
        await asyncio.sleep(0.02)
    task.cancel()
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    # Never faster than half the timeout (a loop that pings on every turn would be).
    assert min(gaps) >= 0.09, gaps


@pytest.mark.e2e
def test_corral_serve_speaks_sd_notify(systemd: FakeSystemd, models_dir: Path,
                                       tmp_path: Path) -> None:
    """A live server: STATUS lines while starting, READY=1 only when its port answers, WATCHDOG=1
    pings, STOPPING=1 on SIGTERM; the runners it starts do not inherit NOTIFY_SOCKET."""
    port_open_at_ready: list[bool] = []

    def check_port(fields: dict[str, str]) -> None:
        # The moment READY=1 arrives, the port it names must already accept connections.
        port = int(re.search(r":(\d+),", fields["STATUS"]).group(1))  # type: ignore[union-attr]
        with socket.socket() as s:
            port_open_at_ready.append(s.connect_ex(("127.0.0.1", port)) == 0)

    systemd.on_ready.append(check_port)
    server = start_server(models_dir, tmp_path / "serve.log", NOTIFY_SOCKET=systemd.address,
                          WATCHDOG_USEC="400000", OLLAMA_KEEP_ALIVE="1m")
    try:
        ready = systemd.wait_for("READY")
        assert ready["MAINPID"] == str(server.proc.pid)
        assert ready["STATUS"].startswith(f"listening on {server.url}")
        assert port_open_at_ready == [True]
        time.sleep(0.7)
        # The runner a request starts does not inherit NOTIFY_SOCKET (only the main PID notifies).
        r = httpx.post(server.url + "/api/generate", timeout=60, json={
            "model": "gemma3:270m", "prompt": "Hi", "stream": False,
            "options": {"num_predict": 1}})
        assert r.status_code == 200
        runners = server.runner_pids()
        assert runners
        for pid in runners:
            assert "NOTIFY_SOCKET" not in psutil.Process(pid).environ()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
    finally:
        server.stop()
    keys = systemd.keys()
    loading = keys[:keys.index("READY")]
    statuses = [f["STATUS"] for _, f in systemd.messages[:len(loading)] if "STATUS" in f]
    assert statuses[-1].startswith("starting the HTTP server")
    assert any("importing the bundled model" in s for s in statuses)
    assert keys.count("READY") == 1
    assert keys.count("WATCHDOG") >= 2
    assert "STOPPING" in keys and keys.index("STOPPING") > keys.index("READY")
