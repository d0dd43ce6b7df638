"""An agent's second turn reads only its new tokens: time to first token and cached input tokens
of turn 2 against turn 1, over /v1/responses (turn 2 names turn 1 by previous_response_id and
sends only its new input) and over /v1/chat/completions (the whole history again).

    .venv/bin/python -m tests.bench.agent_turns_openai [--runs 3] [--prefix-tokens 4000]

A live `corral serve` (OLLAMA_CONTEXT_LENGTH=16384) with the bundled Gemma 3 270M under a template
that shows the system prompt and tools (tests/test_codex.py's), greedy. Each turn 1 starts a new
long prefix, an agent's system prompt plus a dozen function tools, with a number of its own in its
first line, so nothing is cached from an earlier run; turn 2 is turn 1's history plus a new user
message. Time to first token is the client's, up to the start of the streamed reply: the server
answers once the model has written its first token (the first text delta can come later, while
the tool-call parser holds back text that might open a call).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ollama
import openai
from rich.console import Console
from rich.table import Table

from registry.bundled import import_bundled_model
from registry.store import Store
from tests.conftest import start_server
from tests.test_codex import TEMPLATE

MODEL = "corral-agent-bench:latest"
TOPICS = ["files", "tests", "git", "builds", "reviews", "shell commands", "patches", "logs",
          "dependencies", "formatting", "documentation", "errors", "commits", "branches"]
VERBS = ["read", "check", "prefer", "avoid", "explain", "keep", "run", "show", "record", "ask"]


def system_prompt(run: int, words: int) -> str:
    """An agent's instructions, about `words` words (a word is about 1.3 tokens here)."""
    lines = [f"You are coding agent number {run}, working in a user's repository."]
    i = 0
    while sum(len(line.split()) for line in lines) < words:
        topic, verb = TOPICS[i % len(TOPICS)], VERBS[(i * 7) % len(VERBS)]
        lines.append(f"Rule {i + 1}: {verb} the {topic} carefully before you change them; "
                     f"say what you did with the {topic} and why, in one short sentence, and "
                     f"stop when the task about {topic} is done.")
        i += 1
    return "\n".join(lines)


def tools(run: int) -> list[dict[str, Any]]:
    """A dozen function tools in the Responses shape (the chat shape is made from these); the
    template shows them first, so the run's number is in their descriptions too."""
    return [{"type": "function", "name": f"{verb}_{topic.replace(' ', '_')}",
             "description": f"{verb.capitalize()} the {topic} of the repository for agent {run} "
                            f"and return what was found, as text of at most a few lines.",
             "parameters": {"type": "object", "properties": {
                 "path": {"type": "string", "description": f"Where the {topic} are."},
                 "limit": {"type": "integer", "description": "How many lines at most."}},
                 "required": ["path"]}}
            for verb, topic in zip(VERBS * 2, TOPICS[:12], strict=False)]


def chat_tools(run: int) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}}
            for t in tools(run)]


TASK = "List the test files of this repository."
FOLLOW_UP = "Now say which of them is the longest."




def responses_run(client: openai.OpenAI, run: int, words: int) -> list[tuple[float, Any]]:
    instructions = system_prompt(run, words)
    turns = []
    previous = None
    for text in (TASK, FOLLOW_UP):
        start = time.perf_counter()
        stream = client.responses.create(
            model=MODEL, instructions=instructions, tools=tools(run), input=text,
            previous_response_id=previous, max_output_tokens=8, stream=True)
        ttft = time.perf_counter() - start
        final = list(stream)[-1].response
        turns.append((ttft, final.usage.input_tokens,
                      final.usage.input_tokens_details.cached_tokens))
        previous = final.id
    return turns


def chat_run(client: openai.OpenAI, run: int, words: int) -> list[tuple[float, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt(run, words)}]
    turns = []
    for text in (TASK, FOLLOW_UP):
        messages.append({"role": "user", "content": text})
        start = time.perf_counter()
        stream = client.chat.completions.create(
            model=MODEL, messages=messages, tools=chat_tools(run), max_tokens=8, stream=True,
            stream_options={"include_usage": True})
        ttft = time.perf_counter() - start
        chunks = list(stream)
        usage = chunks[-1].usage
        reply = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        messages.append({"role": "assistant", "content": reply})
        turns.append((ttft, usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens))
    return turns


def baseline_run(client: openai.OpenAI, run: int) -> list[tuple[float, Any]]:
    """A short prompt alone (no prefix, nothing cached): what reading ~20 tokens costs on this
    machine as loaded, against which turn 2 is measured."""
    start = time.perf_counter()
    stream = client.responses.create(model=MODEL, input=f"Agent {run}: {FOLLOW_UP}",
                                     max_output_tokens=8, stream=True)
    ttft = time.perf_counter() - start
    usage = list(stream)[-1].response.usage
    return [(ttft, usage.input_tokens, usage.input_tokens_details.cached_tokens)]


def _spread(values: list[float], fmt: str) -> str:
    med = statistics.median(values)
    return f"{med:{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.agent_turns_openai")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prefix-tokens", type=int, default=4000,
                        help="about how long the system prompt is (tools come on top)")
    args = parser.parse_args()
    words = int(args.prefix_tokens / 1.3)
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        models = Path(tmp) / "models"
        import_bundled_model(Store(models))
        server = start_server(models, Path(tmp) / "serve.log", OLLAMA_CONTEXT_LENGTH="16384",
                              OLLAMA_KEEP_ALIVE="-1", CORRAL_ACCESS_LOG="off")
        try:
            ollama.Client(host=server.url).create(MODEL, from_="gemma3:270m", template=TEMPLATE,
                                                  parameters={"temperature": 0})
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused",
                                   max_retries=0, timeout=1800)
            client.responses.create(model=MODEL, input="Hi", max_output_tokens=1)  # load it
            rows: dict[str, list[list[tuple[float, Any]]]] = {
                "/v1/responses": [], "/v1/chat/completions": [], "short prompt alone": []}
            for run in range(args.runs):
                rows["/v1/responses"].append(responses_run(client, 2 * run, words))
                rows["/v1/chat/completions"].append(chat_run(client, 2 * run + 1, words))
                rows["short prompt alone"].append(baseline_run(client, run))
                print(json.dumps({"run": run, **{k: v[-1] for k, v in rows.items()}}),
                      flush=True)
        finally:
            server.stop()
    table = Table(title=f"An agent's second turn: bundled Gemma 3 270M, ~{args.prefix_tokens}-"
                        f"token system prompt + 12 tools, median (min-max) of {args.runs} runs")
    for column in ("route", "turn", "input tokens", "cached", "read (input - cached)",
                   "TTFT (s)"):
        table.add_column(column, justify="right")
    for route, runs in rows.items():
        for turn in range(len(runs[0])):
            ttfts = [r[turn][0] for r in runs]
            inputs = [float(r[turn][1]) for r in runs]
            cached = [float(r[turn][2]) for r in runs]
            read = [i - c for i, c in zip(inputs, cached, strict=True)]
            table.add_row(route, str(turn + 1), _spread(inputs, ".0f"), _spread(cached, ".0f"),
                          _spread(read, ".0f"), _spread(ttfts, ".2f"))
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
