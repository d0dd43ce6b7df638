"""`corral bench`: a load-testing harness for any Ollama-API or OpenAI-API endpoint.

One module per job:

- `prompts`: prompt texts (random or fixed text of about N tokens, or a file of prompts).
- `workload`: what each request asks: random, fixed, shared-prefix, multi-turn or file, with
  input and output lengths drawn from distributions.
- `client`: one streamed request, timed chunk by chunk (Ollama NDJSON or OpenAI SSE).
- `arrivals`: open-loop schedules (constant, Poisson, gamma).
- `levels`: one level against one server, closed loop (c in flight) or open loop (a rate).
- `slo`: latency targets, goodput, and the --find-max rate search.
- `sweep`: the whole run: levels in order, or the search, against one server or two (ABBA).
- `report`: percentiles, per-level summaries, per-request records, the table and the JSON.
- `chart`, `htmlpage`: the PNG/SVG charts and the self-contained HTML page.

`run_bench(BenchConfig(...))` runs a whole run in-process and returns a `BenchReport`.
"""

from __future__ import annotations

from gateway.loadtest.report import DEFINITIONS, BenchReport, LevelSummary, percentile
from gateway.loadtest.sweep import BenchConfig, Unreachable, run_bench

__all__ = [
    "DEFINITIONS",
    "BenchConfig",
    "BenchReport",
    "LevelSummary",
    "Unreachable",
    "percentile",
    "run_bench",
]
