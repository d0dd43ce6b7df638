"""Ollama's `format` ("json" or a JSON schema) as a llama.cpp GBNF grammar.

The conversion is llama-cpp-python's port of llama.cpp's schema converter; the grammar then runs
inside the sampler chain in C, so every sampled token keeps the output valid.
"""

from __future__ import annotations

import json
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
    try:
        grammar = llama_grammar.json_schema_to_gbnf(json.dumps(format_))
    except Exception as exc:  # the converter raises plain exceptions on schemas it cannot map
        raise BadRequest(f"invalid JSON schema in format: {exc}") from None
    # The Python converter lets raw control characters into strings, which JSON forbids
    # (llama.cpp's own converter excludes them); exclude them here too.
    return grammar.replace(_LOOSE_CHAR, _STRICT_CHAR)


_LOOSE_CHAR = r'char ::= [^"\\] |'
_STRICT_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'
