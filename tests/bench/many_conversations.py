"""More conversations than slots: the prompt cache beyond the slots, off, in RAM, across a reload.

    .venv/bin/python -m tests.bench.many_conversations [--conversations 12] [--slots 4]

In-process on corral's engine (the runner's code), bundled model, greedy, 16 new tokens a turn,
one request at a time. Every conversation's first turn (~260 tokens), then every second turn:
with more conversations than slots, a conversation's slot is taken before it comes back. Then
the engine is closed and loaded again (the disk cache: CORRAL_PROMPT_CACHE_DIR) and every third
turn is sent. "off" is CORRAL_PROMPT_CACHE=0;
its third turns are the cold reference, paired run by run. "a key each" is the RAM + disk cache
with each conversation under an API key of its own (the cache salt the gateway sends when keys
are on: a conversation reuses only its own caches), the cost of cross-key isolation.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

from rich.console import Console
from rich.table import Table

from runner.process.engine import Engine
from shared import protocol as p
from tests.bench._model import bundled_model_path

TOPICS = ["harbour", "orchard", "glacier", "library", "railway", "vineyard", "lighthouse",
          "observatory", "bakery", "monastery", "quarry", "canal", "market", "foundry"]
OPTIONS = {"temperature": 0, "num_predict": 16}


def first_turn(i: int) -> list[dict[str, str]]:
    topic = TOPICS[i % len(TOPICS)]
    text = (f"I am writing a guide to the old {topic} of town number {i}. It has a long history "
            f"of workers, visitors, storms, repairs and festivals, and every season changes the "
            f"{topic} a little. ") * 5
    return [{"role": "user", "content": text + f"Summarise the {topic} in one sentence."}]


def ask(engine: Engine, rid: int, messages: list[dict[str, str]], salt: str = ""
        ) -> tuple[float, str]:
    """(seconds to the first token, reply) for one request alone."""
    started = time.perf_counter()
    first = 0.0
    reply = ""
    engine.submit(p.Generate(rid, messages=messages, options=OPTIONS, cache_salt=salt))
    while engine.busy:
        for message in engine.step():
            if isinstance(message, p.Chunk):
                first = first or time.perf_counter() - started
                reply += message.text
    return first, reply


def measure(model: str, slots: int, n: int, cache: int, disk_dir: str, salted: bool = False
            ) -> list[float]:
    """First-token p50 (ms) of turn 1, turn 2, and turn 3 after a reload."""
    load = p.Load(model, num_ctx=2048, parallel=slots, prompt_cache=cache,
                  prompt_cache_dir=disk_dir if cache else "", prompt_cache_disk=2**31)
    engine = Engine(load)
    chats = [first_turn(i) for i in range(n)]
    rid = 0
    turns: list[list[float]] = [[], [], []]
    try:
        for turn in (0, 1):
            for i in range(n):
                rid += 1
                ttft, reply = ask(engine, rid, chats[i], f"k{i}" if salted else "")
                turns[turn].append(ttft)
                chats[i] = chats[i] + [{"role": "assistant", "content": reply},
                                       {"role": "user", "content": f"And turn {turn + 2}?"}]
    finally:
        engine.close()  # with the disk cache on, this writes it
    engine = Engine(load)
    try:
        for i in range(n):
            rid += 1
            turns[2].append(ask(engine, rid, chats[i], f"k{i}" if salted else "")[0])
    finally:
        engine.close()
    return [statistics.median(t) * 1000 for t in turns]


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    """Median, and the range when there was more than one run."""
    middle = fmt.format(statistics.median(values))
    if len(values) == 1:
        return middle
    return f"{middle} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.many_conversations")
    parser.add_argument("--conversations", type=int, default=12)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--runs", type=int, default=1, help="repeats of each setting, alternated")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    model = bundled_model_path()
    settings = (("off", 0, False), ("RAM + disk", 512 * 2**20, False),
                ("RAM + disk, a key each", 512 * 2**20, True))
    results: dict[str, list[list[float]]] = {label: [] for label, _, _ in settings}
    for _ in range(args.runs):
        for label, cache, salted in settings:
            with tempfile.TemporaryDirectory() as disk:
                results[label].append(measure(model, args.slots, args.conversations, cache, disk,
                                              salted))
    table = Table(title=f"{args.conversations} conversations on {args.slots} slots, first-token "
                        f"p50 (ms), one request at a time; median (range) of {args.runs} run(s)")
    for column in ("prompt cache", "turn 1", "turn 2", "turn 2 / turn 1",
                   "turn 3 after reload", "turn 3 / cold turn 3"):
        table.add_column(column, justify="left" if column == "prompt cache" else "right")
    cold = [run[2] for run in results["off"]]  # turn 3 with no cache: read from scratch
    for label, runs in results.items():
        table.add_row(label, spread([r[0] for r in runs]), spread([r[1] for r in runs]),
                      spread([r[1] / r[0] for r in runs], "{:.2f}x"),
                      spread([r[2] for r in runs]),
                      spread([r[2] / c for r, c in zip(runs, cold, strict=True)], "{:.2f}x"))
    Console(width=120).print(table)

if __name__ == "__main__":
    main()
