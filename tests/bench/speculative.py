"""Speculative decoding by prompt lookup: corral with and without guesses, same engine, same run.

    .venv/bin/python -m tests.bench.speculative [--runs 3] [--tokens 256]
    .venv/bin/python -m tests.bench.speculative --draft self [--force]   (a draft model)

In-process on corral's engine (the runner's code), bundled model, greedy, 4 slots. Workloads:
edit (a ~400-token source file shown, then written out again with one name changed: the model
copies it), plain (continuation of fresh prose, where guesses rarely hold), and each as four
concurrent streams. Runs alternate off/on (the machine is shared: interleaving spreads its load
over both); each starts cold (no cached prompt). Tokens per second are generated tokens over the
time from submitting to the last reply (end to end, prompt reading included) and over the time
after each stream's first token (decode); min..max of the runs beside the median.

With `--draft self` (the bundled model drafting for itself) or `--draft PATH` (a GGUF of the same
vocabulary) a draft model makes the guesses instead of prompt lookup (runner/process/draftmodel.py);
`--force` fixes the planner's costs where guessing always pays (draft decodes free): a figure of
the drafting mechanics, since the bundled model drafting for itself never pays on its own.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import llama_cpp
from rich.console import Console
from rich.table import Table

from runner.process.engine import Engine
from runner.process.speculation import Planner
from shared import protocol as p
from shared.config import DRAFT_MAX
from tests.bench.__main__ import PROMPT
from tests.bench._model import bundled_model_path

SOURCE = '''import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Ledger:
    """Entries of a small shop's ledger, kept in a JSON file."""

    path: Path
    entries: list[dict] = field(default_factory=list)

    def load(self) -> None:
        if self.path.exists():
            self.entries = json.loads(self.path.read_text())

    def save(self) -> None:
        self.path.write_text(json.dumps(self.entries, indent=2))

    def add(self, item: str, price: float, quantity: int = 1) -> None:
        if price < 0 or quantity <= 0:
            raise ValueError("price must be positive and quantity at least one")
        self.entries.append({"item": item, "price": price, "quantity": quantity})

    def total(self) -> float:
        return sum(entry["price"] * entry["quantity"] for entry in self.entries)

    def items(self) -> list[str]:
        return sorted({entry["item"] for entry in self.entries})

    def remove(self, item: str) -> int:
        before = len(self.entries)
        self.entries = [entry for entry in self.entries if entry["item"] != item]
        return before - len(self.entries)

    def most_expensive(self) -> dict | None:
        if not self.entries:
            return None
        return max(self.entries, key=lambda entry: entry["price"])


def main() -> None:
    ledger = Ledger(Path("ledger.json"))
    ledger.load()
    ledger.add("flour", 2.5, 4)
    ledger.add("salt", 0.8)
    ledger.add("butter", 3.2, 2)
    print(f"total: {ledger.total():.2f}")
    print("items:", ", ".join(ledger.items()))
    ledger.save()


if __name__ == "__main__":
    main()
