"""`corral serve` with CORRAL_HTTP_WORKERS=2: a supervisor owning the runners and two HTTP worker
processes on the one port, through the real `ollama` and `openai` clients.

One server for the module, with API keys (an admin, and one limited to 2 requests a minute), one
slot and a queue of one, and the access log in a file: each line names the worker that served it.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import httpx
import ollama
import openai
import psutil
import pytest

from gateway.metrics import ModelState, Snapshot
from gateway.team.ledger import ledger_path
from shared import control as c
from shared import protocol as p
from tests.conftest import LiveServer, start_server
from tests.test_auth import keys_cli
from tests.test_sdnotify import FakeSystemd

pytestmark = pytest.mark.e2e

MODEL = "gemma3:270m"
SHORT = {"num_predict": 4, "temperature": 0}
ENDLESS = {"num_predict": 100_000, "temperature": 0}


# --- without processes --------------------------------------------------------------------------


def test_control_messages_cross_the_wire_intact() -> None:
    load = p.encode(p.Load("/m.gguf", 2048, parallel=2))
    ready = p.encode(p.Ready(5, 2048, 4096, 2, 1, 1, "cpu"))
    messages = [c.Hello(7), c.Acquire(1, "digest", "m:1b", "m:1b", load, None),
                c.Acquire(2, "digest", "m", "m:latest", load, 300.0),
                c.Leased(1, 9, "ipc:///run/r.sock", ready),
                c.Release(9, 0.0), c.Unload(3, "digest"), c.Answer(3, True),
                c.Answer(4, [{"name": "m"}]), c.Ps(5), c.Gauges(6),
                c.Failed(1, "server busy", 503), c.RunnerGone("ipc:///run/r.sock", "killed")]
    for message in messages:
        assert p.decode(p.encode(message)) == message  # type: ignore[arg-type]
    leased = p.decode(p.encode(messages[3]))  # type: ignore[arg-type]
    assert p.decode(leased.ready).n_ctx == 2048  # type: ignore[union-attr]


def test_a_taken_tag_is_refused() -> None:
    @dataclass(slots=True)
    class Clash:
        TAG: ClassVar[int] = p.Chunk.TAG
        id: int

    with pytest.raises(ValueError, match="taken"):
        p.register(Clash)


def test_the_supervisors_gauges_cross_as_plain_data() -> None:
    snap = Snapshot(models={"m": ModelState(running=1, waiting=2, kv_used=30, kv_total=400,
                                            runners=1, resident=5, cache_bytes=6, cache_hits=7)},
                    restarts={"m": 1}, gpus=[("0", 10, 20)])
    answer = p.decode(p.encode(c.Answer(1, snap.to_data())))
    assert Snapshot.from_data(answer.value) == snap  # type: ignore[union-attr]


# --- a live server with two workers -----------------------------------------------------------


@dataclass
class Served:
    server: LiveServer
    access_log: Path
    ledger: Path
    secrets: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    def headers(self, name: str = "root") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[name]}"}

    def ollama(self, name: str = "root") -> ollama.Client:
        return ollama.Client(host=self.url, headers=self.headers(name))

    def openai(self, name: str | None = "root") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", max_retries=0,
                             api_key=self.secrets[name] if name else "not-a-key")

    def inflight(self) -> dict[int, int]:
        """The ledger's requests in flight per worker pid, read straight from its file
        (read-only: opening it as a `Ledger` would forget dead owners itself)."""
        db = sqlite3.connect(f"file:{self.ledger}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT owner, SUM(n) FROM inflight GROUP BY owner").fetchall()
        finally:
            db.close()
        return {int(owner.rpartition(":")[2]): n for owner, n in rows if n}

    def workers(self) -> list[int]:
        pids = []
        for child in psutil.Process(self.server.proc.pid).children():
            try:  # (a killed worker is a zombie until the supervisor reaps it)
                if "gateway.httpworker" in " ".join(child.cmdline()):
                    pids.append(child.pid)
            except (psutil.ZombieProcess, psutil.NoSuchProcess):
                continue
        return pids

    def access_lines(self) -> list[dict]:
        lines = self.access_log.read_text().splitlines() if self.access_log.exists() else []
        return [json.loads(line) for line in lines]

    def served_by(self) -> list[int]:
        """The worker pid of every access log line so far."""
        return [line["pid"] for line in self.access_lines()]

    def model_ps(self) -> dict | None:
        models = httpx.get(self.url + "/api/ps", headers=self.headers(), timeout=30).json()
        return next((m for m in models["models"] if m["name"] == MODEL), None)

    def wait_ps(self, ready, timeout: float = 120.0) -> dict | None:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while not ready(entry := self.model_ps()):
            if time.monotonic() > deadline:
                pytest.fail(f"/api/ps did not reach the expected state: {entry}")
            time.sleep(0.05)
        return entry


@pytest.fixture(scope="module")
def served(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("workers")
    keys = folder / "keys.json"
    secrets = {}
    for name, flags in {"root": ["--admin"], "limited": ["--rpm", "2"],
                        "single": ["--concurrency", "1"]}.items():
        secrets[name] = keys_cli(keys, "create", name, *flags).strip().splitlines()[-1]
    access_log = folder / "access.log"
    server = start_server(models_dir, folder / "serve.log", CORRAL_HTTP_WORKERS="2",
                          CORRAL_KEYS_FILE=str(keys), CORRAL_ACCESS_LOG=str(access_log),
                          OLLAMA_NUM_PARALLEL="1", OLLAMA_MAX_QUEUE="1",
                          OLLAMA_KEEP_ALIVE="10m")
    try:
        yield Served(server, access_log, ledger_path(keys), secrets)
    finally:
        runners = server.runner_pids()
        server.stop()
        for pid in runners:  # the supervisor must not leave runners behind
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_both_apis_stream_and_requests_reach_both_workers(served: Served) -> None:
    client = served.ollama()
    parts = list(client.generate(MODEL, "The sky is", options=SHORT, stream=True))
    assert len(parts) >= 2 and parts[-1].done and parts[-1].eval_count == 4
    chat = client.chat(MODEL, [{"role": "user", "content": "Hi"}], options=SHORT)
    assert chat.message.content and chat.eval_count == 4
    oa = served.openai()
    chunks = list(oa.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stream=True,
        temperature=0))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    done = oa.completions.create(model=MODEL, prompt="Once upon", max_tokens=4, temperature=0)
    assert done.usage is not None and done.usage.completion_tokens == 4
    # Fresh connections land on either worker (both accept on the one socket).
    for _ in range(200):
        if len(set(served.served_by())) >= 2:
            break
        httpx.get(served.url + "/api/version", headers=served.headers())
    assert set(served.served_by()) == set(served.workers()), "one worker served everything"


def test_keys_hold_across_workers(served: Served) -> None:
    assert httpx.get(served.url + "/api/tags").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        served.openai(None).models.list()
    # Two requests a minute for "limited", whichever worker each connection reaches: the
    # limit is counted in the shared ledger.
    seen_before = len(served.served_by())
    for _ in range(2):
        reply = httpx.post(served.url + "/api/generate", headers=served.headers("limited"),
                           json={"model": MODEL, "prompt": "Hi", "stream": False,
                                 "options": SHORT}, timeout=120)
        assert reply.status_code == 200, reply.text
    with pytest.raises(openai.RateLimitError):
        served.openai("limited").completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    deadline = time.monotonic() + 30  # each line is written once its reply has gone out
    while len(served.served_by()) < seen_before + 3:
        assert time.monotonic() < deadline, served.served_by()
        time.sleep(0.05)


def _stream_lines(served: Served, into: list[str], stop: threading.Event,
                  options: dict | None = None) -> None:
    with httpx.stream("POST", served.url + "/api/generate", headers=served.headers(),
                      timeout=300, json={"model": MODEL, "prompt": "Count: 1, 2, 3,",
                                         "raw": True, "options": options or ENDLESS}) as reply:
        into.append(str(reply.status_code))
        for line in reply.iter_lines():
            into.append(line)
            if stop.is_set():
                return  # leaving the stream drops the connection


def test_dropped_stream_frees_its_slot_and_the_queue_bound_holds(served: Served) -> None:
    stop = threading.Event()
    first: list[str] = []
    second: list[str] = []
    threads = [threading.Thread(target=_stream_lines, args=(served, first, stop))]
    threads[0].start()
    try:
        served.wait_ps(lambda e: e is not None and e["corral"]["active"] == 1)
        while len(first) < 3:
            time.sleep(0.05)
        threads.append(threading.Thread(target=_stream_lines, args=(served, second, stop)))
        threads[1].start()
        served.wait_ps(lambda e: e is not None and e["corral"]["queued"] == 1)
        # One running, one waiting, a queue of one: the next is turned away, on both APIs.
        busy = httpx.post(served.url + "/api/generate", headers=served.headers(), timeout=60,
                          json={"model": MODEL, "prompt": "Hi", "options": SHORT})
        assert busy.status_code == 503 and "server busy" in busy.json()["error"]
        with pytest.raises(openai.APIStatusError) as err:
            served.openai().completions.create(model=MODEL, prompt="Hi", max_tokens=2)
        assert err.value.status_code == 503
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    # Both dropped: the leases are released and the runner's slot is free again (the next
    # request, with one slot, would otherwise wait forever).
    served.wait_ps(lambda e: e is not None and e["corral"]["active"] == 0
                   and e["corral"]["queued"] == 0)
    after = served.ollama().generate(MODEL, "Hi", options=SHORT)
    assert after.done and after.eval_count == 4


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_ps_and_metrics_agree_whichever_worker_answers(served: Served) -> None:
    served.ollama().generate(MODEL, "Hi", options=SHORT)  # loaded
    scrape = lambda: httpx.get(served.url + "/metrics", headers=served.headers()).text  # noqa: E731
    # Counted once the reply has gone out: wait for the count to settle.
    first = scrape()
    before = _metric(first, "corral_requests_total", route="/api/generate", status="200")
    ttft = _metric(first, "corral_time_to_first_token_seconds_count", model=MODEL)
    gaps = _metric(first, "corral_inter_token_latency_seconds_count", model=MODEL)
    served.ollama().generate(MODEL, "Hi", options=SHORT)  # not streamed: its text in one piece
    deadline = time.monotonic() + 30
    while _metric(scrape(), "corral_requests_total", route="/api/generate",
                  status="200") != before + 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # The runner still timed the first token and the gaps of a reply sent in one message.
    text = scrape()
    assert _metric(text, "corral_time_to_first_token_seconds_count", model=MODEL) == ttft + 1
    assert _metric(text, "corral_inter_token_latency_seconds_count", model=MODEL) > gaps
    pids = set()
    for _ in range(8):  # fresh connections: both workers answer some of these
        text = scrape()
        assert _metric(text, "corral_requests_total", route="/api/generate",
                       status="200") == before + 1
        assert _metric(text, "corral_loaded_runners", model=MODEL) == 1
        assert _metric(text, "corral_generation_tokens_total", model=MODEL) >= 4 * (before + 1)
        entry = served.model_ps()
        assert entry is not None
        pids.add(tuple(r["pid"] for r in entry["corral"]["runners"]))
    assert pids == {tuple(served.server.runner_pids())}


def _worker_holding(served: Served, port: int) -> int:
    """The worker whose socket is the other end of our connection from `port`."""
    for pid in served.workers():
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port == port:
                return pid
    raise AssertionError("no worker holds the connection")


def test_a_killed_worker_is_replaced_and_its_lease_freed(served: Served) -> None:
    host, port = served.server.host.split(":")
    body = json.dumps({"model": MODEL, "prompt": "Count: 1, 2,", "raw": True,
                       "options": ENDLESS}).encode()
    with socket.create_connection((host, int(port)), timeout=60) as conn:
        conn.sendall(b"POST /api/generate HTTP/1.1\r\nHost: " + served.server.host.encode()
                     + b"\r\nContent-Type: application/json\r\nAuthorization: Bearer "
                     + served.secrets["single"].encode() + b"\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert conn.recv(4096).startswith(b"HTTP/1.1 200")  # streaming
        served.wait_ps(lambda e: e is not None and e["corral"]["active"] == 1)
        victim = _worker_holding(served, conn.getsockname()[1])
        before = set(served.workers())
        assert served.inflight().get(victim) == 1  # the stream counts against "single"
        psutil.Process(victim).send_signal(signal.SIGKILL)
        # A new worker takes its place. No request reaches either worker until the dead one's
        # in-flight row is checked: a worker's first authenticated request opens the ledger,
        # which would also forget it, so only the supervisor's clean-up can pass this.
        deadline = time.monotonic() + 60
        while len(now := set(served.workers())) < 2 or victim in now:
            assert time.monotonic() < deadline, now
            time.sleep(0.1)
        assert now != before and len(now) == 2
        deadline = time.monotonic() + 30
        while victim in served.inflight():
            assert time.monotonic() < deadline, f"the dead worker's request still counts: " \
                f"{served.inflight()}"
            time.sleep(0.1)
        # The supervisor releases its lease and the runner cancels its sequence.
        served.wait_ps(lambda e: e is not None and e["corral"]["active"] == 0
                       and e["corral"]["runners"][0]["reported"] is not None)
    # The runner's one slot is free again: the next request is served. The killed request no
    # longer counts against its key's concurrency of 1, whichever worker the next ones reach.
    for _ in range(4):
        after = served.ollama("single").generate(MODEL, "Hi", options=SHORT)
        assert after.done and after.eval_count == 4
    report = served.wait_ps(lambda e: e is not None and e["corral"]["runners"][0]["reported"]
                            is not None and e["corral"]["runners"][0]["reported"]["active"] == 0,
                            timeout=30)
    assert report is not None


def test_a_runner_killed_mid_stream_ends_the_stream_with_its_cause(served: Served) -> None:
    """The worker streams from the runner on its own socket; when the runner dies the supervisor
    tells the workers, so the stream ends with the cause at once, and the next request starts a
    fresh runner."""
    served.ollama().generate(MODEL, "Hi", options=SHORT)  # loaded
    [runner] = served.server.runner_pids()
    lines = []
    with httpx.stream("POST", served.url + "/api/generate", headers=served.headers(), timeout=60,
                      json={"model": MODEL, "prompt": "Count: 1, 2, 3,", "raw": True,
                            "options": ENDLESS}) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            lines.append(json.loads(line))
            if len(lines) == 3:
                psutil.Process(runner).send_signal(signal.SIGKILL)
    assert "terminated unexpectedly (killed by SIGKILL)" in lines[-1].get("error", ""), lines[-1]
    after = served.ollama().generate(MODEL, "Hi", options=SHORT)
    assert after.done and runner not in served.server.runner_pids()


def test_ready_once_every_worker_serves_and_a_clean_stop(models_dir: Path, tmp_path: Path
                                                         ) -> None:
    """systemd hears READY=1 from the supervisor once both workers' apps have started; SIGTERM
    stops the workers and the supervisor cleanly. No model is needed for this."""
    systemd = FakeSystemd(str(tmp_path / "notify.sock"))
    server = start_server(models_dir, tmp_path / "serve.log", CORRAL_HTTP_WORKERS="2",
                          NOTIFY_SOCKET=systemd.address)
    try:
        ready = systemd.wait_for("READY")
        assert ready["MAINPID"] == str(server.proc.pid)
        assert ready["STATUS"].startswith(f"listening on {server.url} with 2 HTTP workers")
        workers = [c for c in psutil.Process(server.proc.pid).children()
                   if "gateway.httpworker" in " ".join(c.cmdline())]
        assert len(workers) == 2
        for worker in workers:  # only the main PID notifies
            assert "NOTIFY_SOCKET" not in worker.environ()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
        assert not any(w.is_running() and w.status() != "zombie" for w in workers)
        systemd.wait_for("STOPPING", timeout=5)
    finally:
        server.stop()
        systemd.close()


def _stream_until(served: Served, name: str, lines: list[str], stop: threading.Event) -> None:
    """An endless stream of key `name`'s, collecting its lines until `stop` (then dropped)."""
    with httpx.stream("POST", served.url + "/api/generate", headers=served.headers(name),
                      timeout=300, json={"model": MODEL, "prompt": f"List of {name} items:",
                                         "options": ENDLESS}) as reply:
        for line in reply.iter_lines():
            lines.append(line)
            if stop.is_set():
                return


