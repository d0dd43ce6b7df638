"""The Anthropic Messages API in /openapi.json: request and reply bodies, the SSE events, and
Anthropic's error object (gateway/routes/anthropic.py serves them).

Merged into gateway/openapi.py's tables when that module loads. A streamed reply is documented
per event as OpenAPI 3.1 reads `text/event-stream`: an `event` name and JSON `data` (no closing
`[DONE]`, unlike OpenAI's streams).
"""

from __future__ import annotations

from typing import Any

from gateway.openapi import (
    ANY_OBJ,
    BOOL,
    INT,
    STR,
    Schema,
    _body,
    _path_param,
    _reply,
    arr,
    nullable,
    obj,
    ref,
)

JSON = "application/json"
_ERRORS = {400: "bad request", 401: "missing or invalid API key",
           403: "a model the key may not use, or host not allowed", 404: "model not found",
           413: "body too large", 429: "a key's limit reached", 500: "server error",
           529: "server busy (queue full)"}

_CONTENT: Schema = {"anyOf": [STR, arr(obj({"type": STR}, ["type"]))],
                    "description": "a string, or content blocks: text, tool_use, tool_result, "
                                   "thinking, redacted_thinking (image: a 400 for now)"}
_USAGE = obj({"input_tokens": INT, "output_tokens": INT, "cache_read_input_tokens": INT,
              "cache_creation_input_tokens": INT}, ["input_tokens", "output_tokens"])
_REQUEST_FIELDS: dict[str, Schema] = {
    "model": STR,
    "messages": {**arr(obj({"role": {"type": "string",
                                     "enum": ["user", "assistant", "system"]},
                            "content": _CONTENT}, ["role", "content"])), "minItems": 1},
    "system": {"anyOf": [STR, arr(obj({"type": {"const": "text"}, "text": STR},
                                      ["type", "text"]))]},
    "tools": arr(obj({"name": STR, "description": STR, "input_schema": ANY_OBJ},
                     ["name", "input_schema"])),
    "tool_choice": obj({"type": {"type": "string", "enum": ["auto", "any", "tool", "none"]},
                        "name": STR, "disable_parallel_tool_use": BOOL}, ["type"]),
    "thinking": obj({"type": {"type": "string",
                              "enum": ["enabled", "disabled", "adaptive", "between_tools"]},
                     "budget_tokens": {"type": "integer", "minimum": 1}}, ["type"]),
    "output_config": obj({"effort": {"type": "string",
                                     "enum": ["low", "medium", "high", "xhigh", "max"]},
                          "format": obj({"type": {"const": "json_schema"},
                                         "schema": ANY_OBJ}, ["type", "schema"])}),
    "metadata": obj({"user_id": STR}),
    "context_management": ANY_OBJ,
}
_BLOCK = obj({"type": {"type": "string", "enum": ["text", "thinking", "tool_use"]},
              "text": STR, "thinking": STR, "signature": STR, "id": STR, "name": STR,
              "input": ANY_OBJ}, ["type"])
_MESSAGE_FIELDS: dict[str, Schema] = {
    "id": STR, "type": {"const": "message"}, "role": {"const": "assistant"}, "model": STR,
    "content": arr(_BLOCK),
    "stop_reason": nullable({"type": "string",
                             "enum": ["end_turn", "max_tokens", "stop_sequence", "tool_use"]}),
    "stop_sequence": nullable(STR), "usage": _USAGE}
_DELTA = obj({"type": {"type": "string", "enum": ["text_delta", "thinking_delta",
                                                  "signature_delta", "input_json_delta"]},
              "text": STR, "thinking": STR, "signature": STR, "partial_json": STR}, ["type"])

