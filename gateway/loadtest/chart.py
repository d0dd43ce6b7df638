"""The charts of a run (matplotlib, imported only when a chart is asked for).

Top row, against the load (concurrency, or the asked request rate): output tokens/s; requests/s
(completed, and for open loops the rate that went out and, with SLOs, goodput); latency p50 and
p99. Bottom row: requests in flight over the run's time, and with SLOs the share of requests
within them (with the --slo-share line and --find-max's result). With two servers, A is drawn
solid with circles and B dashed with squares.
"""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path
from typing import Any

from gateway.loadtest.report import BenchReport, LevelSummary, title, write_atomic

_STYLE = {"A": {"linestyle": "-", "marker": "o"}, "B": {"linestyle": "--", "marker": "s"}}
_SERVER_COLOR = {"A": "tab:blue", "B": "tab:orange"}


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("charts need matplotlib: pip install 'corral[bench]'") from None
    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot

    return pyplot


def _drawn(report: BenchReport, server: str) -> list[LevelSummary]:
    levels = [lv for lv in report.levels
              if lv.server == server and lv.status != "skipped" and lv.sent]
    return sorted(levels, key=lambda lv: lv.level.value)


def _line(ax: Any, levels: list[LevelSummary], values: list[float | None], server: str,
          label: str | None, color: str, *, alpha: float = 1.0) -> None:
    """One series; only server A's carries a legend label (B's differs by line style only)."""
    points = [(lv.level.value, v) for lv, v in zip(levels, values, strict=True) if v is not None]
    if not points:
        return
    xs, ys = zip(*points, strict=True)
    ax.plot(xs, ys, color=color, alpha=alpha, markersize=5, linewidth=1.6 if alpha == 1 else 1.0,
            label=label if server == "A" else None, **_STYLE[server])


def _legend(ax: Any, compare: bool) -> None:
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    if compare:
        for server in ("A", "B"):
            handles.append(Line2D([], [], color="gray", **_STYLE[server]))
            labels.append(f"server {server}")
    if handles:
        ax.legend(handles, labels, fontsize="x-small")


def _ticks(xs: list[float], log: bool) -> list[float]:
    """The levels to label, leaving out any too close to the previous one to read (a
    --find-max search bisects down to levels a few percent apart)."""
    ticks: list[float] = []
    span = (math.log(max(xs)) - math.log(min(xs))) if log else max(xs) - min(xs)
    for x in sorted(set(xs)):
        if ticks:
            gap = (math.log(x) - math.log(ticks[-1])) if log else x - ticks[-1]
            if gap < span / 12:
                continue
        ticks.append(x)
    return ticks


def _load_axis(ax: Any, xs: list[float], mode: str) -> None:
    from matplotlib.ticker import NullLocator

    ax.set_xlabel("concurrency" if mode == "concurrency" else "request rate asked (req/s)")
    log = bool(xs) and max(xs) / min(xs) >= 4
    if log:
        ax.set_xscale("log", base=2)
    if xs:
        ticks = _ticks(xs, log)
        ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
    ax.grid(True, alpha=0.3)


