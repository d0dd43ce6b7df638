"""Per-level summaries of a load test, and their table, JSON and chart.

Definitions (the same words are in `corral bench --help` and in each JSON report):

- TTFT, time to first token: from sending a request to its first non-empty chunk.
- ITL, inter-token latency: every gap between consecutive chunks of a request after its first
  chunk, pooled across all the successful requests of a level.
- E2E, end-to-end latency: from sending a request to its final message (Ollama's `done` object,
  OpenAI's `[DONE]`).
- Output tok/s of a level: the output tokens of its successful requests (as the server counts
  them, else counted chunks) divided by the wall time of the level's measured phase, which runs
  from the start of its first measured request to the end of its last (warm-ups excluded).
- Requests/s of a level: its successful requests divided by that same wall time.

Percentiles interpolate linearly between the two nearest ranks (numpy's default method).
Latencies are reported in milliseconds.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from gateway.loadtest.client import RequestResult

DEFINITIONS = {
    "ttft": "time to first token: from sending a request to its first non-empty chunk",
    "itl": "inter-token latency: gaps between consecutive chunks after the first, pooled "
           "across the level's successful requests",
    "e2e": "end-to-end latency: from sending a request to its final message",
    "output_tokens_per_s": "output tokens of the level's successful requests / wall time of "
                           "the level's measured phase",
    "requests_per_s": "successful requests / wall time of the level's measured phase",
    "measured_phase": "from the start of the level's first measured request to the end of its "
                      "last; warm-up requests are not measured",
    "percentiles": "linear interpolation between the nearest ranks; latencies in ms",
}
PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between closest ranks; None if empty."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_ms(values_s: Iterable[float]) -> dict[str, float | None]:
    """p50, p90, p99 and mean of latencies given in seconds, in milliseconds."""
    ms = [v * 1000 for v in values_s]
    out: dict[str, float | None] = {f"p{q}": percentile(ms, q) for q in PERCENTILES}
    out["mean"] = sum(ms) / len(ms) if ms else None
    return out


@dataclass
class LevelSummary:
    """What one concurrency level measured. status: ok, truncated (ran out of time) or skipped."""

    concurrency: int
    status: str
    planned: int  # measured requests planned
    completed: int = 0  # successful
    errors: int = 0
    incomplete: int = 0  # not finished when the time ran out
    wall_s: float = 0.0
    requests_per_s: float = 0.0
    output_tokens: int = 0
    output_tokens_per_s: float = 0.0
    mean_output_tokens: float | None = None
    mean_prompt_tokens: float | None = None  # as the server reports them
    tokens_counted_from_chunks: int = 0  # requests whose server reported no token count
    ttft_ms: dict[str, float | None] = field(default_factory=lambda: latency_ms([]))
    itl_ms: dict[str, float | None] = field(default_factory=lambda: latency_ms([]))
    e2e_ms: dict[str, float | None] = field(default_factory=lambda: latency_ms([]))
    error_samples: list[str] = field(default_factory=list)  # the most frequent messages


def summarize_level(concurrency: int, results: Sequence[RequestResult], wall_s: float, *,
                    planned: int | None = None, truncated: bool = False) -> LevelSummary:
    """Fold one level's measured requests into its summary (see the module's definitions)."""
    planned = len(results) if planned is None else planned
    good = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    tokens = sum(r.output_tokens for r in good)
    prompt_counts = [r.prompt_tokens for r in good if r.prompt_tokens is not None]
    messages = Counter(r.error or "no final message" for r in failed)
    return LevelSummary(
        concurrency=concurrency,
        status="truncated" if truncated else "ok",
        planned=planned,
        completed=len(good),
        errors=len(failed),
        incomplete=max(0, planned - len(results)),
        wall_s=wall_s,
        requests_per_s=len(good) / wall_s if wall_s > 0 else 0.0,
        output_tokens=tokens,
        output_tokens_per_s=tokens / wall_s if wall_s > 0 else 0.0,
        mean_output_tokens=tokens / len(good) if good else None,
        mean_prompt_tokens=sum(prompt_counts) / len(prompt_counts) if prompt_counts else None,
        tokens_counted_from_chunks=sum(r.tokens_from == "chunks" for r in good),
        ttft_ms=latency_ms(r.ttft for r in good if r.ttft is not None),
        itl_ms=latency_ms(gap for r in good for gap in r.gaps),
        e2e_ms=latency_ms(r.e2e for r in good if r.e2e is not None),
        error_samples=[f"{m} (x{n})" if n > 1 else m for m, n in messages.most_common(3)],
    )


def skipped_level(concurrency: int, planned: int) -> LevelSummary:
    """A level the time budget did not reach."""
    return LevelSummary(concurrency=concurrency, status="skipped", planned=planned,
                        incomplete=planned)


@dataclass
class BenchReport:
    """A whole run: its settings (`meta`) and one summary per concurrency level, in order."""

    meta: dict[str, Any]
    levels: list[LevelSummary]

    @property
    def completed(self) -> int:
        return sum(level.completed for level in self.levels)

    @property
    def errors(self) -> int:
        return sum(level.errors for level in self.levels)

    def first_errors(self) -> list[str]:
        return [m for level in self.levels for m in level.error_samples][:3]

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "definitions": DEFINITIONS,
                "levels": [asdict(level) for level in self.levels]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _triple(stats: dict[str, float | None]) -> str:
    return " / ".join(_ms(stats[f"p{q}"]) for q in PERCENTILES)


def table_rows(report: BenchReport) -> list[list[str]]:
    """The table's cells, one row per level (kept apart from rich so it can be tested)."""
    rows = []
    for level in report.levels:
        if level.status == "skipped":
            rows.append([str(level.concurrency), "skipped (out of time)"] + [""] * 8)
            continue
        errors = str(level.errors) + (f" +{level.incomplete} cut" if level.incomplete else "")
        rows.append([
            str(level.concurrency),
            str(level.completed),
            errors,
            f"{level.requests_per_s:.2f}",
            f"{level.output_tokens_per_s:.1f}",
            _triple(level.ttft_ms),
            _triple(level.itl_ms),
            _triple(level.e2e_ms),
            "-" if level.mean_output_tokens is None else f"{level.mean_output_tokens:.0f}",
            "-" if level.mean_prompt_tokens is None else f"{level.mean_prompt_tokens:.0f}",
        ])
    return rows


