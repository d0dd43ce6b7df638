"""Fair sharing: one key floods a model, another sends one request; its time to first token with
round-robin slots (CORRAL_FAIR_SHARE=1, the default) and first come, first served (=0).

    .venv/bin/python -m tests.bench.fair_share [--runs 3] [--flood 12] [--tokens 32]

A live `corral serve` per mode with the bundled model, two slots and two API keys; both run
side by side (an idle server takes no CPU) and the runs alternate between them, so a change in
the machine's load hits both alike. Each run: the `flood` key sends --flood streaming requests
at once; when two of them stream (both slots busy, the rest waiting), the `solo` key sends one.
First come, first served puts it behind the whole backlog; round-robin gives it the next free
slot. "flood done first" counts the flood's requests that ended before solo's first token: a
figure the machine's speed does not change (with round-robin at most the two that held the
slots).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from gateway.team.keys import KeysFile
from tests.conftest import LiveServer, start_server

MODEL = "gemma3:270m"
SLOTS = 2


async def _stream(client: httpx.AsyncClient, key: str, prompt: str, tokens: int,
                  streaming: list[str] | None = None) -> tuple[float, float]:
    """(when its first chunk of text came, when its last line came), perf_counter seconds.
    `streaming` gets the prompt appended once text flows."""
    first = last = 0.0
    body = {"model": MODEL, "prompt": prompt, "options": {"num_predict": tokens}}
    async with client.stream("POST", "/api/generate", json=body,
                             headers={"Authorization": f"Bearer {key}"}) as reply:
        reply.raise_for_status()
        async for _ in reply.aiter_lines():
            last = time.perf_counter()
            if not first and streaming is not None:
                streaming.append(prompt)
            first = first or last
    return first, last


async def one_run(server: LiveServer, keys: dict[str, str], flood: int, tokens: int
                  ) -> tuple[float, int]:
    """(solo's time to first token in seconds, flood requests that ended before it)."""
    async with httpx.AsyncClient(base_url=server.url, timeout=600) as client:
        streaming: list[str] = []
        floods = [asyncio.create_task(_stream(client, keys["flood"], f"Story {i}:", tokens,
                                              streaming)) for i in range(flood)]
        while len(streaming) < SLOTS:  # both slots generate for the flood; the rest waits
            await asyncio.sleep(0.01)
        sent = time.perf_counter()
        first, _ = await _stream(client, keys["solo"], "The capital of France is", 8)
        ends = [end for _, end in await asyncio.gather(*floods)]
    return first - sent, sum(end < first for end in ends)


def start(fair: bool, folder: Path, isolation: bool = True
          ) -> tuple[LiveServer, dict[str, str]]:
    keys_file = folder / f"keys-{fair}.json"
    keys = {name: KeysFile(keys_file).create(name, admin=name == "admin")[1]
            for name in ("admin", "flood", "solo")}
    server = start_server(folder / "models", folder / f"serve-{fair}.log",
                          CORRAL_KEYS_FILE=str(keys_file), CORRAL_FAIR_SHARE=str(int(fair)),
                          OLLAMA_NUM_PARALLEL=str(SLOTS), OLLAMA_KEEP_ALIVE="30m",
                          CORRAL_ACCESS_LOG="off",
                          CORRAL_CACHE_ISOLATION=str(int(isolation)))
    asyncio.run(_warm(server, keys["admin"]))
    return server, keys


async def _warm(server: LiveServer, key: str) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=600) as client:
        await _stream(client, key, "Hello", 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--flood", type=int, default=12, help="requests the flooding key sends")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per flood request")
    parser.add_argument("--cache-isolation", type=int, choices=(0, 1), default=1,
                        help="CORRAL_CACHE_ISOLATION of both servers (cross-key prompt caches)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="corral-fair-"))
    (folder / "models").mkdir()
    servers = {fair: start(fair, folder, bool(args.cache_isolation)) for fair in (True, False)}
    results: dict[bool, list[tuple[float, int]]] = {True: [], False: []}
    try:
        for _ in range(args.runs):
            for fair, (server, keys) in servers.items():
                results[fair].append(asyncio.run(one_run(server, keys, args.flood, args.tokens)))
    finally:
        for server, _ in servers.values():
            server.stop()
    table = Table(title=f"One request from another key behind {args.flood} from a flooding key "
                        f"({args.tokens} tokens each), {SLOTS} slots, bundled Gemma 3 270M, "
                        f"{args.runs} runs, cache isolation "
                        f"{'on' if args.cache_isolation else 'off'}")
    for column in ("slots go", "solo TTFT median (s)", "min", "max", "flood done first"):
        table.add_column(column, justify="right")
    for fair, rows in results.items():
        solo = [s for s, _ in rows]
        table.add_row("round-robin by key" if fair else "first come, first served",
                      f"{statistics.median(solo):.2f}", f"{min(solo):.2f}", f"{max(solo):.2f}",
                      ", ".join(str(n) for _, n in rows))
    Console().print(table)


if __name__ == "__main__":
    main()
