"""The gateway's handle on one runner process: start it, talk to it, notice when it dies.

One asyncio DEALER socket per runner carries every request; a reader task routes each reply to
the queue of the request with that id. A watcher task awaits the process: if it exits, every
request in flight gets a clear error at once instead of hanging.

`RunnerConnection` is the talking part alone: an HTTP worker (CORRAL_HTTP_WORKERS >= 2) connects
one of its own to a runner the supervisor started, so that tokens flow runner -> worker directly;
`RunnerProcess` adds the process (start, watch, stop) for the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import zmq

from runner.cpusafety import crash_signal, describe_crash
from shared import protocol as p
from shared.errors import CorralError, RunnerError

log = logging.getLogger("corral.runner")

HEALTH_TIMEOUT = 30.0  # one long prefill or embedding step may hold a reply this long
STOP_TIMEOUT = 5.0
CANCEL_TIMEOUT = 5.0  # how long a dropped stream waits for the runner's count of its tokens

_zctx: zmq.Context | None = None
_SEND_RETRY_S = 0.001  # a send that finds the socket's queue full (1,000 messages) waits this


def _context() -> zmq.Context:
    global _zctx
    if _zctx is None:
        _zctx = zmq.Context()
    return _zctx


def exit_reason(code: int) -> str:
    """An exit status in words: a crash signal with its likely cause, another signal by name."""
    if (number := crash_signal(code)) is not None:
        return f"crashed with {describe_crash(number)}"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def unexpected_exit(code: int) -> str:
    """Why a runner that nobody stopped is gone, in the words every request on it ends with."""
    return f"runner process terminated unexpectedly ({exit_reason(code)})"


class _Inbox:
    """A generation's replies as they arrive. The reader appends; the reader wakes the request
    only when it is waiting, and the request takes everything that has come at once, so a
    gateway that falls behind handles many tokens per wake-up instead of one."""

    __slots__ = ("items", "waiter")

    def __init__(self) -> None:
        self.items: deque[p.Message] = deque()
        self.waiter: asyncio.Future[None] | None = None

    def put_nowait(self, message: p.Message) -> None:
        self.items.append(message)
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def take(self) -> list[p.Message]:
        while not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        items = list(self.items)
        self.items.clear()
        return items


class RunnerConnection:
    """One DEALER socket to a runner and the requests in flight on it."""

    def __init__(self, name: str, endpoint: str) -> None:
        self.name = name
        self.endpoint = endpoint
        self.ready: p.Ready | None = None
        self.last_health: p.HealthReply | None = None  # its latest report (KV cache use, queue)
        self.dead: str | None = None  # why it stopped, once it has
        self._sock: zmq.Socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, asyncio.Queue[p.Message] | _Inbox] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._request_ids = itertools.count(1)

    @property
    def alive(self) -> bool:
        return self._sock is not None and self.dead is None

    def connect(self) -> None:
        """Open the socket and start reading replies (sends queue until the runner binds).

        Replies are read by a callback on the socket's file descriptor that takes every frame
        waiting, not by zmq.asyncio: its futures and handler bookkeeping for each frame were
        60% of the gateway's CPU per streamed token (py-spy, one stream)."""
        sock = _context().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.FD, self._drain)

    def fail(self, reason: str) -> None:
        """The runner is gone: every request in flight ends with `reason`."""
        if self.dead is None:
            self.dead = reason
        error = p.Error(0, self.dead)
        for queue in self._pending.values():
            queue.put_nowait(error)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.FD)
            self._sock.close(linger=0)
            self._sock = None

    def _unrouted(self, message: p.Message) -> None:
        """A reply for no request in flight (one given up on): nothing to do."""

    def _drain(self) -> None:
        """Route every frame waiting on the socket. ZeroMQ's descriptor signals edges, so this
        reads until nothing is left (and runs again after each send, which can take an edge)."""
        sock = self._sock
        pending = self._pending
        # Asking for the events first: zmq.Again raised at the end of every drain cost as much
        # as the frame's routing.
        while sock is not None:
            try:
                if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    return
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.ZMQError:  # closed under us
                return
            for message in p.decode_many(frame):  # a step's output for all its sequences
                rid = p.request_id(message)
                if (queue := pending.get(rid)) is not None:
                    queue.put_nowait(message)
                else:
                    self._unrouted(message)
            sock = self._sock

    async def _send_frame(self, frame: bytes) -> None:
        while True:
            if self._sock is None:
                raise RunnerError(self.dead or "runner is not running")
            try:
                self._sock.send(frame, zmq.NOBLOCK)
                break
            except zmq.Again:  # its queue is full: the runner is behind
                await asyncio.sleep(_SEND_RETRY_S)
        if self._loop is not None:
            self._loop.call_soon(self._drain)

    # --- requests -----------------------------------------------------------------------------

    async def _send(self, message: p.Message) -> None:
        if not self.alive or self._sock is None:
            raise RunnerError(self.dead or "runner is not running")
        await self._send_frame(p.encode_request(message))

    def _open(self) -> tuple[int, asyncio.Queue[p.Message]]:
        rid = next(self._request_ids)
        queue: asyncio.Queue[p.Message] = asyncio.Queue()
        self._pending[rid] = queue
        return rid, queue

    async def _call(self, message: p.Message, queue: asyncio.Queue[p.Message], rid: int,
                    timeout: float | None = None) -> p.Message:
        try:
            await self._send(message)
            reply = await asyncio.wait_for(queue.get(), timeout)
        finally:
            self._pending.pop(rid, None)
        if isinstance(reply, p.Error):
            raise CorralError(reply.message, reply.status)
        return reply

    async def generate(self, request: p.Generate,
                       on_cancel: Callable[[asyncio.Future[p.Done | None]], None] | None = None
                       ) -> AsyncIterator[list[p.Chunk | p.Done]]:
        """Stream a generation, as lists of what has arrived since the last (Chunks, then a
        Done at the end of the last list). Leaving the loop early cancels the sequence in the
        runner; `on_cancel` then gets a future of the runner's count of what it used until
        then (a task of its own: a cancelled request may not wait here, see `_so_far`)."""
        rid = next(self._request_ids)
        inbox = _Inbox()
        self._pending[rid] = inbox
        request.id = rid
        finished = False
        try:
            await self._send(request)
            while not finished:
                batch: list[p.Chunk | p.Done] = []
                for message in await inbox.take():
                    if isinstance(message, p.Chunk):
                        batch.append(message)
                    elif isinstance(message, p.Done):
                        finished = True
                        batch.append(message)
                        break
                    elif isinstance(message, p.Error):
                        finished = True
                        if batch:
                            yield batch
                        raise CorralError(message.message, message.status)
                yield batch
        finally:
            counting = False
            if not finished and self.alive:
                with contextlib.suppress(zmq.ZMQError, RunnerError):
                    await self._send(p.Cancel(rid))
                    if on_cancel is not None:
                        on_cancel(asyncio.ensure_future(self._so_far(rid, inbox)))
                        counting = True
            if not counting:
                self._pending.pop(rid, None)

    async def _so_far(self, rid: int, inbox: _Inbox) -> p.Done | None:
        """The runner answers a Cancel with a Done of the tokens used so far (or had sent the
        generation's own Done already). Awaited outside the request's stream: a dropped
        stream's body runs under Starlette's cancelled scope, where every await is cancelled."""
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT):
                while True:
                    for message in await inbox.take():
                        if isinstance(message, p.Done):
                            return message
                        if isinstance(message, p.Error):
                            return None
        except TimeoutError:  # a runner busy that long: the tokens stay uncounted
            return None
        finally:
            self._pending.pop(rid, None)

    async def embed(self, inputs: list[str], *, truncate: bool, normalize: bool) -> p.Embeddings:
        rid, queue = self._open()
        reply = await self._call(p.Embed(rid, inputs, truncate, normalize), queue, rid)
        assert isinstance(reply, p.Embeddings)
        return reply

    async def tokenize(self, text: str, *, add_special: bool = True,
                       images: list[bytes] | None = None) -> list[int]:
        """The text's tokens; with `images`, each [img-N] tag counts as that image's positions
        (placeholder ids, not tokens of the vocabulary)."""
        rid, queue = self._open()
        reply = await self._call(p.Tokenize(rid, text, add_special, images), queue, rid)
        assert isinstance(reply, p.Tokens)
        return reply.tokens

    async def set_threads(self, n_threads: int) -> None:
        """Change the runner's CPU threads; it takes effect at its next decode step."""
        with contextlib.suppress(zmq.ZMQError, RunnerError):
            await self._send(p.SetThreads(n_threads))

    async def health(self, timeout: float = HEALTH_TIMEOUT) -> bool:
        """False when the runner does not answer in time; the pool then treats it as dead."""
        rid, queue = self._open()
        try:
            reply = await self._call(p.Health(rid), queue, rid, timeout)
        except (TimeoutError, CorralError):
            return False
        if isinstance(reply, p.HealthReply):
            self.last_health = reply
        return True



