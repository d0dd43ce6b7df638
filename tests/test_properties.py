"""Property tests: the Modelfile parser, model names and the Go template engine take any input and
either succeed or raise their documented error, in bounded time and memory; hostile templates
(deep nesting, huge ranges, runaway output, recursion) are refused, not run."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry import gotemplate, modelfile
from registry.gotemplate import TemplateError
from registry.modelfile import ModelfileError
from registry.names import ModelName
from shared.errors import BadRequest

FUZZ = settings(max_examples=300, deadline=2000,
                suppress_health_check=[HealthCheck.too_slow])


def bounded(fn: Callable[[], Any], seconds: float = 5.0, megabytes: float = 64.0) -> Any:
    """Run fn twice, timed and then with tracemalloc (which slows it down several times); fail
    if it took longer or allocated more at its peak than allowed. Returns the exception it raised
    (or None). The limits are loose (a shared, busy machine): they catch minutes and gigabytes."""
    started = time.perf_counter()
    error: BaseException | None = None
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - returned for the caller to judge
        error = exc
    elapsed = time.perf_counter() - started
    assert elapsed < seconds, f"took {elapsed:.2f}s"
    tracemalloc.start()
    try:
        fn()
    except Exception:  # noqa: BLE001, S110 - the same as above
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < megabytes * 1024 * 1024, f"peaked at {peak / 2**20:.0f} MiB"
    return error


# --- Modelfiles ----------------------------------------------------------------------------

_MODELFILE_PIECES = st.sampled_from([
    "FROM ", "from ", "PARAMETER ", "TEMPLATE ", "SYSTEM ", "ADAPTER ", "LICENSE ", "MESSAGE ",
    "REQUIRES ", "RENDERER ", "PARSER ", "DRAFT ", "user ", "assistant ", "wizard ", "stop ",
    "temperature ", "num_ctx ", "seed ", '"""', '"', "\n", "\r\n", "#", " ", "\t", "\x00",
    "\ufeff", "0.5", "-1", "1e999", "nan", "true", "gemma3:270m", "./model.gguf", "@sha256:",
    "v1.2.3", "{{ .Prompt }}", "é", "\u2028",
])
MODELFILES = st.lists(_MODELFILE_PIECES | st.text(max_size=8), max_size=60).map("".join)


@FUZZ
@given(MODELFILES)
def test_modelfile_parser_raises_only_modelfile_errors(text: str) -> None:
    try:
        parsed = modelfile.parse(text)
    except ModelfileError as exc:
        assert exc.status == 400 and exc.message
        return
    assert parsed.from_  # a parsed Modelfile always has a FROM
    # What it parsed can be written out and read back.
    again = modelfile.parse(modelfile.format_modelfile(parsed))
    assert again.from_ == parsed.from_ and again.parameters == parsed.parameters


@pytest.mark.parametrize("text", [
    'FROM x\nTEMPLATE """' + "line\n" * 200_000,  # a quote that never closes
    "FROM x\n" + "PARAMETER stop s\n" * 100_000,
    "FROM x\nSYSTEM " + "a" * 5_000_000,
    "FROM x\n" + "#" * 1_000_000 + "\n" * 1_000_000,
])
def test_hostile_modelfiles_take_bounded_time_and_memory(text: str) -> None:
    error = bounded(lambda: modelfile.parse(text), megabytes=200.0)
    assert error is None or isinstance(error, ModelfileError)


# --- model names ---------------------------------------------------------------------------

_NAME_PIECES = st.sampled_from(["/", ":", ".", "-", "_", "..", "://", "http", "https", "a", "Z",
                                "9", "library", "registry.ollama.ai", "latest", "é", " ", "@",
                                "%2e", "\\", "\x00"])
NAMES = st.lists(_NAME_PIECES | st.text(max_size=4), max_size=30).map("".join)


@FUZZ
@given(NAMES)
def test_names_parse_or_raise_bad_request_and_never_escape_the_store(text: str) -> None:
    try:
        name = ModelName.parse(text)
    except BadRequest as exc:
        assert exc.message == "invalid model name"
        return
    parts = name.manifest_path().parts
    assert len(parts) == 4
    assert all(part not in (".", "..") and "/" not in part and "\\" not in part
               and "\x00" not in part for part in parts)
    assert ModelName.parse(name.full()) == name.__class__(*parts, scheme=name.scheme)
    assert ModelName.parse(name.display()).key() == name.key()


