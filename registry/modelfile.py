"""Modelfiles: parse them with Ollama's rules, and write them back.

    FROM <model name | path to a .gguf | @sha256:<hex> blob>   (required; a second FROM adds a
                                                                 projector)
    PARAMETER <name> <value>     any model option; `stop` repeats and accumulates
    TEMPLATE <text>              Go text/template prompt template
    SYSTEM <text>                default system prompt
    ADAPTER <path>               LoRA adapter GGUF
    LICENSE <text>               repeatable
    MESSAGE <role> <text>        role: system, user or assistant
    REQUIRES <version>           minimum Ollama version (semver, `v` optional)
    RENDERER <name> / PARSER <name>   Ollama's built-in renderers/parsers (checked at create)

Instructions are case-insensitive and may come in any order; `#` starts a comment line. A value is
the rest of the line, trimmed; one that starts with three double quotes (or one) runs across
lines until the text ends with three (or one), and the outer quotes are removed (nothing else is
unescaped). Errors say the line and what was expected. Paths are kept as written; `resolve_path`
resolves them against the Modelfile's folder (with `~` expansion), which only the client can do.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.gofmt import go_v
from shared.errors import BadRequest
from shared.options import OPTION_TYPES

INSTRUCTIONS = ("from", "license", "template", "system", "adapter", "renderer", "parser",
                "parameter", "message", "requires")
_NOT_SUPPORTED = ("draft",)
ROLES = ("system", "user", "assistant")

# Options older Ollama releases had; a Modelfile may still set them. Warned about and ignored.
DEPRECATED_PARAMETERS = frozenset({
    "penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock",
    "mirostat", "mirostat_tau", "mirostat_eta", "tfs_z", "numa",
})

_COMMAND_LIST = ", ".join(f'"{c}"' for c in INSTRUCTIONS[:-1]) + f', or "{INSTRUCTIONS[-1]}"'
_SEMVER_RE = re.compile(
    r"v?(0|[1-9]\d*)(\.(0|[1-9]\d*)(\.(0|[1-9]\d*))?)?(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # every control character but \t and \n
_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf|infinity|nan)",
                       re.IGNORECASE)
_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
          "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}


SAFETENSORS_NOT_SUPPORTED = (
    "importing safetensors (or other non-GGUF) models is not supported by corral; convert the "
    "model to GGUF first (llama.cpp's convert_hf_to_gguf.py) and create from the .gguf file")


class ModelfileError(BadRequest):
    """A Modelfile that does not parse; the message starts with `(line N): `."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"(line {line}): {message}" if line else message)
        self.line = line


@dataclass(frozen=True)
class Command:
    name: str  # the instruction in lower case
    args: str  # the value; for PARAMETER "<name> <value>" and MESSAGE "<role>: <content>"
    line: int


@dataclass
class Modelfile:
    commands: list[Command] = field(default_factory=list)
    from_: str = ""
    extra_from: list[str] = field(default_factory=list)  # a second FROM: a projector
    parameters: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    adapters: list[str] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    requires: str | None = None
    renderer: str | None = None
    parser: str | None = None
    warnings: list[str] = field(default_factory=list)


# ----- parameter values -----------------------------------------------------------------------


def parse_parameter(name: str, raw: str) -> Any:
    """A PARAMETER's text value as the option's type; ValueError says what was expected."""
    if name not in OPTION_TYPES:
        raise ValueError(f"unknown parameter '{name}'")
    kind = OPTION_TYPES[name][0]
    if kind is list or kind is str:
        return raw
    if kind is int:
        if not _INT_RE.fullmatch(raw):
            raise ValueError(f"invalid int value [{raw}] for parameter '{name}', "
                             "expected an integer")
        return int(raw)
    if kind is float:
        if not _FLOAT_RE.fullmatch(raw):
            raise ValueError(f"invalid float value [{raw}] for parameter '{name}', "
                             "expected a number")
        value = float(raw)
        return value
    if kind is bool:
        if raw not in _BOOLS:
            raise ValueError(f"invalid bool value [{raw}] for parameter '{name}', "
                             "expected true or false")
        return _BOOLS[raw]
    raise ValueError(f"unknown parameter '{name}'")  # pragma: no cover