COLUMNS = ("conc", "ok", "err", "req/s", "out tok/s", "TTFT ms p50/90/99",
           "ITL ms p50/90/99", "E2E ms p50/90/99", "out tok/req", "in tok/req")


def render_table(report: BenchReport) -> Table:
    meta = report.meta
    title = (f"{meta.get('model')} via {meta.get('api')} {meta.get('endpoint')} at "
             f"{meta.get('url')}: {meta.get('prompts')}, {meta.get('output_tokens')} output "
             "tokens max, greedy")
    table = Table(title=title, title_justify="left")
    for name in COLUMNS:
        table.add_column(name, justify="right", no_wrap=True)
    for row in table_rows(report):
        table.add_row(*row)
    return table


def write_chart(report: BenchReport, path: str | Path) -> None:
    """A PNG: throughput (left) and latency percentiles (right) against concurrency."""
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("the PNG chart needs matplotlib: pip install 'corral[bench]'") from None
    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt

    levels = [lv for lv in report.levels if lv.status != "skipped" and lv.completed]
    xs = [lv.concurrency for lv in levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    try:
        left.plot(xs, [lv.output_tokens_per_s for lv in levels], "o-", color="tab:blue",
                  label="output tok/s")
        left.set_xlabel("concurrency")
        left.set_ylabel("output tokens/s", color="tab:blue")
        twin = left.twinx()
        twin.plot(xs, [lv.requests_per_s for lv in levels], "s--", color="tab:orange",
                  label="requests/s")
        twin.set_ylabel("requests/s", color="tab:orange")
        left.set_ylim(bottom=0)
        twin.set_ylim(bottom=0)
        left.set_title("throughput")
        for name, key, color in (("TTFT", "ttft_ms", "tab:green"), ("ITL", "itl_ms", "tab:red"),
                                 ("E2E", "e2e_ms", "tab:purple")):
            for q, style in (("p50", "o-"), ("p99", "^:")):
                points = [(lv.concurrency, getattr(lv, key)[q]) for lv in levels
                          if getattr(lv, key)[q]]
                if points:
                    right.plot(*zip(*points, strict=True), style, color=color, label=f"{name} {q}")
        right.set_yscale("log")
        right.set_xlabel("concurrency")
        right.set_ylabel("ms")
        right.set_title("latency")
        right.legend(fontsize="small", ncols=3)
        for ax in (left, right):
            if xs:
                ax.set_xscale("log", base=2)
                ax.set_xticks(xs, [str(x) for x in xs])
            ax.grid(True, alpha=0.3)
        fig.suptitle(f"{report.meta.get('model')} ({report.meta.get('api')} "
                     f"{report.meta.get('endpoint')}, {report.meta.get('prompts')}, "
                     f"{report.meta.get('output_tokens')} output tokens)")
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
