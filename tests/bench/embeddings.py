"""Embeddings: inputs per second, batched vs one at a time, and against llama-cpp-python.

    .venv/bin/python -m tests.bench.embeddings [--runs 5]

In-process on corral's engine (the runner's code). Two models:
- the bundled model (a generative model asked for embeddings), batched vs one at a time;
- an embedding-only BERT of MiniLM-L6's shape (6 layers, 384 wide, 12 heads; random weights and
  the tiny WordPiece vocabulary of tests/tinymodels.py), where the same batch goes through
  corral's engine and through llama-cpp-python's own `Llama.embed` in-process, same GGUF, same
  threads, same context: corral should keep at least 0.9x of its throughput (issue 26).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from runner.process.engine import Engine
from shared import protocol as p
from tests.bench._model import bundled_model_path
from tests.tinymodels import BERT, WORDS, Dims, write_gguf

TEXTS = [f"Short text number {i} about rivers, bridges and the weather in town." for i in range(64)]
# Inputs in the tiny WordPiece vocabulary: 8 to 40 words each, so that batches pack unevenly.
BERT_TEXTS = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(8 + (i * 5) % 33))
              for i in range(64)]
MINILM = Dims(n_embd=384, n_head=12, n_head_kv=12, n_ff=1536, n_layer=6, n_ctx_train=512)


def _timed(fn: Callable[[], object], runs: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def _row(table: Table, mode: str, values: list[float], n: int) -> float:
    rate = [n / v for v in values]
    median = statistics.median(rate)
    table.add_row(mode, f"{statistics.median(values):.3f}", f"{median:.1f}",
                  f"{min(rate):.1f}-{max(rate):.1f}")
    return median


def bundled(runs: int) -> None:
    engine = Engine(p.Load(bundled_model_path(), num_ctx=4096, parallel=1))
    table = Table(title=f"Embeddings of 64 short texts, bundled model, {runs} runs")
    for column in ("mode", "seconds (median)", "inputs/s (median)", "inputs/s (range)"):
        table.add_column(column, justify="right" if column != "mode" else "left")
    _row(table, "batched (one request of 64)",
         _timed(lambda: engine.embed(p.Embed(1, TEXTS)), runs), len(TEXTS))
    _row(table, "one at a time (64 requests)", _timed(
        lambda: [engine.embed(p.Embed(2, [t])) for t in TEXTS], runs), len(TEXTS))
    Console().print(table)
    engine.close()


def encoder(runs: int) -> None:
    import llama_cpp

    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        path = str(write_gguf(BERT, Path(tmp) / "minilm-shaped.gguf", dims=MINILM))
        engine = Engine(p.Load(path, num_ctx=512, parallel=1, num_thread=threads))
        reference = llama_cpp.Llama(path, embedding=True, n_ctx=512, n_batch=512,
                                    n_ubatch=512, n_threads=threads, n_threads_batch=threads,
                                    verbose=False)
        table = Table(title=f"Embedding-only model (MiniLM-L6 shape), 64 inputs of 8-40 words, "
                            f"{threads} threads, {runs} runs")
        for column in ("mode", "seconds (median)", "inputs/s (median)", "inputs/s (range)"):
            table.add_column(column, justify="right" if column != "mode" else "left")
        ours = _row(table, "corral engine: one request of 64", _timed(
            lambda: engine.embed(p.Embed(1, BERT_TEXTS, normalize=True)), runs),
            len(BERT_TEXTS))
        theirs = _row(table, "llama-cpp-python Llama.embed(64)", _timed(
            lambda: reference.embed(BERT_TEXTS, normalize=True), runs), len(BERT_TEXTS))
        Console().print(table)
        print(f"corral / llama-cpp-python: {ours / theirs:.2f}x (median inputs/s)")
        reference.close()
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=("bundled", "encoder"))
    args = parser.parse_args()
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    if args.only != "encoder":
        bundled(args.runs)
    if args.only != "bundled":
        encoder(args.runs)


if __name__ == "__main__":
    main()
