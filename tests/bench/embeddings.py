"""Embeddings: inputs per second for 64 short texts, batched vs one at a time.

    .venv/bin/python -m tests.bench.embeddings

In-process on corral's engine (the runner's code), bundled model.
"""

from __future__ import annotations

import logging
import statistics
import time

from rich.console import Console
from rich.table import Table

from runner.process.engine import Engine
from shared import protocol as p
from tests.bench._model import bundled_model_path

TEXTS = [f"Short text number {i} about rivers, bridges and the weather in town." for i in range(64)]


def main(runs: int = 3) -> None:
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    engine = Engine(p.Load(bundled_model_path(), num_ctx=4096, parallel=1))
    engine.embed(p.Embed(0, TEXTS[:2]))  # warm-up (creates the embedding context)
    timings: dict[str, list[float]] = {"batched (one request of 64)": [],
                                       "one at a time (64 requests)": []}
    for _ in range(runs):
        started = time.perf_counter()
        engine.embed(p.Embed(1, TEXTS))
        timings["batched (one request of 64)"].append(time.perf_counter() - started)
        started = time.perf_counter()
        for text in TEXTS:
            engine.embed(p.Embed(2, [text]))
        timings["one at a time (64 requests)"].append(time.perf_counter() - started)
    table = Table(title=f"Embeddings of 64 short texts, bundled model, median of {runs} (2 cores)")
    table.add_column("mode")
    table.add_column("seconds", justify="right")
    table.add_column("inputs/s", justify="right")
    for mode, values in timings.items():
        seconds = statistics.median(values)
        table.add_row(mode, f"{seconds:.2f}", f"{len(TEXTS) / seconds:.0f}")
    Console().print(table)
    engine.close()


if __name__ == "__main__":
    main()