def figure(report: BenchReport) -> Any:
    """The whole figure (the caller saves and closes it)."""
    plt = _pyplot()
    servers = report.servers or ["A"]
    compare = len(servers) > 1
    slo = bool(report.meta.get("slo"))
    mode = report.meta.get("mode") or ("rate" if any(lv.rate for lv in report.levels)
                                       else "concurrency")
    fig = plt.figure(figsize=(16, 9), dpi=100, layout="constrained")
    grid = fig.add_gridspec(2, 3)
    tok, req, lat = (fig.add_subplot(grid[0, i]) for i in range(3))
    flight = fig.add_subplot(grid[1, :2] if slo else grid[1, :])
    share_ax = fig.add_subplot(grid[1, 2]) if slo else None
    xs: list[float] = []
    for server in servers:
        levels = _drawn(report, server)
        xs += [lv.level.value for lv in levels]
        _line(tok, levels, [lv.output_tokens_per_s for lv in levels], server, "output tok/s",
              "tab:blue")
        _line(req, levels, [lv.requests_per_s for lv in levels], server, "completed req/s",
              "tab:orange")
        if mode == "rate":
            _line(req, levels, [lv.achieved_rate for lv in levels], server, "sent req/s",
                  "tab:gray")
        if slo:
            _line(req, levels, [lv.goodput_per_s for lv in levels], server, "goodput req/s",
                  "tab:green")
            assert share_ax is not None
            _line(share_ax, levels, [None if lv.slo_share is None else lv.slo_share * 100
                                     for lv in levels], server, "within SLOs", "tab:green")
        for name, key, color in (("TTFT", "ttft_ms", "tab:green"), ("ITL", "itl_ms", "tab:red"),
                                 ("E2E", "e2e_ms", "tab:purple")):
            _line(lat, levels, [getattr(lv, key)["p50"] for lv in levels], server,
                  f"{name} p50", color)
            _line(lat, levels, [getattr(lv, key)["p99"] for lv in levels], server, None,
                  color, alpha=0.45)
        for lv in levels:
            if not lv.in_flight:
                continue
            times, counts = zip(*lv.in_flight, strict=True)
            flight.step(times, counts, where="post", color=_SERVER_COLOR[server], linewidth=1.1,
                        label=server if compare and lv is levels[0] else None)
            flight.annotate(f"{lv.level.label}" + (f" {server}" if compare else ""),
                            (times[0], max(counts)), fontsize="x-small",
                            textcoords="offset points", xytext=(2, 3))
    if mode == "rate" and xs:
        ticks = sorted(set(xs))
        req.plot(ticks, ticks, ":", color="black", linewidth=0.8, label="asked")
    tok.set_title("throughput")
    tok.set_ylabel("output tokens/s")
    req.set_title("requests/s")
    lat.set_title("latency p50 (faint: p99)")
    lat.set_ylabel("ms")
    if any(line.get_ydata().size for line in lat.get_lines()):
        lat.set_yscale("log")
    for ax in (tok, req, lat, share_ax):
        if ax is None:
            continue
        _load_axis(ax, xs, mode)
        if ax is not lat:
            ax.set_ylim(bottom=0)
    flight.set_title("requests in flight")
    flight.set_xlabel("seconds from the start of the run")
    flight.set_ylim(bottom=0)
    flight.grid(True, alpha=0.3)
    if compare:
        flight.legend(fontsize="x-small")
    if share_ax is not None:
        target = float(report.meta.get("slo_share") or 0.9) * 100
        share_ax.axhline(target, color="black", linestyle=":", linewidth=0.8,
                         label=f"--slo-share {target:g}%")
        for server, search in report.searches.items():
            if search.get("max_rate"):
                share_ax.axvline(search["max_rate"], color=_SERVER_COLOR.get(server, "gray"),
                                 linewidth=0.8, label=f"max rate ({server})")
        share_ax.set_ylim(0, 105)
        share_ax.set_ylabel("% of requests sent")
        share_ax.set_title("within the SLOs")
    for ax in (tok, req, lat, share_ax):
        if ax is not None:
            _legend(ax, compare)
    heading = title(report)
    if compare:
        heading += " | A solid, B dashed"
    fig.suptitle(textwrap.fill(heading, 170), fontsize="medium")
    return fig


def render(report: BenchReport, fmt: str) -> bytes:
    """The figure as PNG or SVG bytes."""
    plt = _pyplot()
    fig = figure(report)
    try:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt)
        return buffer.getvalue()
    finally:
        plt.close(fig)


def write_png(report: BenchReport, path: str | Path) -> None:
    write_atomic(path, render(report, "png"))


def svg_element(report: BenchReport) -> str:
    """The figure as an inline <svg> element (its XML prolog and doctype dropped)."""
    text = render(report, "svg").decode("utf-8")
    return text[text.index("<svg"):]
