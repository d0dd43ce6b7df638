"""`--html FILE`: one self-contained page to open and share: the settings, the results table
(the same cells as the terminal's), --find-max's outcome, the charts as inline SVG, and the
definitions. No script, no external stylesheet, font or image."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape
from pathlib import Path
from typing import Any

from gateway.loadtest.chart import svg_element
from gateway.loadtest.report import (
    DEFINITIONS,
    BenchReport,
    columns,
    search_lines,
    table_rows,
    title,
    write_atomic,
)
from gateway.loadtest.slo import format_slo

_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem 2rem;
       color: #1d1d1f; }
h1 { font-size: 1.4rem; margin-bottom: .2rem; }
h2 { font-size: 1.1rem; margin-top: 1.6rem; border-bottom: 1px solid #ddd; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: .25rem .5rem; font-size: 13px; border-bottom: 1px solid #e4e4e4;
         white-space: nowrap; }
table.results td { text-align: right; }
table.results th { background: #f3f4f6; position: sticky; top: 0; }
table.results tr.ratio td { color: #555; font-style: italic; background: #fafafa; }
table.results tr.skipped td { color: #999; }
table.results tr.skipped td[colspan] { text-align: left; font-style: italic; }
table.kv th { text-align: left; font-weight: 600; padding-right: 1.2rem; }
.wide { overflow-x: auto; }
figure { margin: 0; }
figure svg { max-width: 100%; height: auto; }
dt { font-weight: 600; }
dd { margin: 0 0 .4rem 1.2rem; color: #333; }
.warn { color: #a33; }
"""


def _kv_table(pairs: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>"
                   for k, v in pairs if v not in (None, "", []))
    return f'<table class="kv">{rows}</table>'


def _settings(meta: Mapping[str, Any]) -> list[tuple[str, Any]]:
    levels = meta.get("concurrency") or meta.get("rates")
    pairs: list[tuple[str, Any]] = [
        ("mode", "open loop (request rates)" if meta.get("mode") == "rate"
         else "closed loop (concurrency)"),
        ("levels", ", ".join(f"{v:g}" for v in levels) if levels else None),
        ("arrivals", meta.get("arrivals")),
        ("burstiness", meta.get("burstiness")),
        ("workload", meta.get("workload_description")),
        ("requests per level", _join(meta.get("requests_per_level"))),
        ("seconds per level", _join(meta.get("duration_per_level"))),
        ("warm-up requests per level", meta.get("warmup_per_level")),
        ("SLOs", format_slo(meta["slo"]) if meta.get("slo") else None),
        ("SLO share", f"{meta['slo_share'] * 100:g}%" if meta.get("slo") else None),
        ("--find-max", "yes" if meta.get("find_max") else None),
        ("order", meta.get("order")),
        ("max in flight", meta.get("max_in_flight")),
        ("request timeout (s)", meta.get("timeout")),
        ("seed", meta.get("seed")),
        ("started", meta.get("started")),
        ("elapsed (s)", meta.get("elapsed_s")),
        ("time budget (s)", meta.get("max_seconds")),
    ]
    if meta.get("out_of_time"):
        pairs.append(("note", "the time budget ran out: some levels are cut or skipped"))
    return pairs


def _join(values: Iterable[Any] | None) -> str | None:
    if not values:
        return None
    shown = ["-" if v is None else f"{v:g}" for v in values]
    return None if all(s == "-" for s in shown) else ", ".join(shown)


def _results_table(report: BenchReport) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns(report))
    body = []
    compare = len(report.servers) > 1
    for row in table_rows(report):
        css = ' class="ratio"' if compare and row[1] == "B/A" else ""
        cells = [f"<td>{escape(cell)}</td>" for cell in row]
        note = next((i for i, cell in enumerate(row) if cell.startswith("skipped")), None)
        if note is not None:  # one cell across the rest of the row
            css = ' class="skipped"'
            cells = cells[:note] + [f'<td colspan="{len(row) - note}">{escape(row[note])}</td>']
        body.append(f"<tr{css}>{''.join(cells)}</tr>")
    return (f'<div class="wide"><table class="results" id="results"><thead><tr>{head}</tr>'
            f"</thead><tbody>{''.join(body)}</tbody></table></div>")


def render_html(report: BenchReport) -> str:
    meta = report.meta
    servers = meta.get("servers") or {}
    server_rows = "".join(
        f"<tr><th>{escape(name)}</th><td>{escape(str(s.get('url')))}</td>"
        f"<td>{escape(str(s.get('api')))} {escape(str(s.get('endpoint')))}</td>"
        f"<td>{escape(str(s.get('model')))}</td></tr>" for name, s in servers.items())
    searches = "".join(f"<p><strong>{escape(line)}</strong></p>" for line in search_lines(report))
    errors = report.first_errors()
    error_html = ("<h2>Errors</h2><ul>" + "".join(f'<li class="warn">{escape(e)}</li>'
                                                  for e in errors) + "</ul>") if errors else ""
    definitions = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>"
                          for k, v in DEFINITIONS.items())
    name = " vs ".join(str(s.get("model")) for s in servers.values()) or "load test"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>corral bench: {escape(name)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>corral bench</h1>
<p class="sub">{escape(title(report))}</p>
<h2>Servers</h2>
<table class="kv"><tr><th></th><th>URL</th><th>API</th><th>model</th></tr>{server_rows}</table>
<h2>Settings</h2>
{_kv_table(_settings(meta))}
<h2>Results</h2>
{_results_table(report)}
{searches}
{error_html}
<h2>Charts</h2>
<figure id="charts">{svg_element(report)}</figure>
<h2>Definitions</h2>
<dl>{definitions}</dl>
</body>
</html>
"""


def write_html(report: BenchReport, path: str | Path) -> None:
    write_atomic(path, render_html(report).encode("utf-8"))
