"""Many requests at once against 4 slots and a short queue: only 200 and 503 come back, and the
gateway's memory is where it was."""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path

import httpx
import psutil

from tests.soak.common import MODEL, Row, Scale, generate, percentile, soak_server

SLOTS, QUEUE = 4, 32


async def _fire(url: str, n: int, concurrency: int) -> list[tuple[int, float]]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=300) as client:

        async def one(i: int) -> tuple[int, float]:
            async with gate:
                started = time.perf_counter()
                try:
                    reply = await client.post(url + "/api/generate", json={
                        "model": MODEL, "prompt": f"Request {i}: the river", "raw": True,
                        "stream": False, "options": {"num_predict": 8, "temperature": 0}})
                    status = reply.status_code
                except httpx.HTTPError:
                    status = -1  # no HTTP answer at all
                return status, time.perf_counter() - started

        return await asyncio.gather(*(one(i) for i in range(n)))


def run(scale: Scale, source: Path, folder: Path) -> Row:
    problems: list[str] = []
    with soak_server(folder, source, OLLAMA_NUM_PARALLEL=str(SLOTS),
                     OLLAMA_MAX_QUEUE=str(QUEUE)) as server:
        assert generate(server.url).status_code == 200
        asyncio.run(_fire(server.url, scale.warmup, scale.concurrency))  # warm up
        gateway = psutil.Process(server.proc.pid)
        time.sleep(1)
        rss_before = gateway.memory_info().rss
        started = time.monotonic()
        results = asyncio.run(_fire(server.url, scale.requests, scale.concurrency))
        elapsed = time.monotonic() - started
        time.sleep(2)  # let finished requests' buffers go
        rss_after = gateway.memory_info().rss
    statuses = collections.Counter(status for status, _ in results)
    if set(statuses) - {200, 503}:
        problems.append(f"statuses other than 200 and 503: {dict(statuses)}")
    if not statuses[200]:
        problems.append("no request was served")
    growth = (rss_after - rss_before) / rss_before
    if abs(growth) > 0.10:
        problems.append(f"gateway RSS moved {growth:+.1%}")
    ok = [seconds for status, seconds in results if status == 200]
    busy = [seconds for status, seconds in results if status == 503]
    figures = (f"{statuses[200]} x 200, {statuses[503]} x 503 in {elapsed:.0f}s; 200s p50 "
               f"{percentile(ok, 50):.2f}s p99 {percentile(ok, 99):.2f}s; 503s p50 "
               f"{percentile(busy, 50) * 1000:.0f}ms; gateway RSS {rss_before / 2**20:.0f} -> "
               f"{rss_after / 2**20:.0f} MiB ({growth:+.1%})")
    return Row(f"{scale.requests} requests at concurrency {scale.concurrency}",
               f"{SLOTS} slots, OLLAMA_MAX_QUEUE={QUEUE}", not problems, figures, problems)
