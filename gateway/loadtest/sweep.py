"""A whole run: every level against one server, or against two (A/B) side by side.

Levels are concurrencies (closed loop) or request rates (open loop), see `levels`. Before each
level, `warmup` unmeasured requests go out (the first of them also pays for a model load).

A/B: with a second server, every level runs against both, in ABBA order (A then B at the first
level, B then A at the second, ...), so that drift over the run (heat, other load on the machine)
does not favour either; both are asked the same requests at the same due times.

`--find-max` (needs SLOs): for each server, a `slo.RateSearch` picks the rates, starting from the
first `--rate` (default 1/s), doubling while the SLO share holds and then bisecting; with two
servers the probes interleave in ABBA order too.

The whole run stops at `max_seconds`: requests in flight then are cut, the level is marked
truncated, and levels not reached are marked skipped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from gateway.loadtest.arrivals import ARRIVALS, schedule
from gateway.loadtest.client import Prompt, Target, http_client
from gateway.loadtest.levels import Level, LevelRun, Settings, run_closed, run_open
from gateway.loadtest.report import (
    BenchReport,
    LevelSummary,
    request_record,
    skipped_level,
    summarize_level,
)
from gateway.loadtest.slo import RateSearch
from gateway.loadtest.workload import Length, Workload

DEFAULT_CONCURRENCY = (1, 2, 4, 8)
DEFAULT_RATE_DURATION = 10.0  # seconds per rate level when neither requests nor duration is set
_STRIDE = 1_000_000  # request numbers per level: warm-ups and measured requests never overlap


class Unreachable(Exception):
    """Nothing answers HTTP at the target URL."""


@dataclass
class BenchConfig:
    """Everything one run needs; `corral bench` fills it from its flags."""

    url: str
    model: str
    api: str = "ollama"
    endpoint: str | None = None  # None: generate for ollama, chat for openai
    concurrency: Sequence[int] | None = None  # closed loop; default 1,2,4,8 without rates
    rates: Sequence[float] | None = None  # open loop, requests/s
    arrivals: str = "poisson"
    burstiness: float = 1.0  # gamma arrivals' shape
    requests: int | None = None  # per level; closed-loop default: 4 x concurrency
    duration: float | None = None  # seconds of sending per level; rate default: 10
    input_tokens: int | str | Length = 250
    output_tokens: int | str | Length = 128
    workload: str = "random"
    prompt_kind: str | None = None  # the older name of `workload`
    prompts: Sequence[Prompt] | None = None  # from --prompts FILE
    prefixes: int = 4
    prefix_tokens: int = 500
    conversations: int = 8
    turns: int = 4
    warmup: int = 1  # warm-up requests per level
    max_seconds: float = 600.0  # for the whole run
    seed: int = 0
    api_key: str | None = None
    timeout: float | None = None  # per request
    max_in_flight: int | None = None  # open loop: requests out at once, at most
    slo: Mapping[str, float] | None = None
    slo_share: float = 0.9
    find_max: bool = False
    compare: str | None = None  # server B's URL
    model2: str | None = None
    api2: str | None = None
    endpoint2: str | None = None
    api_key2: str | None = None
    _lengths: tuple[Length, Length] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.prompt_kind is not None:
            self.workload = self.prompt_kind
        if self.prompts and self.workload == "random":  # --prompts alone means the file
            self.workload = "file"
        self._lengths = (Length.parse(self.input_tokens), Length.parse(self.output_tokens))

    @property
    def mode(self) -> str:
        return "rate" if self.rates or self.find_max else "concurrency"

    def validate(self) -> None:
        if not self.model:
            raise ValueError("a model name is required")
        if self.concurrency and (self.rates or self.find_max):
            raise ValueError("give --concurrency or --rate/--find-max, not both")
        if self.concurrency is not None and (not self.concurrency
                                             or any(c < 1 for c in self.concurrency)):
            raise ValueError("concurrency levels must be integers >= 1")
        if self.rates is not None and (not self.rates or any(not r > 0 for r in self.rates)):
            raise ValueError("request rates must be positive")
        if self.find_max:
            if not self.slo:
                raise ValueError("--find-max needs --slo")
            if self.rates and len(self.rates) > 1:
                raise ValueError("--find-max starts from a single --rate")
        if not 0 < self.slo_share <= 1:
            raise ValueError("--slo-share must be in (0, 1]")
        if self.requests is not None and self.requests < 1:
            raise ValueError("--requests must be at least 1")
        if self.duration is not None and not self.duration > 0:
            raise ValueError("--duration must be positive")
        if self.warmup < 0:
            raise ValueError("--warmup must be 0 or more")
        if self.max_seconds <= 0:
            raise ValueError("--max-seconds must be positive")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError("--timeout must be positive")
        if self.max_in_flight is not None:
            if self.max_in_flight < 1:
                raise ValueError("--max-in-flight must be at least 1")
            if self.mode != "rate":
                raise ValueError("--max-in-flight caps --rate levels; --concurrency is a cap "
                                 "already")
        if self.arrivals not in ARRIVALS:
            raise ValueError(f"unknown arrivals {self.arrivals!r}: expected one of "
                             f"{', '.join(ARRIVALS)}")
        if not self.burstiness > 0:
            raise ValueError("--burstiness must be positive")
        if self.compare is None and any((self.model2, self.api2, self.endpoint2, self.api_key2)):
            raise ValueError("--model2, --api2, --endpoint2 and --api-key2 go with --compare")
        self.targets()  # checks the APIs and endpoints
        self.workload_spec().validate()

    def targets(self) -> dict[str, Target]:
        out = {"A": Target(url=self.url, api=self.api, endpoint=self.endpoint, model=self.model,
                           output_tokens=self._lengths[1].mean, api_key=self.api_key)}
        if self.compare:
            api2 = self.api2 or self.api
            endpoint2 = self.endpoint2 or (self.endpoint if api2 == self.api else None)
            out["B"] = Target(url=self.compare, api=api2, endpoint=endpoint2,
                              model=self.model2 or self.model, output_tokens=self._lengths[1].mean,
                              api_key=self.api_key2 or self.api_key)
        return out

    def target(self) -> Target:
        return self.targets()["A"]

    def workload_spec(self) -> Workload:
        return Workload(kind=self.workload, input_tokens=self._lengths[0],
                        output_tokens=self._lengths[1], seed=self.seed,
                        prompts=tuple(self.prompts) if self.prompts else None,
                        prefixes=self.prefixes, prefix_tokens=self.prefix_tokens,
                        conversations=self.conversations, turns=self.turns)

    def levels(self) -> list[Level]:
        """The levels of a sweep (a --find-max search picks its own)."""
        if self.mode == "rate":
            return [Level("rate", float(r)) for r in self.rates or (1.0,)]
        return [Level("concurrency", c) for c in self.concurrency or DEFAULT_CONCURRENCY]

    def requests_for(self, level: Level | int) -> int | None:
        if isinstance(level, int):
            level = Level("concurrency", level)
        if self.requests is not None or level.mode == "rate" or self.duration is not None:
            return self.requests
        return 4 * int(level.value)

    def duration_for(self, level: Level) -> float | None:
        if level.mode == "rate" and self.requests is None and self.duration is None:
            return DEFAULT_RATE_DURATION
        return self.duration

    def connections(self) -> int | None:
        """The connection pool: enough for every request that can be out at once (None: no
        limit, for an uncapped open loop)."""
        if self.mode == "rate":
            return self.max_in_flight
        return max(self.concurrency or DEFAULT_CONCURRENCY)


async def check_server(http: httpx.AsyncClient, target: Target) -> None:
    """Any HTTP answer at the base URL will do (a 404 included); no answer raises Unreachable."""
    try:
        await http.get(target.url + "/", timeout=10.0)
    except httpx.TransportError as exc:
        raise Unreachable(f"could not reach a server at {target.url}: {exc or type(exc).__name__}"
                          ) from None


def abba(step: int, servers: Sequence[str]) -> list[str]:
    """A, B at even steps and B, A at odd ones (one server: itself)."""
    return list(servers) if step % 2 == 0 else list(reversed(servers))


class _Run:
    """The state of one run: clients, deadline, summaries and request records."""

    def __init__(self, config: BenchConfig, clients: Mapping[str, httpx.AsyncClient],
                 say: Callable[[str], None]) -> None:
        self.config = config
        self.clients = clients
        self.targets = config.targets()
        self.workload = config.workload_spec()
        self.say = say
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + config.max_seconds
        self.levels: list[LevelSummary] = []
        self.records: list[dict[str, Any]] = []
        self.out_of_time = False

    def settings(self, server: str) -> Settings:
        return Settings(http=self.clients[server], target=self.targets[server],
                        deadline=self.deadline, timeout=self.config.timeout,
                        max_in_flight=self.config.max_in_flight)

    def _name(self, server: str, level: Level) -> str:
        who = f"{server} " if len(self.targets) > 1 else ""
        value = f"{level.value:g}/s" if level.mode == "rate" else f"{int(level.value)}"
        return f"{who}{level.mode} {value}"

    def _keep(self, run: LevelRun, server: str, warmup: bool) -> None:
        for spec, result in run.items:
            self.records.append(request_record(spec, result, t0=self.t0, server=server,
                                               level=len(self.levels), warmup=warmup,
                                               slo=self.config.slo))

    def _skip(self, server: str, level: Level, why: str) -> LevelSummary:
        self.out_of_time = True
        summary = skipped_level(level, self.config.requests_for(level), server)
        self.levels.append(summary)
        self.say(f"{self._name(server, level)}: skipped, {why}")
        return summary

    async def level(self, server: str, level: Level, number: int) -> LevelSummary:
        """Warm-ups, then the measured phase, of level `number` against `server`."""
        config = self.config
        name = self._name(server, level)
        if self.out_of_time or time.perf_counter() >= self.deadline:
            return self._skip(server, level, "--max-seconds reached")
        settings = self.settings(server)
        if config.warmup:
            self.say(f"{name}: {config.warmup} warm-up request(s)")
            workers = int(level.value) if level.mode == "concurrency" else 1
            warm = await run_closed(settings, self.workload.source(2 * number * _STRIDE),
                                    max(1, min(workers, config.warmup)), count=config.warmup,
                                    duration=None)
            self._keep(warm, server, warmup=True)
            if warm.truncated:
                return self._skip(server, level, "--max-seconds reached during warm-up")
        source = self.workload.source((2 * number + 1) * _STRIDE)
        count, duration = config.requests_for(level), config.duration_for(level)
        if level.mode == "concurrency":
            self.say(f"{name}: " + (f"{count} measured request(s)" if count is not None
                                    else f"measured for {duration:g} s"))
            run = await run_closed(settings, source, int(level.value), count=count,
                                   duration=duration)
        else:
            due = schedule(level.value, kind=config.arrivals, burstiness=config.burstiness,
                           seed=f"{config.seed}/{number}", duration=duration, count=count)
            self.say(f"{name}: {len(due)} request(s), {config.arrivals} arrivals")
            run = await run_open(settings, source, level.value, due)
        self.out_of_time = self.out_of_time or run.truncated
        self._keep(run, server, warmup=False)
        summary = summarize_level(level, run.results, run.wall_s, planned=run.planned,
                                  truncated=run.truncated, server=server, slo=config.slo,
                                  in_flight=run.in_flight, start=run.start, t0=self.t0)
        self.levels.append(summary)
        text = (f"{name}: {summary.completed} ok, {summary.errors} failed"
                + (f", {summary.incomplete} cut by --max-seconds" if summary.incomplete else "")
                + (f", {summary.late} late" if summary.late else "")
                + f" in {run.wall_s:.1f} s, {summary.output_tokens_per_s:.1f} output tok/s")
        if summary.slo_share is not None:
            text += f", {summary.slo_share * 100:.0f}% within the SLOs"
        self.say(text)
        return summary

    async def sweep(self) -> None:
        for number, level in enumerate(self.config.levels()):
            for server in abba(number, list(self.targets)):
                await self.level(server, level, number)

    async def find_max(self) -> dict[str, RateSearch]:
        start = float(self.config.rates[0]) if self.config.rates else 1.0
        searches = {s: RateSearch(start, self.config.slo_share) for s in self.targets}
        step = 0
        while True:
            planned = {s: searches[s].next_rate() for s in self.targets}
            order = [s for s in abba(step, list(self.targets)) if planned[s] is not None]
            if not order:
                return searches
            for server in order:
                rate = planned[server]
                assert rate is not None
                summary = await self.level(server, Level("rate", rate), step)
                if summary.status != "ok" or summary.slo_share is None:
                    searches[server].stopped = True  # out of time: its share is not known
                else:
                    searches[server].record(rate, summary.slo_share)
            step += 1

    def meta(self, started: datetime) -> dict[str, Any]:
        config = self.config
        a = self.targets["A"]
        levels = config.levels()
        return {
            "servers": {name: t.describe() for name, t in self.targets.items()},
            **a.describe(),
            "order": "ABBA" if len(self.targets) > 1 else None,
            "mode": config.mode,
            "concurrency": [int(lv.value) for lv in levels] if config.mode == "concurrency"
            else None,
            "rates": None if config.mode == "concurrency" or config.find_max
            else [lv.value for lv in levels],
            "arrivals": config.arrivals if config.mode == "rate" else None,
            "burstiness": config.burstiness if config.arrivals == "gamma" else None,
            "requests_per_level": [config.requests_for(lv) for lv in levels],
            "duration_per_level": [config.duration_for(lv) for lv in levels],
            "warmup_per_level": config.warmup,
            "input_tokens": str(self.workload.input_tokens),
            "output_tokens": str(self.workload.output_tokens),
            "workload": self.workload.to_dict(),
            "workload_description": self.workload.describe(),
            "prompts": self.workload.describe(),
            "slo": dict(config.slo) if config.slo else None,
            "slo_share": config.slo_share,
            "find_max": config.find_max,
            "timeout": config.timeout,
            "max_in_flight": config.max_in_flight,
            "seed": config.seed,
            "max_seconds": config.max_seconds,
            "out_of_time": self.out_of_time,
            "started": started.isoformat(timespec="seconds"),
            "elapsed_s": round((datetime.now(UTC) - started).total_seconds(), 3),
        }


async def sweep(config: BenchConfig, *, transport: httpx.AsyncBaseTransport | None = None,
                transport_b: httpx.AsyncBaseTransport | None = None,
                progress: Callable[[str], None] | None = None) -> BenchReport:
    """Run every level (or the --find-max search) against one or two servers."""
    config.validate()
    started = datetime.now(UTC)
    say = progress or (lambda _message: None)
    transports = {"A": transport, "B": transport_b}
    async with AsyncExitStack() as stack:
        clients = {}
        for name, target in config.targets().items():
            clients[name] = await stack.enter_async_context(
                http_client(target, config.connections(), transports[name]))
            await check_server(clients[name], target)
        run = _Run(config, clients, say)
        searches: dict[str, RateSearch] = {}
        if config.find_max:
            searches = await run.find_max()
        else:
            await run.sweep()
    return BenchReport(meta=run.meta(started), levels=run.levels, requests=run.records,
                       searches={name: s.to_dict() for name, s in searches.items()})


def run_bench(config: BenchConfig, *, transport: httpx.AsyncBaseTransport | None = None,
              transport_b: httpx.AsyncBaseTransport | None = None,
              progress: Callable[[str], None] | None = None) -> BenchReport:
    """`sweep` from synchronous code (a fresh event loop)."""
    return asyncio.run(sweep(config, transport=transport, transport_b=transport_b,
                             progress=progress))
