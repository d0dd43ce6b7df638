"""GBNF for the decimal integers of a range, as JSON writes them (no leading zeros, no "-0"):
what a JSON schema's minimum/maximum on an integer allow.

The numbers of one length between two bounds are split by their first digit: the lowest first
digit followed by the range from the lower bound's tail up to all nines, the first digits in
between followed by any digits, the highest first digit followed by the range from all zeros up
to the upper bound's tail. Each length from the lower bound's to the upper bound's gets its own
alternatives; without an upper bound every longer number is allowed.
"""

from __future__ import annotations


def integer_range(low: int | None, high: int | None) -> str:
    """A GBNF expression for the integers n with low <= n <= high (None: no bound)."""
    if low is not None and high is not None and low > high:
        raise ValueError(f"no integer lies between {low} and {high}")
    alternatives: list[str] = []
    if low is None or low < 0:  # the negatives, as "-" and their magnitude
        least = 1 if high is None or high >= -1 else -high
        most = None if low is None else -low
        if most is None or least <= most:
            alternatives.append('"-" ' + _group(_naturals(least, most)))
    if high is None or high >= 0:
        alternatives.extend(_naturals(max(low, 0) if low is not None else 0, high))
    return _group(alternatives)


def _naturals(low: int, high: int | None) -> list[str]:
    """Alternatives for low <= n <= high (n >= 0; high None: unbounded)."""
    shortest = len(str(low))
    if high is None:
        longer = "[1-9] " + "[0-9] " * shortest + "[0-9]*"
        return [*_same_length(str(low), "9" * shortest), longer]
    longest = len(str(high))
    out: list[str] = []
    for length in range(shortest, longest + 1):
        first = low if length == shortest else 10 ** (length - 1)
        last = high if length == longest else 10 ** length - 1
        out.extend(_same_length(str(first), str(last)))
    return out


def _same_length(low: str, high: str) -> list[str]:
    """Alternatives for the numbers of len(low) == len(high) digits from low to high."""
    if len(low) == 1:
        return [_digits(int(low), int(high))]
    if low[0] == high[0]:
        return [f'"{low[0]}" ' + _group(_same_length(low[1:], high[1:]))]
    rest = len(low) - 1
    out: list[str] = []
    first, last = int(low[0]), int(high[0])
    if low[1:] != "0" * rest:  # the lowest first digit does not take every tail
        out.append(f'"{low[0]}" ' + _group(_same_length(low[1:], "9" * rest)))
        first += 1
    partial_top = high[1:] != "9" * rest
    if partial_top:
        last -= 1
    if first <= last:
        out.append(_digits(first, last) + " [0-9]" * rest)
    if partial_top:
        out.append(f'"{high[0]}" ' + _group(_same_length("0" * rest, high[1:])))
    return out


def _digits(first: int, last: int) -> str:
    return f'"{first}"' if first == last else f"[{first}-{last}]"


def _group(alternatives: list[str]) -> str:
    return alternatives[0] if len(alternatives) == 1 and " " not in alternatives[0] \
        else "(" + " | ".join(alternatives) + ")"
