"""A runner process: one loaded model, serving the gateway over a ZeroMQ ROUTER socket.

Started by the gateway as `python -m runner.process.worker --socket ipc://...`. It binds, waits for
`Load`, loads the model, answers `Ready`, then runs a busy loop: drain every waiting message
without blocking, run one engine step if there is work, send what the step produced. An idle runner
blocks in poll instead of spinning. It exits on `Shutdown`, on SIGTERM, or when its parent dies.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys

import zmq

from runner.process import devicemem
from runner.process.engine import Engine, LoadError
from runner.process.intake import Intake
from runner.process.wholereply import WholeReplies
from shared import protocol as p
from shared.errors import CorralError

log = logging.getLogger("corral.runner")

_PR_SET_PDEATHSIG = 1
_IDLE_POLL_MS = 1000


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM us when the gateway dies, so no runner is ever orphaned."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class Worker:
    def __init__(self, endpoint: str) -> None:
        self.zctx = zmq.Context.instance()
        self.sock = self.zctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.bind(endpoint)
        self.peer: bytes | None = None
        self.engine: Engine | None = None
        self.intake: Intake | None = None  # prepares big requests off the loop
        self.whole = WholeReplies()  # "stream": false replies, sent in one piece at the end
        self.running = True
        self.parent = os.getppid()

    def send(self, message: p.Message) -> None:
        if self.peer is not None:
            self.sock.send_multipart([self.peer, p.encode(message)])

    def send_step(self, messages: list[p.Message]) -> None:
        """What one step produced, for every sequence, in one frame (whole replies held back
        until they are done)."""
        messages = self.whole.route(messages)
        if messages and self.peer is not None:
            self.sock.send_multipart([self.peer, p.encode_many(messages)])

    def receive(self, timeout_ms: int) -> list[p.Message]:
        messages: list[p.Message] = []
        if not self.sock.poll(timeout_ms):
            return messages
        while True:
            try:
                peer, frame = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return messages
            self.peer = peer
            try:
                messages.append(p.decode(frame))
            except (ValueError, TypeError) as exc:
                log.error("dropping a malformed message: %s", exc)

    def run(self) -> None:
        while self.running:
            engine, intake = self.engine, self.intake
            busy = engine is not None and engine.busy
            wait = intake.wait_ms(_IDLE_POLL_MS) if intake is not None else _IDLE_POLL_MS
            for message in self.receive(0 if busy else wait):
                self.handle(message)
            out: list[p.Message] = []
            if self.engine is not None and self.engine.busy:
                out = self.engine.step()
            elif os.getppid() != self.parent:
                return  # the gateway is gone
            if self.intake is not None and (prepared := self.intake.step()):
                out = out + prepared
            self.send_step(out)

    def handle(self, message: p.Message) -> None:
        engine = self.engine
        match message:
            case p.Load():
                self.load(message)
            case p.Shutdown():
                self.running = False
            case p.Health(id=rid):
                active = engine.active if engine else 0
                queued = len(engine.queue) if engine else 0
                queued += self.intake.pending if self.intake else 0
                cache = engine.prompt_cache.stats() if engine else None
                self.send(p.HealthReply(
                    rid, active, queued, engine.kv_used if engine else 0,
                    [cache.entries, cache.bytes, cache.hits, cache.misses] if cache else []))
            case p.SetThreads(n_threads=n):
                if engine is not None:
                    engine.set_threads(n)
            case _ if engine is None:
                self.send(p.Error(p.request_id(message), "model is not loaded"))
            case p.Generate() | p.Embed() | p.Tokenize():
                if isinstance(message, p.Generate) and message.whole:
                    self.whole.start(message.id)
                self.guard(message.id, self.submit, message)
            case p.Cancel(id=rid):
                self.whole.drop(rid)
                if self.intake is None or not self.intake.cancel(rid):
                    engine.cancel(rid)
            case _:
                log.error("unexpected message %r", message)

    def submit(self, message: p.Generate | p.Embed | p.Tokenize) -> None:
        assert self.intake is not None
        self.send_step(self.intake.submit(message))

    def guard(self, request_id: int, fn, message: p.Message) -> None:  # noqa: ANN001
        try:
            fn(message)
        except CorralError as exc:
            self.whole.drop(request_id)
            self.send(p.Error(request_id, exc.message, exc.status))
        except Exception as exc:  # the runner must outlive one bad request
            log.exception("request %s failed", request_id)
            self.whole.drop(request_id)
            self.send(p.Error(request_id, f"runner error: {exc}"))

    def load(self, message: p.Load) -> None:
        try:
            with devicemem.capture() as buffers:  # llama.cpp's per-device allocations
                engine = Engine(message)
        except (LoadError, OSError, ValueError) as exc:
            self.send(p.Error(0, str(exc)))
            self.running = False
            return
        self.engine = engine
        self.intake = Intake(engine)
        self.send(p.Ready(
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="corral-runner")
    parser.add_argument("--socket", required=True, help="ipc:// endpoint to bind")
    args = parser.parse_args(argv)
    level = os.environ.get("CORRAL_RUNNER_LOG", "WARNING")
    logging.basicConfig(level=level, format="runner %(process)d %(levelname)s %(message)s",
                        stream=sys.stderr)
    # llama.cpp's own log lines go through this logger; keep them for OLLAMA_DEBUG only.
    logging.getLogger("llama-cpp-python").setLevel(
        logging.DEBUG if level == "DEBUG" else logging.ERROR)
    _die_with_parent()
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
