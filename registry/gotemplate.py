"""Ollama's TEMPLATE language: the subset of Go's text/template that model templates use.

Supported: text with `{{ }}` actions, `{{-`/`-}}` whitespace trimming, `{{/* comments */}}`;
fields (`.System`, `.Messages`, `$m.Function.Name`, `$.Tools`), variables (`$x := ...`,
`$x = ...`), pipelines (`a | b`), parenthesised pipelines with field access; `if`/`else if`/
`else`, `range` (with `$i, $m :=`, `else`, `break`, `continue`; over lists, maps and ints),
`with`/`else with`; literals (strings, raw strings, numbers, chars, true/false/nil); functions
`eq ne lt le gt ge and or not len index slice print printf println json currentDate
yesterdayDate`. Anything else (`define`, `template`, `block`, unknown functions, methods) is a
TemplateError when the template is parsed, which is done when a model is created, so a model that
was created never fails to render at chat time.

Rendering follows Ollama's three modes (see `render_chat`): templates that use `.Messages` run
once over the collated messages; older templates run once per (system, prompt, response) turn,
and the last turn is cut after `{{ .Response }}` so the prompt ends where the reply begins.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from registry.gofmt import go_float, go_quote

__all__ = [
    "Template",
    "TemplateError",
    "check",
    "is_passthrough",
    "parse",
    "render_chat",
]


class TemplateError(ValueError):
    """A template that cannot be parsed or executed; the message says where and why."""


class _NoValue:
    """A missing map key (Go's missingkey=zero on map[string]any prints "<no value>")."""

    def __repr__(self) -> str:
        return "<no value>"


NO_VALUE = _NoValue()


class GoStruct(dict):
    """A Go struct: its fields always exist (with zero values); an unknown field is an error.

    `json_value`, when set, is what the struct prints as (Ollama's Tool types stringify to JSON).
    """

    json_value: Any = None


class GoJSONMap(dict):
    """A map that prints as JSON (Ollama's tool-call arguments and property maps)."""


class GoJSONList(list):
    """A list that prints as JSON (Ollama's `Tools`)."""


# ----- lexing ----------------------------------------------------------------------------------

_SPACE = " \t\r\n"

_TOKEN_RE = re.compile(
    r"""
     (?P<ws>\s+)
    |(?P<raw>`[^`]*`)
    |(?P<str>"(?:[^"\\\n]|\\.)*")
    |(?P<char>'(?:[^'\\\n]|\\[^\n][^'\n]*)')
    |(?P<declare>:=)
    |(?P<assign>=)
    |(?P<pipe>\|)
    |(?P<lparen>\()
    |(?P<rparen>\))
    |(?P<comma>,)
    |(?P<number>[+-]?(?:0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+
        |(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?))
    |(?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+)
    |(?P<dot>\.)
    |(?P<var>\$[A-Za-z0-9_]*)
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    spaced: bool  # whitespace came right before it


@dataclass
class _Action:
    tokens: list[_Tok]
    line: int
    source: str  # the text between the delimiters, for messages


def _lex(text: str) -> list[str | _Action]:
    """Split into text strings and actions, applying the trim markers."""
    items: list[str | _Action] = []
    pos = 0
    trim_next = False
    line, counted = 1, 0  # the line number at offset `counted` (counted on, not from 0)
    while True:
        start = text.find("{{", pos)
        chunk = text[pos:] if start < 0 else text[pos:start]
        if trim_next:
            chunk = chunk.lstrip(_SPACE)
        if start < 0:
            if chunk:
                items.append(chunk)
            return items
        line += text.count("\n", counted, start)
        counted = start
        inner_start = start + 2
        trim_left = text.startswith("-", inner_start) and text[inner_start + 1:inner_start + 2] \
            in tuple(_SPACE)
        if trim_left:
            chunk = chunk.rstrip(_SPACE)
            inner_start += 2
        if chunk:
            items.append(chunk)
        # Comments: {{/* ... */}} (the comment must touch the delimiters, as in Go).
        body_start = inner_start
        while body_start < len(text) and text[body_start] in _SPACE and trim_left:
            body_start += 1
        if text.startswith("/*", body_start):
            close = text.find("*/", body_start + 2)
            if close < 0:
                raise TemplateError(f"line {line}: unclosed comment")
            after = close + 2
            trim_right = False
            if text.startswith(" -}}", after) or text.startswith("\t-}}", after) \
                    or text.startswith("\n-}}", after) or text.startswith("\r-}}", after):
                trim_right, after = True, after + 4
            elif text.startswith("}}", after):
                after += 2
            else:
                raise TemplateError(f"line {line}: comment ends before closing delimiter")
            pos, trim_next = after, trim_right
            continue
        end, trim_right, inner_end = _find_close(text, inner_start, line)
        source = text[inner_start:inner_end]
        items.append(_Action(_tokenize(source, line), line, source.strip()))
        pos, trim_next = end, trim_right


def _find_close(text: str, start: int, line: int) -> tuple[int, bool, int]:
    """The `}}` closing an action, skipping quoted strings: (after, trim, inner_end)."""
    i = start
    n = len(text)
    while i < n:
        ch = text[i]
        if ch in "\"'":
            j = i + 1
            while j < n and text[j] != ch:
                if text[j] == "\\":
                    j += 1
                elif text[j] == "\n":
                    raise TemplateError(f"line {line}: unterminated quoted string")
                j += 1
            if j >= n:
                raise TemplateError(f"line {line}: unterminated quoted string")
            i = j + 1
            continue
        if ch == "`":
            j = text.find("`", i + 1)
            if j < 0:
                raise TemplateError(f"line {line}: unterminated raw quoted string")
            i = j + 1
            continue
        if text.startswith("}}", i):
            if i - 2 >= start and text[i - 1] == "-" and text[i - 2] in _SPACE:
                return i + 2, True, i - 2
            return i + 2, False, i
        i += 1
    raise TemplateError(f"line {line}: unclosed action")


def _tokenize(source: str, line: int) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    spaced = True
    while pos < len(source):
        m = _TOKEN_RE.match(source, pos)
        if not m:
            raise TemplateError(f"line {line}: unexpected {source[pos]!r} in action")
        kind = m.lastgroup or ""
        if kind == "ws":
            spaced = True
        else:
            tokens.append(_Tok(kind, m.group(), spaced))
            spaced = False
        pos = m.end()
    return tokens


# ----- syntax tree -----------------------------------------------------------------------------


@dataclass
class _Field:
    """`.A.B` on dot (receiver None) or on another expression."""

    names: tuple[str, ...]
    receiver: Any = None


@dataclass
class _Var:
    name: str  # "$" or "$x"


@dataclass
class _Dot:
    pass


@dataclass
class _Lit:
    value: Any


@dataclass
class _Func:
    name: str


@dataclass
class _Command:
    args: list[Any]


@dataclass
class _Pipe:
    commands: list[_Command]
    decl: list[str] = field(default_factory=list)
    assign: bool = False  # `=` instead of `:=`


@dataclass
class _Text:
    text: str


@dataclass
class _Output:
    pipe: _Pipe
    source: str


@dataclass
class _Branch:
    kind: str  # "if" | "with" | "range"
    pipe: _Pipe
    body: list[Any]
    else_body: list[Any] | None = None


@dataclass
class _Break:
    pass


@dataclass
class _Continue:
    pass


# ----- functions -------------------------------------------------------------------------------


def _truth(value: Any) -> bool:
    if value is None or value is NO_VALUE:
        return False
    if isinstance(value, GoStruct):
        return True
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str | list | tuple | dict):
        return len(value) > 0
    return True


def _go_json(value: Any) -> str:
    """json.Marshal: compact, HTML-escaped like Go's encoder; integral floats as integers."""

    def plain(v: Any) -> Any:
        if isinstance(v, PropertyType):
            return v[0] if len(v) == 1 else list(v)
        if isinstance(v, GoStruct):
            return plain(v.json_value) if v.json_value is not None else {k: plain(x)
                                                                         for k, x in v.items()}
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, float) and v.is_integer() and abs(v) < 1e21:
            return int(v)
        if v is NO_VALUE:
            return None
        return v

    text = json.dumps(plain(value), ensure_ascii=False, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _print_value(value: Any) -> str:
    """fmt's %v, with the String() methods Ollama's types have."""
    if value is NO_VALUE:
        return "<no value>"
    if value is None:
        return "<nil>"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, PropertyType):
        return value[0] if len(value) == 1 else "[" + " ".join(value) + "]"
    if isinstance(value, GoStruct):
        if value.json_value is not None and not isinstance(value, _PropertyStruct):
            return _go_json(value.json_value)
        return "{" + " ".join(_print_value(v) for v in value.values()) + "}"
    if isinstance(value, GoJSONMap | GoJSONList):
        return _go_json(value)
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: str(kv[0]))
        return "map[" + " ".join(f"{_print_value(k)}:{_print_value(v)}" for k, v in items) + "]"
    if isinstance(value, list | tuple):
        return "[" + " ".join(_print_value(v) for v in value) + "]"
    return str(value)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None or value is NO_VALUE:
        return "nil"
    return "other"


