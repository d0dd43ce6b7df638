"""The Modelfile parser and writer: every instruction, Ollama's quoting rules, errors that name the
line, paths, and the round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.modelfile import (
    Modelfile,
    ModelfileError,
    blob_reference,
    expand_path,
    format_modelfile,
    looks_like_path,
    parameters_from_json,
    parse,
    quote,
    resolve_path,
)
from shared.errors import BadRequest

FULL = '''# A Modelfile with every instruction
FROM llama3.2:latest
from ./projector.gguf
PARAMETER temperature 0.7
PARAMETER num_ctx 8192
PARAMETER stop <|eot_id|>
PARAMETER stop "<|end|>"
PARAMETER use_mmap false
TEMPLATE """{{ if .System }}<|system|>
{{ .System }}{{ end }}<|user|>
{{ .Prompt }}<|assistant|>
"""
SYSTEM You are "Mario" from Super Mario Bros.
ADAPTER ~/adapters/lora.gguf
LICENSE """MIT License
Copyright (c) Example"""
LICENSE Apache-2.0
MESSAGE user Is Toronto in Canada?
MESSAGE assistant yes
REQUIRES 0.5.7
RENDERER qwen3-coder
PARSER qwen3-coder
'''


def test_every_instruction() -> None:
    mf = parse(FULL)
    assert mf.from_ == "llama3.2:latest"
    assert mf.extra_from == ["./projector.gguf"]
    assert mf.parameters == {"temperature": 0.7, "num_ctx": 8192,
                             "stop": ["<|eot_id|>", "<|end|>"], "use_mmap": False}
    assert mf.template == ("{{ if .System }}<|system|>\n{{ .System }}{{ end }}<|user|>\n"
                           "{{ .Prompt }}<|assistant|>\n")
    assert mf.system == 'You are "Mario" from Super Mario Bros.'
    assert mf.adapters == ["~/adapters/lora.gguf"]
    assert mf.licenses == ["MIT License\nCopyright (c) Example", "Apache-2.0"]
    assert mf.messages == [{"role": "user", "content": "Is Toronto in Canada?"},
                           {"role": "assistant", "content": "yes"}]
    assert mf.requires == "0.5.7"
    assert (mf.renderer, mf.parser) == ("qwen3-coder", "qwen3-coder")
    assert [c.name for c in mf.commands][:4] == ["from", "from", "temperature", "num_ctx"]
    assert mf.commands[-4].args == "assistant: yes"
    assert mf.commands[-4].line == 19


def test_instructions_are_case_insensitive_and_comments_skipped() -> None:
    mf = parse("  # leading comment\n\nfrom base\n\tSyStEm hi there  \n#PARAMETER x y\n"
               "Parameter Seed 42\n" .replace("Seed", "seed"))
    assert (mf.from_, mf.system, mf.parameters) == ("base", "hi there", {"seed": 42})


def test_quoting_rules() -> None:
    mf = parse('FROM m\nSYSTEM "  spaced  "\nTEMPLATE """keeps "quotes" and\n  indentation\n'
               '"""   \nMESSAGE user "two\nlines"\nLICENSE \'single quotes stay\'\n'
               'PARAMETER stop """"""\n')
    assert mf.system == "  spaced  "
    assert mf.template == 'keeps "quotes" and\n  indentation\n'
    assert mf.messages == [{"role": "user", "content": "two\nlines"}]
    assert mf.licenses == ["'single quotes stay'"]
    assert mf.parameters == {"stop": [""]}


def test_nothing_is_unescaped_and_control_characters_dropped() -> None:
    mf = parse('\ufeffFROM m\r\nSYSTEM "a\\nb"\r\nLICENSE x\x07y\n')
    assert mf.from_ == "m"
    assert mf.system == "a\\nb"
    assert mf.licenses == ["xy"]


def test_typed_parameters() -> None:
    mf = parse("FROM m\nPARAMETER num_predict -1\nPARAMETER top_p 1\nPARAMETER seed +3\n"
               "PARAMETER use_mmap T\nPARAMETER repeat_penalty 1e-1\n")
    assert mf.parameters == {"num_predict": -1, "top_p": 1.0, "seed": 3, "use_mmap": True,
                             "repeat_penalty": 0.1}
    assert isinstance(mf.parameters["top_p"], float)


def test_deprecated_parameters_warn_and_are_ignored() -> None:
    mf = parse("FROM m\nPARAMETER mirostat 2\nPARAMETER penalize_newline true\n")
    assert mf.parameters == {}
    assert mf.warnings == ["parameter mirostat is deprecated",
                           "parameter penalize_newline is deprecated"]


