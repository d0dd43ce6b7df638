"""A coding agent's second turn on /v1/messages: same long prefix, new tail, read from the cache.

    .venv/bin/python -m tests.bench.agent_turns [--runs 2] [--tools 24] [--system-words 2500]

A live server (OLLAMA_CONTEXT_LENGTH=32768) and the bundled model with a template that shows
tools. Each run sends what an agent sends (a long system prompt and ~24 tools with their
schemas, like Claude Code's ~64 KB; a fresh nonce at its start so that no earlier run's cache
helps), streamed, then the second turn: the same prefix, the first reply, a new user message.
Reported per turn: time to the first content event, `input_tokens` (read) and
`cache_read_input_tokens` (taken from the prompt cache).
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import ollama

from registry.bundled import import_bundled_model
from registry.store import Store
from tests.conftest import start_server
from tests.test_tools import GEMMA_TOOLS

MODEL = "corral-agent-bench:test"
SENTENCE = ("Use this tool when the task needs it, read its result before going on, and report "
            "what you did in one short paragraph. ")


def tools(count: int, nonce: str) -> list[dict[str, Any]]:
    """Tools about the size of Claude Code's (~2.7 KB of JSON each); `nonce` opens the first
    description, so that no earlier run's cache holds the prefix (a template may leave the
    system prompt out: the bench's does)."""
    def schema(i: int) -> dict[str, Any]:
        return {"type": "object", "required": ["arg_0"], "properties": {
            f"arg_{j}": {"type": "string", "description": f"argument {j} of tool {i}: " + SENTENCE}
            for j in range(6)}}

    return [{"name": f"tool_{i}", "description": (nonce if i == 0 else "") + SENTENCE * 14,
             "input_schema": schema(i)} for i in range(count)]


def turn(url: str, body: dict[str, Any]) -> tuple[float, dict[str, int], str]:
    """Seconds to the first content event, the final usage, and the reply's text."""
    sent = time.perf_counter()
    first = None
    text: list[str] = []
    usage: dict[str, int] = {}
    with httpx.stream("POST", url + "/v1/messages", json={**body, "stream": True},
                      timeout=3600) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "content_block_start" and first is None:
                first = time.perf_counter() - sent
            elif event["type"] == "content_block_delta" and event["delta"]["type"] == "text_delta":
                text.append(event["delta"]["text"])
            elif event["type"] == "message_delta":
                usage = event["usage"]
            elif event["type"] == "error":
                raise RuntimeError(event)
    return first or 0.0, usage, "".join(text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--tools", type=int, default=24)
    parser.add_argument("--system-words", type=int, default=2500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        models = Path(folder) / "models"
        import_bundled_model(Store(models))
        server = start_server(models, Path(folder) / "serve.log",
                              OLLAMA_CONTEXT_LENGTH="32768", OLLAMA_KEEP_ALIVE="30m")
        try:
            ollama.Client(host=server.url).create(MODEL, from_="gemma3:270m",
                                                  template=GEMMA_TOOLS,
                                                  parameters={"temperature": 0, "stop": ["\n"]})
            words = " ".join(["You are a careful coding agent working in a repository."]
                             * (args.system_words // 10))
            print(f"tools: {len(json.dumps(tools(args.tools, ''))) // 1024} KB of JSON")
            rows = []
            for run in range(args.runs):
                nonce = f"Session {secrets.token_hex(8)}. "
                agent_tools = tools(args.tools, nonce)
                system = nonce + words
                ask = [{"role": "user", "content": "List the files in the repository."}]
                body = {"model": MODEL, "max_tokens": 16, "system": system,
                        "tools": agent_tools, "messages": ask}
                first = turn(server.url, body)
                follow = [*ask, {"role": "assistant", "content": first[2] or "Done."},
                          {"role": "user", "content": "Now show the README."}]
                second = turn(server.url, {**body, "messages": follow})
                rows.append((first, second))
                for name, (ttft, usage, _) in (("turn 1", first), ("turn 2", second)):
                    print(f"run {run + 1} {name}: first content {ttft:7.2f} s, input_tokens "
                          f"{usage['input_tokens']:6d}, cache_read_input_tokens "
                          f"{usage['cache_read_input_tokens']:6d}")
            for index, name in ((0, "turn 1"), (1, "turn 2")):
                times = [row[index][0] for row in rows]
                spread = f" (min {min(times):.2f}, max {max(times):.2f})" if len(times) > 1 else ""
                print(f"{name}: median first content {statistics.median(times):.2f} s{spread}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
