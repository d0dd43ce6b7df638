"""Work that must not stall the decode loop: preparing large prompts, and embedding requests.

The worker's loop advances every stream by one token per step, so anything long done between
two steps freezes them all (a 10 MB prompt took a minute to tokenize). The intake keeps that work
out of the loop:

- A request with a lot of text is prepared on a background thread: template rendering,
  tokenizing (llama.cpp's tokenizer runs in C with the GIL released, as every ctypes call does)
  and truncation. The finished sequence joins the engine's queue between two steps. Small
  requests are prepared inline, where a thread hop would only add latency.
- An embedding request is tokenized the same way, then its inputs are decoded a group at a time,
  one group between two decode steps, and small groups while other requests are generating.

Everything that touches the engine's state (its queue, slots, contexts) stays on the loop's
thread; the background thread only reads the model's vocabulary.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from runner.engine import MIXED_STEP_S, Engine
from shared import protocol as p
from shared.errors import CorralError

log = logging.getLogger("corral.runner")

# Text up to this many characters is prepared inline: tokenizing it takes well under a
# millisecond, less than handing it to the thread and back.
INLINE_CHARS = 16_384
# Tokens per embedding decode while other requests generate: as many as take MIXED_STEP_S at
# the measured speed (as runner.engine reads prompts beside streams), within these bounds, and
# this many before anything is measured; with nothing generating, a whole batch.
EMBED_TOKENS_WHILE_DECODING = 128
EMBED_TOKENS_MIN, EMBED_TOKENS_MAX = 32, 1024
# How often the idle loop looks for finished preparations.
WAIT_MS = 2
# The thread's nice value: on a busy CPU the decode threads come first (a token gap costs every
# stream; a few more seconds of tokenizing cost one request), while an idle core is still used.
THREAD_NICE = 10
CLOSE_WAIT_S = 2.0

Prepared = p.Generate | p.Embed | p.Tokenize


@dataclass
class _EmbedJob:
    request: p.Embed
    inputs: list[list[int]]
    vectors: list[bytes] = field(default_factory=list)
    next: int = 0  # the first input not yet decoded


def text_size(message: Prepared) -> int:
    """Characters of text a request brings (what tokenizing it costs)."""
    match message:
        case p.Generate():
            size = len(message.prompt or "")
            for item in message.messages or ():
                content = item.get("content") if isinstance(item, dict) else None
                size += len(content) if isinstance(content, str) else 0
            return size
        case p.Embed():
            return sum(len(text) for text in message.inputs)
        case p.Tokenize():
            return len(message.text)
    return 0


class Intake:
    """Prepares Generate, Embed and Tokenize requests for `engine` without blocking its loop.

    The worker calls `submit` for each such request, `cancel` for a Cancel, and `step` once per
    turn of its loop; each returns the replies to send.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Prepared] | None] = queue.SimpleQueue()
        self._preparing: dict[int, tuple[Future[Any], Prepared]] = {}  # request id -> work
        self._embeds: deque[_EmbedJob] = deque()
        self._embed_token_s = 0.0  # seconds per embedded token, measured (moving average)
        # A daemon thread: a runner told to exit mid-tokenization must not wait for it.
        self._thread = threading.Thread(target=self._work, name="corral-intake", daemon=True)
        self._thread.start()

    # --- the loop's side ------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Requests being prepared or embedded (the health reply counts them as queued)."""
        return len(self._preparing) + len(self._embeds)

    @property
    def computing(self) -> bool:
        """Whether the loop has work of ours to do at once (embedding groups)."""
        return bool(self._embeds)

    def wait_ms(self, idle_ms: int) -> int:
        """How long the loop may block waiting for messages: briefly while the thread works."""
        return WAIT_MS if self._preparing else idle_ms

    def submit(self, message: Prepared) -> list[p.Message]:
        if isinstance(message, p.Embed):
            try:
                self.engine.embedder()  # made here, on the loop's thread, once
            except CorralError as exc:
                return [p.Error(message.id, exc.message, exc.status)]
        if text_size(message) <= INLINE_CHARS:
            return self._accept(message, self._run_inline(message))
        work: Future[Any] = Future()
        self._preparing[message.id] = (work, message)
        self._jobs.put((work, message))
        return []

    def cancel(self, request_id: int) -> bool:
        """Drop a request still being prepared or embedded; False if it is not ours."""
        if (entry := self._preparing.pop(request_id, None)) is not None:
            entry[0].cancel()  # not started: skipped; running: its result is dropped
            return True
        for job in self._embeds:
            if job.request.id == request_id:
                self._embeds.remove(job)
                return True
        return False

    def step(self) -> list[p.Message]:
        """Between two decode steps: hand over finished preparations and embed one group."""
        out: list[p.Message] = []
        for request_id, (work, message) in list(self._preparing.items()):
            if work.done():
                del self._preparing[request_id]
                out.extend(self._accept(message, work))
        if self._embeds:
            out.extend(self._embed_group())
        return out

    def close(self) -> bool:
        """Stop the thread; False if it is still inside a job (the model must then stay
        allocated: the process is exiting anyway)."""
        for work, _message in self._preparing.values():
            work.cancel()
        self._preparing.clear()
        self._jobs.put(None)
        self._thread.join(CLOSE_WAIT_S)
        return not self._thread.is_alive()

    def _run_inline(self, message: Prepared) -> Future[Any]:
        work: Future[Any] = Future()
        work.set_running_or_notify_cancel()
        self._run(work, message)
        return work

    def _accept(self, message: Prepared, work: Future[Any]) -> list[p.Message]:
        """A finished preparation: queue the sequence, or reply."""
        error = work.exception()
        if isinstance(error, CorralError):
            return [p.Error(message.id, error.message, error.status)]
        if error is not None:  # the runner must outlive one bad request
            log.error("request %s failed", message.id, exc_info=error)
            return [p.Error(message.id, f"runner error: {error}")]
        result = work.result()
        match message:
            case p.Generate():
                self.engine.enqueue(result)
            case p.Tokenize():
                return [p.Tokens(message.id, result)]
            case p.Embed():
                self._embeds.append(_EmbedJob(message, result))
        return []

    def _embed_group(self) -> list[p.Message]:
        """Decode the next group of the oldest embedding request; its reply when it is done."""
        job = self._embeds[0]
        embedder = self.engine.embedder()
        budget = self._embed_budget() if self.engine.busy else None
        end = embedder.next_group(job.inputs, job.next, budget)
        group = job.inputs[job.next:end]
        started = time.perf_counter()
        try:
            job.vectors.extend(embedder.decode(group, job.request.normalize))
        except CorralError as exc:
            self._embeds.popleft()
            return [p.Error(job.request.id, exc.message, exc.status)]
        self._time_embed(sum(len(t) for t in group), time.perf_counter() - started)
        job.next = end
        if end < len(job.inputs):
            return []
        self._embeds.popleft()
        return [p.Embeddings(job.request.id, job.vectors, sum(len(t) for t in job.inputs))]

    def _embed_budget(self) -> int:
        if self._embed_token_s <= 0:
            return EMBED_TOKENS_WHILE_DECODING
        fit = int(MIXED_STEP_S / self._embed_token_s)
        return max(EMBED_TOKENS_MIN, min(EMBED_TOKENS_MAX, fit))

    def _time_embed(self, n_tokens: int, seconds: float) -> None:
        if n_tokens >= 8:  # smaller groups are mostly fixed cost
            per_token = seconds / n_tokens
            self._embed_token_s = per_token if self._embed_token_s <= 0 else \
                0.7 * self._embed_token_s + 0.3 * per_token

    # --- either thread ---------------------------------------------------------------------------

    def _run(self, work: Future[Any], message: Prepared) -> None:
        """Render, tokenize and fit; reads only the model's vocabulary and the request."""
        engine = self.engine
        try:
            match message:
                case p.Generate():
                    result: Any = engine.prepare(message)
                case p.Tokenize():
                    result = engine.tokenize(message.text, add_special=message.add_special)
                case p.Embed():
                    tokens = [engine.tokenize(text) for text in message.inputs]
                    result = engine.embedder().fit(tokens, truncate=message.truncate)
                case _:  # pragma: no cover - submit takes only these
                    raise TypeError(f"cannot prepare {message!r}")
        except BaseException as exc:  # noqa: BLE001 - handed to the loop's thread
            work.set_exception(exc)
        else:
            work.set_result(result)

    def _work(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # Linux: a thread's own nice value
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                           os.getpriority(os.PRIO_PROCESS, 0) + THREAD_NICE)
        while (job := self._jobs.get()) is not None:
            work, message = job
            if not work.set_running_or_notify_cancel():
                continue  # cancelled before it started
            self._run(work, message)
