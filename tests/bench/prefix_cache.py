"""Multi-turn chat: second-turn time to first token with and without the prefix cache.

    .venv/bin/python -m tests.bench.prefix_cache

In-process on corral's engine (the runner's code), 4 slots, bundled model, greedy. "Without"
clears every slot's cached tokens before the second turn, so it evaluates the whole prompt.
"""

from __future__ import annotations

import logging
import statistics
import time

import llama_cpp
from rich.console import Console
from rich.table import Table

from runner.process.engine import Engine
from shared import protocol as p
from tests.bench._model import bundled_model_path

TURN1 = [{"role": "system", "content": "You are a helpful assistant for a river town archive."},
         {"role": "user", "content": "Summarise the town's history. " + "The archive holds "
          "letters, maps and ledgers about floods, fairs, fires and festivals. " * 25}]
OPTIONS = {"temperature": 0, "num_predict": 32}


def turn(engine: Engine, rid: int, messages: list[dict]) -> tuple[str, p.Done, float]:
    started = time.perf_counter()
    first = 0.0
    engine.submit(p.Generate(rid, messages=messages, options=OPTIONS))
    parts: list[str] = []
    done: p.Done | None = None
    while engine.busy:
        for m in engine.step():
            if isinstance(m, p.Chunk):
                first = first or time.perf_counter() - started
                parts.append(m.text)
            elif isinstance(m, p.Done):
                done = m
    assert done is not None
    return "".join(parts), done, first


def forget(engine: Engine) -> None:
    for slot in engine.slots:
        llama_cpp.llama_memory_seq_rm(engine.memory, slot.index, -1, -1)
        slot.tokens = []


def main(runs: int = 5) -> None:
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    engine = Engine(p.Load(bundled_model_path(), num_ctx=4096, parallel=4))
    rows = {True: [], False: []}
    for _ in range(runs):
        for cached in (True, False):
            forget(engine)
            reply, _, _ = turn(engine, 1, TURN1)
            second = TURN1 + [{"role": "assistant", "content": reply},
                              {"role": "user", "content": "Which festival came first?"}]
            if not cached:
                forget(engine)
            _, done, ttft = turn(engine, 2, second)
            rows[cached].append((ttft, done))
    table = Table(title="Second chat turn, bundled Gemma 3 270M, 4 slots, median of "
                        f"{runs} (2 cores)")
    for column in ("prefix cache", "TTFT (ms)", "prompt_eval_count", "cached tokens",
                   "tokens evaluated"):
        table.add_column(column, justify="right")
    for cached in (True, False):
        ttft = statistics.median(t for t, _ in rows[cached]) * 1000
        done = rows[cached][0][1]
        table.add_row("on" if cached else "off", f"{ttft:.0f}", str(done.prompt_eval_count),
                      str(done.cached_tokens), str(done.prompt_eval_count - done.cached_tokens))
    Console().print(table)
    engine.close()


if __name__ == "__main__":
    main()
