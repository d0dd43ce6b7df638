"""`corral bench`: a load-testing harness for any Ollama-API or OpenAI-API endpoint.

One module per job:

- `prompts`: the prompt set (random or fixed text of about N tokens, or a file of prompts).
- `client`: one streamed request, timed chunk by chunk (Ollama NDJSON or OpenAI SSE).
- `sweep`: for each concurrency level, warm-up requests and then N requests with exactly `c` in
  flight, bounded by a request count per level and by a wall-clock budget for the whole run.
- `report`: percentiles, per-level summaries, the rich table, JSON and the PNG chart.

`run_bench(BenchConfig(...))` runs a whole sweep in-process and returns a `BenchReport`.
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
