"""`corral bench`: load-test an Ollama-API or OpenAI-API endpoint (or two, side by side) at
several concurrencies or request rates.

Only argparse is imported at parser-building time; the harness (gateway.loadtest) loads when
the command runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Any

DESCRIPTION = """\
Load-test any Ollama-API or OpenAI-API server (corral, Ollama, llama.cpp's server, vLLM), or
two of them side by side.

Closed loop, --concurrency C1,C2,...: at each level c, exactly c streamed requests in flight.
Open loop, --rate R1,R2,...: requests sent at R per second (--arrivals poisson by default),
whatever the server does; one that cannot be sent on time is sent late and counted late.
Each level: --warmup unmeasured requests, then --requests N requests or --duration S seconds
(default: 4 x c requests; 10 s for a rate). Requests ask for greedy decoding (temperature 0)
and --output-tokens tokens (num_predict / max_tokens). The whole run stops after --max-seconds.
Only the --url (and --compare) servers are contacted."""

EPILOG = """\
definitions:
  TTFT       time to first token: from sending a request to its first non-empty chunk
  ITL        inter-token latency: gaps between consecutive chunks after the first,
             pooled across the level's requests
  E2E        end-to-end latency: from sending a request to its final message
  out tok/s  output tokens of a level's successful requests (the server's eval_count /
             usage.completion_tokens, else counted chunks) / wall time of the level's
             measured phase (its start to the end of its last request)
  req/s      successful requests / that same wall time
  sent/s     (requests sent - 1) / (last send - first send): the rate that went out
  late       open loop: requests sent more than 10 ms after their due time
  err        failed requests, by kind: HTTP status (429, 503, ...), timeout, connect,
             stream; +N cut: cancelled or never sent when --max-seconds ran out
  SLO met    requests that succeeded within every --slo limit / requests sent (the itl
             limit applies to each request's own mean gap between chunks; in an open
             loop, ttft and e2e count from the due time, so lateness counts against it)
  goodput/s  requests within every --slo limit / wall time
  in flight  requests sent and not yet ended: time-weighted mean / max
  B/A        with --compare: server B's value / server A's, at the same level
  p50/90/99  percentiles, linear interpolation between nearest ranks, in ms

workloads (--workload):
  random         a different seeded prompt per request (no prefix reuse)
  fixed          the same passage every time
  shared-prefix  --prefixes K system prompts of --prefix-tokens L tokens, then a question
  multi-turn     --conversations C at a time of --turns T turns; each turn resends the
                 history (the server's own replies included)
  file           --prompts FILE: one prompt per line, or JSON Lines of prompts or
                 message lists
  --input-tokens and --output-tokens take N or MEAN:STDDEV (a normal distribution)

endpoints:
  --api ollama: generate (POST /api/generate, prompt sent raw) or chat (POST /api/chat)
  --api openai: chat (POST /v1/chat/completions) or completions (POST /v1/completions)

examples:
  corral bench --model gemma3:270m
  corral bench --url http://127.0.0.1:8080 --api openai --model any --concurrency 1,4,16
  corral bench --model gemma3:270m --rate 1,2,4 --duration 30 --slo ttft=500ms,e2e=10s
  corral bench --model gemma3:270m --find-max --slo ttft=1s,itl=100ms --html report.html
  corral bench --model gemma3:270m --workload multi-turn --conversations 4 --turns 6
  corral bench --model gemma3:270m --compare http://127.0.0.1:11435 --rate 2,4
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


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of numbers, "
                                         f"got {text!r}") from None
    if not rates or any(not 0 < r < float("inf") for r in rates):
        raise argparse.ArgumentTypeError(f"request rates must be positive, got {text!r}")
    return rates