def parameters_from_json(params: Any) -> tuple[dict[str, Any], list[str]]:
    """The `parameters` object of a create request: typed values and the warnings to show.

    Typed JSON values are taken as they are (ints may come as integral floats); strings are read
    as a Modelfile would read them. Unknown names and wrongly typed values are 400s.
    """
    if params is None:
        return {}, []
    if not isinstance(params, dict):
        raise BadRequest("parameters must be an object")
    out: dict[str, Any] = {}
    warnings: list[str] = []
    for name, value in params.items():
        if value is None:
            continue
        if name in DEPRECATED_PARAMETERS:
            warnings.append(f"parameter {name} is deprecated")
            continue
        if name not in OPTION_TYPES:
            raise BadRequest(f"unknown parameter '{name}'")
        kind = OPTION_TYPES[name][0]
        names = {int: "int", float: "float", bool: "bool", list: "[]string", str: "string"}
        bad = BadRequest(f'option "{name}" must be of type {names[kind]}')
        if kind is str:
            if not isinstance(value, str):
                raise bad
            out[name] = value
        elif kind is list:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise bad
            out[name] = list(value)
        elif isinstance(value, str):
            try:
                out[name] = parse_parameter(name, value.strip())
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
        elif kind is bool:
            if not isinstance(value, bool):
                raise bad
            out[name] = value
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        elif kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise bad
            out[name] = int(value)
        else:
            out[name] = float(value)
    return out, warnings


# ----- parsing ---------------------------------------------------------------------------------


def _unquote(text: str) -> tuple[str, bool]:
    """(value, complete): the outer quotes removed once the value is balanced."""
    if text.startswith('"""'):
        if len(text) >= 6 and text.endswith('"""'):
            return text[3:-3], True
        return "", False
    if text.startswith('"'):
        if len(text) >= 2 and text.endswith('"'):
            return text[1:-1], True
        return "", False
    return text, True


def parse(text: str) -> Modelfile:
    """Parse Modelfile text. Raises ModelfileError (a 400) naming the line."""
    text = text.removeprefix("\ufeff")
    lines = _CONTROL_RE.sub("", text).split("\n")
    mf = Modelfile()
    i = 0
    while i < len(lines):
        lineno = i + 1
        stripped = lines[i].strip()
        i += 1
        if not stripped or stripped.startswith("#"):
            continue
        m = re.match(r"[A-Za-z]+(?=\s|$)", stripped)
        name = m.group().lower() if m else ""
        if name in _NOT_SUPPORTED:
            raise ModelfileError(f"{name.upper()} is not supported by corral", lineno)
        if name not in INSTRUCTIONS:
            raise ModelfileError(f"command must be one of {_COMMAND_LIST}", lineno)
        rest = stripped[len(name):]
        key = ""
        if name == "parameter":
            km = re.match(r"\s+([A-Za-z0-9_]+)(?=\s|$)", rest)
            if not km:
                raise ModelfileError("expected a parameter name: PARAMETER <name> <value>",
                                     lineno)
            key, rest = km.group(1), rest[km.end():]
        elif name == "message":
            km = re.match(r"\s+([A-Za-z]+)(?=\s|$)", rest)
            if not km:
                raise ModelfileError("expected a role: MESSAGE <role> <message>", lineno)
            key, rest = km.group(1), rest[km.end():]
        value = rest.strip()
        raw, complete = _unquote(value)
        if not complete:
            # Gather lines until one ends with the closing quote; only the newest line can
            # close the value, so the whole text is not rechecked per line (that was quadratic
            # in a quote that never closes).
            quote = '"""' if value.startswith('"""') else '"'
            parts = [value]
            while not complete:
                if i >= len(lines):
                    raise ModelfileError(f"unexpected EOF, expected a closing {quote} for the "
                                         f"{name.upper()} value", lineno)
                parts.append(lines[i])
                i += 1
                if parts[-1].rstrip().endswith(quote):
                    value = "\n".join(parts)
                    raw, complete = _unquote(value.rstrip())
        if not value:
            what = {"from": "a model name or a path", "parameter": f"a value for '{key}'",
                    "message": "the message text", "adapter": "a path",
                    "requires": "a version"}.get(name, "a value")
            raise ModelfileError(f"missing value for {name.upper()}: expected {what}", lineno)
        _apply(mf, name, key, raw, lineno)
    if not mf.from_:
        raise ModelfileError("no FROM line")
    return mf