def _eq(a: Any, *others: Any) -> bool:
    if not others:
        raise TemplateError("missing argument for comparison")
    ka = _kind(a)
    if ka == "other":
        raise TemplateError("non-comparable type in eq")
    for b in others:
        kb = _kind(b)
        if kb == "other":
            raise TemplateError("non-comparable type in eq")
        if ka == "nil" or kb == "nil":
            if ka == kb:
                return True
            continue
        if ka != kb:
            raise TemplateError("incompatible types for comparison")
        if a == b:
            return True
    return False


def _ordered(a: Any, b: Any) -> tuple[Any, Any]:
    ka, kb = _kind(a), _kind(b)
    if ka not in ("number", "string") or kb not in ("number", "string"):
        raise TemplateError("invalid type for comparison")
    if ka != kb:
        raise TemplateError("incompatible types for comparison")
    return a, b


def _lt(a: Any, b: Any) -> bool:
    x, y = _ordered(a, b)
    return x < y


def _le(a: Any, b: Any) -> bool:
    x, y = _ordered(a, b)
    return x <= y


def _len(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8"))  # Go's len of a string counts bytes
    if isinstance(value, list | tuple | dict):
        return len(value)
    raise TemplateError(f"len of type {_type_name(value)}")


def _type_name(value: Any) -> str:
    if value is None or value is NO_VALUE:
        return "nil"
    if isinstance(value, GoStruct):
        return "struct"
    return {bool: "bool", int: "int", float: "float64", str: "string"}.get(
        type(value), "map" if isinstance(value, dict) else "slice"
        if isinstance(value, list | tuple) else type(value).__name__)


def _int_arg(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise TemplateError(f"cannot index slice/array with {what} of type {_type_name(value)}")
    return int(value)


def _index(item: Any, *indexes: Any) -> Any:
    for idx in indexes:
        if isinstance(item, dict):
            item = item.get(idx) if idx in item else None
        elif isinstance(item, list | tuple | str):
            i = _int_arg(idx, "index")
            seq = item.encode("utf-8") if isinstance(item, str) else item
            if not 0 <= i < len(seq):
                raise TemplateError(f"index out of range: {i}")
            item = seq[i]
        else:
            raise TemplateError(f"can't index item of type {_type_name(item)}")
    return item


def _slice(item: Any, *indexes: Any) -> Any:
    if not isinstance(item, list | tuple | str):
        raise TemplateError(f"can't slice item of type {_type_name(item)}")
    if len(indexes) > 3 or (len(indexes) == 3 and isinstance(item, str)):
        raise TemplateError("too many slice indexes")
    seq: Any = item.encode("utf-8") if isinstance(item, str) else item
    bounds = [_int_arg(i, "slice index") for i in indexes]
    lo = bounds[0] if bounds else 0
    hi = bounds[1] if len(bounds) > 1 else len(seq)
    cap = bounds[2] if len(bounds) > 2 else len(seq)
    if not 0 <= lo <= hi <= cap <= len(seq):
        raise TemplateError(f"slice index out of range: {indexes}")
    out = seq[lo:hi]
    if isinstance(item, str):
        return out.decode("utf-8", "replace")
    return type(item)(out) if isinstance(item, GoJSONList) else list(out)


def _sprint(*args: Any) -> str:
    out: list[str] = []
    for i, arg in enumerate(args):
        if i and not isinstance(arg, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(_print_value(arg))
    return "".join(out)


def _sprintln(*args: Any) -> str:
    return " ".join(_print_value(a) for a in args) + "\n"


_VERB_RE = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])")
_FMT_MAX = 1_000_000  # Go's fmt: a larger width is %!(BADWIDTH), a larger precision %!(BADPREC)


def _sprintf(fmt: Any, *args: Any) -> str:
    if not isinstance(fmt, str):
        raise TemplateError("printf: format must be a string")
    values = list(args)
    out: list[str] = []
    pos = 0
    for m in _VERB_RE.finditer(fmt):
        out.append(fmt[pos:m.start()])
        pos = m.end()
        flags, width, prec, verb = m.groups()
        bad_prec = prec is not None and int(prec) > _FMT_MAX
        prec = None if bad_prec else prec
        if verb == "%":
            out.append("%")
            continue
        if not values:
            out.append(f"%!{verb}(MISSING)")
            continue
        value = values.pop(0)
        if verb in "vs":
            text = _print_value(value)
        elif verb == "q":
            text = go_quote(value if isinstance(value, str) else _print_value(value))
        elif verb == "d" and isinstance(value, int) and not isinstance(value, bool):
            text = str(value)
        elif verb == "t" and isinstance(value, bool):
            text = _print_value(value)
        elif verb in "fFeEgG" and isinstance(value, int | float) and not isinstance(value, bool):
            text = format(float(value), f".{prec or 6}{verb}") if verb != "g" or prec else \
                go_float(float(value))
        elif verb in "xX" and isinstance(value, int | str) and not isinstance(value, bool):
            text = format(value, verb) if isinstance(value, int) else value.encode().hex()
            text = text.upper() if verb == "X" else text
        else:
            text = f"%!{verb}({_type_name(value)}={_print_value(value)})"
        if bad_prec:
            text = "%!(BADPREC)" + text
        if width and int(width) > _FMT_MAX:  # Go's fmt refuses these too
            text = "%!(BADWIDTH)" + text
        elif width:
            text = text.ljust(int(width)) if "-" in flags else text.rjust(int(width))
        out.append(text)
    out.append(fmt[pos:])
    if values:
        out.append("%!(EXTRA " + ", ".join(_print_value(v) for v in values) + ")")
    return "".join(out)


def _current_date() -> str:
    return _dt.date.today().isoformat()


def _yesterday_date() -> str:
    return (_dt.date.today() - _dt.timedelta(days=1)).isoformat()


_FUNCS: dict[str, Callable[..., Any]] = {
    "eq": _eq,
    "ne": lambda a, b: not _eq(a, b),
    "lt": _lt,
    "le": _le,
    "gt": lambda a, b: not _le(a, b),
    "ge": lambda a, b: not _lt(a, b),
    "not": lambda a: not _truth(a),
    "len": _len,
    "index": _index,
    "slice": _slice,
    "print": _sprint,
    "printf": _sprintf,
    "println": _sprintln,
    "json": _go_json,
    "currentDate": _current_date,
    "yesterdayDate": _yesterday_date,
}
_LAZY_FUNCS = ("and", "or")
# Go built-ins and Ollama helpers that this renderer does not implement.
_UNSUPPORTED_FUNCS = ("html", "js", "urlquery", "call")
_UNSUPPORTED_KEYWORDS = ("define", "template", "block")

# Every field an Ollama template can reach (template.Values, api.Message, tool types).
KNOWN_FIELDS = frozenset({
    "System", "Prompt", "Response", "Suffix", "Messages", "Tools", "Think", "ThinkLevel",
    "IsThinkSet", "Role", "Content", "Thinking", "Images", "ToolCalls", "ToolName",
    "ToolCallID", "ID", "Function", "Index", "Name", "Arguments", "Type", "Description",
    "Parameters", "Required", "Properties", "Defs", "Items", "Enum", "AnyOf",
})
_MAP_FIELDS = frozenset({"Arguments", "Properties", "Defs"})  # keys below these are free-form


# ----- parser ----------------------------------------------------------------------------------


MAX_NESTING = 100  # blocks and parentheses; model templates use a handful


class _Parser:
    def __init__(self, items: list[str | _Action]) -> None:
        self.items = items
        self.pos = 0
        self.fields: set[str] = set()
        self.scopes: list[set[str]] = [{"$"}]
        self.range_depth = 0
        self.nesting = 0  # blocks and parentheses open around the current position

    def _enter(self, line: int) -> None:
        """One level deeper; refused beyond MAX_NESTING (the parser recurses per level)."""
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise TemplateError(f"line {line}: template nested too deeply (more than "
                                f"{MAX_NESTING} levels)")

    def parse(self) -> list[Any]:
        body, stop = self._list(())
        if stop is not None:
            raise TemplateError(f"line {stop.line}: unexpected {{{{{stop.source}}}}}")
        return body

    def _list(self, stops: tuple[str, ...]) -> tuple[list[Any], _Action | None]:
        """Nodes up to one of the `stops` keywords (returned) or the end."""
        nodes: list[Any] = []
        while self.pos < len(self.items):
            item = self.items[self.pos]
            self.pos += 1
            if isinstance(item, str):
                nodes.append(_Text(item))
                continue
            if not item.tokens:
                raise TemplateError(f"line {item.line}: missing value for command")
            head = item.tokens[0]
            word = head.text if head.kind == "ident" else ""
            if word in ("end", "else"):
                if word not in stops:
                    raise TemplateError(f"line {item.line}: unexpected {{{{{word}}}}}")
                return nodes, item
            if word in ("if", "with", "range"):
                nodes.append(self._branch(word, item))
            elif word in ("break", "continue"):
                if self.range_depth == 0:
                    raise TemplateError(f"line {item.line}: {{{{{word}}}}} outside {{{{range}}}}")
                if len(item.tokens) > 1:
                    raise TemplateError(f"line {item.line}: unexpected token after {word}")
                nodes.append(_Break() if word == "break" else _Continue())
            elif word in _UNSUPPORTED_KEYWORDS:
                raise TemplateError(f"line {item.line}: {{{{{word}}}}} is not supported")
            else:
                nodes.append(_Output(self._pipeline(item.tokens, item.line, decl_ok=True),
                                     item.source))
        if stops:
            raise TemplateError("unexpected EOF: missing {{end}}")
        return nodes, None

    def _branch(self, kind: str, action: _Action) -> _Branch:
        # Variables declared in the pipeline are visible in both branches; those declared in
        # a branch stay in it.
        self._enter(action.line)
        self.scopes.append(set())
        try:
            pipe = self._pipeline(action.tokens[1:], action.line, decl_ok=True,
                                  range_decl=kind == "range")
            if not pipe.commands:
                raise TemplateError(f"line {action.line}: missing value for {kind}")
            self.scopes.append(set())
            self.range_depth += kind == "range"
            body, stop = self._list(("end", "else"))
            self.range_depth -= kind == "range"
            self.scopes.pop()
            branch = _Branch(kind, pipe, body)
            assert stop is not None
            if stop.tokens[0].text == "else":
                rest = stop.tokens[1:]
                if rest:  # `else if ...` / `else with ...`: a nested branch owning the {{end}}
                    if rest[0].kind != "ident" or rest[0].text not in ("if", "with"):
                        raise TemplateError(f"line {stop.line}: unexpected {{{{{stop.source}}}}}")
                    nested = _Action(rest, stop.line, stop.source)
                    branch.else_body = [self._branch(rest[0].text, nested)]
                    return branch
                self.scopes.append(set())
                else_body, stop = self._list(("end",))
                self.scopes.pop()
                branch.else_body = else_body
            assert stop is not None
            if len(stop.tokens) > 1:
                raise TemplateError(f"line {stop.line}: unexpected token after end")
            return branch
        finally:
            self.scopes.pop()
            self.nesting -= 1

    def _declared(self, name: str) -> bool:
        return any(name in scope for scope in self.scopes)

    def _pipeline(self, tokens: list[_Tok], line: int, *, decl_ok: bool = False,
                  range_decl: bool = False) -> _Pipe:
        decl: list[str] = []
        assign = False
        # Declarations: `$x :=`, `$x =`, and in range `$i, $m :=`.
        if decl_ok and tokens and tokens[0].kind == "var":
            if len(tokens) > 1 and tokens[1].kind in ("declare", "assign"):
                decl, assign, tokens = [tokens[0].text], tokens[1].kind == "assign", tokens[2:]
            elif (range_decl and len(tokens) > 3 and tokens[1].kind == "comma"
                  and tokens[2].kind == "var" and tokens[3].kind in ("declare", "assign")):
                decl = [tokens[0].text, tokens[2].text]
                assign, tokens = tokens[3].kind == "assign", tokens[4:]
        pipe = self._commands(tokens, line)
        if decl and not pipe.commands:
            raise TemplateError(f"line {line}: missing value for declaration")
        for name in decl:
            if name == "$":
                raise TemplateError(f"line {line}: cannot assign to $")
            if assign:
                if not self._declared(name):
                    raise TemplateError(f'line {line}: undefined variable "{name}"')
            else:
                self.scopes[-1].add(name)
        pipe.decl, pipe.assign = decl, assign
        return pipe

    def _commands(self, tokens: list[_Tok], line: int) -> _Pipe:
        commands: list[_Command] = []
        args: list[Any] = []
        i = 0
        while i < len(tokens):
            tok = tokens[i]
            if tok.kind == "pipe":
                if not args:
                    raise TemplateError(f"line {line}: missing command before |")
                commands.append(_Command(args))
                args = []
                i += 1
                continue
            term, i = self._operand(tokens, i, line)
            args.append(term)
        if args:
            commands.append(_Command(args))
        elif commands:
            raise TemplateError(f"line {line}: missing command after |")
        for n, command in enumerate(commands):
            first = command.args[0]
            if not isinstance(first, _Func):
                if len(command.args) > 1 or n > 0:
                    raise TemplateError(
                        f"line {line}: can't give argument to non-function (methods are not "
                        "supported)")
            elif first.name in ("and", "or") and len(command.args) + (1 if n else 0) < 2:
                raise TemplateError(f"line {line}: wrong number of args for {first.name}")
        return _Pipe(commands)

    def _operand(self, tokens: list[_Tok], i: int, line: int) -> tuple[Any, int]:
        tok = tokens[i]
        kind = tok.kind
        i += 1
        term: Any
        if kind == "field":
            names = tuple(tok.text[1:].split("."))
            self._check_fields(names, line)
            term = _Field(names)
        elif kind == "dot":
            term = _Dot()
        elif kind == "var":
            if not self._declared(tok.text):
                raise TemplateError(f'line {line}: undefined variable "{tok.text}"')
            term = _Var(tok.text)
        elif kind in ("str", "raw", "char", "number"):
            term = _Lit(_literal(tok, line))
        elif kind == "ident":
            if tok.text in ("true", "false"):
                term = _Lit(tok.text == "true")
            elif tok.text == "nil":
                term = _Lit(None)
            elif tok.text in _FUNCS or tok.text in _LAZY_FUNCS:
                term = _Func(tok.text)
            elif tok.text in _UNSUPPORTED_FUNCS:
                raise TemplateError(f'line {line}: function "{tok.text}" is not supported')
            elif tok.text in ("if", "else", "end", "range", "with", "break", "continue",
                              *_UNSUPPORTED_KEYWORDS):
                raise TemplateError(f"line {line}: unexpected keyword {tok.text!r} in operand")
            else:
                raise TemplateError(f'line {line}: function "{tok.text}" not defined')
        elif kind == "lparen":
            depth, j = 1, i
            while j < len(tokens) and depth:
                depth += {"lparen": 1, "rparen": -1}.get(tokens[j].kind, 0)
                j += 1
            if depth:
                raise TemplateError(f"line {line}: unclosed left paren")
            self._enter(line)
            inner = self._commands(tokens[i:j - 1], line)
            self.nesting -= 1
            if not inner.commands:
                raise TemplateError(f"line {line}: missing pipeline in parentheses")
            term, i = inner, j
        else:
            raise TemplateError(f"line {line}: unexpected {tok.text!r} in command")
        # Field access chained right onto a variable or a parenthesised pipeline: $m.Role, (x).Y
        while i < len(tokens) and tokens[i].kind == "field" and not tokens[i].spaced:
            if kind not in ("var", "lparen", "field"):
                raise TemplateError(f"line {line}: unexpected {tokens[i].text!r}")
            names = tuple(tokens[i].text[1:].split("."))
            self._check_fields(names, line)
            term = _Field(names, term)
            i += 1
        return term, i

    def _check_fields(self, names: tuple[str, ...], line: int) -> None:
        for name in names:
            if name not in KNOWN_FIELDS:
                raise TemplateError(f'line {line}: unknown field ".{name}" (known: '
                                    f'{", ".join(sorted(KNOWN_FIELDS))})')
            self.fields.add(name)
            if name in _MAP_FIELDS:
                return


_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
            "\\": "\\", "'": "'", '"': '"'}


