"""GET /metrics: Prometheus text format, through prometheus-client.

Two kinds of series:
- Counters and histograms that requests move (requests, tokens, latencies), updated by the team
  middleware when a request ends, from what its runner reported (gateway/team/context.py).
- Gauges read from the supervisor at scrape time: requests running and waiting, KV cache use, the
  runners and their memory, the GPUs. Before each scrape every runner is asked for its health
  (a message the pool already sends every few seconds), whose reply carries the cache positions
  its sequences hold; the per-token path gains no extra messages.

The three signals Kubernetes' Gateway API Inference Extension schedules on
(`corral_requests_waiting`, `corral_requests_running`, `corral_kv_cache_usage_ratio`) come once
per model and once without the `model` label, over all models: its endpoint picker reads one
series per server.

The registry is the app's own (not prometheus-client's global one), so several apps in one
process (tests) never share counts. With several HTTP processes (CORRAL_HTTP_WORKERS >= 2) the
counters and histograms go through prometheus-client's multiprocess mode (each worker writes its
own files in PROMETHEUS_MULTIPROC_DIR, which the supervisor sets in its runtime directory and
empties at start) and every scrape sums them over all workers, the dead ones included, so any
worker answers with the same totals. The gauges come from the supervisor over its control socket
at scrape time instead: it alone owns the runners, and multiprocess gauge files would hold each
worker's stale copy of a state that only one process knows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.remotepool import RemotePool
from runner.supervisor.pool import RunnerPool

# No `*_created` series beside every counter and histogram: they double the scrape for a figure
# (when a series began) that nobody here reads.
disable_created_metrics()

# Scrapes must stay quick even while a runner is inside a long prompt step; the last known
# figure stands in for a runner that does not answer in time.
HEALTH_TIMEOUT_S = 1.0

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5,
                    5.0, 10.0, 20.0, 40.0, 80.0)
_TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1,
                      0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0,
                     600.0)


class Metrics:
    """Every series corral exports, in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("corral_requests", "HTTP requests answered.",
                                ["route", "model", "status", "key"], registry=r)
        self.prompt_tokens = Counter("corral_prompt_tokens", "Prompt tokens read.",
                                     ["model", "key"], registry=r)
        self.generation_tokens = Counter("corral_generation_tokens", "Tokens generated.",
                                         ["model", "key"], registry=r)
        self.cached_prompt_tokens = Counter(
            "corral_cached_prompt_tokens", "Prompt tokens served from the KV cache.", ["model"],
            registry=r)
        self.time_to_first_token = Histogram(
            "corral_time_to_first_token_seconds",
            "From the request's arrival to its first generated text.", ["model"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.inter_token_latency = Histogram(
            "corral_inter_token_latency_seconds", "Between two pieces of a generation's text.",
            ["model"], buckets=_TOKEN_GAP_BUCKETS, registry=r)
        self.request_duration = Histogram(
            "corral_request_duration_seconds", "From a request's arrival to the end of its reply.",
            ["route", "model"], buckets=_DURATION_BUCKETS, registry=r)
        self.queue_wait = Histogram(
            "corral_queue_wait_seconds", "Time a generation waited in its runner for a slot.",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.supervisor = SupervisorCollector()
        r.register(self.supervisor)
        # What a scrape shows: this registry, or with several HTTP processes the sums of all
        # their files and the supervisor's gauges.
        self.exposed = r
        if multiproc := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.exposed = CollectorRegistry()
            MultiProcessCollector(self.exposed, multiproc)
            self.exposed.register(self.supervisor)

    async def render(self, pool: RunnerPool | RemotePool) -> bytes:
        if isinstance(pool, RemotePool):
            self.supervisor.snapshot = Snapshot.from_data(await pool.gauges())
        else:
            self.supervisor.snapshot = await take_snapshot(pool)
        return generate_latest(self.exposed)


async def take_snapshot(pool: RunnerPool) -> Snapshot:
    """The gauges' figures, from the runners' fresh health reports."""
    await _refresh_health(pool)
    return Snapshot.take(pool)


async def _refresh_health(pool: RunnerPool) -> None:
    runners = [e.runner for e in pool.entries() if e.runner.alive]
    with contextlib.suppress(Exception):
        await asyncio.gather(*(r.health(HEALTH_TIMEOUT_S) for r in runners))


@dataclass
class ModelState:
    running: int = 0
    waiting: int = 0
    kv_used: int = 0
    kv_total: int = 0
    runners: int = 0
    resident: int = 0
    cache_bytes: int = 0  # the runners' prompt caches (runner/process/promptcache.py)
    cache_hits: int = 0
    drafted: int = 0  # speculative decoding (runner/process/speculation.py): tokens guessed
    accepted: int = 0  # ... and of them held


@dataclass
class Snapshot:
    """The supervisor's state at one scrape."""

    models: dict[str, ModelState] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    gpus: list[tuple[str, int, int]] = field(default_factory=list)  # (index, used, total)

    @classmethod
    def take(cls, pool: RunnerPool) -> Snapshot:
        """Read on the event loop, as the pool changes there (the inventory's NVML calls take a
        few milliseconds, once per scrape)."""
        snap = cls(restarts=dict(pool.restarts))
        for name, count in list(pool.waiting_loads.items()):  # waiting for their model to load
            snap.models.setdefault(name, ModelState()).waiting += count
        for group in list(pool.loaded.values()):
            if not group:
                continue
            state = snap.models.setdefault(group[0].name, ModelState())
            for entry in list(group):
                state.runners += 1
                state.running += min(entry.refcount, entry.parallel)
                state.waiting += entry.queued
                state.resident += entry.measured_rss()
                ready, health = entry.runner.ready, entry.runner.last_health
                if ready is not None:
                    state.kv_total += ready.n_ctx * ready.parallel
                    state.kv_used += health.kv_used if health is not None else 0
                if health is not None and len(health.prompt_cache) >= 3:
                    state.cache_bytes += health.prompt_cache[1]
                    state.cache_hits += health.prompt_cache[2]
                if health is not None and len(health.speculative) >= 2:
                    state.drafted += health.speculative[0]
                    state.accepted += health.speculative[1]
        with contextlib.suppress(Exception):  # no inventory: no GPU series
            inventory = pool.inventory()
            snap.gpus = [(str(g.index), g.used, g.total) for g in inventory.gpus]
        return snap

    def to_data(self) -> dict[str, Any]:
        """Plain data for the control socket (the supervisor answers a worker's scrape)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Snapshot:
        return cls(models={name: ModelState(**state) for name, state in data["models"].items()},
                   restarts=dict(data["restarts"]), gpus=[tuple(g) for g in data["gpus"]])


def _gauge(name: str, doc: str, values: dict[str, float], total: float | None) -> Metric:
    """A gauge per model, plus the same name without labels over all models."""
    metric = Metric(name, doc, "gauge")
    if total is not None:
        metric.add_sample(name, {}, total)
    for model, value in values.items():
        metric.add_sample(name, {"model": model}, value)
    return metric


class SupervisorCollector(Collector):
    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def collect(self) -> Iterable[Metric]:
        return list(self._metrics(self.snapshot))

    def _metrics(self, snap: Snapshot) -> Iterator[Metric]:
        models = snap.models
        yield _gauge("corral_requests_running", "Requests holding a slot of a runner.",
                     {m: s.running for m, s in models.items()},
                     sum(s.running for s in models.values()))
        yield _gauge("corral_requests_waiting", "Requests waiting for a slot of a runner.",
                     {m: s.waiting for m, s in models.items()},
                     sum(s.waiting for s in models.values()))
        used = sum(s.kv_used for s in models.values())
        total = sum(s.kv_total for s in models.values())
        yield _gauge("corral_kv_cache_usage_ratio",
                     "KV cache positions the running sequences hold, over all of the runners'.",
                     {m: s.kv_used / s.kv_total if s.kv_total else 0.0 for m, s in models.items()},
                     used / total if total else 0.0)
        loaded = GaugeMetricFamily("corral_loaded_runners", "Runner processes (replicas) loaded.",
                                   labels=["model"])
        resident = GaugeMetricFamily("corral_runner_resident_bytes",
                                     "Resident memory (RSS) of a model's runner processes.",
                                     labels=["model"])
        for model, state in models.items():
            loaded.add_metric([model], state.runners)
            resident.add_metric([model], state.resident)
        yield loaded
        yield resident
        restarts = CounterMetricFamily("corral_runner_restarts",
                                       "Runners that died; the next request started a fresh one.",
                                       labels=["model"])
        for model, count in snap.restarts.items():
            restarts.add_metric([model], count)
        yield restarts
        cache_bytes = GaugeMetricFamily("corral_prompt_cache_bytes",
                                        "Host RAM the runners' prompt caches hold.",
                                        labels=["model"])
        # Counted by each runner since it loaded: a reload starts again from 0 (a counter reset).
        cache_hits = CounterMetricFamily("corral_prompt_cache_hits",
                                         "Requests that restored a saved prompt state.",
                                         labels=["model"])
        for model, state in models.items():
            cache_bytes.add_metric([model], state.cache_bytes)
            cache_hits.add_metric([model], state.cache_hits)
        yield cache_bytes
        yield cache_hits
        # Counted by each runner since it loaded, as the prompt cache's hits.
        drafted = CounterMetricFamily("corral_speculative_drafted_tokens",
                                      "Tokens guessed by prompt lookup and verified in a decode "
                                      "step (speculative decoding).", labels=["model"])
        accepted = CounterMetricFamily("corral_speculative_accepted_tokens",
                                       "Guessed tokens that held (each saved a decode step).",
                                       labels=["model"])
        for model, state in models.items():
            drafted.add_metric([model], state.drafted)
            accepted.add_metric([model], state.accepted)
        yield drafted
        yield accepted
        used_gpu = GaugeMetricFamily("corral_gpu_memory_used_bytes", "GPU memory in use.",
                                     labels=["gpu"])
        total_gpu = GaugeMetricFamily("corral_gpu_memory_total_bytes", "GPU memory.",
                                      labels=["gpu"])
        for gpu, used_bytes, total_bytes in snap.gpus:
            used_gpu.add_metric([gpu], used_bytes)
            total_gpu.add_metric([gpu], total_bytes)
        yield used_gpu
        yield total_gpu


async def metrics(request: Request) -> Response:
    body = await request.app.state.metrics.render(request.app.state.pool)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


routes = [Route("/metrics", metrics, methods=["GET"])]
