"""Typed messages between the supervisor and its HTTP workers (CORRAL_HTTP_WORKERS >= 2).

The supervisor (`corral serve`) binds a ROUTER on an ipc path in its runtime directory; each HTTP
worker connects one DEALER. A worker asks for a lease on a runner and gets back the runner's
endpoint, connects its own socket there and streams the tokens directly (runner -> worker); the
supervisor sees only the lease, its release, and the questions that need its whole view (/api/ps,
/metrics' gauges, unload). Same framing as shared/protocol.py (msgpack arrays, a tag first), so
the tags here start at 40.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from shared import protocol as p


@dataclass(slots=True)
class Hello:
    """A worker's app has started (its lifespan ran): the supervisor counts them for READY=1."""

    TAG: ClassVar[int] = 40
    pid: int


@dataclass(slots=True)
class Acquire:
    """Lease a runner of model `key` that serves `load` (an encoded `protocol.Load`), loading
    one if needed: `Leased` or `Failed`."""

    TAG: ClassVar[int] = 41
    id: int
    key: str
    name: str  # the model's display name (/api/ps, logs)
    ref: str  # its full name: the supervisor opens it from its own store
    load: bytes
    keep_alive: float | None


@dataclass(slots=True)
class Leased:
    TAG: ClassVar[int] = 42
    id: int
    lease: int  # names the lease for `Release`
    endpoint: str  # the runner's ROUTER: the worker connects its own DEALER there
    ready: bytes  # the runner's encoded `protocol.Ready` (n_ctx, ...)


@dataclass(slots=True)
class Release:
    """The request is done with its runner (no reply)."""

    TAG: ClassVar[int] = 43
    lease: int
    keep_alive: float | None


@dataclass(slots=True)
class Unload:
    TAG: ClassVar[int] = 44
    id: int
    key: str


@dataclass(slots=True)
class Answer:
    """The reply to `Unload` (value: whether it was loaded), `Ps` (the /api/ps entries) or
    `Gauges` (gateway.metrics.Snapshot as plain data)."""

    TAG: ClassVar[int] = 45
    id: int
    value: Any


@dataclass(slots=True)
class Ps:
    TAG: ClassVar[int] = 46
    id: int


@dataclass(slots=True)
class Gauges:
    TAG: ClassVar[int] = 47
    id: int


@dataclass(slots=True)
class Failed:
    """A request to the supervisor failed with an error the HTTP reply carries (503 when the
    queue is full, 500 when a load failed, ...)."""

    TAG: ClassVar[int] = 48
    id: int
    message: str
    status: int = 500


@dataclass(slots=True)
class RunnerGone:
    """A runner died or was stopped (supervisor -> every worker): requests on it end with
    `reason` at once instead of waiting on a socket nobody answers."""

    TAG: ClassVar[int] = 49
    endpoint: str
    reason: str


Control = Hello | Acquire | Leased | Release | Unload | Answer | Ps | Gauges | Failed | RunnerGone

p.register(Hello, Acquire, Leased, Release, Unload, Answer, Ps, Gauges, Failed, RunnerGone)
