"""What one HTTP request is doing, for the code below the routes: whose key it carries, which
model it uses, and what the runner reported (tokens, first token, queue wait).

The team middleware (gateway/team/middleware.py) starts a `RequestRecord` per request in a
context variable; Starlette runs the endpoint and its streaming body with copies of that context,
so the route and `Inference` reach the same record without the routes passing it along. After the
reply, the middleware reads the record for usage, limits, metrics and the access log. Without the
middleware (unit tests calling `Inference` directly) there is no record and every check passes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from gateway.team.keys import ANONYMOUS, ApiKey
from registry.names import ModelName
from shared import protocol as p
from shared.errors import BadRequest, CorralError, Forbidden


class RateLimited(CorralError):
    """429 from inside a route (a token reservation refused), with its Retry-After and
    x-ratelimit-* headers."""

    status = 429

    def __init__(self, message: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.headers = headers


@dataclass(eq=False)
class RequestRecord:
    key: ApiKey | None  # None: the server has no keys (everyone is trusted, as by Ollama)
    tenant: str  # who shares slots fairly with whom: the key's name, or "" when that is off
    salt: str = ""  # whose prompt caches it may reuse: the key's id, "" (all) without keys
    started: float = field(default_factory=time.perf_counter)
    model: str = ""  # the model it uses, once a route named it
    prompt_tokens: int = 0
    generated_tokens: int = 0
    cached_tokens: int = 0
    first_token: float | None = None  # seconds after `started`
    queue_waits: list[float] = field(default_factory=list)  # seconds in the runner's queue
    token_gaps: list[float] = field(default_factory=list)  # seconds between chunks
    reserved: int = 0  # tokens taken from the key's tokens-per-minute bucket before the reply
    # Takes tokens from the key's bucket or raises RateLimited (the middleware's, with keys on).
    reserver: Callable[[int], Awaitable[None]] | None = None
    # Counts of generations the client dropped, still to come from their runners.
    settling: list[asyncio.Future[p.Done | None]] = field(default_factory=list)

    @property
    def key_name(self) -> str:
        return self.key.name if self.key else ANONYMOUS

    @property
    def admin(self) -> bool:
        return self.key is None or self.key.admin

    def use_model(self, name: str) -> None:
        """The request names `name`: 403 when its key may not use it (checked before the model
        is looked up, so a key learns nothing of models it may not use). The record takes the
        name only once the store has found the model (`found_model`): names of models that do
        not exist must not grow the metrics' labels or the usage table."""
        try:
            parsed = ModelName.parse(name)
        except BadRequest:
            return  # the store answers "invalid model name"
        if self.key is not None and not self.key.may_use(parsed):
            raise Forbidden(f'this API key may not use model "{name}"')

    def stream(self) -> StreamTimes:
        return StreamTimes(self)

    def done(self, done: p.Done) -> None:
        self.prompt_tokens += done.prompt_eval_count
        self.generated_tokens += done.eval_count
        self.cached_tokens += done.cached_tokens
        self.queue_waits.append(done.queue_duration / 1e9)

    def cancelled(self, so_far: asyncio.Future[p.Done | None]) -> None:
        """A generation the client dropped: the runner's count of what it used until then
        arrives later; `settle` adds it before the request is logged and charged."""
        self.settling.append(so_far)

    async def settle(self) -> None:
        for future in self.settling:
            so_far = await future
            if so_far is None:
                continue
            if so_far.done_reason != "cancel":  # it had finished: its own Done, in full
                self.done(so_far)
                continue
            self.prompt_tokens += so_far.prompt_eval_count
            self.generated_tokens += so_far.eval_count
            self.cached_tokens += so_far.cached_tokens
        self.settling.clear()


class StreamTimes:
    """The timing of one generation's chunks (a request with `n` choices has several)."""

    __slots__ = ("_record", "_last")

    def __init__(self, record: RequestRecord) -> None:
        self._record = record
        self._last = 0.0

    def chunk(self) -> None:
        now = time.perf_counter()
        record = self._record
        if self._last:
            record.token_gaps.append(now - self._last)
        elif record.first_token is None:
            record.first_token = now - record.started
        self._last = now

    def whole(self, done: p.Done, sent: float) -> None:
        """A reply that came in one piece: its first token and the gaps between its pieces of
        text as the runner timed them (`sent`: when the request left for the runner)."""
        record = self._record
        if done.eval_count and record.first_token is None:
            record.first_token = (sent - record.started
                                  + (done.queue_duration + done.prompt_eval_duration) / 1e9)
        record.token_gaps.extend(gap / 1e6 for gap in done.token_gaps)


_current: ContextVar[RequestRecord | None] = ContextVar("corral_request", default=None)


def current() -> RequestRecord | None:
    return _current.get()


def begin(record: RequestRecord) -> None:
    _current.set(record)


def check_model(name: str) -> None:
    """403 unless the request's key may use model `name`; remembers it as the request's model."""
    record = _current.get()
    if record is not None:
        record.use_model(name)


def found_model(name: ModelName) -> None:
    """The store found the request's model: usage, metrics and the access log name it."""
    record = _current.get()
    if record is not None:
        record.model = name.display()


def visible(name: ModelName | str) -> bool:
    """Whether lists (/api/tags, /api/ps, /v1/models) show model `name` to this request's key."""
    record = _current.get()
    if record is None or record.key is None:
        return True
    try:
        parsed = name if isinstance(name, ModelName) else ModelName.parse(name)
    except BadRequest:
        return False
    return record.key.may_use(parsed)


def may_set_keep_alive() -> bool:
    """Only admin keys choose how long models stay loaded; others get the server's keep-alive."""
    record = _current.get()
    return record is None or record.admin


async def reserve_tokens(tokens: int) -> None:
    """Reserve a generation's tokens (its prompt and its cap on new ones) against the key's
    tokens per minute before it starts; 429 when the bucket is empty. Settled at the end."""
    record = _current.get()
    if record is not None and record.reserver is not None and tokens > 0:
        await record.reserver(tokens)
        record.reserved += tokens


def cache_salt() -> str:
    """The request's cache salt (runner/process/promptcache.py's Scope): "" shares everything."""
    record = _current.get()
    return record.salt if record is not None else ""


def tenant() -> str:
    record = _current.get()
    return record.tenant if record is not None else ANONYMOUS
