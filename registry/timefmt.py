"""Timestamps the way Go's encoding/json writes time.Time (RFC3339Nano, UTC).

Go prints up to nine fractional digits and trims trailing zeros (and the dot when nothing is left),
e.g. "2026-11-24T21:15:55.870613328Z", "2026-11-24T21:15:55.5Z", "2026-11-24T21:15:55Z".
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

_NS_PER_S = 1_000_000_000
_last_second: list[tuple[int, str]] = [(-1, "")]  # the latest second formatted (a token's
# timestamp is formatted per streamed chunk: most fall in the second before)


def rfc3339_nano(value: int | datetime | None = None) -> str:
    """Format nanoseconds since the epoch (int), an aware/naive-UTC datetime, or now (None)."""
    if value is None:
        ns = time.time_ns()
    elif isinstance(value, datetime):
        ns = datetime_to_ns(value)
    else:
        ns = int(value)
    seconds, frac = divmod(ns, _NS_PER_S)
    cached, stamp = _last_second[0]
    if cached != seconds:
        stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _last_second[0] = (seconds, stamp)
    if frac:
        stamp += "." + f"{frac:09d}".rstrip("0")
    return stamp + "Z"


def datetime_to_ns(value: datetime) -> int:
    """Nanoseconds since the epoch; a naive datetime is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * _NS_PER_S + delta.microseconds * 1_000


def ns_to_datetime(ns: int) -> datetime:
    """UTC datetime (microsecond precision) from nanoseconds since the epoch."""
    seconds, frac = divmod(ns, _NS_PER_S)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=frac // 1_000)
