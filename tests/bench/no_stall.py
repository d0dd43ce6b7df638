"""No request stalls the others: the gaps between a running stream's tokens while a huge request
arrives on the same model.

    .venv/bin/python -m tests.bench.no_stall [--runs 3] [--mb 10] [--inputs 1000] [--root DIR]

Starts a server (bundled Gemma 3 270M, its own model store) on a loopback port. For each run and
each intruder it starts one long /api/generate stream, waits for its tokens to flow, then sends
the intruder and measures the stream's gaps between tokens while the intruder is in flight:
- a 10 MB prompt to /api/generate (rendered with the chat format, tokenized, truncated to the
  context, then read with one token to generate);
- one /api/embed of 1,000 short inputs.
`--root DIR` serves from another checkout of corral (e.g. `git archive HEAD~1 | tar -x -C DIR`)
to compare before and after a change. The target is a largest gap under 0.5 s; the
control column is the same stream right after, alone, over as long (other work on the machine
stalls it too).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from registry.bundled import import_bundled_model
from registry.store import Store
from tests.conftest import ROOT, start_server

MODEL = "gemma3:270m"
PARAGRAPH = ("The river bends twice before it reaches the town, and the old bridge, rebuilt after "
             "the flood of the spring, carries carts, walkers and the morning bus across it. ")
SETTLE_TOKENS = 20  # tokens of the stream before the intruder is sent
CONTROL_S = 60.0  # longest control window (the stream alone) after each intruder


def big_prompt(megabytes: float, salt: str = "") -> str:
    """About `megabytes` of English; a `salt` changes every paragraph, so that no two runs share
    the tokens a cut keeps (they would be read from a slot's cache)."""
    paragraph = PARAGRAPH.replace("river", f"river{salt}")
    n = int(megabytes * 1_000_000 / len(paragraph)) + 1
    return (paragraph * n)[: int(megabytes * 1_000_000)]


def embed_inputs(count: int) -> list[str]:
    return [f"Input {i}: the weather in town number {i} is mild, with rain by the evening."
            for i in range(count)]


class Stream:
    """One long /api/generate stream in a thread, recording when each chunk arrived."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.times: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = {"model": MODEL, "prompt": "Once upon a time, in a small town by the river,",
                "raw": True, "options": {"temperature": 0.8, "num_predict": 20000,
                                         "seed": 1}}
        with httpx.stream("POST", self.url + "/api/generate", json=body, timeout=600) as reply:
            for _line in reply.iter_lines():
                self.times.append(time.perf_counter())
                if self.stop.is_set():
                    return  # leaving cancels the sequence

    def gaps(self, start: float, end: float) -> list[float]:
        stamps = [t for t in self.times if start <= t <= end]
        before = [t for t in self.times if t < start]
        if before:
            stamps.insert(0, before[-1])
        after = [t for t in self.times if t > end]
        if after:  # the first token after the intruder ends closes the last gap
            stamps.append(after[0])
        return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def measure(url: str, send: Callable[[], int]) -> dict[str, float]:
    """The stream's gaps while `send` runs, and over a control window right after it of the
    same length (at most CONTROL_S) with nothing else running: on a shared machine other work
    stalls the stream too, and the control shows how much."""
    stream = Stream(url)
    stream.thread.start()
    deadline = time.monotonic() + 120
    while len(stream.times) < SETTLE_TOKENS and time.monotonic() < deadline:
        time.sleep(0.05)
    calm = stream.gaps(0, time.perf_counter())
    start = time.perf_counter()
    status = send()
    end = time.perf_counter()
    time.sleep(min(end - start, CONTROL_S))
    control_end = time.perf_counter()
    stream.stop.set()
    stream.thread.join(60)
    gaps = stream.gaps(start, end)
    control = stream.gaps(end, control_end)
    return {"status": status, "seconds": end - start, "calm_p50": statistics.median(calm),
            "max_gap": max(gaps) if gaps else end - start, "tokens": len(gaps),
            "control_max_gap": max(control) if control else math.nan}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.no_stall")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mb", type=float, default=10.0, help="size of the big prompt")
    parser.add_argument("--inputs", type=int, default=1000, help="inputs of the big embed")
    parser.add_argument("--root", type=Path, default=ROOT, help="corral checkout to serve")
    parser.add_argument("--only", choices=("generate", "embed"), help="one intruder only")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server on the way out
    inputs = embed_inputs(args.inputs)

    runs = iter(range(10**6))

    def generate(url: str) -> int:
        body = {"model": MODEL, "prompt": big_prompt(args.mb, str(next(runs))), "stream": False,
                "options": {"num_predict": 1}}
        return httpx.post(url + "/api/generate", json=body, timeout=900).status_code

    def embed(url: str) -> int:
        body = {"model": MODEL, "input": inputs}
        return httpx.post(url + "/api/embed", json=body, timeout=900).status_code

    intruders = {f"/api/generate, {args.mb:g} MB prompt": generate,
                 f"/api/embed, {args.inputs} inputs": embed}
    if args.only:
        intruders = {name: fn for name, fn in intruders.items() if args.only in name}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in intruders}
    err = Console(stderr=True)
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        import_bundled_model(Store(models))
        server = start_server(models, Path(tmp) / "serve.log", root=args.root,
                              OLLAMA_NUM_PARALLEL="4", OLLAMA_KEEP_ALIVE="10m")
        try:
            httpx.post(server.url + "/api/generate", json={"model": MODEL}, timeout=300)
            for run in range(args.runs):
                for name, send in intruders.items():
                    result = measure(server.url, lambda s=send: s(server.url))
                    err.print(f"run {run + 1}: {name}: {result}", style="dim", highlight=False)
                    results[name].append(result)
        finally:
            server.stop()

    load = os.getloadavg()[1]  # the machine's load (other work slows every figure)
    table = Table(title=f"A running stream's gaps between tokens while a big request arrives "
                        f"({args.root.name}, bundled model, {args.runs} runs, {os.cpu_count()} "
                        f"cores, load average {load:.1f})")
    for column in ("intruder", "status", "its time (s)", "calm gap p50 (ms)",
                   "largest gap (ms), median [min-max]",
                   "control: largest gap alone (ms), median [min-max]"):
        table.add_column(column, justify="left" if column == "intruder" else "right")
    for name, runs in results.items():
        largest = [r["max_gap"] * 1000 for r in runs]
        control = [r["control_max_gap"] * 1000 for r in runs]
        table.add_row(
            name, ",".join(sorted({str(int(r["status"])) for r in runs})),
            f"{statistics.median(r['seconds'] for r in runs):.1f}",
            f"{statistics.median(r['calm_p50'] for r in runs) * 1000:.0f}",
            f"{statistics.median(largest):.0f} [{min(largest):.0f}-{max(largest):.0f}]",
            f"{statistics.median(control):.0f} [{min(control):.0f}-{max(control):.0f}]")
    Console(width=160).print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
