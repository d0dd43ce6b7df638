"""Text formatting that mirrors what the `ollama` CLI prints.

Everything here is pure (no I/O), so the exact output shapes can be unit tested: tables in the
borderless, four-space-padded style of Ollama's tables, decimal byte sizes ("253 MB"), humanized
times ("2 days ago", "4 minutes from now", "Forever") and Go-style durations ("779.372284ms").
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

TABLE_PADDING = "    "
# Cells longer than this are word-wrapped onto extra lines, as Ollama's table writer does.
DEFAULT_COL_WIDTH = 30

_KB, _MB, _GB, _TB = 1000, 1000**2, 1000**3, 1000**4


# --------------------------------------------------------------------------- numbers and sizes


def human_bytes(n: int | float) -> str:
    """Decimal units like Ollama: 253113180 -> "253 MB", 1500 -> "1.5 KB", 12 -> "12 B"."""
    b = int(n)
    for limit, name in ((_TB, "TB"), (_GB, "GB"), (_MB, "MB"), (_KB, "KB")):
        if b >= limit:
            value, unit = b / limit, name
            break
    else:
        return f"{b} B"
    if value >= 10 or value == math.trunc(value):
        return f"{int(value)} {unit}"
    return f"{value:.1f} {unit}"


def human_number(n: int | float) -> str:
    """Parameter counts: 268098176 -> "268.10M", 8000000000 -> "8B", 1500 -> "2K"."""
    b = int(n)
    if b >= 1_000_000_000:
        value = b / 1_000_000_000
        return f"{value:.0f}B" if value == math.floor(value) else f"{value:.1f}B"
    if b >= 1_000_000:
        value = b / 1_000_000
        return f"{value:.0f}M" if value == math.floor(value) else f"{value:.2f}M"
    if b >= 1000:
        return f"{b / 1000:.0f}K"
    return str(b)


def go_g(x: float) -> str:
    """A float as Go's `%g` prints it (shortest digits): 1e-06, 1e+06, 2.68098176e+08, 32768.

    The API sends every number as JSON, which Go decodes to float64, so Ollama's `show -v` prints
    even integers this way; we match it.
    """
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    sign = "-" if x < 0 else ""
    digits_t, exponent = Decimal(repr(abs(float(x)))).normalize().as_tuple()[1:]
    digits = "".join(str(d) for d in digits_t)
    nd = len(digits)
    dp = nd + int(exponent)  # position of the decimal point relative to the digits
    # Go decides between %e and %f with precision 6 when printing shortest, unless the digits
    # already form an integer shorter than that.
    eprec = nd if (nd < 6 and nd >= dp) else 6
    exp = dp - 1
    if exp < -4 or exp >= eprec:
        mantissa = digits[0] + ("." + digits[1:] if nd > 1 else "")
        return f"{sign}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if dp <= 0:
        return f"{sign}0.{'0' * -dp}{digits}"
    if dp >= nd:
        return f"{sign}{digits}{'0' * (dp - nd)}"
    return f"{sign}{digits[:dp]}.{digits[dp:]}"


def go_value(v: Any) -> str:
    """A JSON value roughly as Go's `%v` prints it: lists as "[a b]", floats via %g."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return go_g(v)
    if isinstance(v, list | tuple):
        return "[" + " ".join(go_value(i) for i in v) + "]"
    if v is None:
        return "<nil>"
    return str(v)


# --------------------------------------------------------------------------- durations and times


