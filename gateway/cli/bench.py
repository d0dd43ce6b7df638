"""`corral bench`: load-test an Ollama-API or OpenAI-API endpoint across concurrency levels.

Only argparse is imported at parser-building time; the harness (gateway.loadtest) loads when
the command runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Any

DESCRIPTION = """\
Load-test any Ollama-API or OpenAI-API server (corral, Ollama, llama.cpp's server, vLLM).

For each concurrency level c: --warmup requests (not measured), then --requests streamed
requests with exactly c in flight. Requests ask for greedy decoding (temperature 0) and
--output-tokens tokens (num_predict / max_tokens). The whole run stops after --max-seconds.
Only the --url given is contacted."""

EPILOG = """\
definitions:
  TTFT       time to first token: from sending a request to its first non-empty chunk
  ITL        inter-token latency: gaps between consecutive chunks after the first,
             pooled across the level's requests
  E2E        end-to-end latency: from sending a request to its final message
  out tok/s  output tokens of a level's successful requests (the server's eval_count /
             usage.completion_tokens, else counted chunks) / wall time of the level's
             measured phase (first measured send to last measured end)
  req/s      successful requests / that same wall time
  p50/90/99  percentiles, linear interpolation between nearest ranks, in ms

endpoints:
  --api ollama: generate (POST /api/generate, prompt sent raw) or chat (POST /api/chat)
  --api openai: chat (POST /v1/chat/completions) or completions (POST /v1/completions)

examples:
  corral bench --model gemma3:270m
  corral bench --url http://127.0.0.1:8080 --api openai --model any --concurrency 1,4,16
  corral bench --model llama3.2 --prompts prompts.jsonl --json out.json --chart out.png"""


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, "
                                         f"got {text!r}") from None
    if not levels or any(c < 1 for c in levels):
        raise argparse.ArgumentTypeError(f"concurrency levels must be >= 1, got {text!r}")
    return levels


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value
    return parse


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text!r}")
    return value


def add_bench_parser(sub: Any) -> None:
    """Register `bench` on the top-level parser's sub-commands."""
    p = sub.add_parser("bench", help="Load-test a server at several concurrency levels",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="server base URL (default: from OLLAMA_HOST)")
    p.add_argument("--api", choices=("ollama", "openai"), default="ollama",
                   help="API flavour (default: ollama)")
    p.add_argument("--endpoint", choices=("generate", "chat", "completions"),
                   help="generate|chat for ollama (default generate), chat|completions for "
                        "openai (default chat)")
    p.add_argument("--model", required=True, help="model name, as the server knows it")
    p.add_argument("--concurrency", type=_levels, default=[1, 2, 4, 8], metavar="C1,C2,...",
                   help="concurrency levels (default: 1,2,4,8)")
    p.add_argument("--requests", type=_positive(int), metavar="N",
                   help="measured requests per level (default: 4 x concurrency)")
    p.add_argument("--input-tokens", type=_positive(int), default=250, metavar="N",
                   help="approximate prompt length in tokens (default: 250)")
    p.add_argument("--output-tokens", type=_positive(int), default=128, metavar="N",
                   help="tokens to generate, as num_predict / max_tokens (default: 128)")
    p.add_argument("--prompt-kind", choices=("random", "fixed"), default="random",
                   help="random: a different seeded prompt per request (no prefix reuse); "
                        "fixed: the same passage every time (default: random)")
    p.add_argument("--prompts", metavar="FILE",
                   help="prompts to use instead: one per line, or JSON Lines with a "
                        "\"prompt\" field")
    p.add_argument("--warmup", type=_non_negative, default=1, metavar="N",
                   help="unmeasured warm-up requests before each level (default: 1)")
    p.add_argument("--max-seconds", type=_positive(float), default=600.0, metavar="S",
                   help="time budget for the whole run (default: 600)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random prompts (default: 0)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--chart", metavar="FILE.png",
                   help="also draw throughput and latency vs concurrency (needs matplotlib)")
    p.add_argument("--api-key", metavar="KEY", help="sent as 'Authorization: Bearer KEY'")


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the sweep, print the table, write the optional files; 1 if nothing succeeded."""
    from rich.console import Console

    from gateway.cli.client import CLIError, server_address
    from gateway.loadtest.prompts import load_prompts
    from gateway.loadtest.report import render_table, write_chart
    from gateway.loadtest.sweep import BenchConfig, Unreachable, run_bench

    url = args.url or server_address().client_url()
    if "://" not in url:
        url = "http://" + url
    try:
        prompts = load_prompts(args.prompts) if args.prompts else None
        config = BenchConfig(
            url=url, model=args.model, api=args.api, endpoint=args.endpoint,
            concurrency=args.concurrency, requests=args.requests,
            input_tokens=args.input_tokens, output_tokens=args.output_tokens,
            prompt_kind=args.prompt_kind, prompts=prompts, warmup=args.warmup,
            max_seconds=args.max_seconds, seed=args.seed, api_key=args.api_key)
        config.validate()
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if args.chart and importlib.util.find_spec("matplotlib") is None:
        raise CLIError("--chart needs matplotlib: pip install 'corral[bench]'")

    out = Console()
    err = Console(stderr=True)
    if not out.is_terminal:
        out = Console(width=160)
    try:
        report = run_bench(config, progress=lambda message: err.print(message, style="dim",
                                                                     highlight=False))
    except Unreachable as exc:
        raise CLIError(f"{exc}; is it running?") from None
    out.print(render_table(report))
    if args.json:
        report.write_json(args.json)
        err.print(f"wrote {args.json}", style="dim", highlight=False)
    if args.chart and report.completed:
        try:
            write_chart(report, args.chart)
        except RuntimeError as exc:
            raise CLIError(str(exc)) from None
        err.print(f"wrote {args.chart}", style="dim", highlight=False)
    if not report.completed:
        reasons = "; ".join(report.first_errors()) or "no request finished within --max-seconds"
        if report.errors:
            raise CLIError(f"every request failed: {reasons}")
        raise CLIError(reasons)
    if report.errors:
        sys.stderr.write(f"warning: {report.errors} request(s) failed: "
                         f"{'; '.join(report.first_errors())}\n")
    return 0
