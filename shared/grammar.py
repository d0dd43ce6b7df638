"""Constrained output as llama.cpp GBNF grammars: Ollama's `format` ("json" or a JSON schema),
and forced tool calls.

The conversion is llama-cpp-python's port of llama.cpp's schema converter; the grammar then runs
inside the sampler chain in C, so every sampled token keeps the output valid.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from llama_cpp import llama_grammar

from shared.errors import BadRequest
from shared.intrange import integer_range
from shared.pattern import PatternError, pattern_rule


def grammar_for(format_: Any) -> str | None:
    """GBNF text for a request's `format`, or None when there is no constraint."""
    if format_ in (None, "", {}):
        return None
    if format_ == "json":
        return llama_grammar.JSON_GBNF
    if isinstance(format_, str):
        try:  # a schema may arrive as a JSON string
            format_ = json.loads(format_)
        except json.JSONDecodeError:
            raise BadRequest(f'invalid format: expected "json" or a JSON schema, got {format_!r}'
                             ) from None
    if not isinstance(format_, dict):
        raise BadRequest('invalid format: expected "json" or a JSON schema object')
    return schema_grammar(format_, "format")


def schema_grammar(schema: dict[str, Any], what: str) -> str:
    """GBNF for a JSON schema; `what` names the schema's origin in the error. A `format`'s
    constraints hold or it is refused (400); a tool's parameters (what == "tools") only shape
    forced calls, so keywords the grammar cannot hold are left out there instead."""
    ranges: dict[str, str] = {}
    schema = _prepare(schema, what, ranges, strict=what != "tools")
    try:
        grammar = llama_grammar.json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises plain exceptions on schemas it cannot map
        raise BadRequest(f"invalid JSON schema in {what}: {exc}") from None
    for marker, rule in ranges.items():  # each integer range where its stand-in const went
        grammar = grammar.replace(_literal(json.dumps(marker)), rule)
    # The Python converter lets raw control characters into strings, which JSON forbids
    # (llama.cpp's own converter excludes them); exclude them here too.
    return grammar.replace(_LOOSE_CHAR, _STRICT_CHAR)


# Keywords whose subschemas are schemas: {name: schema}, [schema, ...] or a schema.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMAS = ("items", "additionalProperties", "additionalItems", "contains", "not", "if", "then",
            "else", "propertyNames", "unevaluatedProperties", "unevaluatedItems")
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
# The converter maps integers' bounds and strings' patterns (with _prepare's help), strings'
# minLength/maxLength and arrays' minItems/maxItems; these it would drop without a word.
_UNHELD = {"multipleOf": "multiples of a number",
           "uniqueItems": "arrays without repeated items"}