def test_names_reject_non_strings() -> None:
    for value in (None, 3, ["a"], {"a": 1}):
        with pytest.raises(BadRequest):
            ModelName.parse(value)  # type: ignore[arg-type]


# --- Go templates --------------------------------------------------------------------------

_TEMPLATE_PIECES = st.sampled_from([
    "{{", "}}", "{{-", "-}}", "{{ ", " }}", "if ", "else ", "else if ", "end", "range ",
    "with ", "break", "continue", "define ", "template ", "block ", ".", ".Messages", ".Prompt",
    ".System", ".Tools", ".Role", ".Content", "$", "$m", "$i, $m := ", "$x := ", "$x = ", "|",
    "(", ")", " eq ", " ne ", " and ", " or ", " not ", " len ", " index ", " slice ", " print ",
    " printf ", " json ", " lt ", '"', "`", "'a'", "1", "-1", "1e9", "0x10", "nil", "true",
    "/*", "*/", "%d", "%999s", "\n", "é",
])
TEMPLATES = st.lists(_TEMPLATE_PIECES | st.text(max_size=4), max_size=40).map("".join)
MESSAGES = st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["system", "user", "assistant", "tool", "wizard"]),
    "content": st.text(max_size=20)}), max_size=5)


@FUZZ
@given(TEMPLATES, MESSAGES)
def test_templates_parse_and_render_or_raise_template_errors(text: str,
                                                             messages: list[dict[str, Any]]
                                                             ) -> None:
    try:
        template = gotemplate.parse(text)
        gotemplate.render_chat(template, messages)
        gotemplate.render_chat(template, [], prompt="p", suffix="s")
    except TemplateError as exc:
        assert str(exc)


MANY = [{"role": ("user", "assistant")[i % 2], "content": f"message {i}"} for i in range(200)]


@pytest.mark.parametrize("text,messages", [
    ("{{if 1}}" * 20_000 + "x" + "{{end}}" * 20_000, []),  # deep nesting
    ("{{" + "(" * 20_000 + "1" + ")" * 20_000 + "}}", []),
    ("{{range 1000000000000}}x{{end}}", []),  # a huge range
    ("{{range 100000}}{{range 100000}}{{end}}{{end}}", []),  # one that does nothing, long
    ("{{range 100000}}{{.}}{{end}}" * 100, []),  # runaway output
    ('{{define "a"}}{{template "a"}}{{end}}{{template "a"}}', []),  # recursion
    ("{{range .Messages}}{{range $.Messages}}{{range $.Messages}}{{.Content}}"
     "{{end}}{{end}}{{end}}", MANY),
    ("{{$x := .Messages}}{{range $x}}{{range $x}}{{range $x}}{{json $x}}{{end}}{{end}}{{end}}",
     MANY),
])
def test_hostile_templates_are_refused_in_bounded_time_and_memory(
        text: str, messages: list[dict[str, Any]]) -> None:
    def render() -> None:
        gotemplate.render_chat(gotemplate.parse(text), messages or [{"role": "user",
                                                                     "content": "hi"}])

    error = bounded(render, megabytes=100.0)
    assert isinstance(error, TemplateError), error


@pytest.mark.parametrize("text,expected", [
    ('{{printf "%999999999d" 1}}', "%!(BADWIDTH)1"),
    ('{{printf "%.999999999f" 1.5}}', "%!(BADPREC)1.500000"),
    ('{{printf "%8d" 1}}', "       1"),
])
def test_printf_width_and_precision_beyond_a_million_are_refused_as_go_does(
        text: str, expected: str) -> None:
    render = lambda: gotemplate.render_chat(text, [{"role": "user", "content": ""}])  # noqa: E731
    assert bounded(render) is None
    assert render() == expected


def test_a_long_but_honest_chat_still_renders() -> None:
    """The budgets scale with the input: 2,000 messages of 5 KB through a Messages template."""
    text = ("{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}{{ if eq .Role \"user\" }}!"
            "{{ end }}\n{{ end }}")
    chat = [{"role": "user" if i % 2 else "assistant", "content": "w" * 5000}
            for i in range(2000)]
    out = gotemplate.render_chat(text, chat)
    assert len(out) > 2000 * 5000
