"""Two models busy at once on the CPU: the supervisor's thread sharing against every runner
using every core.

    .venv/bin/python -m tests.bench.two_models [--tokens 96] [--runs 3]

Starts a server with the bundled model and a variant of it (other params, so its own runner),
then streams one greedy request to each model at the same time and reports each one's decode
speed. "shared" lets the supervisor split the cores between the busy runners; "all cores" asks
for num_thread = every core in both requests, which is what each runner did before.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import tempfile
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from registry.bundled import import_bundled_model
from registry.store import Store
from runner.supervisor.inventory import cpu_cores
from tests.bench.__main__ import PROMPT, measure
from tests.conftest import start_server
from tests.test_supervisor import make_variant

MODELS = ("gemma3:270m", "variant:bench")


def stream(url: str, model: str, tokens: int, threads: int | None) -> tuple[float, float, int]:
    options = {"temperature": 0, "num_predict": tokens}
    if threads:
        options["num_thread"] = threads
    body = {"model": model, "prompt": PROMPT, "raw": True, "options": options}

    def stamps():  # noqa: ANN202 - a generator of arrival times
        import time

        with httpx.stream("POST", url + "/api/generate", json=body, timeout=600) as reply:
            for line in reply.iter_lines():
                if '"done":false' in line:
                    yield time.perf_counter()
    return measure(stamps())


def together(url: str, tokens: int, threads: int | None) -> list[float]:
    with concurrent.futures.ThreadPoolExecutor(len(MODELS)) as pool:
        runs = [pool.submit(stream, url, m, tokens, threads) for m in MODELS]
        return [run.result()[1] for run in runs]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.two_models")
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cores = cpu_cores()
    table = Table(title=f"Two models decoding at once on {cores} cores ({os.cpu_count()} "
                        f"logical), {args.tokens} tokens each, greedy, median of {args.runs}")
    for column in ("threads per runner", "model A tok/s", "model B tok/s", "sum tok/s"):
        table.add_column(column, justify="right" if column != "threads per runner" else "left")

    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        import_bundled_model(Store(models))
        make_variant(models, MODELS[1], {"num_predict": 256, "temperature": 0.5})
        server = start_server(models, Path(tmp) / "serve.log", OLLAMA_NUM_PARALLEL="1")
        try:
            alone = [stream(server.url, MODELS[0], args.tokens, None)[1]
                     for _ in range(args.runs + 1)][1:]
            table.add_row("one model alone (all cores)", f"{statistics.median(alone):.1f}", "",
                          f"{statistics.median(alone):.1f}")
            for label, threads in ((f"shared by the supervisor ({max(1, cores // 2)})", None),
                                   (f"all cores each ({cores}, as before)", cores)):
                together(server.url, 8, threads)  # load both with these threads, warm up
                results = [together(server.url, args.tokens, threads) for _ in range(args.runs)]
                a = statistics.median(r[0] for r in results)
                b = statistics.median(r[1] for r in results)
                table.add_row(label, f"{a:.1f}", f"{b:.1f}", f"{a + b:.1f}")
        finally:
            server.stop()
    Console().print(table)


if __name__ == "__main__":
    main()
