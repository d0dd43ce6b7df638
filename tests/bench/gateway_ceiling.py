"""The gateway's ceiling: tokens/s through it and its CPU per token, with a runner that costs
nothing.

    .venv/bin/python -m tests.bench.gateway_ceiling [--streams 1,16,64,256] [--tokens 128]
        [--min-tokens 2048] [--step-ms 5] [--only generate,chat,openai,whole] [--runs 1]
        [--workers 1,2]

`corral serve` runs as usual, except that its runner is the stand-in of
tests/bench/standin_runner.py: the real worker loop and protocol with a token source in place of
llama.cpp. N clients on loopback (httpx, one connection each) each stream requests of `--tokens`
tokens until at least `--min-tokens` went through at that level. The gateway's CPU time
(psutil, user + system of the `corral serve` process alone: not the runner, not the clients) is
divided by the tokens streamed. On a small machine the clients and the stand-in share the cores
with the gateway, so the CPU per token is the figure to compare; tokens/s is what this machine
allowed. `whole` is /api/generate with "stream": false (the text arrives in one reply).

`--workers N` (a list: one server per entry) sets CORRAL_HTTP_WORKERS: with 2 or more the gateway
CPU is summed over the HTTP worker processes, and the supervisor's (which hands out leases but
never sees a token) is shown apart.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from rich.console import Console
from rich.table import Table

from tests.conftest import LiveServer, start_server

MODEL = "gemma3:270m"
ENDPOINTS = {
    "generate": "/api/generate",
    "chat": "/api/chat",
    "openai": "/v1/chat/completions",
    "whole": "/api/generate",
}


def _body(kind: str, tokens: int) -> dict[str, object]:
    if kind == "openai":
        return {"model": MODEL, "stream": True, "max_tokens": tokens,
                "messages": [{"role": "user", "content": "Tell me about the river town."}]}
    body: dict[str, object] = {"model": MODEL, "options": {"num_predict": tokens},
                               "stream": kind != "whole"}
    if kind == "chat":
        body["messages"] = [{"role": "user", "content": "Tell me about the river town."}]
    else:
        body["prompt"] = "Tell me about the river town."
    return body


def start_gateway(models: Path, log: Path, step_ms: float, workers: int = 1) -> LiveServer:
    """`corral serve` with the stand-in runner (see `_serve`)."""
    return start_server(models, log, args=("-m", "tests.bench.gateway_ceiling", "--serve"),
                        OLLAMA_KEEP_ALIVE="1h", CORRAL_ACCESS_LOG="off",
                        CORRAL_STANDIN_STEP_MS=str(step_ms), OLLAMA_NUM_PARALLEL="4",
                        CORRAL_HTTP_WORKERS=str(workers))


def http_processes(server: LiveServer) -> list[psutil.Process]:
    """The processes that serve HTTP: the HTTP workers, or `corral serve` itself without."""
    main = psutil.Process(server.proc.pid)
    workers = [c for c in main.children() if "gateway.httpworker" in " ".join(c.cmdline())]
    return workers or [main]


def _cpu(processes: list[psutil.Process]) -> list[float]:
    return [t.user + t.system for t in (p.cpu_times() for p in processes)]


def _serve() -> int:
    """The gateway process: `corral serve` whose runners are the stand-in."""
    from gateway.cli import main
    from runner.supervisor.client import RunnerProcess

    RunnerProcess.module = "tests.bench.standin_runner"
    return main(["serve"])


@dataclass
class Cell:
    kind: str
    streams: int
    tokens: int
    seconds: float
    cpu_s: float  # the HTTP processes'
    supervisor_cpu_s: float | None = None  # with HTTP workers: the supervisor's own
    shares: tuple[float, ...] = ()  # each HTTP process's part of cpu_s

    @property
    def split(self) -> str:
        """How the HTTP CPU fell on the workers ("-" with one process)."""
        if len(self.shares) < 2 or not self.cpu_s:
            return "-"
        return "/".join(f"{share / self.cpu_s:.0%}" for share in self.shares)

    @property
    def supervisor_ms(self) -> float | None:
        if self.supervisor_cpu_s is None:
            return None
        return self.supervisor_cpu_s / self.tokens * 1000

    @property
    def per_token_ms(self) -> float:
        return self.cpu_s / self.tokens * 1000

    @property
    def tokens_s(self) -> float:
        return self.tokens / self.seconds


async def _one(client: httpx.AsyncClient, url: str, body: dict[str, object], kind: str,
               tokens: int) -> None:
    async with client.stream("POST", url, json=body) as reply:
        data = await reply.aread()
    if reply.status_code != 200:
        raise RuntimeError(f"{url}: {reply.status_code} {data[:300]!r}")
    if kind == "whole":
        return
    # A line per token then the final line (NDJSON); SSE adds the role chunk, the closing chunk
    # and [DONE]: fewer than `tokens` events means the stream was cut.
    events = data.count(b"\n\n") if kind == "openai" else data.count(b"\n")
    if events < tokens:
        raise RuntimeError(f"{url}: {events} events for {tokens} tokens: {data[-300:]!r}")


async def measure(server: LiveServer, kind: str, streams: int, tokens: int,
                  min_tokens: int) -> Cell:
    rounds = max(1, math.ceil(min_tokens / (streams * tokens)))
    body = _body(kind, tokens)
    target = server.url + ENDPOINTS[kind]
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        await asyncio.gather(*(_one(client, target, body, kind, tokens)
                               for _ in range(streams)))  # connections open, code paths warm
        gateway = http_processes(server)
        supervisor = psutil.Process(server.proc.pid)
        split = gateway != [supervisor]
        before, before_sup = _cpu(gateway), supervisor.cpu_times()
        started = time.perf_counter()

        async def stream() -> None:
            for _ in range(rounds):
                await _one(client, target, body, kind, tokens)

        await asyncio.gather(*(stream() for _ in range(streams)))
        seconds = time.perf_counter() - started
        after, after_sup = _cpu(gateway), supervisor.cpu_times()
    sup = (after_sup.user - before_sup.user) + (after_sup.system - before_sup.system)
    shares = tuple(a - b for a, b in zip(after, before, strict=True))
    return Cell(kind, streams, streams * rounds * tokens, seconds, sum(shares),
                sup if split else None, shares)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.gateway_ceiling")
    parser.add_argument("--streams", default="1,16,64,256")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per request")
    parser.add_argument("--min-tokens", type=int, default=2048,
                        help="tokens per cell at least (more rounds at low stream counts)")
    parser.add_argument("--step-ms", type=float, default=5.0,
                        help="the stand-in's time per decode step (0: as fast as it loops)")
    parser.add_argument("--only", default=",".join(ENDPOINTS))
    parser.add_argument("--runs", type=int, default=1, help="repeat each cell; median shown")
    parser.add_argument("--workers", default="1",
                        help="CORRAL_HTTP_WORKERS values, one server each (e.g. 1,2)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return _serve()
    counts = [int(n) for n in args.streams.split(",")]
    kinds = [k for k in args.only.split(",") if k]
    console = Console(width=150)  # the whole table, also when piped
    with tempfile.TemporaryDirectory(prefix="corral-ceiling-") as tmp:
        from registry.bundled import import_bundled_model
        from registry.store import Store

        models = Path(tmp) / "models"
        import_bundled_model(Store(models))
        results: dict[tuple[int, str, int], list[Cell]] = {}
        rss: dict[int, float] = {}
        for workers in [int(w) for w in args.workers.split(",")]:
            server = start_gateway(models, Path(tmp) / f"serve-{workers}.log", args.step_ms,
                                   workers)
            try:
                for _ in range(args.runs):
                    for kind in kinds:
                        for n in counts:
                            cell = asyncio.run(measure(server, kind, n, args.tokens,
                                                       args.min_tokens))
                            results.setdefault((workers, kind, n), []).append(cell)
                rss[workers] = sum(p.memory_info().rss for p in http_processes(server)) / 2**20
            finally:
                server.stop()
    table = Table(title=f"gateway ceiling (stand-in runner, {args.tokens} tokens per request, "
                        f"step {args.step_ms} ms, {os.cpu_count()} cores)")
    for column in ("endpoint", "HTTP workers", "streams", "tokens", "tokens/s",
                   "gateway CPU ms/token", "range", "split by worker", "supervisor ms/token"):
        table.add_column(column, justify="left" if column == "endpoint" else "right")
    for (workers, kind, n), cells in results.items():
        per = [c.per_token_ms for c in cells]
        label = ENDPOINTS[kind] + (" (stream: false)" if kind == "whole" else "")
        sup = [c.supervisor_ms for c in cells if c.supervisor_ms is not None]
        table.add_row(label, str(workers), str(n), str(cells[0].tokens),
                      f"{statistics.median(c.tokens_s for c in cells):,.0f}",
                      f"{statistics.median(per):.3f}", f"{min(per):.3f}-{max(per):.3f}",
                      cells[0].split, f"{statistics.median(sup):.4f}" if sup else "-")
    console.print(table)
    for workers, mib in rss.items():
        console.print(f"HTTP process RSS after the run with {workers} worker(s): {mib:.0f} MiB"
                      + (" (summed)" if workers > 1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