def _reported_queue(served: Served, at_least: int) -> None:
    """Until the runner itself reports `at_least` requests waiting in its line (every request
    has reached the runner, not only its lease: that is where the turns are given)."""
    served.wait_ps(lambda e: e is not None and e["corral"]["runners"][0]["reported"] is not None
                   and e["corral"]["runners"][0]["reported"]["queued"] >= at_least)


def _flood_then_solo(served: Served) -> tuple[bool, list[int]]:
    """One slot. `flood` runs one endless stream and queues three more; `solo` then queues one
    request. When the running stream is dropped, which request gets the slot: (whether solo's
    reply came before any waiting flood stream's first line, the waiting streams' line counts)."""
    streams = [([], threading.Event()) for _ in range(4)]
    threads = [threading.Thread(target=_stream_until, args=(served, "flood", lines, stop))
               for lines, stop in streams]
    for thread in threads:
        thread.start()
    solo: list[httpx.Response] = []
    solo_thread = threading.Thread(target=lambda: solo.append(httpx.post(
        served.url + "/api/generate", headers=served.headers("solo"), timeout=300,
        json={"model": MODEL, "prompt": "List of solo items:", "stream": False,
              "options": SHORT})))
    try:
        _reported_queue(served, 3)
        deadline = time.monotonic() + 60
        while not (started := [i for i, (lines, _) in enumerate(streams) if lines]):
            assert time.monotonic() < deadline, "no flood stream got the slot"
            time.sleep(0.01)
        assert len(started) == 1, started  # (one slot)
        running = started[0]
        solo_thread.start()
        _reported_queue(served, 4)
        streams[running][1].set()  # dropped at its next line: its slot frees
        waiting = [lines for i, (lines, _) in enumerate(streams) if i != running]
        deadline = time.monotonic() + 120
        while not solo and not any(waiting):
            assert time.monotonic() < deadline, "neither solo nor the flood got the slot"
            time.sleep(0.01)
        solo_first = bool(solo) and not any(waiting)
        counts = [len(lines) for lines in waiting]
    finally:
        for _, stop in streams:
            stop.set()  # each waiting stream gets the slot in turn and is dropped
        for thread in threads:
            thread.join(300)
    solo_thread.join(300)
    assert solo and solo[0].status_code == 200, solo
    return solo_first, counts