'''
EDIT = (f"# shop/ledger.py\n{SOURCE}\n\n# The same file after the review: the class Ledger is "
        f"renamed to Book, nothing else changes.\n# shop/ledger.py\n"
        f"{SOURCE.split('@dataclass')[0]}@dataclass\nclass Book:\n")
WORKLOADS = {"edit": EDIT, "plain": PROMPT}


def burst(engine: Engine, prompts: list[str], draft_max: int, tokens: int
          ) -> tuple[float, float, int, int, int]:
    """(end-to-end tokens/s, decode tokens/s, tokens generated, tokens that guesses saved,
    decode steps) for `prompts` submitted together, cold."""
    for slot in engine.slots:
        slot.tokens, slot.canonical, slot.checkpoints = [], 0, []
    llama_cpp.llama_memory_clear(engine.memory, True)
    if engine.speculation.source is not None:  # a draft model's caches start cold too
        engine.speculation.source.forget()
    engine.prompt_cache.clear()
    accepted = engine.speculation.accepted
    options = {"temperature": 0, "num_predict": tokens, "draft_max": draft_max}
    started = time.perf_counter()
    first: dict[int, float] = {}
    generated = steps = 0
    for rid, prompt in enumerate(prompts, 1):
        engine.submit(p.Generate(rid, prompt=prompt, options=options))
    while engine.busy:
        steps += bool(first)  # (steps after the first token: no prompt reading left)
        for message in engine.step():
            if isinstance(message, p.Chunk):
                first.setdefault(message.id, time.perf_counter())
            elif isinstance(message, p.Done):
                generated += message.eval_count
            elif isinstance(message, p.Error):
                raise RuntimeError(message.message)
    ended = time.perf_counter()
    decode = (generated - len(prompts)) / (ended - min(first.values()))
    return (generated / (ended - started), decode, generated,
            engine.speculation.accepted - accepted, steps)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}..{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.speculative")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--draft-max", type=int, default=DRAFT_MAX)
    parser.add_argument("--streams", default="1,4", help="stream counts to run, e.g. 1 or 1,4")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="e.g. edit,plain")
    parser.add_argument("--draft", default="", help="a draft model: self or a GGUF path")
    parser.add_argument("--force", action="store_true",
                        help="fixed costs where guessing pays (drafting mechanics)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    model = bundled_model_path()
    draft = model if args.draft == "self" else args.draft
    engine = Engine(p.Load(model, num_ctx=4096, parallel=4, draft_path=draft))
    if args.force:
        engine.speculation.planner = Planner(c_ubatch=1.0, c_row=0.001)
        engine.speculation.planner.observe = lambda *_: None  # type: ignore[method-assign]
        if engine.speculation.source is not None:
            engine.speculation.source.cost = lambda *_: 0.0
    sizes = {name: len(engine.tokenize(text)) for name, text in WORKLOADS.items()}
    source = f"draft model {args.draft}" if args.draft else "prompt lookup"
    table = Table(title=f"Speculative decoding ({source}{', forced' if args.force else ''}, "
                        f"draft_max {args.draft_max}), "
                        f"bundled model, greedy, {args.tokens} tokens per stream, {args.runs} "
                        f"runs: median (min..max)")
    for column in ("workload", "streams", "off e2e tok/s", "on e2e tok/s", "e2e ratio",
                   "off decode tok/s", "on decode tok/s", "decode ratio", "guessed kept",
                   "steps off/on"):
        table.add_column(column, justify="left" if column == "workload" else "right")
    try:
        burst(engine, [PROMPT], args.draft_max, 16)  # warm-up (and a first cost estimate)
        for streams in (int(n) for n in args.streams.split(",")):
            for name in args.workloads.split(","):
                text = WORKLOADS[name]
                prompts = [text] * streams if name == "edit" else \
                    [f"{i + 1}. {text}" for i in range(streams)]
                off, on = [], []
                for _ in range(args.runs):  # interleaved
                    off.append(burst(engine, prompts, 0, args.tokens))
                    on.append(burst(engine, prompts, args.draft_max, args.tokens))
                ratio_e2e = [b[0] / a[0] for a, b in zip(off, on, strict=True)]
                ratio_dec = [b[1] / a[1] for a, b in zip(off, on, strict=True)]
                kept = statistics.median(r[3] / r[2] for r in on)
                steps = f"{statistics.median(r[4] for r in off):.0f}/" \
                        f"{statistics.median(r[4] for r in on):.0f}"
                table.add_row(f"{name} ({sizes[name]} prompt tokens)", str(streams),
                              spread([r[0] for r in off]), spread([r[0] for r in on]),
                              _ratio(ratio_e2e), spread([r[1] for r in off]),
                              spread([r[1] for r in on]), _ratio(ratio_dec), f"{kept:.0%}", steps)
    finally:
        engine.close()
    Console().print(table)
    print(f"costs learned: {engine.speculation.planner.c_ubatch * 1000:.1f} ms per micro-batch, "
          f"{engine.speculation.planner.c_row * 1000:.2f} ms per row")


def _ratio(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x ({min(values):.2f}..{max(values):.2f})"


if __name__ == "__main__":
    main()
