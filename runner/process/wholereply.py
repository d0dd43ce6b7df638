"""Replies read whole ("stream": false): the runner keeps their text until Done, then sends it in
one Chunk, so a 1,000-token answer crosses to the gateway as two messages, not 1,001.

The engine still produces a Chunk per piece of text; the worker passes each step's output
through `WholeReplies.route`, which holds back the chunks of whole replies and notes when each
piece came (the gateway's metrics report inter-token latency for these requests too).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from shared import protocol as p


@dataclass(slots=True)
class _Held:
    parts: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] | None = None
    gaps: list[int] = field(default_factory=list)  # microseconds between pieces of text
    last_ns: int = 0


class WholeReplies:
    def __init__(self) -> None:
        self._held: dict[int, _Held] = {}

    def start(self, request_id: int) -> None:
        self._held[request_id] = _Held()

    def drop(self, request_id: int) -> None:
        self._held.pop(request_id, None)

    def route(self, messages: list[p.Message]) -> list[p.Message]:
        """`messages` less the chunks of whole replies, with each of those replies' text put
        in one Chunk before its Done."""
        held = self._held
        if not held:
            return messages
        out: list[p.Message] = []
        now = time.perf_counter_ns()
        for message in messages:
            rid = p.request_id(message)
            reply = held.get(rid)
            if reply is None:
                out.append(message)
            elif isinstance(message, p.Chunk):
                if message.text:
                    if reply.last_ns:
                        reply.gaps.append((now - reply.last_ns) // 1000)
                    reply.last_ns = now
                    reply.parts.append(message.text)
                if message.logprobs is not None:
                    if reply.logprobs is None:
                        reply.logprobs = []
                    reply.logprobs.extend(message.logprobs)
            else:
                del held[rid]
                if isinstance(message, p.Done):
                    if reply.parts or reply.logprobs is not None:
                        out.append(p.Chunk(rid, "".join(reply.parts), reply.logprobs))
                    message.token_gaps = reply.gaps
                out.append(message)
        return out