COMPONENTS: dict[str, Schema] = {
    "AnthropicError": obj({"type": {"const": "error"}, "error": obj(
        {"type": STR, "message": STR}, ["type", "message"]), "request_id": STR},
        ["type", "error"]),
    "MessagesRequest": obj({
        **_REQUEST_FIELDS, "max_tokens": {"type": "integer", "minimum": 1}, "stream": BOOL,
        "stop_sequences": arr({"type": "string", "minLength": 1}),
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "top_k": {"type": "integer", "minimum": 0}}, ["model", "max_tokens", "messages"]),
    "CountTokensRequest": obj(_REQUEST_FIELDS, ["model", "messages"]),
    "CountTokensResponse": obj({"input_tokens": INT}, ["input_tokens"]),
    "AnthropicMessage": obj(_MESSAGE_FIELDS, list(_MESSAGE_FIELDS)),
    "AnthropicStreamEvent": {"anyOf": [
        obj({"type": {"const": "message_start"}, "message": obj(
            _MESSAGE_FIELDS, ["id", "type", "role", "model", "content", "usage"])},
            ["type", "message"]),
        obj({"type": {"const": "ping"}}, ["type"]),
        obj({"type": {"const": "content_block_start"}, "index": INT,
             "content_block": _BLOCK}, ["type", "index", "content_block"]),
        obj({"type": {"const": "content_block_delta"}, "index": INT, "delta": _DELTA},
            ["type", "index", "delta"]),
        obj({"type": {"const": "content_block_stop"}, "index": INT}, ["type", "index"]),
        obj({"type": {"const": "message_delta"}, "delta": obj({
            "stop_reason": _MESSAGE_FIELDS["stop_reason"], "stop_sequence": nullable(STR)}),
             "usage": _USAGE}, ["type", "delta", "usage"]),
        obj({"type": {"const": "message_stop"}}, ["type"]),
        ref("AnthropicError")]},
    "AnthropicModel": obj({"type": {"const": "model"}, "id": STR, "display_name": STR,
                           "created_at": STR}, ["type", "id", "display_name", "created_at"]),
    "AnthropicModelList": obj({"data": arr(ref("AnthropicModel")), "has_more": BOOL,
                               "first_id": nullable(STR), "last_id": nullable(STR)},
                              ["data", "has_more"]),
}

_MODEL = "gemma3:270m"
_USER = [{"role": "user", "content": "Why is the sky blue?"}]
EXAMPLES: dict[str, dict[str, Any]] = {
    "MessagesRequest": {"model": _MODEL, "max_tokens": 16, "messages": _USER},
    "CountTokensRequest": {"model": _MODEL, "messages": _USER},
}
for _name, _example in EXAMPLES.items():
    COMPONENTS[_name]["examples"] = [_example]


def _errors(*statuses: int) -> dict[str, Schema]:
    return {str(s): _reply(_ERRORS[s], {JSON: ref("AnthropicError")}) for s in statuses}


def _sse(event: str) -> Schema:
    """One server-sent event: its name and JSON data (the stream has no `[DONE]`)."""
    return obj({"event": STR, "data": {"type": "string", "contentMediaType": JSON,
                                       "contentSchema": ref(event)}}, ["event", "data"])


def _operation(summary: str, request: str, ok: dict[str, Schema]) -> Schema:
    return {"summary": summary, "tags": ["anthropic"], "requestBody": _body(ref(request)),
            "responses": {"200": _reply("success", ok),
                          **_errors(400, 401, 403, 404, 413, 429, 500, 529)}}


_MODELS_NOTE = " (Anthropic's shape when the request carries anthropic-version)"
OPERATIONS: dict[tuple[str, str], Schema] = {
    ("/v1/messages", "post"): _operation(
        "Anthropic Messages (SSE with \"stream\": true); also as /v1/messages?beta=true",
        "MessagesRequest", {JSON: ref("AnthropicMessage"), "text/event-stream": _sse(
            "AnthropicStreamEvent")}),
    ("/v1/messages/count_tokens", "post"): _operation(
        "The prompt tokens a Messages request would read", "CountTokensRequest",
        {JSON: ref("CountTokensResponse")}),
    ("/v1/models", "get"): {
        "summary": "Models, OpenAI's shape" + _MODELS_NOTE, "tags": ["openai", "anthropic"],
        "responses": {"200": _reply("success", {JSON: {"anyOf": [
            ref("OpenAIModelList"), ref("AnthropicModelList")]}})}},
    ("/v1/models/{model}", "get"): {
        "summary": "One model, OpenAI's shape" + _MODELS_NOTE, "tags": ["openai", "anthropic"],
        "parameters": _path_param("model", "a model name"),
        "responses": {"200": _reply("success", {JSON: {"anyOf": [
            ref("OpenAIModel"), ref("AnthropicModel")]}}),
            "400": _reply("bad request", {JSON: {"anyOf": [ref("OpenAIError"),
                                                           ref("AnthropicError")]}}),
            "404": _reply("model not found", {JSON: {"anyOf": [ref("OpenAIError"),
                                                               ref("AnthropicError")]}})}},
}