def _unescape(body: str, line: int) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1:i + 2]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt in ("x", "u", "U"):
            size = {"x": 2, "u": 4, "U": 8}[nxt]
            digits = body[i + 2:i + 2 + size]
            if len(digits) != size or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise TemplateError(f"line {line}: invalid escape in string")
            out.append(chr(int(digits, 16)))
            i += 2 + size
        elif nxt and nxt in "01234567":
            digits = body[i + 1:i + 4]
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            raise TemplateError(f"line {line}: invalid escape in string")
    return "".join(out)


def _literal(tok: _Tok, line: int) -> Any:
    text = tok.text
    if tok.kind == "raw":
        return text[1:-1]
    if tok.kind == "str":
        return _unescape(text[1:-1], line)
    if tok.kind == "char":
        value = _unescape(text[1:-1], line)
        if len(value) != 1:
            raise TemplateError(f"line {line}: invalid character constant {text}")
        return ord(value)
    clean = text.replace("_", "")
    try:
        if re.fullmatch(r"[+-]?0[xX][0-9a-fA-F]+", clean):
            return int(clean, 16)
        if re.fullmatch(r"[+-]?0[bB][01]+", clean):
            return int(clean, 2)
        if re.fullmatch(r"[+-]?0[oO][0-7]+", clean):
            return int(clean, 8)
        if re.fullmatch(r"[+-]?\d+", clean):
            return int(clean, 8) if len(clean.lstrip("+-")) > 1 and clean.lstrip("+-")[0] == \
                "0" else int(clean)
        return float(clean)
    except ValueError:
        raise TemplateError(f"line {line}: bad number syntax: {text!r}") from None


