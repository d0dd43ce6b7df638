"""Checking real responses against corral's /openapi.json (shared by tests/test_openapi.py and the
schemathesis hooks in tests/fuzz/)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


def media_type(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def documented_schema(document: dict[str, Any], path: str, method: str, status: int,
                      content_type: str) -> dict[str, Any] | None:
    """The schema the document gives for this reply, or None when it documents no body for it.
    Raises LookupError when the status or the content type is not documented at all."""
    operation = document["paths"][path][method.lower()]
    replies = operation["responses"]
    reply = replies.get(str(status)) or replies.get(f"{str(status)[0]}XX") or replies.get(
        "default")
    if reply is None:
        raise LookupError(f"{method} {path}: status {status} is not documented")
    content = reply.get("content")
    if not content:
        return None
    for media, entry in content.items():
        if media_type(media) == media_type(content_type):
            return entry["schema"]
    raise LookupError(f"{method} {path} {status}: {content_type} is not documented "
                      f"({', '.join(content)})")


def validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Validator:
    """A validator whose `#/components/...` references resolve in the document."""
    root = {**schema, "components": document["components"]}
    return jsonschema.Draft202012Validator(root)


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def body_problems(document: dict[str, Any], path: str, method: str, status: int,
                  content_type: str, body: bytes) -> list[str]:
    """How a reply differs from the document: each NDJSON line, each SSE event's JSON data, or
    the JSON body, validated against the schema documented for it."""
    try:
        schema = documented_schema(document, path, method, status, content_type)
    except LookupError as exc:
        return [str(exc)]
    if schema is None:
        return []
    media = media_type(content_type)
    text = body.decode()
    if media == NDJSON:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif media == SSE and "data" in (event_schema := _resolve(document, schema)).get(
            "properties", {}) and "contentSchema" in event_schema["properties"]["data"]:
        # Anthropic's events (`event: NAME` and `data: JSON` lines, no closing [DONE]).
        blocks = [event for event in text.split("\n\n") if event.strip()]
        lines = [dict(line.split(": ", 1) for line in block.split("\n")) for block in blocks]
        schema = event_schema["properties"]["data"]["contentSchema"]
        items = [json.loads(line["data"]) for line in lines]
    elif media == SSE:
        events = [event for event in text.split("\n\n") if event.strip()]
        # Each event's data line (the Responses API's events name their type on an `event:`
        # line before it).
        datas = [next((line.removeprefix("data: ") for line in event.splitlines()
                       if line.startswith("data: ")), "") for event in events]
        # The event schema's data holds JSON (contentSchema, an annotation jsonschema does not
        # apply), so each event's JSON is checked against it here.
        data_schema = _resolve(document, schema)["properties"]["data"]
        if "anyOf" in data_schema:  # chat completions' streams end with [DONE]
            if datas[-1] != "[DONE]":
                return ["the SSE stream does not end with data: [DONE]"]
            datas = datas[:-1]
            data_schema = data_schema["anyOf"][1]
        schema = data_schema["contentSchema"]
        items = [json.loads(data) for data in datas]
    elif media == "application/json":
        items = [json.loads(text)]
    else:
        return []
    check = validator(document, schema)
    return [f"{path} {status} item {i}: {error.message} at {list(error.absolute_path)}"
            for i, item in enumerate(items) for error in check.iter_errors(item)]
