"""OpenAI's structured-output specs (Chat Completions' response_format, the Responses API's
text.format) read by one function: gateway/formats.py."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.formats import openai_format
from shared.errors import BadRequest

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}


@pytest.mark.parametrize(("spec", "nested", "expected"), [
    (None, True, None),
    ({"type": "text"}, False, None),
    ({"type": "json_object"}, True, "json"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}, True, SCHEMA),
    ({"type": "json_schema", "name": "x", "schema": SCHEMA}, False, SCHEMA),
])
def test_specs(spec: Any, nested: bool, expected: Any) -> None:
    assert openai_format(spec, "f", nested) == expected


@pytest.mark.parametrize(("spec", "nested", "message"), [
    ({"type": "yaml"}, True, "response_format.type must be text, json_object or json_schema"),
    ({"type": "json_schema", "schema": SCHEMA}, True,
     "response_format.json_schema.schema must be a JSON schema object"),
    ({"type": "json_schema", "json_schema": {"schema": SCHEMA}}, False,
     "response_format.schema must be a JSON schema object"),
    ("json", False, "response_format.type must be"),
])
def test_bad_specs(spec: Any, nested: bool, message: str) -> None:
    with pytest.raises(BadRequest, match=message.replace(".", r"\.")):
        openai_format(spec, "response_format", nested)