# ----- execution -------------------------------------------------------------------------------


class _BreakSignal(Exception):
    pass


class _ContinueSignal(Exception):
    pass


class Budget:
    """What one rendering may spend: steps (nodes run and range turns) and output characters.

    Go runs any template to the end; a model's template runs on every chat, so a hostile or
    broken one (a huge `range`, loops in loops, runaway output) must stop with an error instead
    of holding the server. The limits grow with the input so that honest templates over long
    chats never meet them."""

    def __init__(self, steps: int, chars: int) -> None:
        self.steps = steps
        self.chars = chars

    @classmethod
    def for_input(cls, items: int, text: int) -> Budget:
        """For `items` messages and tools holding `text` characters."""
        return cls(steps=STEPS_BASE + STEPS_PER_ITEM * items,
                   chars=CHARS_BASE + CHARS_PER_INPUT_CHAR * text)

    def spend(self, steps: int) -> None:
        self.steps -= steps
        if self.steps < 0:
            raise TemplateError("template takes too many steps (a runaway range?)")

    def write(self, out: list[str], text: str) -> None:
        self.chars -= len(text)
        if self.chars < 0:
            raise TemplateError("template output is too large")
        out.append(text)


STEPS_BASE, STEPS_PER_ITEM = 200_000, 2_000
CHARS_BASE, CHARS_PER_INPUT_CHAR = 4 * 1024 * 1024, 8