def _length(text: str) -> Any:
    from gateway.loadtest.workload import Length

    try:
        return Length.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _slo(text: str) -> dict[str, float]:
    from gateway.loadtest.slo import parse_slo

    try:
        return parse_slo(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1], got {text!r}")
    return value


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
    p = sub.add_parser("bench", help="Load-test a server (or two, side by side)",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="server base URL (default: from OLLAMA_HOST)")
    p.add_argument("--api", choices=("ollama", "openai"), default="ollama",
                   help="API flavour (default: ollama)")
    p.add_argument("--endpoint", choices=("generate", "chat", "completions"),
                   help="generate|chat for ollama (default generate), chat|completions for "
                        "openai (default chat)")
    p.add_argument("--model", required=True, help="model name, as the server knows it")
    p.add_argument("--api-key", metavar="KEY", help="sent as 'Authorization: Bearer KEY'")

    load = p.add_argument_group("load levels")
    load.add_argument("--concurrency", type=_levels, metavar="C1,C2,...",
                      help="closed loop: requests in flight (default: 1,2,4,8)")
    load.add_argument("--rate", type=_rates, metavar="R1,R2,...",
                      help="open loop: requests per second, sent whatever the server does")
    load.add_argument("--arrivals", choices=("constant", "poisson", "gamma"), default="poisson",
                      help="open-loop arrival process (default: poisson)")
    load.add_argument("--burstiness", type=_positive(float), default=1.0, metavar="B",
                      help="gamma arrivals' shape: 1 is Poisson, < 1 burstier (default: 1)")
    load.add_argument("--requests", type=_positive(int), metavar="N",
                      help="measured requests per level (default: 4 x concurrency)")
    load.add_argument("--duration", type=_positive(float), metavar="S",
                      help="seconds of sending per level (default for a rate: 10)")
    load.add_argument("--max-in-flight", type=_positive(int), metavar="N",
                      help="open loop: at most N requests out at once; the rest go late")
    load.add_argument("--timeout", type=_positive(float), metavar="S",
                      help="per-request time limit, counted as a timeout error (default: none)")
    load.add_argument("--warmup", type=_non_negative, default=1, metavar="N",
                      help="unmeasured warm-up requests before each level (default: 1)")
    load.add_argument("--max-seconds", type=_positive(float), default=600.0, metavar="S",
                      help="time budget for the whole run (default: 600)")

    slo = p.add_argument_group("latency targets")
    slo.add_argument("--slo", type=_slo, metavar="ttft=500ms,itl=100ms,e2e=10s",
                     help="report the share of requests within all of these, and goodput")
    slo.add_argument("--slo-share", type=_share, default=0.9, metavar="F",
                     help="the share --find-max must keep (default: 0.9)")
    slo.add_argument("--find-max", action="store_true",
                     help="search the highest rate whose SLO share stays >= --slo-share, "
                          "doubling from --rate (default 1) then bisecting")

    work = p.add_argument_group("workload")
    work.add_argument("--workload", choices=("random", "fixed", "shared-prefix", "multi-turn",
                                             "file"),
                      help="what to ask (default: random; file with --prompts)")
    work.add_argument("--prompt-kind", dest="workload", choices=("random", "fixed"),
                      help=argparse.SUPPRESS)  # the older name of --workload
    work.add_argument("--prompts", metavar="FILE",
                      help="prompts for --workload file: one per line, or JSON Lines of "
                           "prompts (\"prompt\") or message lists (\"messages\")")
    work.add_argument("--input-tokens", type=_length, default="250", metavar="N[:SD]",
                      help="prompt (new text) length in tokens, mean[:stddev] (default: 250)")
    work.add_argument("--output-tokens", type=_length, default="128", metavar="N[:SD]",
                      help="tokens to generate, mean[:stddev], as num_predict / max_tokens "
                           "(default: 128)")
    work.add_argument("--prefixes", type=_positive(int), default=4, metavar="K",
                      help="shared-prefix: distinct system prompts (default: 4)")
    work.add_argument("--prefix-tokens", type=_positive(int), default=500, metavar="L",
                      help="shared-prefix: system prompt length in tokens (default: 500)")
    work.add_argument("--conversations", type=_positive(int), default=8, metavar="C",
                      help="multi-turn: conversations at a time (default: 8)")
    work.add_argument("--turns", type=_positive(int), default=4, metavar="T",
                      help="multi-turn: turns per conversation (default: 4)")
    work.add_argument("--seed", type=int, default=0,
                      help="seed for prompts, lengths and arrivals (default: 0)")

    ab = p.add_argument_group("A/B comparison")
    ab.add_argument("--compare", metavar="URL2",
                    help="run every level against this server too (ABBA order), one table")
    ab.add_argument("--model2", metavar="M2", help="server B's model (default: --model)")
    ab.add_argument("--api2", choices=("ollama", "openai"),
                    help="server B's API flavour (default: --api)")
    ab.add_argument("--endpoint2", choices=("generate", "chat", "completions"),
                    help="server B's endpoint (default: --endpoint)")
    ab.add_argument("--api-key2", metavar="KEY", help="server B's key (default: --api-key)")

    out = p.add_argument_group("reports")
    out.add_argument("--json", metavar="FILE",
                     help="also write the results as JSON, with every request's timings")
    out.add_argument("--chart", metavar="FILE.png",
                     help="also draw the charts as a PNG (needs matplotlib)")
    out.add_argument("--html", metavar="FILE.html",
                     help="also write one self-contained page: table and charts (needs "
                          "matplotlib)")


