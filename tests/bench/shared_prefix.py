"""Requests that share a long prompt start: reading it once and copying the cache, or per slot.

    .venv/bin/python -m tests.bench.shared_prefix [--runs 3]

In-process on corral's engine (the runner's code), 4 slots, bundled model, greedy. Two cases:
`n` = 4 choices of one prompt (four identical prompts at once), and four users whose chats share
a long system prompt and differ in the question. "per slot" sets the engine's copy threshold out
of reach, so every slot evaluates its whole prompt (what the engine did before).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import llama_cpp
from rich.console import Console
from rich.table import Table

import runner.process.engine as engine_module
from runner.process.engine import Engine
from shared import protocol as p
from tests.bench._model import bundled_model_path

SYSTEM = ("You answer questions about the river town archive. The archive holds letters, maps "
          "and ledgers about floods, fairs, fires and festivals. ") * 12
QUESTIONS = ["When was the bridge built?", "Who ran the mill?", "What froze in the great "
             "frost?", "Where is the harbour wall?"]
OPTIONS = {"temperature": 0, "num_predict": 16}


def burst(engine: Engine, prompts: list[list[dict]]) -> tuple[float, float, int]:
    """(seconds until every reply is done, median time to first token, prompt tokens
    evaluated) for requests submitted together."""
    for slot in engine.slots:  # start cold: nothing cached from the last burst
        slot.tokens = []
    llama_cpp.llama_memory_clear(engine.memory, True)
    started = time.perf_counter()
    first: dict[int, float] = {}
    evaluated = 0
    for rid, messages in enumerate(prompts, 1):
        engine.submit(p.Generate(rid, messages=messages, options=OPTIONS))
    while engine.busy:
        for message in engine.step():
            if isinstance(message, p.Chunk):
                first.setdefault(message.id, time.perf_counter() - started)
            elif isinstance(message, p.Done):
                evaluated += message.prompt_eval_count - message.cached_tokens
    return time.perf_counter() - started, statistics.median(first.values()), evaluated


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.shared_prefix")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    engine = Engine(p.Load(bundled_model_path(), num_ctx=2048, parallel=4))
    cases = {
        "n = 4 choices of one prompt": [[{"role": "system", "content": SYSTEM},
                                         {"role": "user", "content": QUESTIONS[0]}]] * 4,
        "4 users, one system prompt": [[{"role": "system", "content": SYSTEM},
                                        {"role": "user", "content": q}] for q in QUESTIONS],
    }
    table = Table(title=f"Shared prompt start (~{len(engine.tokenize(SYSTEM))} tokens), 4 slots, "
                        f"16 new tokens each, median of {args.runs}")
    for column in ("case", "prefix", "all done (s)", "TTFT p50 (ms)", "prompt tokens read"):
        table.add_column(column, justify="left" if column in ("case", "prefix") else "right")
    copy_threshold = engine_module.MIN_COPY_TOKENS
    try:
        for case, prompts in cases.items():
            for label, threshold in (("copied", copy_threshold), ("per slot", 10**9)):
                engine_module.MIN_COPY_TOKENS = threshold
                burst(engine, prompts)  # warm-up
                runs = [burst(engine, prompts) for _ in range(args.runs)]
                table.add_row(case, label, f"{statistics.median(r[0] for r in runs):.2f}",
                              f"{statistics.median(r[1] for r in runs) * 1000:.0f}",
                              str(runs[0][2]))
    finally:
        engine_module.MIN_COPY_TOKENS = copy_threshold
        engine.close()
    Console().print(table)


if __name__ == "__main__":
    main()
