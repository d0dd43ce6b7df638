"""Running one level against one server: a closed loop (a fixed number of requests in flight) or
an open loop (requests sent on an arrival schedule, whatever the server does).

Closed loop, concurrency c: c workers, each sending its next request as soon as its previous one
ends, so exactly c are in flight until the last ones drain.

Open loop, rate R: each request is sent at its due time from `arrivals.schedule`, in flight or
not; none waits for another to finish. A request that cannot go out on time (the event loop was
busy, `max_in_flight` requests were already out, or, for conversations, no conversation was
ready for its next turn) is sent as soon as it can and keeps its due time next to its send time,
so it is counted late rather than silently delayed.

A level sends until its request count or its duration is reached, then waits for what is in
flight. At the run's deadline, requests in flight are cancelled and kept as "cut", and requests
not yet sent are counted as never sent.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field

import httpx

from gateway.loadtest.client import RequestResult, Target, run_request
from gateway.loadtest.workload import RequestSpec, Source

MODES = ("concurrency", "rate")


@dataclass(frozen=True)
class Level:
    """One load level: a concurrency (closed loop) or a request rate in requests/s (open loop)."""

    mode: str
    value: float

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown level mode {self.mode!r}")
        if not self.value > 0 or (self.mode == "concurrency" and self.value != int(self.value)):
            raise ValueError(f"bad {self.mode} level {self.value!r}")

    @property
    def label(self) -> str:
        if self.mode == "concurrency":
            return f"c={int(self.value)}"
        return f"{self.value:g}/s"


class InFlight:
    """How many requests are out, as a step series of (perf_counter time, count)."""

    def __init__(self) -> None:
        self.count = 0
        self.peak = 0
        self.series: list[tuple[float, int]] = []

    def start(self, now: float) -> None:
        self.series.append((now, self.count))

    def change(self, delta: int) -> None:
        self.count += delta
        self.peak = max(self.peak, self.count)
        self.series.append((time.perf_counter(), self.count))

    def mean(self, start: float, end: float) -> float | None:
        """Time-weighted mean count between `start` and `end`."""
        if end <= start or not self.series:
            return None
        total = 0.0
        for (t0, n), (t1, _) in zip(self.series, [*self.series[1:], (end, 0)], strict=True):
            lo, hi = max(t0, start), min(t1, end)
            if hi > lo:
                total += n * (hi - lo)
        return total / (end - start)


@dataclass
class LevelRun:
    """What one level of one server did, every request included (in send order)."""

    level: Level
    items: list[tuple[RequestSpec, RequestResult]] = field(default_factory=list)
    planned: int | None = None  # requests it meant to send, where known in advance
    start: float = 0.0  # perf_counter at the start of its measured phase
    wall_s: float = 0.0  # from that start until the last request ended
    truncated: bool = False  # the run's deadline cut it short
    in_flight: InFlight = field(default_factory=InFlight)

    @property
    def results(self) -> list[RequestResult]:
        return [result for _, result in self.items]

    @property
    def unsent(self) -> int:
        return max(0, self.planned - len(self.items)) if self.planned is not None else 0


@dataclass(frozen=True)
class Settings:
    """How to send: where, per-request time limit, open-loop cap, run deadline (perf_counter)."""

    http: httpx.AsyncClient
    target: Target
    deadline: float
    timeout: float | None = None
    max_in_flight: int | None = None


async def _send(settings: Settings, source: Source, spec: RequestSpec, result: RequestResult,
                tracker: InFlight) -> None:
    tracker.change(+1)
    try:
        await run_request(settings.http, settings.target, spec.prompt,
                          output_tokens=spec.output_tokens, timeout=settings.timeout,
                          result=result)
    finally:
        tracker.change(-1)
    source.done(spec, result)


def _cut(run: LevelRun) -> None:
    for _, result in run.items:
        if result.end is None and result.error is None:
            result.fail("cut", "cut by the time budget (--max-seconds)")


async def _until_deadline(settings: Settings, work: Awaitable[None]) -> bool:
    """Run `work` until the deadline; True if the deadline cut it short."""
    try:
        async with asyncio.timeout(max(settings.deadline - time.perf_counter(), 0.0)):
            await work
    except TimeoutError:
        return True
    return False


async def run_closed(settings: Settings, source: Source, workers: int, *,
                     count: int | None, duration: float | None) -> LevelRun:
    """`workers` requests in flight until `count` have been sent or `duration` has passed."""
    run = LevelRun(Level("concurrency", workers), planned=count)
    run.start = time.perf_counter()
    run.in_flight.start(run.start)
    stop_at = run.start + duration if duration is not None else math.inf

    claimed = 0  # taken before a worker waits for a conversation, so the count is never overshot

    async def worker() -> None:
        nonlocal claimed
        while (count is None or claimed < count) and time.perf_counter() < stop_at:
            claimed += 1
            spec = await source.take()
            result = RequestResult(sent=time.perf_counter())
            run.items.append((spec, result))
            await _send(settings, source, spec, result, run.in_flight)

    async def all_workers() -> None:
        await asyncio.gather(*(worker() for _ in range(workers)))

    run.truncated = await _until_deadline(settings, all_workers())
    _cut(run)
    run.wall_s = time.perf_counter() - run.start
    return run


async def run_open(settings: Settings, source: Source, rate: float, due: list[float]) -> LevelRun:
    """Send a request at each due time (seconds from now); see the module docstring."""
    run = LevelRun(Level("rate", rate), planned=len(due))
    run.start = time.perf_counter()
    run.in_flight.start(run.start)
    slots = asyncio.Semaphore(settings.max_in_flight) if settings.max_in_flight else None
    tasks: set[asyncio.Task[None]] = set()

    async def send(spec: RequestSpec, result: RequestResult) -> None:
        try:
            await _send(settings, source, spec, result, run.in_flight)
        finally:
            if slots is not None:
                slots.release()

    async def dispatch() -> None:
        for offset in due:
            when = run.start + offset
            delay = when - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if slots is not None:
                await slots.acquire()
            spec = await source.take()
            result = RequestResult(sent=time.perf_counter(), scheduled=when)
            run.items.append((spec, result))
            task = asyncio.create_task(send(spec, result))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*list(tasks))

    run.truncated = await _until_deadline(settings, dispatch())
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*list(tasks), return_exceptions=True)
    _cut(run)
    run.wall_s = time.perf_counter() - run.start
    return run