def _apply(mf: Modelfile, name: str, key: str, value: str, line: int) -> None:
    if name == "from":
        if mf.from_:
            mf.extra_from.append(value)
        else:
            mf.from_ = value
        mf.commands.append(Command(name, value, line))
    elif name == "parameter":
        if key in DEPRECATED_PARAMETERS:
            mf.warnings.append(f"parameter {key} is deprecated")
            return
        try:
            typed = parse_parameter(key, value)
        except ValueError as exc:
            raise ModelfileError(str(exc), line) from None
        if key == "stop":
            mf.parameters.setdefault("stop", []).append(typed)
        else:
            mf.parameters[key] = typed
        mf.commands.append(Command(key, value, line))
    elif name == "message":
        role = key.lower()
        if role not in ROLES:
            raise ModelfileError('role must be one of "system", "user", or "assistant"', line)
        mf.messages.append({"role": role, "content": value})
        mf.commands.append(Command(name, f"{role}: {value}", line))
    elif name == "requires":
        if not _SEMVER_RE.fullmatch(value):
            raise ModelfileError(f"invalid version {value!r}: expected a semantic version such "
                                 "as 0.6.0", line)
        mf.requires = value
        mf.commands.append(Command(name, value, line))
    else:
        if name == "template":
            mf.template = value
        elif name == "system":
            mf.system = value
        elif name == "adapter":
            mf.adapters.append(value)
        elif name == "license":
            mf.licenses.append(value)
        elif name == "renderer":
            mf.renderer = value
        elif name == "parser":
            mf.parser = value
        mf.commands.append(Command(name, value, line))


def parse_file(path: str | os.PathLike[str]) -> Modelfile:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ModelfileError(f"{path}: not a UTF-8 text file") from None
    return parse(text)


# ----- paths -----------------------------------------------------------------------------------


def expand_path(arg: str, base_dir: str | os.PathLike[str] | None = None) -> Path:
    """`~`/`~user` expanded, then relative paths taken from `base_dir` (the Modelfile's folder)."""
    path = Path(os.path.expanduser(arg))
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path


def resolve_path(arg: str, base_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The file or folder a FROM/ADAPTER argument names, or None when nothing is there (then a
    FROM argument is a model name)."""
    if arg.startswith("@sha256") or not arg:
        return None
    path = expand_path(arg, base_dir)
    return path.resolve() if path.exists() else None


def looks_like_path(arg: str) -> bool:
    """A FROM argument meant as a file (so "no such file" beats "invalid model name")."""
    return (arg.startswith(("/", "./", "../", "~", "\\", ".\\")) or os.path.isabs(arg)
            or arg.lower().endswith((".gguf", ".safetensors", ".bin")))


def blob_reference(arg: str) -> str | None:
    """`@sha256:<hex>` (the form old clients sent after uploading) -> "sha256:<hex>"."""
    m = re.fullmatch(r"@?(sha256[:-][0-9a-fA-F]{64})", arg.strip())
    return m.group(1).replace("-", ":", 1).lower() if m else None


# ----- writing ---------------------------------------------------------------------------------


def quote(text: str) -> str:
    """A value as a Modelfile argument that parses back to exactly `text`."""
    needs = "\n" in text or text != text.strip() or not text or text.startswith('"')
    if not needs:
        return text
    if '"' in text:
        return f'"""{text}"""'
    return f'"{text}"'


def _param_text(value: Any) -> str:
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return {"inf": "inf", "-inf": "-inf"}.get(str(value), "nan")
    return go_v(value)


def format_modelfile(mf: Modelfile) -> str:
    """Modelfile text that `parse` reads back to the same model."""
    lines = [f"FROM {quote(mf.from_)}"]
    lines += [f"FROM {quote(extra)}" for extra in mf.extra_from]
    lines += [f"ADAPTER {quote(a)}" for a in mf.adapters]
    if mf.template is not None:
        lines.append(f"TEMPLATE {quote(mf.template)}")
    if mf.system is not None:
        lines.append(f"SYSTEM {quote(mf.system)}")
    if mf.renderer:
        lines.append(f"RENDERER {quote(mf.renderer)}")
    if mf.parser:
        lines.append(f"PARSER {quote(mf.parser)}")
    for key in sorted(mf.parameters):
        value = mf.parameters[key]
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {key} {quote(_param_text(item))}")
    lines += [f"LICENSE {quote(text)}" for text in mf.licenses]
    lines += [f"MESSAGE {m['role']} {quote(m['content'])}" for m in mf.messages]
    if mf.requires:
        lines.append(f"REQUIRES {mf.requires}")
    return "\n".join(lines) + "\n"
