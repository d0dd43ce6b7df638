"""Speculative decoding, server against server: corral with and without prompt lookup, and
llama.cpp's own llama-server (the same llama.cpp as llama-cpp-python: build it from the sdist's
vendored copy) without speculation and with each of its n-gram speculation types.

    .venv/bin/python -m tests.bench.speculative_servers --llama-server PATH [--runs 3]

Everything over HTTP, /v1/completions, greedy, `--tokens` new tokens, not streamed: tokens per
second of end-to-end time (prompt reading included), as the issue measured llama-server. All
servers run at once and the runs go round them in turn (the machine's load falls on all alike).
Workloads as in tests.bench.speculative: edit (a source file written out again with one name
changed) and plain (fresh prose). Each server reads each prompt once before the runs, so every
run finds its prompt cached (both servers keep it): a run number in the prompt would change what
the model writes (with one, it stops copying the file). Ratios are to corral without speculation
in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from registry.bundled import import_bundled_model
from registry.store import Store
from shared.config import DRAFT_MAX
from tests.bench.speculative import WORKLOADS
from tests.conftest import free_port, start_server

LLAMA_SERVER_TYPES = ("none", "ngram-simple", "ngram-mod", "ngram-map-k")


class LlamaServer:
    """One llama-server on a loopback port, stopped by its PID."""

    def __init__(self, binary: str, model: str, spec_type: str, log: Path, parallel: int,
                 draft_max: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [binary, "-m", model, "--host", "127.0.0.1", "--port", str(self.port),
                "-np", str(parallel), "-c", str(4096 * parallel), "-t", str(os.cpu_count() or 2),
                "--no-webui", "--spec-type", spec_type]
        if spec_type != "none":
            args += ["--spec-draft-n-max", str(draft_max)]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("llama-server did not start in 120 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def complete(url: str, model: str, prompts: list[str], tokens: int) -> tuple[float, int]:
    """(end-to-end seconds, tokens generated) for `prompts` sent at once."""

    def one(prompt: str) -> int:
        resp = httpx.post(url + "/v1/completions", timeout=600, json={
            "model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0,
            "stream": False})
        resp.raise_for_status()
        return int(resp.json()["usage"]["completion_tokens"])

    started = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        generated = sum(pool.map(one, prompts))
    return time.perf_counter() - started, generated


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.speculative_servers")
    parser.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER"),
                        help="the llama-server binary (or $LLAMA_SERVER)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--draft-max", type=int, default=DRAFT_MAX)
    parser.add_argument("--streams", default="1", help="stream counts, e.g. 1 or 1,4")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--types", default=",".join(LLAMA_SERVER_TYPES),
                        help="llama-server --spec-type values to run")
    args = parser.parse_args()
    if not args.llama_server:
        parser.error("--llama-server PATH (or LLAMA_SERVER) is required")
    streams_list = [int(n) for n in args.streams.split(",")]
    parallel = max(streams_list)
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        store = Store(models)
        import_bundled_model(store)
        gguf = str(store.get("gemma3:270m").model_path)
        contenders: dict[str, tuple[str, str]] = {}  # name -> (url, model name)
        stops: list[Callable[[], None]] = []
        try:
            for draft in (0, args.draft_max):
                server = start_server(models, Path(tmp) / f"corral-{draft}.log",
                                      CORRAL_DRAFT_MAX=str(draft),
                                      OLLAMA_NUM_PARALLEL=str(parallel))
                stops.append(server.stop)
                contenders[f"corral, draft_max {draft}"] = (server.url, "gemma3:270m")
            for kind in args.types.split(","):
                server = LlamaServer(args.llama_server, gguf, kind,
                                     Path(tmp) / f"llama-server-{kind}.log", parallel,
                                     args.draft_max)
                stops.append(server.stop)
                contenders[f"llama-server, {kind}"] = (server.url, "gemma3:270m")
            results: dict[tuple[int, str, str], list[float]] = {}
            for streams in streams_list:
                for workload in args.workloads.split(","):
                    text = WORKLOADS[workload]
                    prompts = [text] * streams if workload == "edit" else \
                        [f"{i + 1}. {text}" for i in range(streams)]
                    for url, model in contenders.values():  # warm-up: prompts read once
                        complete(url, model, prompts, 1)
                    for _ in range(args.runs):
                        for name, (url, model) in contenders.items():
                            seconds, generated = complete(url, model, prompts, args.tokens)
                            results.setdefault((streams, workload, name), []).append(
                                generated / seconds)
        finally:
            for stop in stops:
                stop()
    table = Table(title=f"Speculative decoding, server against server: /v1/completions, greedy, "
                        f"{args.tokens} tokens per stream, draft max {args.draft_max}, "
                        f"{args.runs} runs, end-to-end tokens/s: median (min..max)")
    for column in ("workload", "streams", "server", "tok/s", "ratio to corral off"):
        table.add_column(column, justify="left" if column in ("workload", "server") else "right")
    for (streams, workload, name), speeds in results.items():
        base = results[(streams, workload, "corral, draft_max 0")]
        ratios = [s / b for s, b in zip(speeds, base, strict=True)]
        table.add_row(workload, str(streams), name,
                      f"{statistics.median(speeds):.1f} ({min(speeds):.1f}..{max(speeds):.1f})",
                      f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}..{max(ratios):.2f})")
    Console().print(table)


if __name__ == "__main__":
    main()
