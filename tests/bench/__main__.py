"""Single-stream decode speed: llama-cpp-python in-process vs. corral's engine vs. the server.

    .venv/bin/python -m tests.bench [--runs 3] [--tokens 128] [--safe-cpu]

Same model (the bundled Gemma 3 270M), same ~250-token prompt, greedy, same thread count.
In-process llama-cpp-python is the floor our overhead is measured from. `--safe-cpu` runs every
contender without llama.cpp's extra CPU buffer types (no AMX, no repacked weights: corral's
CORRAL_SAFE_CPU, and what a runner falls back to after a crash while loading).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from registry.bundled import import_bundled_model
from registry.store import Store
from tests.conftest import start_server

PROMPT = (
    "The history of the river town begins with a ferry crossing, a market square and a mill. "
    "Over two centuries the town grew along the water, adding warehouses, a stone bridge, a "
    "railway station and a small university. Each generation left its mark: merchants built "
    "tall houses with carved doors, engineers drained the marshes to the south, and teachers "
    "opened schools in the old granaries. Visitors today walk the towpath, cross the bridge at "
    "sunset and read the names of the boats painted on the harbour wall. The town archive "
    "keeps letters, maps and ledgers that describe floods, fairs, fires and festivals. In the "
    "long winter of the great frost the river froze so hard that carts crossed the ice, and "
    "the townspeople held a market in the middle of the stream."
)


def measure(stream: Iterator[float]) -> tuple[float, float, int]:
    """(time to first token s, decode tokens/s after the first, tokens) from token arrival times."""
    start = time.perf_counter()
    stamps = list(stream)
    if len(stamps) < 2:
        return float("nan"), float("nan"), len(stamps)
    return stamps[0] - start, (len(stamps) - 1) / (stamps[-1] - stamps[0]), len(stamps)


def llama_cpp_in_process(model_path: str, tokens: int, safe_cpu: bool = False
                         ) -> Callable[[], Iterator[float]]:
    import os

    import llama_cpp
    from llama_cpp import Llama

    defaults = llama_cpp.llama_model_default_params
    if safe_cpu:  # Llama() takes no use_extra_bufts argument: change the defaults it starts from
        def safe_defaults() -> llama_cpp.llama_model_params:
            params = defaults()
            params.use_extra_bufts = False
            return params
        llama_cpp.llama_model_default_params = safe_defaults
    try:
        llm = Llama(model_path, n_ctx=4096, n_threads=os.cpu_count(), n_batch=512, verbose=False)
    finally:
        llama_cpp.llama_model_default_params = defaults

    def run() -> Iterator[float]:
        for _ in llm.create_completion(PROMPT, max_tokens=tokens, temperature=0, stream=True):
            yield time.perf_counter()
    return run


def corral_engine(model_path: str, tokens: int, safe_cpu: bool = False
                  ) -> Callable[[], Iterator[float]]:
    from runner.process.engine import Engine
    from shared import protocol as p

    engine = Engine(p.Load(model_path, num_ctx=4096, safe_cpu=safe_cpu))
    ids = iter(range(1, 10**9))

    def run() -> Iterator[float]:
        engine.submit(p.Generate(next(ids), prompt=PROMPT,
                                 options={"temperature": 0, "num_predict": tokens}))
        while engine.busy:
            for message in engine.step():
                if isinstance(message, p.Chunk):
                    yield time.perf_counter()
    return run


def corral_server(url: str, tokens: int) -> Callable[[], Iterator[float]]:
    body = {"model": "gemma3:270m", "prompt": PROMPT, "raw": True,
            "options": {"temperature": 0, "num_predict": tokens, "num_ctx": 4096}}

    client = httpx.Client(timeout=300)  # one kept-alive connection, as the ollama client does

    def run() -> Iterator[float]:
        with client.stream("POST", url + "/api/generate", json=body) as reply:
            for line in reply.iter_lines():
                if not json.loads(line)["done"]:
                    yield time.perf_counter()
    return run


def corral_openai(url: str, tokens: int) -> Callable[[], Iterator[float]]:
    """The same raw prompt through /v1/completions (server-sent events)."""
    body = {"model": "gemma3:270m", "prompt": PROMPT, "stream": True, "temperature": 0,
            "max_tokens": tokens, "num_ctx": 4096}
    client = httpx.Client(timeout=300)

    def run() -> Iterator[float]:
        with client.stream("POST", url + "/v1/completions", json=body) as reply:
            for line in reply.iter_lines():
                if line.startswith("data: {") and '"finish_reason":null' in line:
                    yield time.perf_counter()
    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--safe-cpu", action="store_true",
                        help="no extra CPU buffer types (AMX, repacked weights) anywhere")
    args = parser.parse_args()
    console = Console()

    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        store = Store(models)
        import_bundled_model(store)
        model_path = str(store.get("gemma3:270m").model_path)
        server = start_server(models, Path(tmp) / "serve.log",
                              CORRAL_SAFE_CPU="1" if args.safe_cpu else "0")
        try:
            httpx.post(server.url + "/api/generate", json={"model": "gemma3:270m"}, timeout=120)
            floor = llama_cpp_in_process(model_path, args.tokens, args.safe_cpu)
            contenders = {
                "llama-cpp-python in-process (floor)": floor,
                "corral engine in-process": corral_engine(model_path, args.tokens, args.safe_cpu),
                "corral server, /api/generate stream": corral_server(server.url, args.tokens),
                "corral server, /v1/completions stream": corral_openai(server.url, args.tokens),
            }
            config = "safe CPU configuration" if args.safe_cpu else "optimized CPU configuration"
            table = Table(title=f"Gemma 3 270M Q4_K_M, ~250-token prompt, {args.tokens} new "
                                f"tokens, greedy, median of {args.runs}, {config}")
            for column in ("path", "first token (ms)", "decode tok/s", "tokens"):
                table.add_column(column, justify="right" if column != "path" else "left")
            for name, run in contenders.items():
                measure(run())  # warm-up (and prefix cache primed the same way for everyone)
                results = [measure(run()) for _ in range(args.runs)]
                table.add_row(name,
                              f"{statistics.median(r[0] for r in results) * 1000:.0f}",
                              f"{statistics.median(r[1] for r in results):.1f}",
                              str(results[0][2]))
        finally:
            server.stop()
    console.print(table)


if __name__ == "__main__":
    main()