def test_fair_sharing_holds_across_workers(models_dir: Path, tmp_path: Path) -> None:
    """Two workers, one slot: `flood` holds the slot with one stream and queues three more over
    fresh connections (so through either worker), then `solo` queues one request. The runner's
    line is round-robin across keys whichever worker each request came through: when the
    running stream ends, solo's request runs before the flood's three (first come, first served
    would give the slot to the flood's next). Repeated until solo and the flood went through
    different workers at least once (each connection lands on either)."""
    keys = tmp_path / "keys.json"
    secrets = {name: keys_cli(keys, "create", name, *flags).strip().splitlines()[-1]
               for name, flags in {"root": ["--admin"], "flood": [], "solo": []}.items()}
    access_log = tmp_path / "access.log"
    server = start_server(models_dir, tmp_path / "serve.log", CORRAL_HTTP_WORKERS="2",
                          CORRAL_KEYS_FILE=str(keys), CORRAL_ACCESS_LOG=str(access_log),
                          OLLAMA_NUM_PARALLEL="1", OLLAMA_KEEP_ALIVE="10m")
    served = Served(server, access_log, ledger_path(keys), secrets)
    try:
        served.ollama().generate(MODEL, "Hi", options=SHORT)  # loaded
        crossed = False
        for _ in range(3):
            seen = len(served.served_by())
            solo_first, counts = _flood_then_solo(served)
            assert solo_first, f"a flood stream got the slot before solo: {counts} lines"
            deadline = time.monotonic() + 60  # each line is written once its reply has gone out
            while len(lines := served.access_lines()[seen:]) < 5:
                assert time.monotonic() < deadline, lines
                time.sleep(0.05)
            by_key: dict[str, set[int]] = {}
            for line in lines:
                by_key.setdefault(line["key"], set()).add(line["pid"])
            if by_key["flood"] - by_key["solo"]:
                crossed = True
                break
        assert crossed, "every round's requests went through one worker"
    finally:
        server.stop()
