"""An HTTP worker's runner pool (CORRAL_HTTP_WORKERS >= 2): the supervisor decides, the worker
streams.

It offers what the gateway uses of `RunnerPool` (lease, acquire/release, unload, plus /api/ps's
list and /metrics' gauges), each decision asked of the supervisor over its control socket
(shared/control.py). A lease comes back as the runner's endpoint: the worker connects its own
DEALER there (one per runner, kept while the runner lives) and the tokens flow runner -> worker,
never through the supervisor.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

from runner.supervisor.client import RunnerConnection
from runner.supervisor.pool import Leasing
from shared import control as c
from shared import protocol as p
from shared.config import Settings
from shared.errors import CorralError, RunnerError

log = logging.getLogger("corral.worker")


def worker_identity(pid: int) -> bytes:
    """A worker's name on the control socket: the supervisor knows which leases die with it."""
    return b"worker-%d" % pid


@dataclass(eq=False, slots=True)
class RemoteLease:
    """What a request holds (the `LoadedRunner` of a one-process server): the runner to talk to
    and what it reported when it loaded."""

    runner: RunnerConnection
    ready: p.Ready
    lease: int


class RemotePool(Leasing[RemoteLease]):
    def __init__(self, settings: Settings, control: str) -> None:
        self.settings = settings
        self.control = control
        self._sock: zmq.asyncio.Socket | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[c.Control]] = {}
        self._abandoned: set[int] = set()  # acquires given up on: release them when they come
        self._runners: dict[str, RunnerConnection] = {}  # endpoint -> our connection
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, worker_identity(os.getpid()))
        sock.connect(self.control)
        self._sock = sock
        self._task = asyncio.get_running_loop().create_task(self._read())
        self._post(c.Hello(os.getpid()))

    def _post(self, message: c.Control) -> None:
        """Send without waiting (the socket queues; the supervisor reads it at once)."""
        if self._sock is not None:
            self._sock.send(p.encode(message))  # type: ignore[arg-type]

    async def _read(self) -> None:
        assert self._sock is not None
        while True:
            try:
                frame = await self._sock.recv()
            except (zmq.ZMQError, asyncio.CancelledError):
                return
            message = p.decode(frame)
            if isinstance(message, c.RunnerGone):
                if (runner := self._runners.pop(message.endpoint, None)) is not None:
                    runner.fail(message.reason)
                    runner.close()
                continue
            rid = p.request_id(message)  # type: ignore[arg-type]
            if (future := self._waiting.pop(rid, None)) is not None and not future.done():
                future.set_result(message)  # type: ignore[arg-type]
            elif rid in self._abandoned:
                self._abandoned.discard(rid)
                if isinstance(message, c.Leased):
                    self._post(c.Release(message.lease, None))

    async def _ask(self, message: c.Control) -> c.Control:
        rid = p.request_id(message)  # type: ignore[arg-type]
        future: asyncio.Future[c.Control] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        self._post(message)
        try:
            reply = await future
        except asyncio.CancelledError:  # the client went away while a model loaded
            if self._waiting.pop(rid, None) is not None:
                self._abandoned.add(rid)
            elif future.done() and isinstance(future.result(), c.Leased):
                self._post(c.Release(future.result().lease, None))  # type: ignore[union-attr]
            raise
        if isinstance(reply, c.Failed):
            raise CorralError(reply.message, reply.status)
        return reply

    # --- what the gateway uses ------------------------------------------------------------------

    async def acquire(self, key: str, name: str, model: Any, load: p.Load,
                      keep_alive: float | None) -> RemoteLease:
        reply = await self._ask(c.Acquire(next(self._ids), key, name, model.name.full(),
                                          p.encode_request(load), keep_alive))
        assert isinstance(reply, c.Leased)
        ready = p.decode(reply.ready)
        assert isinstance(ready, p.Ready)
        runner = self._runners.get(reply.endpoint)
        if runner is None or not runner.alive:
            runner = RunnerConnection(name, reply.endpoint)
            runner.connect()
            runner.ready = ready
            self._runners[reply.endpoint] = runner
        return RemoteLease(runner, ready, reply.lease)

    def release(self, entry: RemoteLease, keep_alive: float | None = None) -> None:
        self._post(c.Release(entry.lease, keep_alive))

    async def unload(self, key: str) -> bool:
        reply = await self._ask(c.Unload(next(self._ids), key))
        assert isinstance(reply, c.Answer)
        return bool(reply.value)

    async def ps(self) -> list[dict[str, Any]]:
        """/api/ps's entries for every loaded model, as the supervisor sees them."""
        reply = await self._ask(c.Ps(next(self._ids)))
        assert isinstance(reply, c.Answer)
        return list(reply.value)

    async def gauges(self) -> dict[str, Any]:
        """The supervisor's state for /metrics (gateway.metrics.Snapshot as plain data)."""
        reply = await self._ask(c.Gauges(next(self._ids)))
        assert isinstance(reply, c.Answer)
        return dict(reply.value)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(RunnerError("the server is stopping"))
        for runner in self._runners.values():
            runner.close()
        self._runners.clear()
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def kill_all(self) -> None:
        """The supervisor owns the runners; a worker has none to kill."""
