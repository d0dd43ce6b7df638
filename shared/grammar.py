"""Constrained output as llama.cpp GBNF grammars: Ollama's `format` ("json" or a JSON schema),
and forced tool calls.

The conversion is llama-cpp-python's port of llama.cpp's schema converter; the grammar then runs
inside the sampler chain in C, so every sampled token keeps the output valid.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llama_cpp import llama_grammar

from shared.errors import BadRequest


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
    """GBNF for a JSON schema; `what` names the schema's origin in the error."""
    try:
        grammar = llama_grammar.json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises plain exceptions on schemas it cannot map
        raise BadRequest(f"invalid JSON schema in {what}: {exc}") from None
    # The Python converter lets raw control characters into strings, which JSON forbids
    # (llama.cpp's own converter excludes them); exclude them here too.
    return grammar.replace(_LOOSE_CHAR, _STRICT_CHAR)


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