def _prepare(schema: Any, what: str, ranges: dict[str, str], *, strict: bool) -> Any:
    """The schema as the converter should see it: an integer with bounds or a string with a
    pattern becomes a const stand-in (the converter ignores bounds, and its own regex
    translation lets characters into a JSON string that JSON must escape); `ranges` maps the
    stand-in to its GBNF. A keyword no grammar here holds is refused (strict) or left out."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for keyword, meaning in _UNHELD.items():
        if keyword in out and not (keyword == "uniqueItems" and out[keyword] is False):
            if strict:
                raise BadRequest(f'unsupported JSON schema keyword "{keyword}" in {what}: '
                                 f"constrained output cannot hold {meaning}")
            del out[keyword]
    types = out.get("type")
    if "pattern" in out:
        rule = _pattern(out, what, strict=strict)
        del out["pattern"]
        if rule is not None:
            marker = f"corral-pattern-{len(ranges)}-{id(ranges):x}"
            ranges[marker] = rule
            return {"const": marker}
    if any(b in out for b in _BOUNDS) and "enum" not in out and "const" not in out:
        if types == "integer":
            marker = f"corral-integer-range-{len(ranges)}-{id(ranges):x}"
            ranges[marker] = _integer_rule(out, what)
            return {"const": marker}
        if strict:
            raise BadRequest(f'unsupported JSON schema keyword "{_first_bound(out)}" in {what} '
                             f'for type {json.dumps(types)}: bounds are supported on "integer" '
                             "only")
        out = {k: v for k, v in out.items() if k not in _BOUNDS}
    for keyword in _SCHEMA_MAPS:
        if isinstance(out.get(keyword), dict):
            out[keyword] = {name: _prepare(sub, what, ranges, strict=strict)
                            for name, sub in out[keyword].items()}
    for keyword in _SCHEMA_LISTS:
        if isinstance(out.get(keyword), list):
            out[keyword] = [_prepare(sub, what, ranges, strict=strict) for sub in out[keyword]]
    for keyword in _SCHEMAS:
        if isinstance(out.get(keyword), list):  # items as a tuple (draft 4)
            out[keyword] = [_prepare(sub, what, ranges, strict=strict) for sub in out[keyword]]
        elif keyword in out:
            out[keyword] = _prepare(out[keyword], what, ranges, strict=strict)
    return out


def _pattern(schema: dict[str, Any], what: str, *, strict: bool) -> str | None:
    """The GBNF of a string schema's pattern (quotes included), None when there is nothing to
    hold (its values are listed) or, lenient, when it cannot be held."""
    if "enum" in schema or "const" in schema or schema.get("type") not in (None, "string"):
        return None
    try:
        if not isinstance(schema["pattern"], str):
            raise PatternError("it must be a string")
        if "minLength" in schema or "maxLength" in schema or "format" in schema:
            raise PatternError("together with minLength, maxLength or format it is not "
                               "supported")
        return pattern_rule(schema["pattern"])
    except PatternError as exc:
        if strict:
            raise BadRequest(f'unsupported JSON schema keyword "pattern" in {what} '
                             f"({schema['pattern']!r}): {exc}") from None
        return None


def _first_bound(schema: dict[str, Any]) -> str:
    return next(b for b in _BOUNDS if b in schema)


def _integer_rule(schema: dict[str, Any], what: str) -> str:
    """GBNF for an integer schema's minimum/maximum/exclusiveMinimum/exclusiveMaximum (as
    numbers, or draft 4's booleans beside minimum/maximum)."""
    for keyword in _BOUNDS:
        value = schema.get(keyword)
        if value is None:
            continue
        kinds = (int, float, bool) if keyword.startswith("exclusive") else (int, float)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise BadRequest(f'invalid JSON schema in {what}: "{keyword}" must be a number')
    low = high = None
    minimum, maximum = schema.get("minimum"), schema.get("maximum")
    above, below = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    lows, highs = [], []
    if minimum is not None:
        lows.append(math.floor(minimum) + 1 if above is True else math.ceil(minimum))
    if maximum is not None:
        highs.append(math.ceil(maximum) - 1 if below is True else math.floor(maximum))
    if not isinstance(above, bool) and above is not None:
        lows.append(math.floor(above) + 1)
    if not isinstance(below, bool) and below is not None:
        highs.append(math.ceil(below) - 1)
    low, high = max(lows, default=None), min(highs, default=None)
    if low is not None and high is not None and low > high:
        raise BadRequest(f"invalid JSON schema in {what}: no integer lies within its bounds "
                         f"({', '.join(f'{k} {schema[k]}' for k in _BOUNDS if k in schema)})")
    return integer_range(low, high)


MAX_FORCED_CALLS = 4  # parallel calls a forced reply may hold; bounds a model that loops


def tool_call_grammar(calls: list[dict[str, Any]], *, opening: str, closing: str,
                      parallel: bool) -> str:
    """GBNF for a reply made only of tool calls, in the model's own call format.

    `calls` are JSON schemas, one per allowed function, each for the object the model writes
    (e.g. `{"name": <const>, "arguments": <the tool's parameters>}`); `opening` and `closing` are
    the text the model's template puts around a call (e.g. `<tool_call>`), possibly empty.
    """
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    rules = re.sub(r"^root ::=", "tool-call ::=", schema_grammar(schema, "tools"), flags=re.M)
    one = " ".join(part for part in (_literal(opening), "tool-ws", "tool-call", "tool-ws",
                                     _literal(closing)) if part)
    more = f" (tool-ws {one}){{0,{MAX_FORCED_CALLS - 1}}}" if parallel else ""
    return f'root ::= {one}{more}\ntool-ws ::= [ \\t\\n]{{0,2}}\n{rules}'


def _literal(text: str) -> str:
    if not text:
        return ""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped + '"'


_LOOSE_CHAR = r'char ::= [^"\\] |'
_STRICT_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'
