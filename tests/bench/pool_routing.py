"""Metric-steered routing across three corral servers, as Kubernetes' endpoint picker does it.

    .venv/bin/python -m tests.bench.pool_routing [--requests 27] [--concurrency 9]
        [--tokens 32] [--parallel 2] [--slow-parallel 1] [--slow-factor 10]

Starts three `corral serve` instances on loopback ports (bundled model, one shared temporary
store), loads the model in each, and slows one down, like a pool member on a smaller, slower
GPU: it has `--slow-parallel` slots (1) where the others have `--parallel` (2), and its runner
process is stopped and continued by signal so that it computes only 1/`--slow-factor` of the
time (short stops, so it still answers the pool's health checks). Every request asks for one
CPU thread (`num_thread`), so the three runners do not fight over this machine's cores. Then a
closed-loop client (`--concurrency` requests in flight, their first sends 0.5 s apart) sends the
same `/v1/completions` requests twice:

- **metrics**: before each request it scrapes every instance's `/metrics` and sends the request
  to the one with the lowest `corral_requests_waiting`, then the lowest
  `corral_kv_cache_usage_ratio` (the server-wide series, without the `model` label): the
  Gateway API Inference Extension endpoint picker's queue and KV-cache scorers;
- **round-robin**: instance 1, 2, 3, 1, ... whatever their state.

The table shows how many requests each instance took and the latency and wall time of each
policy. Everything runs on this machine's cores, so the figures are about the spread, not speed;
the slowdown is CPU time taken away, which other work on an oversubscribed machine masks (a
stopped process gets its CPU back first when it runs), so the load average is printed with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from registry.bundled import import_bundled_model
from registry.store import Store
from tests.conftest import LiveServer, start_server

MODEL = "gemma3:270m"
TRACE = False  # --trace: each pick and the (waiting, KV use) it saw, on stderr
PROMPT = "The three most useful things to know about running a small language model are"


@dataclass
class Instance:
    name: str
    server: LiveServer


@dataclass
class Sample:
    instance: str
    seconds: float
    error: str | None = None  # status and body of a failed request


async def scrape(http: httpx.AsyncClient, instance: Instance) -> tuple[float, float]:
    """(waiting, KV-cache use) from the instance's /metrics, the series without labels."""
    text = (await http.get(instance.server.url + "/metrics")).text
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.labels and sample.name in ("corral_requests_waiting",
                                                     "corral_kv_cache_usage_ratio"):
                found[sample.name] = sample.value
    return found["corral_requests_waiting"], found["corral_kv_cache_usage_ratio"]


async def pick_by_metrics(http: httpx.AsyncClient, pool: list[Instance]) -> Instance:
    """The endpoint picker's rule: shortest queue first, then least KV cache in use."""
    scores = await asyncio.gather(*(scrape(http, instance) for instance in pool))
    # Ties (idle servers) go to a random one, as the picker chooses among equal scores.
    best = min(range(len(pool)), key=lambda i: (*scores[i], random.random()))
    if TRACE:
        print("pick", pool[best].name, " ".join(f"{i.name}:{w:g}/{kv:.3f}"
                                                for i, (w, kv) in zip(pool, scores, strict=True)),
              file=sys.stderr)
    return pool[best]


async def run_policy(pool: list[Instance], choose: Callable, requests: int, concurrency: int,
                     tokens: int) -> tuple[list[Sample], float]:
    samples: list[Sample] = []
    counter = itertools.count()
    async with httpx.AsyncClient(timeout=600) as http:

        async def worker(delay: float) -> None:
            await asyncio.sleep(delay)  # arrivals spread out, not one burst on stale metrics
            while next(counter) < requests:
                instance = await choose(http, pool)
                started = time.perf_counter()
                r = await http.post(instance.server.url + "/v1/completions", json={
                    "model": MODEL, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0,
                    "num_thread": 1})
                error = None if r.status_code == 200 else f"{r.status_code} {r.text[:200]}"
                samples.append(Sample(instance.name, time.perf_counter() - started, error))

        began = time.perf_counter()
        await asyncio.gather(*(worker(0.5 * i) for i in range(concurrency)))
        return samples, time.perf_counter() - began


def round_robin(pool: list[Instance]) -> Callable:
    cycle = itertools.cycle(pool)

    async def choose(http: httpx.AsyncClient, pool: list[Instance]) -> Instance:
        return next(cycle)

    return choose


