"""Open-loop arrival schedules: when each request of a rate level is due, in seconds from the
level's start.

- `constant`: one request every 1/R seconds.
- `poisson`: exponential gaps of mean 1/R (independent arrivals, what many users look like).
- `gamma`: gamma-distributed gaps of mean 1/R with shape B (`--burstiness`): B = 1 is Poisson,
  B < 1 burstier (clumps and lulls), B > 1 more even; the same definition as vLLM's
  `bench serve --burstiness`.

The first request is due at once. Schedules are seeded, so both servers of an A/B run see the
same arrival times at a level, and a rerun sees them again.
"""

from __future__ import annotations

import random

ARRIVALS = ("constant", "poisson", "gamma")


def schedule(rate: float, *, kind: str = "poisson", burstiness: float = 1.0,
             seed: int | str = 0, duration: float | None = None,
             count: int | None = None) -> list[float]:
    """Due times of the requests arriving within `duration` seconds, at most `count` of them."""
    if kind not in ARRIVALS:
        raise ValueError(f"unknown arrivals {kind!r}: expected one of {', '.join(ARRIVALS)}")
    if rate <= 0:
        raise ValueError(f"a request rate must be positive, got {rate}")
    if burstiness <= 0:
        raise ValueError(f"--burstiness must be positive, got {burstiness}")
    if duration is None and count is None:
        raise ValueError("a schedule needs a duration or a count")
    rng = random.Random(f"{seed}/arrivals/{rate!r}")
    times: list[float] = []
    due = 0.0
    while (count is None or len(times) < count) and (duration is None or due < duration):
        times.append(due)
        if kind == "constant":
            due = len(times) / rate  # no accumulated rounding
        elif kind == "poisson":
            due += rng.expovariate(rate)
        else:
            due += rng.gammavariate(burstiness, 1.0 / (rate * burstiness))
    return times