class RunnerProcess(RunnerConnection):
    """A runner subprocess and the requests in flight on it."""

    _ids = itertools.count(1)
    # The program a runner runs. Only the gateway ceiling benchmark changes it, to a stand-in that
    # speaks the same protocol without a model (tests/bench/standin_runner.py).
    module = "runner.process.worker"

    def __init__(self, name: str, load: p.Load, runtime_dir: Path, *, debug: bool = False) -> None:
        super().__init__(
            name, f"ipc://{runtime_dir}/runner-{os.getpid()}-{next(self._ids)}.sock")
        self.load = load
        self.debug = debug
        self.proc: asyncio.subprocess.Process | None = None
        self._load_reply: asyncio.Future[p.Message] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has ended (negative: the signal that ended it)."""
        return self.proc.returncode if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.dead is None

    async def start(self, timeout: float) -> p.Ready:
        # Not the server's API key: a runner has no use for it, and /proc/PID/environ shows it.
        env = {k: v for k, v in os.environ.items() if k != "CORRAL_API_KEY"}
        env["CORRAL_RUNNER_LOG"] = "DEBUG" if self.debug else "WARNING"
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.module, "--socket", self.endpoint,
            stdin=asyncio.subprocess.DEVNULL, env=env,
        )
        loop = asyncio.get_running_loop()
        self._load_reply = loop.create_future()
        self.connect()  # sends queue until the runner binds
        self._tasks.append(loop.create_task(self._watch()))
        await self._send_frame(p.encode(self.load))
        try:
            reply = await asyncio.wait_for(asyncio.shield(self._load_reply), timeout)
        except TimeoutError:
            await self.stop()
            raise RunnerError(
                f"timed out after {timeout:.0f}s waiting for the model to load") from None
        if isinstance(reply, p.Error):
            await self.stop()
            raise RunnerError(f"failed to load model: {reply.message}")
        assert isinstance(reply, p.Ready)
        self.ready = reply
        return reply

    def _unrouted(self, message: p.Message) -> None:
        if p.request_id(message) == 0 and self._load_reply and not self._load_reply.done():
            self._load_reply.set_result(message)

    async def _watch(self) -> None:
        assert self.proc is not None
        code = await self.proc.wait()
        if self.dead is None:
            self.dead = unexpected_exit(code)
            log.warning("%s: %s", self.name, self.dead)
        if self._load_reply and not self._load_reply.done():
            self._load_reply.set_result(p.Error(0, self.dead))
        self.fail(self.dead)

    async def stop(self) -> None:
        """Ask the runner to exit; kill it if it does not within STOP_TIMEOUT."""
        if self.dead is None:
            self.dead = "runner was stopped"
        proc = self.proc
        if proc is not None and proc.returncode is None:
            if self._sock is not None:
                with contextlib.suppress(zmq.ZMQError, RunnerError):
                    await self._send_frame(p.encode(p.Shutdown()))
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self.close()
        path = self.endpoint.removeprefix("ipc://")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def kill_now(self) -> None:
        """Last resort at interpreter exit: no awaiting, just SIGKILL by PID."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
