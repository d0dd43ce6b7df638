"""A stand-in runner for the gateway ceiling benchmark: the real worker loop and protocol, no model.

    python -m tests.bench.standin_runner --socket ipc://...

It is `runner.process.worker.Worker` with the engine and intake replaced by a token source: every
step each generating sequence gets one token (a short word), as a runner with a slot for every
stream would produce them, as fast as the loop turns or every `CORRAL_STANDIN_STEP_MS` milliseconds.
What the gateway receives is therefore exactly what a real runner sends (the same messages, encoded
and sent by the same code), minus llama.cpp. Only the benchmark starts it.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import zmq

from runner.process import worker as real
from runner.process.promptcache import Stats
from runner.process.speculation import Speculation
from shared import protocol as p

WORDS = [" the", " river", " town", " grew", " along", " water", ",", " and", " a", " mill",
         " bridge", " &", " <b>", " café", "\n", " station"]
STEP_S = float(os.environ.get("CORRAL_STANDIN_STEP_MS", "0")) / 1000


@dataclass
class _Seq:
    request: p.Generate
    limit: int
    started_ns: int = field(default_factory=time.perf_counter_ns)
    count: int = 0


class StandinEngine:
    """What the worker asks of an engine, answered without a model."""

    n_ctx = n_ctx_train = 4096
    model_bytes = 0
    device = "cpu"
    cpu_config = "optimized"
    kv_used = 0
    slots = ()  # none of llama.cpp's: a cancelled generation reports no tokens used

    def __init__(self, load: p.Load) -> None:
        self.parallel = load.parallel or 1
        self.seqs: dict[int, _Seq] = {}
        self.queue: list[p.Generate] = []
        self.prompt_cache = self
        self.speculation = Speculation(0)  # never guesses: counts stay 0
        self._next = 0.0

    def stats(self) -> Stats:
        return Stats(0, 0, 0, 0)  # no prompt cache

    def kv_bytes(self) -> int:
        return 0

    @property
    def busy(self) -> bool:
        return bool(self.seqs)

    @property
    def active(self) -> int:
        return len(self.seqs)

    def submit(self, message: p.Generate) -> None:
        limit = int(message.options.get("num_predict", 128))
        self.seqs[message.id] = _Seq(message, limit if limit >= 0 else 128)

    def cancel(self, rid: int) -> None:
        self.seqs.pop(rid, None)

    def set_threads(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass

    def step(self) -> list[p.Message]:
        if STEP_S:
            delay = self._next - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self._next = time.perf_counter() + STEP_S
        out: list[p.Message] = []
        now = time.perf_counter_ns()
        for rid, seq in list(self.seqs.items()):
            if seq.count < seq.limit:
                text = WORDS[seq.count % len(WORDS)]
                seq.count += 1
                logprobs = None
                if seq.request.logprobs >= 0:
                    logprobs = [{"token": text, "logprob": -0.5, "bytes": list(text.encode()),
                                 "top_logprobs": []}]
                out.append(p.Chunk(rid, text, logprobs))
            if seq.count >= seq.limit:
                del self.seqs[rid]
                out.append(p.Done(rid, "length", 8, 1000, seq.count,
                                  max(now - seq.started_ns, 1), list(range(8 + seq.count))))
        return out


class StandinIntake:
    """Every request is accepted at once; embeddings and tokenizing are not offered."""

    pending = 0

    def __init__(self, engine: StandinEngine) -> None:
        self.engine = engine

    def wait_ms(self, idle_ms: int) -> int:
        return idle_ms

    def submit(self, message: p.Message) -> list[p.Message]:
        if isinstance(message, p.Generate):
            self.engine.submit(message)
            return []
        if isinstance(message, p.Tokenize):  # a rough count, enough for the gateway's needs
            return [p.Tokens(message.id, list(range(len(message.text.split()) + 1)))]
        return [p.Error(message.id, "the stand-in runner does not embed", 400)]

    def cancel(self, rid: int) -> bool:
        return False

    def step(self) -> list[p.Message]:
        return []

    def close(self) -> bool:
        return True


class StandinWorker(real.Worker):
    def __init__(self, endpoint: str) -> None:
        # Far ahead of a slow gateway, a ROUTER drops what passes its send limit (1,000 messages
        # by default); a real runner is never that far ahead. Nothing may be lost here, so the
        # limit goes before the socket exists (the gateway connects the moment it binds).
        zmq.Context.instance().setsockopt(zmq.SNDHWM, 0)
        super().__init__(endpoint)

    def load(self, peer: bytes, message: p.Load) -> None:
        engine = StandinEngine(message)
        self.engine = engine  # type: ignore[assignment]
        self.intake = StandinIntake(engine)  # type: ignore[assignment]
        self.send(peer, p.Ready(pid=os.getpid(), n_ctx=engine.n_ctx, n_ctx_train=engine.n_ctx_train,
                          parallel=engine.parallel, model_bytes=0, kv_bytes=0, device="cpu"))


if __name__ == "__main__":
    real.Worker = StandinWorker  # type: ignore[misc]
    sys.exit(real.main())
