"""OpenAI's structured-output specs as Ollama's `format`: None for text, "json", or the JSON
schema (the grammar path). Chat Completions sends it as `response_format` (the schema under
`json_schema.schema`), the Responses API as `text.format` (the schema under `schema`)."""

from __future__ import annotations

from typing import Any

from shared.errors import BadRequest


def openai_format(spec: Any, where: str, nested: bool) -> str | dict[str, Any] | None:
    """`spec` as Ollama's format; `where` names it in errors; `nested`: the schema sits in a
    `json_schema` object (Chat Completions) rather than beside `type` (Responses)."""
    if spec is None:
        return None
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        holder = (spec.get("json_schema") or {}) if nested else spec
        schema = holder.get("schema") if isinstance(holder, dict) else None
        if not isinstance(schema, dict):
            at = f"{where}.json_schema.schema" if nested else f"{where}.schema"
            raise BadRequest(f"{at} must be a JSON schema object")
        return schema
    raise BadRequest(f"{where}.type must be text, json_object or json_schema")