@contextlib.contextmanager
def slowed(instance: Instance, factor: float, period: float = 0.2) -> Iterator[set[int]]:
    """Let the instance's runners compute only 1/factor of each period (SIGSTOP, then SIGCONT),
    and always leave them running. The runner PIDs are looked up again every cycle, so a runner
    the server restarts is slowed too."""
    done = threading.Event()
    pids: list[int] = []
    seen: set[int] = set()

    def signal_all(sig: signal.Signals) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def duty_cycle() -> None:
        while not done.is_set():
            with contextlib.suppress(psutil.Error):  # a runner that just died: next cycle
                pids[:] = instance.server.runner_pids()
                seen.update(pids)
            signal_all(signal.SIGSTOP)
            done.wait(period * (1 - 1 / factor))
            signal_all(signal.SIGCONT)
            done.wait(period / factor)

    thread = threading.Thread(target=duty_cycle, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()
        signal_all(signal.SIGCONT)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.pool_routing")
    parser.add_argument("--requests", type=int, default=27, help="per policy")
    parser.add_argument("--concurrency", type=int, default=9,
                        help="requests in flight (beyond the 5 slots: queues form)")
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens per request")
    parser.add_argument("--parallel", type=int, default=2, help="OLLAMA_NUM_PARALLEL per server")
    parser.add_argument("--slow-parallel", type=int, default=1,
                        help="OLLAMA_NUM_PARALLEL of the slowed server")
    parser.add_argument("--slow-factor", type=float, default=10.0,
                        help="the slowed instance computes 1/F of the time")
    parser.add_argument("--trace", action="store_true", help="print each metrics pick")
    args = parser.parse_args()
    global TRACE
    TRACE = args.trace
    err = Console(stderr=True)

    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        import_bundled_model(Store(models))
        pool: list[Instance] = []
        results: dict[str, tuple[list[Sample], float]] = {}
        try:
            for i, name in enumerate(("A", "B", "C (slowed)")):
                err.print(f"starting instance {name}", style="dim")
                slots = args.slow_parallel if i == 2 else args.parallel
                server = start_server(models, Path(tmp) / f"serve{i}.log",
                                      OLLAMA_NUM_PARALLEL=str(slots),
                                      OLLAMA_KEEP_ALIVE="30m")
                pool.append(Instance(name, server))
                # Load the runner with the options the requests use (num_thread is a load
                # option: another value would reload it under the first measured request).
                httpx.post(server.url + "/v1/completions", timeout=300, json={
                    "model": MODEL, "prompt": "Hi", "max_tokens": 1,
                    "num_thread": 1}).raise_for_status()
            load_before = os.getloadavg()[0]
            with slowed(pool[2], args.slow_factor) as slowed_pids:
                for label, choose in (("metrics", pick_by_metrics),
                                      ("round-robin", round_robin(pool))):
                    err.print(f"{label}: {args.requests} requests, {args.concurrency} in flight",
                              style="dim")
                    results[label] = asyncio.run(run_policy(pool, choose, args.requests,
                                                            args.concurrency, args.tokens))
        finally:
            for instance in pool:
                instance.server.stop()
                for line in instance.server.log.read_text().splitlines():
                    if " WARNING " in line or " ERROR " in line:  # e.g. a runner that died
                        err.print(f"{instance.name}: {line}", style="yellow", highlight=False)
            for label, (samples, _) in results.items():
                for sample in samples:
                    if sample.error:
                        err.print(f"{label}: {sample.instance}: {sample.error}", style="red")
                        log = pool[[i.name for i in pool].index(sample.instance)].server.log
                        err.print(log.read_text()[-2000:], style="dim")

    table = Table(title=f"{args.requests} requests of {args.tokens} tokens, {args.concurrency} in "
                        f"flight; A and B {args.parallel} slots each, C {args.slow_parallel} "
                        f"computing 1/{args.slow_factor:g} of the time")
    table.add_column("routing")
    for instance in pool:
        table.add_column(f"to {instance.name}", justify="right")
    for column in ("latency p50", "latency p90", "C's latency p50", "wall time", "errors"):
        table.add_column(column, justify="right")
    for label, (every, wall) in results.items():
        samples = [s for s in every if s.error is None]
        counts = Counter(s.instance for s in samples)
        latencies = sorted(s.seconds for s in samples)
        slow = [s.seconds for s in samples if s.instance == pool[2].name]
        p90 = latencies[int(0.9 * (len(latencies) - 1))]
        table.add_row(label, *(str(counts[i.name]) for i in pool),
                      f"{statistics.median(latencies):.2f} s", f"{p90:.2f} s",
                      f"{statistics.median(slow):.2f} s" if slow else "-", f"{wall:.1f} s",
                      str(len(every) - len(samples)))
    Console().print(table)
    Console().print(f"load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} "
                    f"after, on {os.cpu_count()} CPUs; C ran {len(slowed_pids)} runner "
                    f"process(es) (more than 1: its runner died and was reloaded)",
                    highlight=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
