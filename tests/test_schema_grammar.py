"""JSON-schema constraints in grammars (issue 24): integers' minimum/maximum (and the exclusive
ones), strings' minLength/maxLength and pattern, and arrays' minItems/maxItems hold in what the
model writes; what no grammar here holds (multipleOf, uniqueItems, bounds on a "number", a
pattern's lookarounds, backreferences, characters JSON must escape) is a 400 that names the
keyword, never silently ignored."""

from __future__ import annotations

import json
import random
import re

import httpx
import jsonschema
import pytest

from shared import protocol as p
from shared.errors import BadRequest
from shared.grammar import grammar_for, schema_grammar
from shared.intrange import integer_range
from tests.conftest import LiveServer
from tests.test_engine import engine, run  # noqa: F401 - the module's engine fixture

MODEL = "gemma3:270m"


def _matcher(low: int | None, high: int | None) -> re.Pattern[str]:
    """The range's GBNF as a regular expression (it uses only quoted digits and "-", digit
    classes, groups, alternatives and *)."""
    return re.compile(integer_range(low, high).replace('"', "").replace(" ", ""))


@pytest.mark.parametrize("low, high", [
    (None, None), (0, None), (None, 0), (-5, 5), (10, 20), (1000, 1010), (7, 7), (-120, -7),
    (None, -15), (15, None), (-15, None), (0, 0), (99, 100), (1, 999), (123, 4567),
    (-4567, -123)])
def test_an_integer_range_is_exactly_its_numbers(low: int | None, high: int | None) -> None:
    matches = _matcher(low, high)
    for n in range(-6000, 6000):
        inside = (low is None or n >= low) and (high is None or n <= high)
        assert bool(matches.fullmatch(str(n))) == inside, n
    for text in ("-0", "00", "01", "-01", "", "-", "1.5"):  # not how JSON writes an integer
        assert not matches.fullmatch(text), text


def test_random_integer_ranges() -> None:
    rng = random.Random(24)
    for _ in range(200):
        low = rng.randint(-10**6, 10**6)
        high = low + rng.randint(0, 10**5)
        matches = _matcher(low, high)
        probes = [*range(low - 30, low + 30), *range(high - 30, high + 30),
                  *(rng.randint(-2 * 10**6, 2 * 10**6) for _ in range(100))]
        for n in probes:
            assert bool(matches.fullmatch(str(n))) == (low <= n <= high), (low, high, n)


@pytest.mark.parametrize("schema, keyword", [
    ({"type": "string", "pattern": "^(?=a)[a-z]+$"}, "pattern"),
    ({"type": "object", "properties": {"id": {"type": "string", "pattern": r"^(a)\1$"}}},
     "pattern"),
    ({"type": "string", "pattern": r"\bword"}, "pattern"),
    ({"type": "string", "pattern": "^a+?$"}, "pattern"),
    ({"type": "string", "pattern": '^say "hi"$'}, "pattern"),  # JSON writes it as \"
    ({"type": "string", "pattern": "^[a-z]+$", "maxLength": 4}, "pattern"),
    ({"type": "number", "minimum": 0}, "minimum"),
    ({"type": "number", "exclusiveMaximum": 1.5}, "exclusiveMaximum"),
    ({"type": "integer", "multipleOf": 5}, "multipleOf"),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
])
def test_a_keyword_no_grammar_holds_is_refused_by_name(schema: dict, keyword: str) -> None:
    with pytest.raises(BadRequest, match=f'"{keyword}"'):
        grammar_for(schema)
    # A tool's parameters only shape a forced call: there the keyword is left out.
    assert "root ::=" in schema_grammar(schema, "tools")


