"""Workloads: what each request of a level asks, in a repeatable order.

- `random`, `fixed`, `file`: one prompt per request, as described in `prompts`.
- `shared-prefix`: K system prompts of about L tokens each; request i carries system prompt
  i mod K followed by its own random question, so a server with a prefix cache reads each system
  prompt once.
- `multi-turn`: C conversations at a time, of T turns each. Every turn resends the whole history
  (the earlier user turns and the server's own replies) plus a new user message, so each turn's
  prompt starts with the previous turn's prompt and reply. A turn can only go out once the
  conversation's previous turn has ended; a conversation that ends (after T turns, or after a
  failed turn) is replaced by a fresh one, so a level can run for any number of requests.

Lengths are distributions: `Length(mean, std)` draws each request's length from a normal
distribution (rounded, at least 1 token), seeded by the request's number; std 0 is a fixed length.
The input length is that of the request's new text (the question, or the new user turn).

Each (server, level) gets its own `Source` starting at the same request number for both servers
of an A/B run, so both are asked the same questions; a conversation's history carries each
server's own replies.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.loadtest.client import Prompt, RequestResult
from gateway.loadtest.prompts import fixed_prompt, random_prompt, random_text

WORKLOADS = ("random", "fixed", "shared-prefix", "multi-turn", "file")


@dataclass(frozen=True)
class Length:
    """A token count drawn per request: mean, and a standard deviation (0: always the mean)."""

    mean: int
    std: float = 0.0

    def __post_init__(self) -> None:
        if self.mean < 1:
            raise ValueError(f"a length must be at least 1 token, got {self.mean}")
        if not 0 <= self.std < math.inf:
            raise ValueError(f"a standard deviation must be 0 or more, got {self.std}")

    @classmethod
    def parse(cls, text: str | int | Length) -> Length:
        """`250` or `250:50` (mean:stddev)."""
        if isinstance(text, Length):
            return text
        if isinstance(text, int):
            return cls(text)
        mean, sep, std = str(text).partition(":")
        try:
            parsed = int(mean), float(std) if sep else 0.0
        except ValueError:
            raise ValueError(f"expected N or MEAN:STDDEV tokens, got {text!r}") from None
        return cls(*parsed)

    def draw(self, rng: random.Random) -> int:
        if not self.std:
            return self.mean
        return max(1, round(rng.gauss(self.mean, self.std)))

    def __str__(self) -> str:
        return f"{self.mean}:{self.std:g}" if self.std else str(self.mean)


@dataclass(frozen=True)
class RequestSpec:
    """One request to send: its number, prompt and output limit, and where it comes from."""

    index: int
    prompt: Prompt
    output_tokens: int
    input_tokens: int | None = None  # the drawn length of its new text; None for a file prompt
    conversation: int | None = None
    turn: int | None = None  # 1-based


class Source:
    """Hands out a level's requests in order (the static workloads: never has to wait)."""

    def __init__(self, workload: Workload, base: int) -> None:
        self.workload = workload
        self.next_index = base

    def ready(self) -> bool:
        """Whether `take` would answer at once."""
        return True

    async def take(self) -> RequestSpec:
        spec = self.workload.spec(self.next_index)
        self.next_index += 1
        return spec

    def done(self, spec: RequestSpec, result: RequestResult) -> None:
        """Told when a request has ended (a conversation's next turn depends on it)."""


@dataclass
class _Conversation:
    number: int
    turn: int = 1  # the next turn to send
    history: list[dict[str, str]] = field(default_factory=list)


