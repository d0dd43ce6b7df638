"""Prompt states kept beyond the slots, in host RAM, bounded by bytes.

A runner's slots hold only as many conversations as it has slots; a slot taken by a prompt that
does not extend it loses what it held. Before that happens the engine saves the slot's KV state
(llama.cpp's per-sequence state) here, keyed by the tokens it holds; a later prompt that shares
more with an entry than with any slot restores it into its slot, trims it to the shared start and
reads only the rest.

An entry holds a list of states: one state of its whole token list, and checkpoints of the
sliding-window layers' cache at earlier positions (llama.cpp's partial `_ext` states). An attention
cache can be cut back to any shorter prefix after a restore; a sliding-window cache only to where
it still holds the window before the cut (`floor`), and below that a checkpoint must replace its
sliding-window part first (`Entry.serve`).

Each entry, like each slot, has a `Scope`: whose requests made it. With API keys on, a request
reuses only what requests of its own key made (its `salt`), plus the start that is public text
every key may share (an admin-set SYSTEM prompt, as rendered): otherwise how much of a prompt was
cached, or how fast its first token came, would tell one key what another key's prompts hold
(vLLM's `cache_salt`). Without keys every scope is the same and everything is shared.

This module knows nothing of llama.cpp: states are opaque bytes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

MIN_SHARED_START = 32  # tokens two entries must share for their start to count as common


def common_prefix(a: list[int], b: list[int]) -> int:
    """The length of the common start of `a` and `b`, by slice comparisons (in C) and
    bisection: histories of thousands of tokens are compared every step. (Lists both: a list
    never equals a tuple.)"""
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while hi - lo > 1:  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class Scope:
    """Who may reuse a cached prompt: requests with the same `salt` all of it, others only its
    first `public` tokens (and only as far as their own prompt's public start reaches)."""

    salt: str = ""
    public: int = 0


NO_KEYS = Scope()  # every request's scope on a server without keys


def reusable(tokens: list[int], scope: Scope, prompt: list[int], want: Scope) -> int:
    """How much of `prompt` (a request of scope `want`) may reuse a cache holding `tokens`."""
    n = common_prefix(tokens, prompt)
    return n if scope.salt == want.salt else min(n, scope.public, want.public)


@dataclass
class State:
    """The KV state of the first `n_tokens` tokens of an entry."""

    n_tokens: int
    data: bytes | bytearray  # bytearray as the engine saves it, bytes as read from disk
    # Positions from 0 that were read in the seeded layout (runner/process/engine.py,
    # `seeded_keep`): it travels with the state so a seeded request reuses no more than it could
    # from a slot.
    canonical: int = 0
    partial: bool = False  # a checkpoint of the sliding-window layers only
    # The shortest prefix it can be cut back to: below it the sliding-window part no longer
    # holds the window a next token looks back on (0: any prefix).
    floor: int = 0


@dataclass
class Entry:
    tokens: list[int]
    states: list[State] = field(default_factory=list)
    last_used: int = 0
    uses: int = 1  # requests its tokens served: saved, restored, or inherited from a prefix
    scope: Scope = NO_KEYS

    @property
    def nbytes(self) -> int:
        return sum(len(s.data) for s in self.states)

    def checkpoints(self, upto: int) -> list[State]:
        """The sliding-window checkpoints that a whole state of `upto` tokens can take."""
        return [s for s in self.states if s.partial and s.n_tokens <= upto]

    def serve(self, keep: int) -> tuple[State, int] | None:
        """The whole state to restore for a trim to at most `keep` tokens, and the longest
        prefix it then serves: `keep` itself where the state still holds the window there, else
        as far as its checkpoints reach (one that ends at or after the cut, or the latest one
        before it). None when it serves nothing."""
        best: tuple[State, int] | None = None
        for whole in (s for s in self.states if not s.partial):
            n = min(keep, whole.n_tokens)
            if whole.floor > n:
                n = max((min(n, c.n_tokens) for c in self.checkpoints(whole.n_tokens)
                         if c.floor <= min(n, c.n_tokens)), default=0)
            if n > 0 and (best is None or n > best[1]):
                best = (whole, n)
        return best


@dataclass
class Stats:
    entries: int
    bytes: int
    hits: int
    misses: int


class PromptCache:
    """Entries keyed by token lists, evicted least recently used, entries whose start many others
    share last (one copy of a common system prompt serves every conversation that has it)."""

    def __init__(self, budget: int) -> None:
        self.budget = max(0, budget)
        self.entries: list[Entry] = []
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._clock = itertools.count(1)

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def stats(self) -> Stats:
        return Stats(len(self.entries), self.bytes, self.hits, self.misses)

    def best(self, prompt: list[int], scope: Scope = NO_KEYS) -> tuple[Entry | None, int]:
        """The entry sharing the longest start with `prompt` that `scope` may reuse, and how
        long that start is."""
        best: Entry | None = None
        shared = 0
        for entry in self.entries:
            n = reusable(entry.tokens, entry.scope, prompt, scope)
            if n > shared:
                best, shared = entry, n
        return best, shared

    def holds(self, tokens: list[int], canonical: int, scope: Scope = NO_KEYS) -> bool:
        """Whether an entry of `scope` already holds all of `tokens` (and as much of the seeded
        layout)."""
        n = len(tokens)
        for entry in self.entries:
            if entry.scope.salt != scope.salt or len(entry.tokens) < n \
                    or entry.tokens[:n] != tokens:
                continue
            served = entry.serve(n)
            if served is not None and served[1] >= n and served[0].canonical >= min(canonical, n):
                entry.last_used = next(self._clock)
                return True
        return False

    def touch(self, entry: Entry) -> None:
        entry.last_used = next(self._clock)
        entry.uses += 1

    def put(self, tokens: list[int], states: list[State], uses: int = 1,
            scope: Scope = NO_KEYS) -> Entry | None:
        """Keep `states` for `tokens`; entries of the same scope it makes redundant (a prefix of
        it, read in no more of the seeded layout) go, and their use counts carry over. None when
        it cannot fit the budget at all."""
        size = sum(len(s.data) for s in states)
        if not self.enabled or size > self.budget or not tokens:
            return None
        canonical = max((s.canonical for s in states), default=0)
        entry = Entry(list(tokens), list(states), next(self._clock), uses, scope)
        for old in list(self.entries):
            if old.scope.salt != scope.salt:
                continue
            n = len(old.tokens)
            served = entry.serve(n)  # a sliding-window state may not reach back to its end
            if (n <= len(tokens) and tokens[:n] == old.tokens
                    and served is not None and served[1] >= n
                    and all(s.canonical <= canonical for s in old.states)):
                entry.uses += old.uses
                self._drop(old)
        self.entries.append(entry)
        self.bytes += size
        self._evict(keep=entry)
        return entry

    def _drop(self, entry: Entry) -> None:
        self.entries.remove(entry)
        self.bytes -= entry.nbytes

    def _sharers(self, entry: Entry) -> int:
        return sum(1 for other in self.entries if other is not entry
                   and common_prefix(other.tokens, entry.tokens) >= MIN_SHARED_START)

    def _evict(self, keep: Entry) -> None:
        while self.bytes > self.budget:
            victims = [e for e in self.entries if e is not keep]
            if not victims:
                break
            # Least recently used first; an entry whose start two or more others share goes
            # only after those that share nothing, since every restore of that start needs one.
            victim = min(victims, key=lambda e: (self._sharers(e) >= 2, e.last_used))
            self._drop(victim)

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0