def _as_regex(rule: str) -> str:
    """A GBNF rule of quoted literals, classes, groups, | and quantifiers as a Python regex:
    the spaces between items go, classes stay as they are, literals are escaped."""
    def one(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == " ":
            return ""
        if text.startswith('"'):
            return re.escape(text[1:-1].replace('\\"', '"').replace("\\\\", "\\"))
        return text

    return re.sub(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]| ', one, rule)


@pytest.mark.parametrize("pattern, inside, outside", [
    ("^[0-9]{5}$", ["12345"], ["1234", "123456", "1234a"]),
    (r"^[A-Z]{2}-\d+$", ["AB-1", "ZZ-0042"], ["A-1", "AB-", "ab-1"]),
    ("^(red|green)(?:-[a-z]*)?$", ["red", "green-ish"], ["blue", "redgreen", "red-1"]),
    ("ab+c", ["abc", "xxabbbcyy"], ["ac", "abx"]),
    ("^[^,]+$", ["a b", "x"], ["a,b", ""]),
    (r"^\S\s\W$", ["a !"], ["a\t!", "a a"]),
])
def test_a_pattern_allows_only_its_matches(pattern: str, inside: list[str],
                                           outside: list[str]) -> None:
    """The grammar's strings, read back as a regular expression (its GBNF here is made of
    quoted characters, classes, groups, alternatives and quantifiers), match the pattern."""
    rule = grammar_for({"type": "string", "pattern": pattern}).split("root ::= ", 1)[1]
    regex = _as_regex(rule.split("\n", 1)[0])
    for text in inside:
        assert re.fullmatch(regex, json.dumps(text)), (text, regex)
        assert re.search(pattern, text)
    for text in outside:
        assert not re.fullmatch(regex, json.dumps(text)), (text, regex)


def test_bounds_that_no_integer_meets_are_refused() -> None:
    with pytest.raises(BadRequest, match="no integer lies within its bounds"):
        grammar_for({"type": "integer", "minimum": 5, "exclusiveMaximum": 5})
    with pytest.raises(BadRequest, match='"maximum" must be a number'):
        grammar_for({"type": "integer", "maximum": "10"})


def test_exclusive_and_fractional_bounds() -> None:
    def allowed(schema: dict) -> list[int]:
        rule = grammar_for(schema).split("root ::= ", 1)[1].split("\n", 1)[0]
        matches = re.compile(rule.replace('"', "").replace(" ", ""))
        return [n for n in range(-20, 21) if matches.fullmatch(str(n))]

    assert allowed({"type": "integer", "exclusiveMinimum": 3, "exclusiveMaximum": 7}) == \
        [4, 5, 6]
    assert allowed({"type": "integer", "minimum": 3, "exclusiveMinimum": True, "maximum": 7,
                    "exclusiveMaximum": True}) == [4, 5, 6]  # draft 4's booleans
    assert allowed({"type": "integer", "minimum": -2.5, "maximum": 1.5}) == [-2, -1, 0, 1]


BOUNDED = {
    "type": "object",
    "properties": {
        "year": {"type": "integer", "minimum": 1000, "maximum": 1010},
        "offset": {"type": "integer", "exclusiveMinimum": -4, "exclusiveMaximum": 4},
        "code": {"type": "string", "minLength": 3, "maxLength": 5},
        "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
        "tag": {"type": "string", "pattern": r"^[A-Z]{2}-\d{1,3}(/[a-z]+)?$"},
        "scores": {"type": "array", "items": {"type": "integer", "minimum": 90, "maximum": 100},
                   "minItems": 2, "maxItems": 3},
    },
    "required": ["year", "offset", "code", "zip", "tag", "scores"],
}


def test_sampled_output_keeps_every_bound(engine) -> None:  # noqa: ANN001, F811
    """Sampled hot, the tiny model writes numbers anywhere and strings and arrays of any
    length unless the grammar holds it: every reply must validate."""
    requests = [p.Generate(9000 + seed, prompt="A record as JSON:", format=BOUNDED,
                           options={"temperature": 1.5, "seed": seed, "num_predict": 120})
                for seed in range(4)]
    for text, done in run(engine, *requests).values():
        assert isinstance(done, p.Done) and done.done_reason == "stop", text
        jsonschema.validate(json.loads(text), BOUNDED)


@pytest.mark.e2e
def test_a_live_server_answers_an_unheld_keyword_with_400(corral_server: LiveServer) -> None:
    schema = {"type": "object", "properties": {"zip": {"type": "string",
                                                       "pattern": "^(?![0-9]{5}$)"}}}
    reply = httpx.post(corral_server.url + "/api/generate", timeout=60, json={
        "model": MODEL, "prompt": "x", "stream": False, "format": schema})
    assert reply.status_code == 400, reply.text
    assert '"pattern"' in reply.json()["error"]