def _fraction(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    width = len(str(unit)) - 1
    return f"{whole}.{frac:0{width}d}".rstrip("0")


def go_duration(ns: int | float) -> str:
    """Nanoseconds as Go's time.Duration prints: "779.372284ms", "1m2.5s", "0s"."""
    n = int(ns)
    if n == 0:
        return "0s"
    sign = "-" if n < 0 else ""
    u = abs(n)
    if u < 1000:
        return f"{sign}{u}ns"
    if u < 1_000_000:
        return f"{sign}{_fraction(u, 1000)}µs"
    if u < 1_000_000_000:
        return f"{sign}{_fraction(u, 1_000_000)}ms"
    secs, frac = divmod(u, 1_000_000_000)
    hours, rem = divmod(secs, 3600)
    minutes, seconds = divmod(rem, 60)
    out = _fraction(seconds * 1_000_000_000 + frac, 1_000_000_000) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{out}"
    if minutes:
        return f"{sign}{minutes}m{out}"
    return sign + out


def human_duration(seconds: float) -> str:
    """A span in words, the way Ollama (via Docker's go-units) words it."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600 / 24 / 365)} years"


_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|z|[+-]\d{2}:?\d{2})?$"
)


def parse_time(text: str | None) -> datetime | None:
    """RFC 3339 with up to nanoseconds (Go's format); None for empty or Go's zero time."""
    if not text:
        return None
    m = _RFC3339.match(text.strip())
    if not m:
        return None
    date, clock, frac, tz = m.groups()
    micro = (frac or "0")[:6].ljust(6, "0")  # datetime stops at microseconds
    if tz in (None, "Z", "z"):
        tz = "+00:00"
    elif ":" not in tz:
        tz = tz[:3] + ":" + tz[3:]
    try:
        parsed = datetime.fromisoformat(f"{date}T{clock}.{micro}{tz}")
    except ValueError:
        return None
    if parsed.year <= 1:  # Go's zero time.Time
        return None
    return parsed


def human_time(when: datetime | None, now: datetime | None = None, zero: str = "Never") -> str:
    """"2 days ago", "4 minutes from now", or "Forever" when more than 20 years ahead."""
    if when is None:
        return zero
    now = now or datetime.now(UTC)
    delta = (now - when).total_seconds()
    if delta / 3600 / 24 / 365 < -20:
        return "Forever"
    if delta < 0:
        return human_duration(-delta) + " from now"
    return human_duration(delta) + " ago"


def until_text(expires_at: str | None, now: datetime | None = None) -> str:
    """The UNTIL column of `ps`: already expired models are on their way out."""
    when = parse_time(expires_at)
    now = now or datetime.now(UTC)
    if when is not None and now > when:
        return "Stopping..."
    return human_time(when, now, zero="Never")


def processor_text(size: int, size_vram: int) -> str:
    """The PROCESSOR column of `ps`: where the model's memory lives."""
    if size_vram == 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size_vram > size or size <= 0:
        return "Unknown"
    cpu = round((size - size_vram) / size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def short_digest(digest: str | None) -> str:
    """The 12-hex ID column; tolerate a "sha256:" prefix."""
    d = (digest or "").removeprefix("sha256:").removeprefix("sha256-")
    return d[:12]


# --------------------------------------------------------------------------- tables


def _wrap_cell(text: str, width: int) -> list[str]:
    """Word-wrap a cell to `width`; single words longer than that stay whole."""
    lines: list[str] = []
    for raw in text.split("\n"):
        words = raw.split(" ")
        line = ""
        for word in words:
            if not line:
                line = word
            elif len(line) + 1 + len(word) <= width:
                line += " " + word
            else:
                lines.append(line)
                line = word
        lines.append(line)
    return lines


def render_table(
    rows: Iterable[Sequence[str]],
    header: Sequence[str] | None = None,
    col_width: int = DEFAULT_COL_WIDTH,
) -> str:
    """Ollama's borderless table: every cell left-aligned, padded to its column, then 4 spaces.

    Trailing spaces are kept on purpose; that is what `ollama list`/`show` print.
    """
    all_rows = [list(header)] if header is not None else []
    all_rows += [[str(c) for c in r] for r in rows]
    if not all_rows:
        return ""
    ncols = max(len(r) for r in all_rows)
    wrapped = [
        [_wrap_cell(r[i] if i < len(r) else "", col_width) for i in range(ncols)]
        for r in all_rows
    ]
    widths = [max((len(line) for r in wrapped for line in r[i]), default=0) for i in range(ncols)]
    out: list[str] = []
    for cells in wrapped:
        height = max(len(c) for c in cells)
        for k in range(height):
            out.append(
                "".join(
                    (c[k] if k < len(c) else "").ljust(widths[i]) + TABLE_PADDING
                    for i, c in enumerate(cells)
                )
            )
    return "\n".join(out) + "\n"


def list_table(models: Iterable[Mapping[str, Any]], now: datetime | None = None) -> str:
    """`corral list`: NAME, ID, SIZE, MODIFIED."""
    rows = [
        [
            str(m.get("name") or m.get("model") or ""),
            short_digest(m.get("digest")),
            human_bytes(m.get("size") or 0),
            human_time(parse_time(m.get("modified_at")), now),
        ]
        for m in models
    ]
    return render_table(rows, header=["NAME", "ID", "SIZE", "MODIFIED"])


def ps_table(models: Iterable[Mapping[str, Any]], now: datetime | None = None) -> str:
    """`corral ps`: NAME, ID, SIZE, PROCESSOR, CONTEXT, UNTIL."""
    rows = []
    for m in models:
        size = int(m.get("size") or 0)
        ctx = int(m.get("context_length") or 0)
        rows.append(
            [
                str(m.get("name") or m.get("model") or ""),
                short_digest(m.get("digest")),
                human_bytes(size),
                processor_text(size, int(m.get("size_vram") or 0)),
                str(ctx) if ctx > 0 else "",
                until_text(m.get("expires_at"), now),
            ]
        )
    return render_table(rows, header=["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"])


# --------------------------------------------------------------------------- metrics


def metrics_summary(m: Mapping[str, Any]) -> str:
    """The `--verbose` timing block; absent/zero fields are left out, as Ollama does."""
    lines: list[str] = []
    total = int(m.get("total_duration") or 0)
    load = int(m.get("load_duration") or 0)
    p_count = int(m.get("prompt_eval_count") or 0)
    p_dur = int(m.get("prompt_eval_duration") or 0)
    e_count = int(m.get("eval_count") or 0)
    e_dur = int(m.get("eval_duration") or 0)
    if total > 0:
        lines.append(f"total duration:       {go_duration(total)}")
    if load > 0:
        lines.append(f"load duration:        {go_duration(load)}")
    if p_count > 0:
        lines.append(f"prompt eval count:    {p_count} token(s)")
    if p_dur > 0:
        lines.append(f"prompt eval duration: {go_duration(p_dur)}")
        lines.append(f"prompt eval rate:     {p_count / (p_dur / 1e9):.2f} tokens/s")
    if e_count > 0:
        lines.append(f"eval count:           {e_count} token(s)")
    if e_dur > 0:
        lines.append(f"eval duration:        {go_duration(e_dur)}")
        lines.append(f"eval rate:            {e_count / (e_dur / 1e9):.2f} tokens/s")
    return "".join(line + "\n" for line in lines)