class _State:
    def __init__(self, root: Any, budget: Budget | None = None) -> None:
        self.vars: list[tuple[str, Any]] = [("$", root)]
        self.out: list[str] = []
        self.budget = budget or Budget.for_input(0, 0)

    def lookup(self, name: str) -> Any:
        for var, value in reversed(self.vars):
            if var == name:
                return value
        raise TemplateError(f'undefined variable "{name}"')

    def set(self, name: str, value: Any) -> None:
        for i in range(len(self.vars) - 1, -1, -1):
            if self.vars[i][0] == name:
                self.vars[i] = (name, value)
                return
        raise TemplateError(f'undefined variable "{name}"')


def _field(value: Any, name: str) -> Any:
    if isinstance(value, GoStruct):
        if name not in value:
            raise TemplateError(f"can't evaluate field {name} in type struct")
        return value[name]
    if isinstance(value, dict):
        return value.get(name, NO_VALUE)
    if value is None or value is NO_VALUE:
        raise TemplateError(f"nil pointer evaluating .{name}")
    raise TemplateError(f"can't evaluate field {name} in type {_type_name(value)}")


class Template:
    """A parsed template; `execute(data)` runs it, `render_chat(...)` applies Ollama's modes."""

    def __init__(self, text: str) -> None:
        self.text = text
        parser = _Parser(_lex(text))
        self.root = parser.parse()
        self.fields = frozenset(parser.fields)
        if "Messages" not in self.fields and "Response" not in self.fields:
            # Ollama appends {{ .Response }} to templates that mention neither.
            self.root.append(_Output(_Pipe([_Command([_Field(("Response",))])]), ".Response"))

    @property
    def uses_messages(self) -> bool:
        return "Messages" in self.fields

    # --- evaluation ---

    def execute(self, data: Any, nodes: list[Any] | None = None,
                budget: Budget | None = None) -> str:
        state = _State(data, budget)
        try:
            self._run(state, self.root if nodes is None else nodes, data)
        except (_BreakSignal, _ContinueSignal):  # pragma: no cover - parser forbids it
            raise TemplateError("break/continue outside range") from None
        except RecursionError:
            raise TemplateError("template nested too deeply") from None
        return "".join(state.out)

    def _run(self, state: _State, nodes: list[Any], dot: Any) -> None:
        state.budget.spend(len(nodes))
        for node in nodes:
            if isinstance(node, _Text):
                state.budget.write(state.out, node.text)
            elif isinstance(node, _Output):
                value = self._pipe(state, node.pipe, dot)
                if not node.pipe.decl:
                    state.budget.write(state.out, _print_value(value))
            elif isinstance(node, _Branch):
                self._branch(state, node, dot)
            elif isinstance(node, _Break):
                raise _BreakSignal
            elif isinstance(node, _Continue):
                raise _ContinueSignal

    def _scoped(self, state: _State, nodes: list[Any], dot: Any) -> None:
        mark = len(state.vars)
        try:
            self._run(state, nodes, dot)
        finally:
            del state.vars[mark:]

    def _branch(self, state: _State, node: _Branch, dot: Any) -> None:
        mark = len(state.vars)
        try:
            if node.kind == "range":
                self._range(state, node, dot)
            elif _truth(value := self._pipe(state, node.pipe, dot)):
                self._scoped(state, node.body, value if node.kind == "with" else dot)
            elif node.else_body is not None:
                self._scoped(state, node.else_body, dot)
        finally:
            del state.vars[mark:]

    def _range(self, state: _State, node: _Branch, dot: Any) -> None:
        decl = node.pipe.decl
        value = self._pipe(state, _Pipe(node.pipe.commands), dot)
        items: list[tuple[Any, Any]]
        if value is None or value is NO_VALUE:
            items = []
        elif isinstance(value, dict) and not isinstance(value, GoStruct):
            items = [(k, value[k]) for k in sorted(value, key=str)]
        elif isinstance(value, list | tuple):
            items = list(enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            if len(decl) > 1:
                raise TemplateError("can't use two variables ranging over an integer")
            state.budget.spend(max(value, 0))  # before making the list: it could be huge
            items = [(i, i) for i in range(value)]
        else:
            raise TemplateError(f"range can't iterate over {_print_value(value)}")
        if not items:
            if node.else_body is not None:
                self._scoped(state, node.else_body, dot)
            return
        mark = len(state.vars)
        for key, elem in items:
            state.budget.spend(1)
            del state.vars[mark:]
            if len(decl) == 1:
                self._bind(state, decl[0], elem, node.pipe.assign)
            elif len(decl) == 2:
                self._bind(state, decl[0], key, node.pipe.assign)
                self._bind(state, decl[1], elem, node.pipe.assign)
            try:
                self._run(state, node.body, elem)
            except _BreakSignal:
                break
            except _ContinueSignal:
                continue
        del state.vars[mark:]

    @staticmethod
    def _bind(state: _State, name: str, value: Any, assign: bool) -> None:
        if assign:
            state.set(name, value)
        else:
            state.vars.append((name, value))

    def _pipe(self, state: _State, pipe: _Pipe, dot: Any) -> Any:
        value: Any = None
        has_value = False
        for command in pipe.commands:
            value = self._command(state, command, dot, value if has_value else _MISSING)
            has_value = True
        for name in pipe.decl:
            self._bind(state, name, value, pipe.assign)
        return value

    def _command(self, state: _State, command: _Command, dot: Any, piped: Any) -> Any:
        first = command.args[0]
        if not isinstance(first, _Func):
            return self._eval(state, first, dot)
        rest = command.args[1:]
        if first.name in _LAZY_FUNCS:  # and/or evaluate their arguments lazily
            want = first.name == "or"
            value: Any = None
            thunks: list[Callable[[], Any]] = [
                functools.partial(self._eval, state, arg, dot) for arg in rest]
            if piped is not _MISSING:
                thunks.append(lambda: piped)
            for thunk in thunks:
                value = thunk()
                if _truth(value) == want:
                    return value
            return value
        args = [self._eval(state, arg, dot) for arg in rest]
        if piped is not _MISSING:
            args.append(piped)
        try:
            return _FUNCS[first.name](*args)
        except TypeError:
            raise TemplateError(f"wrong number of args for {first.name}: got {len(args)}"
                                ) from None
        except TemplateError as exc:
            raise TemplateError(f"error calling {first.name}: {exc}") from None

    def _eval(self, state: _State, node: Any, dot: Any) -> Any:
        if isinstance(node, _Field):
            value = dot if node.receiver is None else self._eval(state, node.receiver, dot)
            for name in node.names:
                value = _field(value, name)
            return value
        if isinstance(node, _Dot):
            return dot
        if isinstance(node, _Var):
            return state.lookup(node.name)
        if isinstance(node, _Lit):
            return node.value
        if isinstance(node, _Pipe):
            return self._pipe(state, node, dot)
        if isinstance(node, _Func):
            return self._command(state, _Command([node]), dot, _MISSING)
        raise TemplateError(f"cannot evaluate {node!r}")  # pragma: no cover

    # --- Ollama's rendering modes ---

    def cut_after_response(self) -> list[Any]:
        """A copy of the tree with every node after the first `{{ .Response }}` removed."""
        cut = False

        def is_response(node: Any) -> bool:
            if not isinstance(node, _Output) or node.pipe.decl or len(node.pipe.commands) != 1:
                return False
            args = node.pipe.commands[0].args
            return (len(args) == 1 and isinstance(args[0], _Field) and args[0].receiver is None
                    and args[0].names == ("Response",))

        def walk(nodes: list[Any]) -> list[Any]:
            nonlocal cut
            kept: list[Any] = []
            for node in nodes:
                if cut:
                    continue
                if is_response(node):
                    cut = True
                    kept.append(node)
                elif isinstance(node, _Branch):
                    body = walk(node.body)
                    else_body = walk(node.else_body) if node.else_body is not None else None
                    kept.append(_Branch(node.kind, node.pipe, body, else_body))
                else:
                    kept.append(node)
            return kept

        return walk(self.root)


class _Missing:
    pass


_MISSING = _Missing()


@functools.lru_cache(maxsize=64)
def parse(text: str) -> Template:
    """Parse (cached per text). Raises TemplateError."""
    try:
        return Template(text)
    except RecursionError:  # blocks or parentheses nested thousands deep
        raise TemplateError("template nested too deeply") from None


# ----- values Ollama passes to templates -------------------------------------------------------


def _struct(json_value: Any = None, **fields: Any) -> GoStruct:
    s = GoStruct(fields)
    s.json_value = json_value
    return s


def _sorted_json(value: Any) -> Any:
    """A decoded JSON value with every object's keys sorted, as Go marshals a map[string]any."""
    if isinstance(value, dict):
        return {str(k): _sorted_json(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [_sorted_json(v) for v in value]
    return value


def _json_map(value: Any) -> GoJSONMap:
    """A tool call's arguments as Ollama's templateArgs: a Go map, so printed and ranged over
    with sorted keys, nested objects sorted too."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = {}
    return GoJSONMap(_sorted_json(value) if isinstance(value, dict) else {})


def _tool_call(call: Any, index: int) -> GoStruct:
    call = call if isinstance(call, dict) else {}
    fn = call.get("function") if isinstance(call.get("function"), dict) else {}
    return _struct(
        ID=str(call.get("id") or ""),
        Function=_struct(
            Index=int(fn.get("index") or index),
            Name=str(fn.get("name") or ""),
            Arguments=_json_map(fn.get("arguments")),
        ),
    )


def _message(m: dict[str, Any]) -> GoStruct:
    calls = m.get("tool_calls") or []
    shown = {"role": m.get("role") or "", "content": m.get("content") or ""}
    shown.update({k: m[k] for k in ("thinking", "images", "tool_calls", "tool_name")
                  if m.get(k)})
    return _struct(
        shown,
        Role=str(m.get("role") or ""),
        Content=str(m.get("content") or ""),
        Thinking=str(m.get("thinking") or ""),
        Images=list(m.get("images") or []),
        ToolCalls=[_tool_call(c, i) for i, c in enumerate(calls if isinstance(calls, list)
                                                          else [])],
        ToolName=str(m.get("tool_name") or m.get("name") or ""),
        ToolCallID=str(m.get("tool_call_id") or ""),
    )


class _PropertyStruct(GoStruct):
    """api.ToolProperty has no String method: it prints as Go prints a struct, field by field;
    `json` gives its JSON."""


class PropertyType(list):
    """Ollama's api.PropertyType: a tool property's `type`, always a list of strings (a
    request's "string" becomes ["string"]), so templates `range` over it and `index` it. It
    prints as its one type, or as Go prints a []string when there are several."""


def _property_type(raw: Any) -> PropertyType:
    if isinstance(raw, str):
        return PropertyType([raw])
    if isinstance(raw, list):
        return PropertyType(str(t) for t in raw)
    return PropertyType()


def _omit_empty(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A Go struct's JSON with `omitempty` on every field: nil, "", and empty lists go."""
    return {k: v for k, v in pairs if v is not None and v != "" and v != []}


def _property(p: Any) -> GoStruct:
    """An api.ToolProperty: fixed fields, unknown keys dropped; its JSON (all fields omitempty)
    in the struct's order, nested properties in the order sent (Ollama's ordered map)."""
    p = p if isinstance(p, dict) else {}
    any_of = [_property(x) for x in p.get("anyOf") or [] if isinstance(x, dict)]
    kind = _property_type(p.get("type"))
    enum = list(p.get("enum") or [])
    required = [str(r) for r in p.get("required") or []]
    nested = p.get("properties") if isinstance(p.get("properties"), dict) else None
    props = GoJSONMap({str(k): _property(v) for k, v in nested.items()}) if nested else None
    shown = _omit_empty([
        ("anyOf", [x.json_value for x in any_of]),
        ("type", kind[0] if len(kind) == 1 else list(kind)),
        ("items", p.get("items")),
        ("description", str(p.get("description") or "")),
        ("enum", enum),
        ("properties", {k: v.json_value for k, v in props.items()} if props is not None
         else None),
        ("required", required),
    ])
    prop = _PropertyStruct(AnyOf=any_of, Type=kind, Items=p.get("items"),
                           Description=str(p.get("description") or ""), Enum=enum,
                           Properties=props, Required=required)
    prop.json_value = shown
    return prop


def _tool(tool: Any) -> GoStruct:
    """Ollama's templateTool: the request's tool rebuilt as fixed structs, so it prints with
    the structs' field order, `description` and `parameters.type`/`properties` always present
    ("" or null), unknown keys dropped, and the properties a Go map (sorted keys)."""
    tool = tool if isinstance(tool, dict) else {}
    fn = tool.get("function") if isinstance(tool.get("function"), dict) else {}
    params = fn.get("parameters") if isinstance(fn.get("parameters"), dict) else {}
    props = params.get("properties") if isinstance(params.get("properties"), dict) else None
    # (absent: a nil map, which prints as {} and marshals as null)
    properties = GoJSONMap({str(k): _property(props[k]) for k in sorted(props or {}, key=str)})
    required = [str(r) for r in params.get("required") or []]
    defs = params.get("$defs")
    param_json = {"type": str(params.get("type") or "")}
    param_json.update(_omit_empty([("$defs", defs), ("items", params.get("items")),
                                   ("required", required)]))
    param_json["properties"] = ({k: v.json_value for k, v in properties.items()}
                                if props is not None else None)
    fn_json = {"name": str(fn.get("name") or ""),
               "description": str(fn.get("description") or ""), "parameters": param_json}
    tool_json = {"type": str(tool.get("type") or ""),
                 **_omit_empty([("items", tool.get("items"))]), "function": fn_json}
    return _struct(
        tool_json,
        Type=tool_json["type"],
        Items=tool.get("items"),
        Function=_struct(
            fn_json,
            Name=fn_json["name"],
            Description=fn_json["description"],
            Parameters=_struct(
                param_json,
                Type=param_json["type"],
                Defs=defs,
                Items=params.get("items"),
                Required=required,
                Properties=properties,
            ),
        ),
    )


def _ts_type(kind: str) -> str:
    return {"string": "string", "number": "number", "integer": "number", "boolean": "boolean",
            "array": "any[]", "object": "Record<string, any>", "null": "null"}.get(kind, "any")


def _to_typescript_type(value: Any) -> str:
    """Ollama's toTypeScriptType: a tool property's type as TypeScript (harmony's tools)."""
    if not (isinstance(value, GoStruct) and "AnyOf" in value):
        return "any"
    if value["AnyOf"]:
        return " | ".join(_to_typescript_type(x) for x in value["AnyOf"])
    if not value["Type"]:
        return "any"
    return " | ".join(_ts_type(t) for t in value["Type"])


_FUNCS["toTypeScriptType"] = _to_typescript_type


def _values(**fields: Any) -> GoStruct:
    base = dict(System="", Prompt="", Response="", Suffix="", Messages=[],
                Tools=GoJSONList(), Think=False, ThinkLevel="", IsThinkSet=False)
    base.update(fields)
    return GoStruct(base)


def _collate(messages: Sequence[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """System texts joined by blank lines; consecutive same-role messages merged (not tools)."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        role = str(m.get("role") or "")
        content = str(m.get("content") or "")
        if role == "system":
            system.append(content)
        if out and out[-1]["role"] == role and role != "tool":
            out[-1] = {**out[-1], "content": out[-1]["content"] + "\n\n" + content}
        else:
            out.append({**m, "role": role, "content": content})
    return "\n\n".join(system), out


def think_level(think: bool | str | None) -> str:
    """`.ThinkLevel`: a level as given, Ollama's "medium" for a plain true, "" when off."""
    if isinstance(think, str):
        return think
    return "medium" if think else ""


def render_chat(template: str | Template, messages: Sequence[dict[str, Any]], *,
                tools: Sequence[dict[str, Any]] | None = None, think: bool | str | None = None,
                prompt: str | None = None, suffix: str | None = None) -> str:
    """The prompt Ollama would build from `messages` with this template.

    With `suffix` (fill-in-the-middle) the template runs once on Prompt and Suffix. `think` is
    the request's: a boolean or a level ("low", "medium", "high", "max").
    """
    tpl = parse(template) if isinstance(template, str) else template
    budget = Budget.for_input(len(messages) + len(tools or ()), sum(
        len(str(m.get("content") or "")) for m in messages) + len(prompt or "")
        + len(suffix or "") + len(str(tools or "")))
    tool_values = GoJSONList(_tool(t) for t in (tools or []))
    think_fields = {"Think": bool(think), "IsThinkSet": think is not None,
                    "ThinkLevel": think_level(think)}
    if suffix is not None:
        return tpl.execute(_values(Prompt=prompt or "", Suffix=suffix, **think_fields),
                           budget=budget)
    if tpl.uses_messages:
        system, collated = _collate(messages)
        return tpl.execute(_values(System=system, Messages=[_message(m) for m in collated],
                                   Tools=tool_values, **think_fields), budget=budget)
    # Legacy templates: one execution per (system, prompt, response) turn.
    out: list[str] = []
    system = user = response = ""

    def turn(nodes: list[Any] | None = None) -> None:
        out.append(tpl.execute(_values(System=system, Prompt=user, Response=response,
                                       Tools=tool_values, **think_fields), nodes, budget))

    for m in _collate(messages)[1]:
        role = m["role"]
        content = m["content"]
        if role == "system":
            if user or response:
                turn()
                system = user = response = ""
            system = content
        elif role in ("user", "tool"):
            if response:
                turn()
                system = user = response = ""
            user = content
        elif role == "assistant":
            response = content
    turn(tpl.cut_after_response())
    return "".join(out)


def is_passthrough(text: str | None) -> bool:
    """True for no template, or one that only echoes the prompt (Ollama's `{{ .Prompt }}`
    default): such a model keeps the GGUF's own chat format."""
    if not text or not text.strip():
        return True
    return re.fullmatch(r"\s*\{\{-?\s*\.Prompt\s*-?\}\}\s*", text) is not None


_SAMPLE_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather", "description": "Get the weather",
        "parameters": {"type": "object", "required": ["city"],
                       "properties": {"city": {"type": "string", "description": "City"}}},
    },
}
_SAMPLE_CALL = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


def _samples() -> Iterator[dict[str, Any]]:
    yield {"messages": [{"role": "user", "content": "Hello"}]}
    yield {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [_SAMPLE_CALL]},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ], "tools": [_SAMPLE_TOOL]}
    yield {"messages": [{"role": "system", "content": "Only a system prompt."}]}


def check(text: str) -> Template:
    """Parse and try-render a template the way chats will use it, so that a model with a broken
    or unsupported template is refused when it is created rather than when it is used."""
    tpl = parse(text)
    for sample in _samples():
        try:
            render_chat(tpl, sample["messages"], tools=sample.get("tools"))
        except TemplateError as exc:
            raise TemplateError(f"executing the template failed: {exc}") from None
    return tpl
