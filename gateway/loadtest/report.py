"""Per-level summaries of a load test, and their table, JSON and per-request records.

Definitions (the same words are in `corral bench --help` and in each JSON report):

- TTFT, time to first token: from sending a request to its first non-empty chunk.
- ITL, inter-token latency: every gap between consecutive chunks of a request after its first
  chunk, pooled across all the successful requests of a level.
- E2E, end-to-end latency: from sending a request to its final message (Ollama's `done` object,
  OpenAI's `[DONE]`).
- Output tok/s of a level: the output tokens of its successful requests (as the server counts
  them, else counted chunks) divided by the wall time of the level's measured phase, which runs
  from its start (its first send, or first due time) to the end of its last request.
- Requests/s of a level: its successful requests divided by that same wall time.
- Achieved rate: (requests sent - 1) / (last send - first send), the rate that actually went out.
- Late: open-loop requests sent more than `LATE_S` after their due time.
- SLO share and goodput: see `slo`.
- In flight: requests sent and not yet ended; the mean is weighted by time over the measured
  phase.

Percentiles interpolate linearly between the two nearest ranks (numpy's default method).
Latencies are reported in milliseconds; request records in seconds from the run's start.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from gateway.loadtest.client import RequestResult
from gateway.loadtest.levels import InFlight, Level
from gateway.loadtest.slo import format_slo, meets_slo
from gateway.loadtest.workload import RequestSpec

LATE_S = 0.010
DEFINITIONS = {
    "ttft": "time to first token: from sending a request to its first non-empty chunk",
    "itl": "inter-token latency: gaps between consecutive chunks after the first, pooled "
           "across the level's successful requests",
    "e2e": "end-to-end latency: from sending a request to its final message",
    "output_tokens_per_s": "output tokens of the level's successful requests / wall time of "
                           "the level's measured phase",
    "requests_per_s": "successful requests / wall time of the level's measured phase",
    "measured_phase": "from the level's start (first send, or first due time) to the end of its "
                      "last request; warm-up requests are not measured",
    "sent": "requests the level sent, cut ones included",
    "achieved_rate": "(requests sent - 1) / (last send - first send)",
    "late": f"open-loop requests sent more than {LATE_S * 1000:g} ms after their due time",
    "errors_by_kind": "failed requests by HTTP status (429, 503, ...), timeout, connect or "
                      "stream; cut: cancelled when the time budget ran out",
    "slo_share": "requests that succeeded within every SLO limit / requests sent; the itl "
                 "limit applies to each request's own mean gap between chunks; in an open loop "
                 "ttft and e2e count from the request's due time",
    "goodput_per_s": "requests within every SLO limit / wall time of the measured phase",
    "in_flight": "requests sent and not yet ended; the mean is weighted by time",
    "ratio": "B/A: server B's value divided by server A's at the same level",
    "percentiles": "linear interpolation between the nearest ranks; latencies in ms",
    "request_times": "per-request records: seconds from the run's start",
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
    """What one level of one server measured. status: ok, truncated (ran out of time) or
    skipped (never reached)."""

    concurrency: int | None  # a closed-loop level
    status: str
    planned: int | None  # requests it meant to send, where known in advance
    rate: float | None = None  # an open-loop level: requests/s asked
    server: str = "A"
    sent: int = 0
    completed: int = 0  # successful
    errors: int = 0  # failed (cut ones not included)
    incomplete: int = 0  # cut by the time budget, or never sent
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    late: int = 0
    max_late_ms: float | None = None
    achieved_rate: float | None = None
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
    slo_met: int | None = None
    slo_share: float | None = None
    goodput_per_s: float | None = None
    in_flight_mean: float | None = None
    in_flight_max: int = 0
    in_flight: list[tuple[float, int]] = field(default_factory=list)  # (s from run start, n)
    error_samples: list[str] = field(default_factory=list)  # the most frequent messages

    @property
    def level(self) -> Level:
        if self.rate is not None:
            return Level("rate", self.rate)
        return Level("concurrency", self.concurrency or 1)


def _level(level: Level | int) -> Level:
    return Level("concurrency", level) if isinstance(level, int) else level


def achieved_rate(results: Sequence[RequestResult]) -> float | None:
    sends = sorted(r.sent for r in results)
    if len(sends) < 2 or sends[-1] <= sends[0]:
        return None
    return (len(sends) - 1) / (sends[-1] - sends[0])


def summarize_level(level: Level | int, results: Sequence[RequestResult], wall_s: float, *,
                    planned: int | None = None, truncated: bool = False, server: str = "A",
                    slo: Mapping[str, float] | None = None, in_flight: InFlight | None = None,
                    start: float | None = None, t0: float = 0.0) -> LevelSummary:
    """Fold one level's measured requests into its summary (see the module's definitions).
    `start` is the measured phase's perf_counter start, `t0` the run's (for the series)."""
    level = _level(level)
    good = [r for r in results if r.ok]
    cut = [r for r in results if r.error_kind == "cut"]
    failed = [r for r in results if not r.ok and r.error_kind != "cut"]
    tokens = sum(r.output_tokens for r in good)
    prompt_counts = [r.prompt_tokens for r in good if r.prompt_tokens is not None]
    messages = Counter(r.error or "no final message" for r in failed)
    lateness = [r.lateness for r in results if r.scheduled is not None]
    summary = LevelSummary(
        concurrency=int(level.value) if level.mode == "concurrency" else None,
        rate=level.value if level.mode == "rate" else None,
        server=server,
        status="truncated" if truncated else "ok",
        planned=planned,
        sent=len(results),
        completed=len(good),
        errors=len(failed),
        incomplete=len(cut) + (max(0, planned - len(results)) if planned is not None else 0),
        errors_by_kind=dict(Counter(r.error_kind or "error" for r in failed).most_common()),
        late=sum(late > LATE_S for late in lateness),
        max_late_ms=max(lateness) * 1000 if lateness else None,
        achieved_rate=achieved_rate(results),
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
    if slo:
        summary.slo_met = sum(meets_slo(r, slo) for r in results)
        summary.slo_share = summary.slo_met / len(results) if results else None
        summary.goodput_per_s = summary.slo_met / wall_s if wall_s > 0 else 0.0
    if in_flight is not None and start is not None:
        summary.in_flight_mean = in_flight.mean(start, start + wall_s)
        summary.in_flight_max = in_flight.peak
        summary.in_flight = [(round(t - t0, 4), n) for t, n in in_flight.series]
    return summary


def skipped_level(level: Level | int, planned: int | None, server: str = "A") -> LevelSummary:
    """A level the time budget did not reach."""
    level = _level(level)
    return LevelSummary(concurrency=int(level.value) if level.mode == "concurrency" else None,
                        rate=level.value if level.mode == "rate" else None, server=server,
                        status="skipped", planned=planned, incomplete=planned or 0)


def _t(value: float | None, t0: float) -> float | None:
    return None if value is None else round(value - t0, 6)


def request_record(spec: RequestSpec, result: RequestResult, *, t0: float, server: str,
                   level: int, warmup: bool, slo: Mapping[str, float] | None) -> dict[str, Any]:
    """One request as the JSON report keeps it: enough to recompute every figure."""
    record: dict[str, Any] = {
        "server": server, "level": level, "warmup": warmup, "index": spec.index,
        "conversation": spec.conversation, "turn": spec.turn,
        "messages": None if isinstance(spec.prompt, str) else len(spec.prompt),
        "input_tokens_asked": spec.input_tokens, "output_tokens_asked": spec.output_tokens,
        "scheduled_s": _t(result.scheduled, t0), "sent_s": _t(result.sent, t0),
        "chunks_s": [_t(c, t0) for c in result.chunks], "end_s": _t(result.end, t0),
        "output_tokens": result.output_tokens, "prompt_tokens": result.prompt_tokens,
        "tokens_from": result.tokens_from, "status": result.status,
        "error": result.error, "error_kind": result.error_kind,
    }
    if slo:
        record["slo_met"] = meets_slo(result, slo)
    return record


@dataclass
class BenchReport:
    """A whole run: its settings (`meta`), one summary per level of each server (in the order
    run), every request (`requests`), and the --find-max outcome per server (`searches`)."""

    meta: dict[str, Any]
    levels: list[LevelSummary]
    requests: list[dict[str, Any]] = field(default_factory=list)
    searches: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def completed(self) -> int:
        return sum(level.completed for level in self.levels)

    @property
    def errors(self) -> int:
        return sum(level.errors for level in self.levels)

    @property
    def servers(self) -> list[str]:
        return sorted({level.server for level in self.levels} | set(self.meta.get("servers", {})))

    def first_errors(self) -> list[str]:
        return [m for level in self.levels for m in level.error_samples][:3]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"meta": self.meta, "definitions": DEFINITIONS,
                               "levels": [asdict(level) for level in self.levels]}
        if self.searches:
            out["find_max"] = self.searches
        out["requests"] = self.requests
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def write_json(self, path: str | Path) -> None:
        write_atomic(path, (self.to_json() + "\n").encode())


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write via a temp file in the same folder and rename it over `path`, so a reader never
    sees half a report."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or Path("."))
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- the table ---------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _triple(stats: Mapping[str, float | None]) -> str:
    return " / ".join(_ms(stats[f"p{q}"]) for q in PERCENTILES)


def _ratio(b: float | None, a: float | None) -> str:
    if a is None or b is None or a == 0:
        return "-"
    return f"{b / a:.2f}"


def _ratios(b: Mapping[str, float | None], a: Mapping[str, float | None]) -> str:
    return " / ".join(_ratio(b[f"p{q}"], a[f"p{q}"]) for q in PERCENTILES)


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@dataclass(frozen=True)
class _Shape:
    open_loop: bool
    slo: bool
    compare: bool


def _shape(report: BenchReport) -> _Shape:
    return _Shape(open_loop=any(lv.rate is not None for lv in report.levels),
                  slo=bool(report.meta.get("slo")), compare=len(report.servers) > 1)


def columns(report: BenchReport) -> list[str]:
    return _columns_for(_shape(report))


def _columns_for(shape: _Shape) -> list[str]:
    cols = ["rate/s" if shape.open_loop else "conc"]
    if shape.compare:
        cols.append("server")
    cols += ["sent", "ok", "err"]
    if shape.open_loop:
        cols += ["late", "sent/s"]
    cols += ["req/s", "out tok/s", "TTFT ms p50/90/99", "ITL ms p50/90/99", "E2E ms p50/90/99"]
    if shape.slo:
        cols += ["SLO met", "goodput/s"]
    cols += ["in flight avg/max", "out tok/req", "in tok/req"]
    return cols


def _errors_cell(level: LevelSummary) -> str:
    text = str(level.errors)
    kinds = [f"{kind} x{n}" if n > 1 else kind for kind, n in level.errors_by_kind.items()]
    if kinds:
        text += f" ({', '.join(kinds)})"
    if level.incomplete:
        text += f" +{level.incomplete} cut"
    return text


def _row(level: LevelSummary, shape: _Shape) -> list[str]:
    first = f"{level.rate:g}" if level.rate is not None else str(level.concurrency)
    row = [first] + ([level.server] if shape.compare else [])
    if level.status == "skipped":
        width = len(_columns_for(shape)) - len(row)
        return row + ["skipped (out of time)"] + [""] * (width - 1)
    row += [str(level.sent), str(level.completed), _errors_cell(level)]
    if shape.open_loop:
        late = str(level.late)
        if level.late and level.max_late_ms is not None:
            late += f" (max {_ms(level.max_late_ms)} ms)"
        row += [late, _num(level.achieved_rate, 2)]
    row += [f"{level.requests_per_s:.2f}", f"{level.output_tokens_per_s:.1f}",
            _triple(level.ttft_ms), _triple(level.itl_ms), _triple(level.e2e_ms)]
    if shape.slo:
        share = "-" if level.slo_share is None else f"{level.slo_share * 100:.0f}%"
        row += [share, _num(level.goodput_per_s, 2)]
    flight = "-" if level.in_flight_mean is None else (
        f"{level.in_flight_mean:.1f} / {level.in_flight_max}")
    row += [flight, _num(level.mean_output_tokens, 0), _num(level.mean_prompt_tokens, 0)]
    return row


def _ratio_row(b: LevelSummary, a: LevelSummary, shape: _Shape) -> list[str]:
    row = ["", "B/A", "", "", ""]
    if shape.open_loop:
        row += ["", _ratio(b.achieved_rate, a.achieved_rate)]
    row += [_ratio(b.requests_per_s, a.requests_per_s),
            _ratio(b.output_tokens_per_s, a.output_tokens_per_s),
            _ratios(b.ttft_ms, a.ttft_ms), _ratios(b.itl_ms, a.itl_ms),
            _ratios(b.e2e_ms, a.e2e_ms)]
    if shape.slo:
        row += [_ratio(b.slo_share, a.slo_share), _ratio(b.goodput_per_s, a.goodput_per_s)]
    row += [_ratio(b.in_flight_mean, a.in_flight_mean),
            _ratio(b.mean_output_tokens, a.mean_output_tokens),
            _ratio(b.mean_prompt_tokens, a.mean_prompt_tokens)]
    return row


def ordered_levels(report: BenchReport) -> list[LevelSummary]:
    """Levels by load (concurrency or rate), server A before B at each."""
    return sorted(report.levels, key=lambda lv: (lv.level.value, lv.server))


def table_rows(report: BenchReport) -> list[list[str]]:
    """The table's cells, one row per level and server, with a B/A row under each pair when two
    servers are compared (kept apart from rich so it can be tested and reused by the HTML)."""
    shape = _shape(report)
    rows: list[list[str]] = []
    levels = ordered_levels(report)
    for position, level in enumerate(levels):
        rows.append(_row(level, shape))
        if not shape.compare or level.server != "B":
            continue
        a = next((lv for lv in levels[:position] if lv.server == "A"
                  and lv.level == level.level), None)
        if a is not None and "skipped" not in (a.status, level.status):
            rows.append(_ratio_row(level, a, shape))
    return rows


def title(report: BenchReport) -> str:
    meta = report.meta
    servers = meta.get("servers") or {}
    parts = []
    for name, server in servers.items():
        prefix = f"{name}: " if len(servers) > 1 else ""
        parts.append(f"{prefix}{server.get('model')} via {server.get('api')} "
                     f"{server.get('endpoint')} at {server.get('url')}")
    text = "; ".join(parts) + f" | {meta.get('workload_description', meta.get('prompts'))}"
    if meta.get("mode") == "rate":
        text += f" | {meta.get('arrivals')} arrivals"
    if meta.get("slo"):
        text += f" | SLO {format_slo(meta['slo'])}"
    return text


def render_table(report: BenchReport) -> Table:
    table = Table(title=title(report), title_justify="left")
    for name in columns(report):
        table.add_column(name, justify="right", no_wrap=True)
    for row in table_rows(report):
        table.add_row(*row)
    return table


def search_lines(report: BenchReport) -> list[str]:
    """--find-max's outcome per server, and their ratio when two were searched."""
    if not report.searches:
        return []
    share = report.meta.get("slo_share", 0.9)
    slo = format_slo(report.meta.get("slo") or {})
    lines = []
    for server, search in sorted(report.searches.items()):
        best, fail = search.get("max_rate"), search.get("lowest_failing_rate")
        who = f"{server}: " if len(report.searches) > 1 else ""
        if best is None:
            found = "no rate tried met it"
        else:
            found = f"{best:g} req/s"
            goodput = next((lv.goodput_per_s for lv in report.levels
                            if lv.server == server and lv.rate == best), None)
            if goodput is not None:
                found += f" (goodput {goodput:.2f} req/s)"
        if fail is not None:
            found += f"; {fail:g} req/s did not"
        if not search.get("finished"):
            found += " (search cut short by --max-seconds)"
        lines.append(f"{who}highest rate with >= {share * 100:g}% of requests within {slo}: "
                     f"{found}")
    a, b = report.searches.get("A"), report.searches.get("B")
    if a and b and a.get("max_rate") and b.get("max_rate"):
        lines.append(f"B/A: {b['max_rate'] / a['max_rate']:.2f}")
    return lines


def write_chart(report: BenchReport, path: str | Path) -> None:
    """A PNG of the run; see `chart`."""
    from gateway.loadtest.chart import write_png

    write_png(report, path)