class Conversations(Source):
    """`multi-turn`: C conversations in turn; a conversation waits while its turn is out."""

    def __init__(self, workload: Workload, base: int) -> None:
        super().__init__(workload, base)
        self.next_conversation = base
        self.queue: deque[_Conversation] = deque(self._fresh()
                                                 for _ in range(workload.conversations))
        self.out: dict[int, _Conversation] = {}  # request index -> its conversation
        self.returned = asyncio.Event()

    def _fresh(self) -> _Conversation:
        self.next_conversation += 1
        return _Conversation(self.next_conversation - 1)

    def ready(self) -> bool:
        return bool(self.queue)

    async def take(self) -> RequestSpec:
        while not self.queue:
            self.returned.clear()
            await self.returned.wait()
        conversation = self.queue.popleft()
        index = self.next_index
        self.next_index += 1
        self.out[index] = conversation
        w = self.workload
        key = f"{w.seed}/conversation{conversation.number}/turn{conversation.turn}"
        rng = random.Random(key + "/lengths")
        tokens = w.input_tokens.draw(rng)
        user = {"role": "user", "content": random_text(tokens, key)}
        return RequestSpec(index=index, prompt=[*conversation.history, user],
                           output_tokens=w.output_tokens.draw(rng), input_tokens=tokens,
                           conversation=conversation.number, turn=conversation.turn)

    def done(self, spec: RequestSpec, result: RequestResult) -> None:
        conversation = self.out.pop(spec.index, None)
        if conversation is None:
            return
        if result.ok and conversation.turn < self.workload.turns:
            assert not isinstance(spec.prompt, str)
            conversation.history = [dict(m) for m in spec.prompt]
            conversation.history.append({"role": "assistant", "content": result.text})
            conversation.turn += 1
        else:  # finished, or its history is broken: a new conversation takes its place
            conversation = self._fresh()
        self.queue.append(conversation)
        self.returned.set()


@dataclass(frozen=True)
class Workload:
    """What to ask; `source(base)` hands out the requests of one level of one server."""

    kind: str = "random"
    input_tokens: Length = Length(250)
    output_tokens: Length = Length(128)
    seed: int = 0
    prompts: Sequence[Prompt] | None = None  # kind "file"
    prefixes: int = 4  # shared-prefix: K system prompts ...
    prefix_tokens: int = 500  # ... of about L tokens
    conversations: int = 8  # multi-turn: C conversations at a time ...
    turns: int = 4  # ... of T turns

    def validate(self) -> None:
        if self.kind not in WORKLOADS:
            raise ValueError(f"unknown workload {self.kind!r}: expected one of "
                             f"{', '.join(WORKLOADS)}")
        if self.kind == "file" and not self.prompts:
            raise ValueError("--workload file needs --prompts FILE")
        if self.prompts and self.kind != "file":
            raise ValueError(f"--prompts goes with --workload file, not {self.kind}")
        for name in ("prefixes", "prefix_tokens", "conversations", "turns"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")

    def source(self, base: int) -> Source:
        return Conversations(self, base) if self.kind == "multi-turn" else Source(self, base)

    def spec(self, index: int) -> RequestSpec:
        """Request number `index` of a static workload (all but multi-turn)."""
        rng = random.Random(f"{self.seed}/{index}/lengths")
        tokens = self.input_tokens.draw(rng)
        out = self.output_tokens.draw(rng)
        if self.kind == "file":
            assert self.prompts
            return RequestSpec(index, self.prompts[index % len(self.prompts)], out)
        if self.kind == "fixed":
            return RequestSpec(index, fixed_prompt(tokens), out, tokens)
        if self.kind == "shared-prefix":
            system = random_text(self.prefix_tokens, f"{self.seed}/prefix{index % self.prefixes}")
            prompt = [{"role": "system", "content": system},
                      {"role": "user", "content": random_prompt(tokens, self.seed, index)}]
            return RequestSpec(index, prompt, out, tokens)
        if self.kind == "multi-turn":
            raise ValueError("multi-turn requests come from a Conversations source")
        return RequestSpec(index, random_prompt(tokens, self.seed, index), out, tokens)

    def describe(self) -> str:
        lengths = f"~{self.input_tokens} tokens in, {self.output_tokens} out"
        if self.kind == "file":
            return f"{len(self.prompts or ())} prompts from a file, {self.output_tokens} out"
        if self.kind == "shared-prefix":
            return (f"shared-prefix: {self.prefixes} system prompts of ~{self.prefix_tokens} "
                    f"tokens, then {lengths}")
        if self.kind == "multi-turn":
            return (f"multi-turn: {self.conversations} conversations of {self.turns} turns, "
                    f"each turn {lengths}")
        return f"{self.kind}, {lengths}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "input_tokens": str(self.input_tokens),
                               "output_tokens": str(self.output_tokens), "seed": self.seed}
        if self.kind == "file":
            out["prompts"] = len(self.prompts or ())
        if self.kind == "shared-prefix":
            out.update(prefixes=self.prefixes, prefix_tokens=self.prefix_tokens)
        if self.kind == "multi-turn":
            out.update(conversations=self.conversations, turns=self.turns)
        return out
