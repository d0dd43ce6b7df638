"""The concurrency sweep: for each level, warm-up requests, then N requests with `c` in flight.

A level's measured requests go through a fixed pool of `c` workers, each sending its next request
as soon as its previous one ends, so exactly `c` are in flight until the last `c - 1` drain.
Warm-up requests (the first of them also pays for a model load) go through the same kind of pool
and are not measured. The whole run stops at `max_seconds`: requests in flight then are cancelled
and counted as cut, the level is marked truncated, and levels not reached are marked skipped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from gateway.loadtest.client import RequestResult, Target, http_client, run_request
from gateway.loadtest.prompts import PromptSet
from gateway.loadtest.report import BenchReport, LevelSummary, skipped_level, summarize_level


class Unreachable(Exception):
    """Nothing answers HTTP at the target URL."""


@dataclass
class BenchConfig:
    """Everything one run needs; `corral bench` fills it from its flags."""

    url: str
    model: str
    api: str = "ollama"
    endpoint: str | None = None  # None: generate for ollama, chat for openai
    concurrency: Sequence[int] = (1, 2, 4, 8)
    requests: int | None = None  # measured requests per level; None: 4 x concurrency
    input_tokens: int = 250
    output_tokens: int = 128
    prompt_kind: str = "random"
    prompts: Sequence[str] | None = None  # from --prompts FILE; overrides prompt_kind
    warmup: int = 1  # warm-up requests per level
    max_seconds: float = 600.0  # for the whole run
    seed: int = 0
    api_key: str | None = None

    def validate(self) -> None:
        if not self.model:
            raise ValueError("a model name is required")
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise ValueError("concurrency levels must be integers >= 1")
        if self.requests is not None and self.requests < 1:
            raise ValueError("--requests must be at least 1")
        if self.output_tokens < 1:
            raise ValueError("--output-tokens must be at least 1")
        if self.warmup < 0:
            raise ValueError("--warmup must be 0 or more")
        if self.max_seconds <= 0:
            raise ValueError("--max-seconds must be positive")
        self.target()  # checks api and endpoint
        self.prompt_set()  # checks the prompt settings

    def target(self) -> Target:
        return Target(url=self.url, api=self.api, endpoint=self.endpoint, model=self.model,
                      output_tokens=self.output_tokens, api_key=self.api_key)

    def prompt_set(self) -> PromptSet:
        return PromptSet(tokens=self.input_tokens, kind=self.prompt_kind, seed=self.seed,
                         prompts=self.prompts)

    def requests_for(self, concurrency: int) -> int:
        return self.requests if self.requests is not None else 4 * concurrency


async def check_server(http: httpx.AsyncClient, target: Target) -> None:
    """Any HTTP answer at the base URL will do (a 404 included); no answer raises Unreachable."""
    try:
        await http.get(target.url + "/", timeout=10.0)
    except httpx.TransportError as exc:
        raise Unreachable(f"could not reach a server at {target.url}: {exc or type(exc).__name__}"
                          ) from None


async def run_pool(http: httpx.AsyncClient, target: Target, prompts: PromptSet,
                   indices: range, workers: int, timeout: float
                   ) -> tuple[list[RequestResult], bool]:
    """Send the prompts numbered `indices` with `workers` in flight; (results, ran out of time)."""
    results: list[RequestResult] = []
    pending_indices = iter(indices)

    async def worker() -> None:
        for index in pending_indices:  # shared: each worker takes the next one when it is free
            results.append(await run_request(http, target, prompts[index]))

    tasks = [asyncio.create_task(worker()) for _ in range(min(workers, len(indices)))]
    if not tasks:
        return results, False
    done, pending = await asyncio.wait(tasks, timeout=max(timeout, 0.0))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        task.result()  # a bug in here should surface, not vanish
    return results, bool(pending)


async def sweep(config: BenchConfig, *, transport: httpx.AsyncBaseTransport | None = None,
                progress: Callable[[str], None] | None = None) -> BenchReport:
    """Run every concurrency level in order; see the module docstring."""
    config.validate()
    target = config.target()
    prompts = config.prompt_set()
    say = progress or (lambda _message: None)
    started = datetime.now(UTC)
    levels: list[LevelSummary] = []
    out_of_time = False
    async with http_client(target, max(config.concurrency), transport) as http:
        await check_server(http, target)
        deadline = time.monotonic() + config.max_seconds
        next_index = 0
        for c in config.concurrency:
            planned = config.requests_for(c)
            if out_of_time or time.monotonic() >= deadline:
                out_of_time = True
                levels.append(skipped_level(c, planned))
                say(f"concurrency {c}: skipped, --max-seconds reached")
                continue
            if config.warmup:
                say(f"concurrency {c}: {config.warmup} warm-up request(s)")
                warm = range(next_index, next_index + config.warmup)
                next_index = warm.stop
                _, out_of_time = await run_pool(http, target, prompts, warm, c,
                                                deadline - time.monotonic())
                if out_of_time:
                    levels.append(skipped_level(c, planned))
                    say(f"concurrency {c}: skipped, --max-seconds reached during warm-up")
                    continue
            say(f"concurrency {c}: {planned} measured request(s)")
            measured = range(next_index, next_index + planned)
            next_index = measured.stop
            phase_start = time.perf_counter()
            results, out_of_time = await run_pool(http, target, prompts, measured, c,
                                                  deadline - time.monotonic())
            wall = time.perf_counter() - phase_start
            level = summarize_level(c, results, wall, planned=planned, truncated=out_of_time)
            levels.append(level)
            say(f"concurrency {c}: {level.completed} ok, {level.errors} failed"
                + (f", {level.incomplete} cut by --max-seconds" if level.incomplete else "")
                + f" in {wall:.1f} s, {level.output_tokens_per_s:.1f} output tok/s")
    meta = {
        "url": target.url,
        "api": target.api,
        "endpoint": target.endpoint,
        "request_url": target.request_url,
        "model": config.model,
        "concurrency": list(config.concurrency),
        "requests_per_level": [config.requests_for(c) for c in config.concurrency],
        "warmup_per_level": config.warmup,
        "input_tokens": config.input_tokens,
        "output_tokens": config.output_tokens,
        "prompts": prompts.describe(),
        "seed": config.seed,
        "max_seconds": config.max_seconds,
        "out_of_time": out_of_time,
        "started": started.isoformat(timespec="seconds"),
        "elapsed_s": round((datetime.now(UTC) - started).total_seconds(), 3),
    }
    return BenchReport(meta=meta, levels=levels)


def run_bench(config: BenchConfig, *, transport: httpx.AsyncBaseTransport | None = None,
              progress: Callable[[str], None] | None = None) -> BenchReport:
    """`sweep` from synchronous code (a fresh event loop)."""
    return asyncio.run(sweep(config, transport=transport, progress=progress))