@pytest.mark.parametrize(("text", "message"), [
    ("FROM m\nFOO bar", '(line 2): command must be one of "from", "license", "template", '
                        '"system", "adapter", "renderer", "parser", "parameter", "message", '
                        'or "requires"'),
    ("FROM m\n\nPARAMETER bogus 1", "(line 3): unknown parameter 'bogus'"),
    ("FROM m\nPARAMETER num_predict 5.5", "(line 2): invalid int value [5.5] for parameter "
                                          "'num_predict', expected an integer"),
    ("FROM m\nPARAMETER temperature hot", "(line 2): invalid float value [hot] for parameter "
                                          "'temperature', expected a number"),
    ("FROM m\nPARAMETER use_mmap yes", "(line 2): invalid bool value [yes] for parameter "
                                       "'use_mmap', expected true or false"),
    ("FROM m\nPARAMETER", "(line 2): expected a parameter name: PARAMETER <name> <value>"),
    ("FROM m\nPARAMETER seed", "(line 2): missing value for PARAMETER: expected a value for "
                               "'seed'"),
    ("FROM m\nMESSAGE robot hi", '(line 2): role must be one of "system", "user", or '
                                 '"assistant"'),
    ("FROM m\nMESSAGE", "(line 2): expected a role: MESSAGE <role> <message>"),
    ('FROM m\nSYSTEM ok\nTEMPLATE """{{ .Prompt }}\nno end', '(line 3): unexpected EOF, '
                                                             'expected a closing """ for the '
                                                             'TEMPLATE value'),
    ('FROM m\nSYSTEM "open', '(line 2): unexpected EOF, expected a closing " for the SYSTEM '
                             'value'),
    ("FROM m\nSYSTEM", "(line 2): missing value for SYSTEM: expected a value"),
    ("FROM", "(line 1): missing value for FROM: expected a model name or a path"),
    ("SYSTEM hi\n# no from", "no FROM line"),
    ("", "no FROM line"),
    ("FROM m\nREQUIRES latest", "(line 2): invalid version 'latest': expected a semantic "
                                "version such as 0.6.0"),
    ("FROM m\nDRAFT ./d.gguf", "(line 2): DRAFT is not supported by corral"),
    ("FROM m\n3 x", "(line 2): command must be one of"),
])
def test_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ModelfileError) as info:
        parse(text)
    assert info.value.message.startswith(message)
    assert info.value.status == 400


def test_requires_accepts_semver_with_or_without_v() -> None:
    for version in ("0.6.0", "v0.6.0", "1.2.3-rc1", "v1", "0.12"):
        assert parse(f"FROM m\nREQUIRES {version}").requires == version


def test_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models").mkdir()
    weights = tmp_path / "models" / "w.gguf"
    weights.write_bytes(b"GGUF")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_path("models/w.gguf", tmp_path) == weights.resolve()
    assert resolve_path("./w.gguf", tmp_path / "models") == weights.resolve()
    assert resolve_path("~/models/w.gguf", "/elsewhere") == weights.resolve()
    assert resolve_path(str(weights), "/elsewhere") == weights.resolve()
    assert resolve_path("llama3.2", tmp_path) is None  # no such file: a model name
    assert expand_path("x.gguf", tmp_path) == tmp_path / "x.gguf"
    assert looks_like_path("./x") and looks_like_path("m.gguf") and not looks_like_path("m:7b")


def test_blob_reference() -> None:
    hexd = "ab" * 32
    assert blob_reference(f"@sha256:{hexd}") == f"sha256:{hexd}"
    assert blob_reference(f"sha256-{hexd.upper()}") == f"sha256:{hexd}"
    assert blob_reference("llama3") is None


def test_quote() -> None:
    assert quote("plain text") == "plain text"
    assert quote(" lead") == '" lead"'
    assert quote("two\nlines") == '"two\nlines"'
    assert quote('say "hi"\nplease') == '"""say "hi"\nplease"""'
    assert quote('"quoted"') == '""""quoted""""'
    assert quote("") == '""'


def test_round_trip() -> None:
    mf = parse(FULL)
    again = parse(format_modelfile(mf))
    mf.commands = again.commands = []
    assert again == mf


def test_round_trip_of_awkward_values() -> None:
    mf = Modelfile(
        from_="/models/blobs/sha256-" + "0" * 64,
        template=' {{ .Prompt }} "x"\n',
        system="",
        parameters={"stop": ["  <s>", '"', "a b"], "temperature": 1.0, "top_k": 40,
                    "use_mmap": True},
        licenses=["line one\nline two", '"quoted"'],
        messages=[{"role": "user", "content": " hi "}, {"role": "system", "content": "x"}],
    )
    again = parse(format_modelfile(mf))
    again.commands = []
    assert again == mf


def test_parameters_from_json() -> None:
    params, warnings = parameters_from_json({
        "num_predict": 5.0, "temperature": 1, "stop": "x", "use_mmap": False, "top_k": "40",
        "mirostat": 1, "seed": None})
    assert params == {"num_predict": 5, "temperature": 1.0, "stop": ["x"], "use_mmap": False,
                      "top_k": 40}
    assert warnings == ["parameter mirostat is deprecated"]
    assert parameters_from_json(None) == ({}, [])


@pytest.mark.parametrize(("params", "message"), [
    ({"bogus": 1}, "unknown parameter 'bogus'"),
    ({"num_predict": 5.5}, 'option "num_predict" must be of type int'),
    ({"num_predict": True}, 'option "num_predict" must be of type int'),
    ({"temperature": "hot"}, "invalid float value [hot] for parameter 'temperature'"),
    ({"stop": [1]}, 'option "stop" must be of type []string'),
    ({"use_mmap": 1}, 'option "use_mmap" must be of type bool'),
    ([1], "parameters must be an object"),
])
def test_parameters_from_json_errors(params: object, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        parameters_from_json(params)
    assert info.value.message.startswith(message)
