"""Throughput and latency of a corral server under concurrent load, with `corral bench`'s harness.

    .venv/bin/python -m tests.bench.concurrency [--concurrency 1,2,4,8] [--parallel 4]
        [--requests N] [--input-tokens 250] [--output-tokens 128] [--json F] [--chart F.png]

Starts its own server (bundled Gemma 3 270M, OLLAMA_NUM_PARALLEL=4 unless told otherwise) on a
loopback port with a temporary model store, runs the sweep over /api/generate (random ~250-token
prompts, 128 new tokens, greedy), prints the table and stops the server.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from gateway.loadtest import BenchConfig, run_bench
from gateway.loadtest.report import render_table, write_chart
from registry.bundled import import_bundled_model
from registry.store import Store
from tests.conftest import start_server


def _levels(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.concurrency")
    parser.add_argument("--concurrency", type=_levels, default=[1, 2, 4, 8])
    parser.add_argument("--parallel", type=int, default=4, help="OLLAMA_NUM_PARALLEL")
    parser.add_argument("--requests", type=int, help="per level (default: 4 x concurrency)")
    parser.add_argument("--input-tokens", type=int, default=250)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--prompt-kind", choices=("random", "fixed"), default="random")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--chart", metavar="FILE.png")
    args = parser.parse_args()
    err = Console(stderr=True)
    out = Console() if Console().is_terminal else Console(width=160)

    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        import_bundled_model(Store(models))
        server = start_server(models, Path(tmp) / "serve.log",
                              OLLAMA_NUM_PARALLEL=str(args.parallel))
        try:
            config = BenchConfig(
                url=server.url, model="gemma3:270m", api="ollama", endpoint="generate",
                concurrency=args.concurrency, requests=args.requests,
                input_tokens=args.input_tokens, output_tokens=args.output_tokens,
                prompt_kind=args.prompt_kind, warmup=1, max_seconds=args.max_seconds)
            report = run_bench(config, progress=lambda m: err.print(m, style="dim",
                                                                    highlight=False))
        finally:
            server.stop()
    report.meta["server"] = f"corral, OLLAMA_NUM_PARALLEL={args.parallel}"
    out.print(render_table(report))
    out.print(f"server: corral with OLLAMA_NUM_PARALLEL={args.parallel}; "
              f"{report.meta['elapsed_s']:.0f} s in all", highlight=False)
    if args.json:
        report.write_json(args.json)
    if args.chart:
        write_chart(report, args.chart)
    return 0 if report.completed else 1


if __name__ == "__main__":
    sys.exit(main())