def _with_scheme(url: str) -> str:
    return url if "://" in url else "http://" + url


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the levels, print the table, write the optional files; 1 if nothing succeeded."""
    from rich.console import Console

    from gateway.cli.client import CLIError, server_address
    from gateway.loadtest.prompts import load_prompts
    from gateway.loadtest.report import render_table, search_lines
    from gateway.loadtest.sweep import BenchConfig, Unreachable, run_bench

    url = _with_scheme(args.url or server_address().client_url())
    try:
        prompts = load_prompts(args.prompts) if args.prompts else None
        config = BenchConfig(
            url=url, model=args.model, api=args.api, endpoint=args.endpoint,
            concurrency=args.concurrency, rates=args.rate, arrivals=args.arrivals,
            burstiness=args.burstiness, requests=args.requests, duration=args.duration,
            input_tokens=args.input_tokens, output_tokens=args.output_tokens,
            workload=args.workload or ("file" if prompts else "random"), prompts=prompts,
            prefixes=args.prefixes, prefix_tokens=args.prefix_tokens,
            conversations=args.conversations, turns=args.turns, warmup=args.warmup,
            max_seconds=args.max_seconds, seed=args.seed, api_key=args.api_key,
            timeout=args.timeout, max_in_flight=args.max_in_flight, slo=args.slo,
            slo_share=args.slo_share, find_max=args.find_max,
            compare=_with_scheme(args.compare) if args.compare else None,
            model2=args.model2, api2=args.api2, endpoint2=args.endpoint2,
            api_key2=args.api_key2)
        config.validate()
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if (args.chart or args.html) and importlib.util.find_spec("matplotlib") is None:
        raise CLIError("--chart and --html need matplotlib: pip install 'corral[bench]'")

    out = Console()
    err = Console(stderr=True, soft_wrap=True)  # progress lines stay whole in a log
    if not out.is_terminal:
        out = Console(width=320)  # a file or pipe: keep every column on one line
    try:
        report = run_bench(config, progress=lambda message: err.print(message, style="dim",
                                                                     highlight=False))
    except Unreachable as exc:
        raise CLIError(f"{exc}; is it running?") from None
    out.print(render_table(report))
    for line in search_lines(report):
        out.print(line, highlight=False)
    late = sum(level.late for level in report.levels)
    if late:
        err.print(f"note: {late} request(s) went out more than 10 ms after their due time "
                  "(see the late column)", style="yellow", highlight=False)
    if args.json:
        report.write_json(args.json)
        err.print(f"wrote {args.json}", style="dim", highlight=False)
    if (args.chart or args.html) and report.completed:
        try:
            if args.chart:
                from gateway.loadtest.chart import write_png

                write_png(report, args.chart)
                err.print(f"wrote {args.chart}", style="dim", highlight=False)
            if args.html:
                from gateway.loadtest.htmlpage import write_html

                write_html(report, args.html)
                err.print(f"wrote {args.html}", style="dim", highlight=False)
        except (RuntimeError, OSError) as exc:
            raise CLIError(str(exc)) from None
    if not report.completed:
        reasons = "; ".join(report.first_errors()) or "no request finished within --max-seconds"
        if report.errors:
            raise CLIError(f"every request failed: {reasons}")
        raise CLIError(reasons)
    if report.errors:
        sys.stderr.write(f"warning: {report.errors} request(s) failed: "
                         f"{'; '.join(report.first_errors())}\n")
    return 0
