"""Requests from several connections to one runner: each sender numbers its own requests.

The supervisor and every HTTP worker (CORRAL_HTTP_WORKERS) hold their own DEALER socket to the
runner's ROUTER, and each counts its request ids from 1. The runner gives every request an id of
its own on arrival, so two senders' request 7 never meet in the engine, and turns it back into
the sender's id, addressed to that sender, on the way out. A step's output for one sender still
leaves as one frame.
"""

from __future__ import annotations

import itertools

from shared import protocol as p

# Replies after which a request is over: its ids are forgotten.
_FINAL = (p.Done, p.Error, p.Embeddings, p.Tokens)


class Peers:
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._inside: dict[tuple[bytes, int], int] = {}  # (sender, its id) -> the runner's id
        self._outside: dict[int, tuple[bytes, int]] = {}  # and back

    def __len__(self) -> int:
        return len(self._outside)

    def admit(self, peer: bytes, request_id: int) -> int:
        """The runner's id for a new request of `peer` (a reused id starts a new request)."""
        inner = next(self._ids)
        if (old := self._inside.get((peer, request_id))) is not None:
            self._outside.pop(old, None)
        self._inside[(peer, request_id)] = inner
        self._outside[inner] = (peer, request_id)
        return inner

    def find(self, peer: bytes, request_id: int) -> int | None:
        return self._inside.get((peer, request_id))

    def forget(self, inner: int) -> None:
        if (outer := self._outside.pop(inner, None)) is not None:
            self._inside.pop(outer, None)

    def of_peer(self, peer: bytes) -> list[int]:
        """The runner's ids of every request `peer` has open."""
        return [inner for inner, (owner, _) in self._outside.items() if owner == peer]

    def route(self, messages: list[p.Message]) -> dict[bytes, list[p.Message]]:
        """Replies by sender, each carrying the sender's own id again. Replies for a request
        nobody waits for any more (cancelled, its sender gone) are dropped."""
        out: dict[bytes, list[p.Message]] = {}
        outside = self._outside
        for message in messages:
            inner = p.request_id(message)
            target = outside.get(inner)
            if target is None:
                continue
            peer, message.id = target  # type: ignore[union-attr]
            if isinstance(message, _FINAL):
                del outside[inner]
                self._inside.pop(target, None)
            if (queue := out.get(peer)) is None:
                out[peer] = [message]
            else:
                queue.append(message)
        return out
