"""`corral serve` with CORRAL_HTTP_WORKERS >= 2: this process supervises, N processes serve HTTP.

The supervisor is the one authority over the runners: it owns the `RunnerPool` (placement,
eviction, keep-alive, replicas, the queue bound), the runner processes stay its children, and it
answers /api/ps, unload and the /metrics gauges. It binds the HTTP port and hands each worker a
listening socket (Hypercorn's `fd://` bind), so they all accept on it; it answers their questions
on a control socket (shared/control.py), restarts a worker that dies and frees that worker's
leases. The tokens never pass through here: a worker streams from the runner on its own socket.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import os
import shutil
import socket
import sqlite3
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from gateway.metrics import take_snapshot
from gateway.remotepool import worker_identity
from gateway.routes.ollama import running_models
from gateway.sdnotify import Notifier, run_watchdog
from gateway.server import stop_on_signals
from gateway.team.ledger import Ledger, ledger_path
from registry.store import Store
from runner.supervisor.client import unexpected_exit
from runner.supervisor.pool import LoadedRunner, RunnerPool
from shared import control as c
from shared import protocol as p
from shared.config import Settings
from shared.errors import CorralError
from shared.parentdeath import die_with_parent

log = logging.getLogger("corral.supervisor")

STOP_TIMEOUT = 15.0  # a worker finishing its replies on SIGTERM, before it is killed
RESTART_DELAY = 1.0  # between a worker's death and its replacement (no busy crash loop)


class ControlServer:
    """The supervisor's end of the control socket: leases, and the questions that need the whole
    view. Each lease is recorded with the worker that holds it."""

    def __init__(self, pool: RunnerPool, store: Store, endpoint: str,
                 on_hello: Callable[[int], None]) -> None:
        self.pool = pool
        self.store = store
        self.endpoint = endpoint
        self.on_hello = on_hello
        self._sock: zmq.asyncio.Socket | None = None
        self._leases: dict[int, tuple[bytes, LoadedRunner]] = {}
        self._lease_ids = itertools.count(1)
        self._workers: set[bytes] = set()  # those alive, told when a runner goes
        self._watched: set[str] = set()  # runner endpoints whose end is awaited
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        sock = zmq.asyncio.Context.instance().socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(self.endpoint)
        self._sock = sock
        self._spawn(self._serve())

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, peer: bytes, message: c.Control) -> None:
        if self._sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                await self._sock.send_multipart([peer, p.encode(message)])  # type: ignore[arg-type]

    async def _serve(self) -> None:
        assert self._sock is not None
        while True:
            try:
                peer, frame = await self._sock.recv_multipart()
            except zmq.ZMQError:
                return
            try:
                message = p.decode(frame)
            except (ValueError, TypeError) as exc:
                log.error("dropping a malformed control message: %s", exc)
                continue
            self.handle(peer, message)  # type: ignore[arg-type]

    def handle(self, peer: bytes, message: c.Control) -> None:
        match message:
            case c.Acquire():
                self._spawn(self._acquire(peer, message))
            case c.Release(lease=lease, keep_alive=keep_alive):
                if (held := self._leases.pop(lease, None)) is not None:
                    self.pool.release(held[1], keep_alive)
            case c.Unload(id=rid, key=key):
                self._spawn(self._answer(peer, rid, self.pool.unload(key)))
            case c.Ps(id=rid):
                self._spawn(self._answer(peer, rid, running_models(self.pool)))
            case c.Gauges(id=rid):
                self._spawn(self._answer(peer, rid, self._gauges()))
            case c.Hello(pid=pid):
                self._workers.add(peer)
                self.on_hello(pid)
            case _:
                log.error("unexpected control message %r", message)

    async def _gauges(self) -> dict[str, Any]:
        return (await take_snapshot(self.pool)).to_data()

    async def _answer(self, peer: bytes, rid: int, work: Awaitable[Any]) -> None:
        try:
            reply: c.Control = c.Answer(rid, await work)
        except CorralError as exc:
            reply = c.Failed(rid, exc.message, exc.status)
        except Exception as exc:  # the worker's request must get an answer, not hang
            log.exception("control request %s failed", rid)
            reply = c.Failed(rid, f"internal error: {exc}")
        await self._send(peer, reply)

    async def _acquire(self, peer: bytes, ask: c.Acquire) -> None:
        try:
            model = self.store.get(ask.ref)
            load = p.decode(ask.load)
            assert isinstance(load, p.Load)
            entry = await self.pool.acquire(ask.key, ask.name, model, load, ask.keep_alive)
        except CorralError as exc:
            await self._send(peer, c.Failed(ask.id, exc.message, exc.status))
            return
        except Exception as exc:
            log.exception("lease for %s failed", ask.name)
            await self._send(peer, c.Failed(ask.id, f"internal error: {exc}"))
            return
        if peer not in self._workers:  # the worker died while the model loaded
            self.pool.release(entry, ask.keep_alive)
            return
        lease = next(self._lease_ids)
        self._leases[lease] = (peer, entry)
        self._watch(entry)
        await self._send(peer, c.Leased(ask.id, lease, entry.runner.endpoint,
                                        p.encode(entry.ready)))

    def _watch(self, entry: LoadedRunner) -> None:
        """Tell every worker when this runner ends, so their requests on it fail at once."""
        runner = entry.runner
        if runner.endpoint in self._watched or runner.proc is None:
            return
        self._watched.add(runner.endpoint)

        async def watch() -> None:
            assert runner.proc is not None
            code = await runner.proc.wait()
            self._watched.discard(runner.endpoint)
            # The runner's own watcher may not have named the cause yet: the same words.
            reason = runner.dead or unexpected_exit(code)
            gone = c.RunnerGone(runner.endpoint, reason)
            for worker in list(self._workers):
                await self._send(worker, gone)

        self._spawn(watch())

    def worker_gone(self, pid: int) -> int:
        """A worker died: release every lease it held; how many there were."""
        peer = worker_identity(pid)
        self._workers.discard(peer)
        mine = [lease for lease, (owner, _) in self._leases.items() if owner == peer]
        for lease in mine:
            _, entry = self._leases.pop(lease)
            self.pool.release(entry)
        return len(mine)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None


def listen(host: str, port: int, count: int) -> list[socket.socket]:
    """The HTTP port, bound here: one socket per worker where the kernel spreads connections
    over several on one port (SO_REUSEPORT, by a hash of the client's address), else one that
    all share. A shared socket goes to whichever worker wakes first, and a client's pool of
    keep-alive connections, opened in a burst, often lands whole on one worker. Each socket
    stays open here, so connections that arrive while its worker restarts wait in its queue."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    spread = hasattr(socket, "SO_REUSEPORT") and port != 0 and count > 1
    if spread:
        # Another server of this user's with SO_REUSEPORT on the port would silently share it:
        # a plain bind first fails on any port in use, as a single socket's would.
        socket.create_server((host, port), family=family).close()
    sockets = [socket.create_server((host, port), family=family, backlog=1024,
                                    reuse_port=spread) for _ in range(count if spread else 1)]
    for sock in sockets:
        sock.set_inheritable(True)
    return sockets


class HttpWorkers:
    """N `python -m gateway.httpworker` processes, each replaced when it dies."""

    def __init__(self, count: int, listeners: list[socket.socket], control: ControlServer,
                 runtime: Path, ledger: Path) -> None:
        self.count = count
        self.ledger = ledger
        self.listeners = listeners
        self.control = control
        self.env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(runtime / "metrics")}
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for slot in range(self.count):
            self._tasks.append(asyncio.create_task(self._keep(slot)))

    async def _spawn(self, slot: int) -> asyncio.subprocess.Process:
        fd = self.listeners[slot % len(self.listeners)].fileno()
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.httpworker", "--fd", str(fd),
            "--control", self.control.endpoint, pass_fds=(fd,), env=self.env,
            stdin=asyncio.subprocess.DEVNULL, preexec_fn=die_with_parent)

    async def _keep(self, slot: int) -> None:
        while not self.stopping:
            proc = await self._spawn(slot)
            self.procs[slot] = proc
            code = await proc.wait()
            if self.stopping:
                return
            freed = self.control.worker_gone(proc.pid)
            self._forget_inflight()
            log.warning("HTTP worker pid %s exited (%s); %d lease(s) released; starting another",
                        proc.pid, code, freed)
            await asyncio.sleep(RESTART_DELAY)

    def _forget_inflight(self) -> None:
        """A dead worker's requests in flight must stop counting against their keys'
        concurrency: opening the team ledger forgets those of processes that are gone."""
        if self.ledger.exists():  # (only a server with keys has one)
            try:
                Ledger(self.ledger).close()
            except sqlite3.Error as exc:
                log.warning("could not update the ledger %s: %s", self.ledger, exc)

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()

    async def stop(self) -> None:
        self.stopping = True
        procs = [proc for proc in self.procs.values() if proc.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()


async def supervise(settings: Settings, store: Store, notifier: Notifier) -> None:
    try:
        listeners = listen(settings.host.host, settings.host.port, settings.http_workers)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        log.error("cannot listen on %s: %s", settings.host.url, exc)
        raise SystemExit(1) from None
    runtime = Path(tempfile.mkdtemp(prefix="corral-http-"))  # mode 0700
    (runtime / "metrics").mkdir()  # fresh: no counts from an earlier server
    pool = RunnerPool(settings)
    pool.start()
    started: set[int] = set()
    count = settings.http_workers
    url = settings.host.url

    def on_hello(pid: int) -> None:
        started.add(pid)
        if len(started) == count:  # systemd hears READY=1 once every worker serves
            notifier.ready(f"listening on {url} with {count} HTTP workers, "
                           f"models in {settings.models}")

    control = ControlServer(pool, store, f"ipc://{runtime}/control.sock", on_hello)
    control.start()
    workers = HttpWorkers(count, listeners, control, runtime,
                          ledger_path(settings.keys_file))
    atexit.register(pool.kill_all)  # belt and braces: never leave a runner behind
    atexit.register(workers.kill_all)
    stop = stop_on_signals(notifier)
    log.info("corral listening on %s with %d HTTP workers (models in %s)", url, count,
             settings.models)
    notifier.status(f"starting {count} HTTP workers on {url}")
    watchdog = asyncio.create_task(run_watchdog(notifier))
    try:
        await workers.start()
        await stop.wait()
    finally:
        watchdog.cancel()
        await workers.stop()
        for sock in listeners:
            sock.close()
        control.close()
        await pool.close()
        shutil.rmtree(runtime, ignore_errors=True)
