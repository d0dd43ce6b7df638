"""A runner process: one loaded model, serving the gateway over a ZeroMQ ROUTER socket.

Started by the gateway as `python -m runner.process.worker --socket ipc://...`. It binds, waits for
`Load`, loads the model, answers `Ready`, then runs a busy loop: drain every waiting message
without blocking, run one engine step if there is work, send what the step produced. An idle runner
blocks in poll instead of spinning. It exits on `Shutdown`, on SIGTERM, or when its parent dies.

Several peers may connect (the supervisor, and each HTTP worker with CORRAL_HTTP_WORKERS): every
reply goes to the peer that sent the request (runner/process/peers.py), and the requests of a peer
that has gone away (its process died) are cancelled the first time a reply cannot reach it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import stat
import sys

import zmq

from runner.process import devicemem
from runner.process.engine import Engine, LoadError
from runner.process.intake import Intake
from runner.process.peers import Peers
from runner.process.wholereply import WholeReplies
from shared import protocol as p
from shared.errors import CorralError
from shared.parentdeath import die_with_parent

log = logging.getLogger("corral.runner")

_IDLE_POLL_MS = 1000


class Worker:
    def __init__(self, endpoint: str) -> None:
        self.zctx = zmq.Context.instance()
        self.sock = self.zctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        # A reply to a peer that is gone raises instead of vanishing: its requests are cancelled.
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.bind(endpoint)
        self.peers = Peers()
        self.engine: Engine | None = None
        self.intake: Intake | None = None  # prepares big requests off the loop
        self.whole = WholeReplies()  # "stream": false replies, sent in one piece at the end
        self.running = True
        self.parent = os.getppid()

    def send(self, peer: bytes, message: p.Message) -> None:
        """A direct answer (load, health) to `peer`, with the id it sent."""
        self._send(peer, p.encode(message))

    def send_step(self, messages: list[p.Message]) -> None:
        """What one step produced, one frame per peer for all its sequences (whole replies held
        back until they are done)."""
        messages = self.whole.route(messages)
        if messages:
            for peer, mine in self.peers.route(messages).items():
                self._send(peer, p.encode_many(mine))

    def _send(self, peer: bytes, frame: bytes) -> None:
        try:
            self.sock.send_multipart([peer, frame], zmq.NOBLOCK)
        except zmq.Again:  # its queue is full (it stopped reading): dropped, as ZeroMQ would
            log.warning("a peer is not reading; dropped a reply")
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.drop_peer(peer)

    def drop_peer(self, peer: bytes) -> None:
        """The peer has gone: cancel its requests so that their slots serve others."""
        for inner in self.peers.of_peer(peer):
            self.cancel(inner)

    def receive(self, timeout_ms: int) -> list[tuple[bytes, p.Message]]:
        messages: list[tuple[bytes, p.Message]] = []
        if not self.sock.poll(timeout_ms):
            return messages
        while True:
            try:
                peer, frame = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return messages
            try:
                messages.append((peer, p.decode(frame)))
            except (ValueError, TypeError) as exc:
                log.error("dropping a malformed message: %s", exc)

    def run(self) -> None:
        while self.running:
            engine, intake = self.engine, self.intake
            busy = engine is not None and engine.busy
            wait = intake.wait_ms(_IDLE_POLL_MS) if intake is not None else _IDLE_POLL_MS
            for peer, message in self.receive(0 if busy else wait):
                self.handle(peer, message)
            out: list[p.Message] = []
            if self.engine is not None and self.engine.busy:
                out = self.engine.step()
            elif os.getppid() != self.parent:
                return  # the gateway is gone
            if self.intake is not None and (prepared := self.intake.step()):
                out = out + prepared
            self.send_step(out)

    def handle(self, peer: bytes, message: p.Message) -> None:
        engine = self.engine
        match message:
            case p.Load():
                self.load(peer, message)
            case p.Shutdown():
                self.running = False
            case p.Health(id=rid):
                active = engine.active if engine else 0
                queued = len(engine.queue) if engine else 0
                queued += self.intake.pending if self.intake else 0
                cache = engine.prompt_cache.stats() if engine else None
                self.send(peer, p.HealthReply(
                    rid, active, queued, engine.kv_used if engine else 0,
                    [cache.entries, cache.bytes, cache.hits, cache.misses] if cache else [],
                    [engine.speculation.drafted, engine.speculation.accepted] if engine else []))
            case p.SetThreads(n_threads=n):
                if engine is not None:
                    engine.set_threads(n)
            case _ if engine is None:
                self.send(peer, p.Error(p.request_id(message), "model is not loaded"))
            case p.Generate() | p.Embed() | p.Tokenize():
                message.id = self.peers.admit(peer, message.id)
                if isinstance(message, p.Generate) and message.whole:
                    self.whole.start(message.id)
                self.guard(message.id, self.submit, message)
            case p.Cancel(id=rid):
                if (inner := self.peers.find(peer, rid)) is not None:
                    so_far = self._so_far(inner)  # what it used, for the sender's usage
                    self.cancel(inner)
                    so_far.id = rid
                    self.send(peer, so_far)
            case _:
                log.error("unexpected message %r", message)

    def cancel(self, inner: int) -> None:
        """Stop a request (by the runner's own id) wherever it is; nothing more is sent for it."""
        self.peers.forget(inner)
        self.whole.drop(inner)
        if self.intake is not None and not self.intake.cancel(inner) and self.engine is not None:
            self.engine.cancel(inner)

    def _so_far(self, inner: int) -> p.Done:
        """The answer to a Cancel: a Done (done_reason "cancel") with the prompt tokens the
        generation read and the tokens it generated so far (zeros while it waited). A client
        that drops a stream still used them: its usage, metrics and access log count them."""
        for slot in self.engine.slots if self.engine is not None else ():
            seq = slot.sequence
            if seq is not None and seq.request_id == inner:
                return p.Done(inner, "cancel", len(seq.prompt) - len(seq.pending), 0,
                              len(seq.generated), 0, cached_tokens=seq.cached)
        return p.Done(inner, "cancel", 0, 0, 0, 0)  # still waiting or being prepared: none

    def submit(self, message: p.Generate | p.Embed | p.Tokenize) -> None:
        assert self.intake is not None
        self.send_step(self.intake.submit(message))

    def guard(self, request_id: int, fn, message: p.Message) -> None:  # noqa: ANN001
        try:
            fn(message)
        except CorralError as exc:
            self.whole.drop(request_id)
            self.send_step([p.Error(request_id, exc.message, exc.status)])
        except Exception as exc:  # the runner must outlive one bad request
            log.exception("request %s failed", request_id)
            self.whole.drop(request_id)
            self.send_step([p.Error(request_id, f"runner error: {exc}")])

    def load(self, peer: bytes, message: p.Load) -> None:
        try:
            with devicemem.capture() as buffers:  # llama.cpp's per-device allocations
                engine = Engine(message)
        except (LoadError, OSError, ValueError) as exc:
            self.send(peer, p.Error(0, str(exc)))
            self.running = False
            return
        self.engine = engine
        self.intake = Intake(engine)
        self.send(peer, p.Ready(
            pid=os.getpid(), n_ctx=engine.n_ctx, n_ctx_train=engine.n_ctx_train,
            parallel=engine.parallel, model_bytes=engine.model_bytes, kv_bytes=engine.kv_bytes(),
            device=engine.device, cpu_config=engine.cpu_config,
            device_bytes=buffers.device_bytes(),
            buffer_bytes=dict(buffers.by_kind),
        ))

    def close(self) -> None:
        # A tokenization still running reads the vocabulary: then leave the model to the exit.
        if self.engine is not None and (self.intake is None or self.intake.close()):
            self.engine.close()
        self.sock.close(linger=500)


def close_inherited_listeners() -> int:
    """Close the listening sockets this process inherited; returns how many.

    The gateway spawns runners from uvloop's loop, whose spawn leaves inheritable descriptors
    open in the child (close_fds is not applied), and Hypercorn makes its listening socket
    inheritable: a runner would hold the gateway's port (seen in `ss -ltnp`, and kept bound
    after the gateway dies). A runner listens on nothing but its own ipc socket."""
    closed = 0
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # not Linux: nothing to look at
        return 0
    for name in names:
        fd = int(name)
        try:
            if fd < 3 or not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=fd)
        except OSError:  # (the listing's own descriptor, gone by now)
            continue
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.close()
            closed += 1
        else:
            sock.detach()  # not ours to close
    return closed


def main(argv: list[str] | None = None) -> int:
    close_inherited_listeners()
    parser = argparse.ArgumentParser(prog="corral-runner")
    parser.add_argument("--socket", required=True, help="ipc:// endpoint to bind")
    args = parser.parse_args(argv)
    level = os.environ.get("CORRAL_RUNNER_LOG", "WARNING")
    logging.basicConfig(level=level, format="runner %(process)d %(levelname)s %(message)s",
                        stream=sys.stderr)
    # llama.cpp's own log lines go through this logger; keep them for OLLAMA_DEBUG only.
    logging.getLogger("llama-cpp-python").setLevel(
        logging.DEBUG if level == "DEBUG" else logging.ERROR)
    die_with_parent()  # no runner is ever orphaned
    worker = Worker(args.socket)

    def stop(signum: int, frame: object) -> None:
        worker.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the gateway, which stops us
    try:
        worker.run()
    finally:
        worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
