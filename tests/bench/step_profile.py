"""Where one decode step's time goes: llama_decode (C), sampling (C), and Python around them.

    .venv/bin/python -m tests.bench.step_profile

In-process on corral's engine, bundled model, 1 and 4 sequences decoding together (greedy,
~250-token prompts already read), so the table shows the Python share of each step.
"""

from __future__ import annotations

import logging
import time

import llama_cpp
from rich.console import Console
from rich.table import Table

import runner.process.engine as engine_module
from runner.process.engine import Engine
from shared import protocol as p
from tests.bench.__main__ import PROMPT
from tests.bench._model import bundled_model_path


class Timed:
    """Wraps a C entry point and adds up the seconds spent in it."""

    def __init__(self, fn):  # noqa: ANN001
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args):  # noqa: ANN002, ANN204
        started = time.perf_counter()
        try:
            return self.fn(*args)
        finally:
            self.seconds += time.perf_counter() - started


def profile(engine: Engine, streams: int, tokens: int = 96) -> tuple[float, float, float, int]:
    decode, sample = Timed(llama_cpp.llama_decode), Timed(llama_cpp.llama_sampler_sample)
    for i in range(streams):
        engine.submit(p.Generate(i + 1, prompt=f"{i}. {PROMPT}",
                                 options={"temperature": 0, "num_predict": tokens}))
    while any(s.sequence is None or s.sequence.pending for s in engine.slots[:streams]) \
            or engine.queue:
        engine.step()  # read the prompts first: only decode steps are measured
    engine_module.llama_cpp.llama_decode = decode
    sampler_module = __import__("runner.process.sampling", fromlist=["llama_cpp"])
    sampler_module.llama_cpp.llama_sampler_sample = sample
    steps, started = 0, time.perf_counter()
    try:
        while engine.busy:
            engine.step()
            steps += 1
    finally:
        engine_module.llama_cpp.llama_decode = decode.fn
        sampler_module.llama_cpp.llama_sampler_sample = sample.fn
    total = time.perf_counter() - started
    return total, decode.seconds, sample.seconds, steps


def main() -> None:
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    engine = Engine(p.Load(bundled_model_path(), num_ctx=4096, parallel=4))
    table = Table(title="One decode step, bundled Gemma 3 270M (2 cores), ms per step")
    for column in ("sequences", "step", "llama_decode (C)", "sampling (C)", "Python",
                   "Python share", "tokens/s"):
        table.add_column(column, justify="right")
    for streams in (1, 4):
        total, decode, sample, steps = profile(engine, streams)
        python = total - decode - sample
        table.add_row(str(streams), f"{total / steps * 1000:.2f}",
                      f"{decode / steps * 1000:.2f}", f"{sample / steps * 1000:.2f}",
                      f"{python / steps * 1000:.2f}", f"{python / total:.1%}",
                      f"{streams * steps / total:.0f}")
    Console().print(table)
    engine.close()


if __name__ == "__main__":
    main()
