"""Go's fmt verbs %v and %#v for the JSON values a params layer holds.

Ollama decodes params into map[string]any, so every number is a float64 and prints the Go way:
64 -> "64", 1.0 -> "1", 1e6 -> "1e+06", 0.95 -> "0.95".
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any


def go_float(value: float) -> str:
    """strconv.FormatFloat(v, 'g', -1, 64): shortest round-trip digits, exponent form when the
    decimal exponent is < -4 or >= 6 ("1e+06", "1e-05"), plain otherwise ("123456", "0.0001")."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    # repr() gives the shortest round-trip digits, as Go's shortest mode does.
    sign, digit_tuple, exponent = Decimal(repr(float(value))).as_tuple()
    all_digits = "".join(map(str, digit_tuple))
    digits = all_digits.rstrip("0") or "0"
    dp = len(all_digits) + int(exponent)  # value = 0.<digits> * 10**dp
    exp = dp - 1
    prefix = "-" if sign else ""
    if exp < -4 or exp >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if dp <= 0:
        return f"{prefix}0.{'0' * -dp}{digits}"
    if dp >= len(digits):
        return f"{prefix}{digits}{'0' * (dp - len(digits))}"
    return f"{prefix}{digits[:dp]}.{digits[dp:]}"


_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}


def go_quote(text: str) -> str:
    """strconv.Quote: double quotes, Go escapes, printable Unicode left as is."""
    out = ['"']
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def go_v(value: Any) -> str:
    """%v of a decoded JSON scalar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return go_float(float(value))
    if value is None:
        return "<nil>"
    return str(value)


def go_sharp_v(value: Any) -> str:
    """%#v of a decoded JSON scalar: like %v but strings are quoted."""
    if isinstance(value, str):
        return go_quote(value)
    return go_v(value)
