"""Work that must not stall the decode loop: preparing large prompts, and embeddings.

The worker's loop advances every stream by one token per step, so anything long done between
two steps freezes them all (a 10 MB prompt took a minute to tokenize; 1,000 embedding inputs
held the loop until the health check killed the runner). The intake keeps that work on a thread
of its own:

- A request with a lot of text is prepared there: template rendering, tokenizing (llama.cpp's
  tokenizer runs in C with the GIL released, as every ctypes call does) and truncation. The
  finished sequence joins the engine's queue between two steps. Small requests are prepared
  inline, where a thread hop would only add latency.
- Every embedding request is tokenized and decoded there, in the embedding context, which is
  separate from the generation context (llama.cpp contexts of one model may decode on different
  threads at once); even a one-input decode costs a large fixed amount, so none runs in the loop.

The thread only reads the model's vocabulary and uses the embedding context; the engine's queue,
slots and generation context stay on the loop's thread. It runs at a lower priority (nice) so
that on a busy CPU the streams come first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from concurrent.futures import Future
from typing import Any

from runner.process.engine import Engine
from shared import protocol as p
from shared.errors import CorralError

log = logging.getLogger("corral.runner")

# Text up to this many characters is prepared inline: tokenizing it takes well under a
# millisecond, less than handing it to the thread and back.
INLINE_CHARS = 16_384
# How often the idle loop looks for finished preparations.
WAIT_MS = 2
# The thread's nice value: on a busy CPU the decode threads come first (a token gap costs every
# stream; a few more seconds of tokenizing cost one request), while an idle core is still used.
THREAD_NICE = 10
CLOSE_WAIT_S = 2.0

Prepared = p.Generate | p.Embed | p.Tokenize


class _Dropped(Exception):
    """A request cancelled while the thread worked on it."""


def text_size(message: Prepared) -> int:
    """Characters of text a request brings (what tokenizing it costs)."""
    match message:
        case p.Generate():
            size = len(message.prompt or "")
            for item in message.messages or ():
                content = item.get("content") if isinstance(item, dict) else None
                size += len(content) if isinstance(content, str) else 0
                if isinstance(item, dict) and item.get("images"):
                    size += INLINE_CHARS + 1  # decoding and encoding images: on the thread
            if message.images:
                size += INLINE_CHARS + 1
            return size
        case p.Embed():
            return sum(len(text) for text in message.inputs)
        case p.Tokenize():
            return len(message.text) + (INLINE_CHARS + 1 if message.images else 0)
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
        self._dropped: set[int] = set()  # cancelled while running: the thread stops early
        # A daemon thread: a runner told to exit mid-tokenization must not wait for it.
        self._thread = threading.Thread(target=self._work, name="corral-intake", daemon=True)
        self._thread.start()

    # --- the loop's side ------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Requests being prepared or embedded (the health reply counts them as queued)."""
        return len(self._preparing)

    def wait_ms(self, idle_ms: int) -> int:
        """How long the loop may block waiting for messages: briefly while the thread works."""
        return WAIT_MS if self._preparing else idle_ms

    def submit(self, message: Prepared) -> list[p.Message]:
        if isinstance(message, p.Embed):
            try:
                self.engine.embedder()  # made here, on the loop's thread, once
            except CorralError as exc:
                return [p.Error(message.id, exc.message, exc.status)]
        if not isinstance(message, p.Embed) and text_size(message) <= INLINE_CHARS:
            return self._accept(message, self._run_inline(message))
        work: Future[Any] = Future()
        self._preparing[message.id] = (work, message)
        self._jobs.put((work, message))
        return []

    def cancel(self, request_id: int) -> bool:
        """Drop a request still being prepared or embedded; False if it is not ours."""
        if (entry := self._preparing.pop(request_id, None)) is not None:
            if not entry[0].cancel():  # running: an embedding stops at its next group
                self._dropped.add(request_id)
            return True
        return False

    def step(self) -> list[p.Message]:
        """Between two decode steps: hand over what the thread finished."""
        out: list[p.Message] = []
        for request_id, (work, message) in list(self._preparing.items()):
            if work.done():
                del self._preparing[request_id]
                out.extend(self._accept(message, work))
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
                return [result]
        return []

    # --- either thread ---------------------------------------------------------------------------

    def _run(self, work: Future[Any], message: Prepared) -> None:
        """Render, tokenize and fit; reads only the model's vocabulary and the request."""
        engine = self.engine
        try:
            match message:
                case p.Generate():
                    result: Any = engine.prepare(message)
                case p.Tokenize():
                    result = engine.tokenize_request(message)
                case p.Embed():
                    result = self._embed(message)
                case _:  # pragma: no cover - submit takes only these
                    raise TypeError(f"cannot prepare {message!r}")
        except BaseException as exc:  # noqa: BLE001 - handed to the loop's thread
            work.set_exception(exc)
        else:
            work.set_result(result)

    def _embed(self, message: p.Embed) -> p.Embeddings:
        """Tokenize and decode, a batch at a time; stops early when the request is cancelled."""
        embedder = self.engine.embedder()
        inputs = embedder.fit([self.engine.tokenize(text) for text in message.inputs],
                              truncate=message.truncate)
        vectors: list[bytes] = []
        start = 0
        while start < len(inputs):
            if message.id in self._dropped:
                self._dropped.discard(message.id)
                raise _Dropped
            end = embedder.next_group(inputs, start)
            vectors.extend(embedder.decode(inputs[start:end], message.normalize))
            start = end
        return p.Embeddings(message.id, vectors, sum(len(t) for t in inputs))

    def _work(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # Linux: a thread's own nice value
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                           os.getpriority(os.PRIO_PROCESS, 0) + THREAD_NICE)
        while (job := self._jobs.get()) is not None:
            work, message = job
            if not work.set_running_or_notify_cancel():
                continue  # cancelled before it started
            self._dropped.discard(message.id)  # (an id cancelled earlier, reused)
            self._run(work, message)
