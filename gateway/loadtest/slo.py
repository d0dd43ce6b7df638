"""Latency targets (SLOs), goodput, and the search for the highest rate that still meets them.

A request meets the SLOs when it succeeded and each of its values is within its limit:

- `ttft`: its time to first token;
- `itl`: its own mean inter-token latency, (last chunk - first chunk) / (chunks - 1), as vLLM's
  per-request TPOT goodput target (a request with a single chunk has no gaps and meets it);
- `e2e`: its end-to-end latency.

In an open loop, `ttft` and `e2e` count from the request's due time: a request that went out
late (see `levels`) had its user waiting from the moment it arrived, so that wait counts against
it, and a client that cannot keep up cannot make a rate look better than it is.

A level's SLO share is the requests meeting them over all the requests it sent (failed and cut
ones count as not meeting them); its goodput is the requests meeting them per second of the
level's measured phase.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from gateway.loadtest.client import RequestResult

SLO_KEYS = ("ttft", "itl", "e2e")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}
_DURATION = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|m)\s*")


def parse_duration(text: str) -> float:
    """`500ms`, `0.5s`, `2m` -> seconds; a unit is required."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise ValueError(f"expected a duration such as 500ms, 2s or 1m, got {text!r}")
    value = float(match.group(1)) * _UNITS[match.group(2)]
    if value <= 0:
        raise ValueError(f"a latency target must be positive, got {text!r}")
    return value


def parse_slo(text: str) -> dict[str, float]:
    """`ttft=500ms,itl=100ms,e2e=10s` (any subset) -> limits in seconds."""
    slo: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in SLO_KEYS:
            raise ValueError(f"expected KEY=DURATION with KEY one of {', '.join(SLO_KEYS)}, "
                             f"got {part.strip()!r}")
        if key in slo:
            raise ValueError(f"{key} is given twice")
        slo[key] = parse_duration(value)
    if not slo:
        raise ValueError("expected at least one target, such as ttft=500ms")
    return slo


def format_slo(slo: Mapping[str, float]) -> str:
    def duration(seconds: float) -> str:
        return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"
    return ", ".join(f"{key}<={duration(slo[key])}" for key in SLO_KEYS if key in slo)


def request_itl(result: RequestResult) -> float | None:
    """The request's mean gap between chunks after the first, seconds."""
    if len(result.chunks) < 2:
        return None
    return (result.chunks[-1] - result.chunks[0]) / (len(result.chunks) - 1)


def meets_slo(result: RequestResult, slo: Mapping[str, float]) -> bool:
    if not result.ok:
        return False
    wait = result.lateness  # open loop: time between its due time and its send
    ttft, e2e = result.ttft, result.e2e
    values = {"ttft": None if ttft is None else ttft + wait, "itl": request_itl(result),
              "e2e": None if e2e is None else e2e + wait}
    for key, limit in slo.items():
        value = values[key]
        if value is None:
            if key == "itl":
                continue  # a single chunk: no gaps to be too long
            return False  # no first token at all
        if value > limit:
            return False
    return True


class RateSearch:
    """`--find-max`: double the rate while the SLO share stays at or above `share`, then bisect
    between the highest rate that passed and the lowest that failed, until they are within
    `precision` of each other (relative), or `max_probes` levels have run.

    The caller runs the level `next_rate()` names and reports it with `record`; None means done.
    """

    def __init__(self, start: float, share: float, *, precision: float = 0.1,
                 max_probes: int = 16, floor: float = 0.01) -> None:
        if start <= 0:
            raise ValueError("the search needs a positive starting rate")
        self.start, self.share, self.precision = start, share, precision
        self.max_probes, self.floor = max_probes, floor
        self.passed: float | None = None  # highest rate that met the share
        self.failed: float | None = None  # lowest rate that did not
        self.probes: list[tuple[float, float]] = []  # (rate, share) in the order run
        self.stopped = False  # the caller gave up (out of time)

    def next_rate(self) -> float | None:
        if self.stopped or len(self.probes) >= self.max_probes:
            return None
        if self.failed is None:
            return self.start if self.passed is None else self.passed * 2
        low = self.passed or 0.0
        if self.failed - low <= self.precision * self.failed or self.failed <= self.floor:
            return None
        middle = float(f"{(low + self.failed) / 2:.3g}")
        return middle if low < middle < self.failed else None

    def record(self, rate: float, share: float) -> None:
        self.probes.append((rate, share))
        if share >= self.share:
            self.passed = rate if self.passed is None else max(self.passed, rate)
        else:
            self.failed = rate if self.failed is None else min(self.failed, rate)

    def to_dict(self) -> dict[str, object]:
        return {"max_rate": self.passed, "lowest_failing_rate": self.failed,
                "target_share": self.share,
                "probes": [{"rate": r, "slo_share": s} for r, s in self.probes],
                "finished": self.next_rate() is None and not self.stopped}
