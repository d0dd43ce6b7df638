"""What a prompt-cache restore costs against reading the tokens it saves.

    .venv/bin/python -m tests.bench.restore_cost [--runs 3]

In-process on corral's engine (the runner's code), bundled model, one slot, prompt cache off (the
state calls are timed here, not by the engine). For prompts of several lengths: the time to read
the prompt (prefill, from the engine's own timings), then the time to save the slot's state
(`llama_state_seq_get_data`) and to restore it (`llama_state_seq_set_data`), each per token. The
engine restores when the state saves at least MIN_RESTORE_TOKENS tokens and spans at most
RESTORE_SPAN times the positions it saves; the last column is how many positions of state one
token of prefill pays for.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import statistics
import time

import llama_cpp
from rich.console import Console
from rich.table import Table

from runner.process.engine import MIN_RESTORE_TOKENS, RESTORE_SPAN, Engine
from shared import protocol as p
from tests.bench._model import bundled_model_path

LENGTHS = (64, 256, 1024, 3072)
WORDS = ["harbour", "orchard", "glacier", "library", "railway", "vineyard", "lighthouse",
         "observatory", "bakery", "monastery", "quarry", "canal", "market", "foundry"]


def prompt_of(n_words: int, salt: int) -> str:
    """Distinct text per run, so nothing is reused from an earlier prompt."""
    return f"Run {salt}. " + " ".join(WORDS[(i * 7 + salt) % len(WORDS)] for i in range(n_words))


def read_prompt(engine: Engine, rid: int, text: str) -> tuple[int, int]:
    """(tokens read, prefill ns) for one prompt, one token generated."""
    engine.submit(p.Generate(rid, prompt=text, options={"temperature": 0, "num_predict": 1}))
    while engine.busy:
        for message in engine.step():
            if isinstance(message, p.Done):
                return message.prompt_eval_count, message.prompt_eval_duration
            if isinstance(message, p.Error):
                raise RuntimeError(message.message)
    raise RuntimeError("no Done")


def save_and_restore(engine: Engine) -> tuple[int, float, float]:
    """(state bytes, save seconds, restore seconds) of slot 0."""
    size = llama_cpp.llama_state_seq_get_size(engine.ctx, 0)
    buf = (ctypes.c_uint8 * size)()
    started = time.perf_counter()
    n = llama_cpp.llama_state_seq_get_data(engine.ctx, buf, size, 0)
    saved = time.perf_counter() - started
    data = ctypes.string_at(buf, n)  # what the cache keeps: bytes
    started = time.perf_counter()
    copy = (ctypes.c_uint8 * n).from_buffer_copy(data)
    llama_cpp.llama_memory_seq_rm(engine.memory, 0, -1, -1)
    if not llama_cpp.llama_state_seq_set_data(engine.ctx, copy, n, 0):
        raise RuntimeError("restore failed")
    restored = time.perf_counter() - started
    return n, saved, restored


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.restore_cost")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    engine = Engine(p.Load(bundled_model_path(), num_ctx=4096, parallel=1, prompt_cache=0))
    rows = []
    rid = 0
    try:
        for words in LENGTHS:
            read_us, save_us, restore_us, sizes, tokens = [], [], [], [], 0
            for _ in range(args.runs):
                rid += 1
                tokens, ns = read_prompt(engine, rid, prompt_of(words, rid))
                n, saved, restored = save_and_restore(engine)
                read_us.append(ns / 1000 / tokens)
                save_us.append(saved * 1e6 / tokens)
                restore_us.append(restored * 1e6 / tokens)
                sizes.append(n)
            rows.append((tokens, statistics.median(sizes), read_us, save_us, restore_us))
    finally:
        engine.close()

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    table = Table(title=f"Prompt-cache restore against prefill, µs per token, median (range) of "
                        f"{args.runs}; the engine restores when it saves >= {MIN_RESTORE_TOKENS} "
                        f"tokens and the state spans <= {RESTORE_SPAN}x the saved positions")
    for column in ("prompt tokens", "state MB", "read (prefill)", "save", "restore",
                   "read / restore"):
        table.add_column(column, justify="right")
    for tokens, size, read_us, save_us, restore_us in rows:
        table.add_row(str(tokens), f"{size / 2**20:.1f}", cell(read_us), cell(save_us),
                      cell(restore_us),
                      f"{statistics.median(read_us) / statistics.median(restore_us):.0f}x")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
