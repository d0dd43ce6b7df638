"""GET /openapi.json: an OpenAPI 3.1 document of corral's native (`/api/...`) and OpenAI (`/v1/...`)
routes, bodies included.

The paths and methods come from the application's own route table, so a route cannot be served
without appearing here: `undescribed()` names any route this module has no operation for (a test
keeps it empty). The `options` object is built from gateway.options.OPTION_TYPES, the types the
gateway checks requests against. The bodies are JSON Schemas written below; tests replay real
responses through them and schemathesis fuzzes the server with them, so they cannot quietly
drift from what the server does. Objects allow properties beyond those listed (Ollama's clients
ignore unknown fields, and corral adds its own).

Streams: an NDJSON response's schema describes one line; an SSE response's (as OpenAPI 3.1
reads `text/event-stream`) describes one event, whose `data` is a JSON chunk or `[DONE]`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.http import json_response
from gateway.options import OPTION_TYPES
from shared.version import __version__

Schema = dict[str, Any]

# --- schema helpers ----------------------------------------------------------------------------


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict[str, Schema], required: Iterable[str] = ()) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required := list(required):
        schema["required"] = required
    return schema


def arr(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
ANY_OBJ: Schema = {"type": "object"}
TIME: Schema = {"type": "string", "description": "RFC 3339 with nanoseconds, as Go writes it"}
DIGEST: Schema = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
KEEP_ALIVE: Schema = {"description": "a duration (\"5m\", \"1h30m\") or seconds; negative: "
                                     "forever, 0: unload now",
                      "anyOf": [STR, NUM]}
FORMAT: Schema = {"description": "\"json\", or a JSON schema the output must follow",
                  "anyOf": [{"type": "string"}, ANY_OBJ]}
THINK: Schema = {"anyOf": [BOOL, {"type": "string", "enum": ["low", "medium", "high"]}]}
TOP_LOGPROBS: Schema = {"type": "integer", "minimum": 0, "maximum": 20}
CHOICES: Schema = {"type": "integer", "minimum": 1, "maximum": 8, "description": "`n`: each "
                   "choice takes a parallel slot"}
MAX_TOKENS: Schema = {"type": "integer", "minimum": 1}

_OPTION_SCHEMAS = {int: INT, float: NUM, bool: BOOL, str: STR,
                   list: {"anyOf": [STR, arr(STR)]}}


def options_schema() -> Schema:
    """Ollama's `options`, from the types the gateway checks them against."""
    return obj({name: _OPTION_SCHEMAS[kind] for name, (kind, _default) in OPTION_TYPES.items()})


# --- components --------------------------------------------------------------------------------

_METRICS = {"total_duration": INT, "load_duration": INT, "prompt_eval_count": INT,
            "prompt_eval_duration": INT, "eval_count": INT, "eval_duration": INT}
_LOGPROBS = {"logprobs": arr(ANY_OBJ)}
_TOOL_CALL = obj({"id": STR, "function": obj({"name": STR, "arguments": ANY_OBJ,
                                              "index": INT}, ["name"])}, ["function"])
_DETAILS = obj({"parent_model": STR, "format": STR, "family": STR,
                "families": nullable(arr(STR)), "parameter_size": STR,
                "quantization_level": STR},
               ["parent_model", "format", "family", "parameter_size", "quantization_level"])
_PROGRESS = obj({"status": STR, "digest": STR, "total": INT, "completed": INT}, ["status"])
_USAGE = obj({"prompt_tokens": INT, "completion_tokens": INT, "total_tokens": INT},
             ["prompt_tokens", "completion_tokens", "total_tokens"])
_OPENAI_BASE = {"id": STR, "object": STR, "created": INT, "model": STR,
                "system_fingerprint": STR}
_TEXT_PART = obj({"type": {"const": "text"}, "text": STR}, ["type", "text"])
_OPENAI_CALL = obj({"id": STR, "type": STR, "function": obj(
    {"name": STR, "arguments": {"type": "string", "description": "a JSON object"}}, ["name"])},
    ["function"])
_OPENAI_MESSAGE = obj({
    "role": {"type": "string",
             "enum": ["system", "assistant", "user", "function", "tool", "developer"]},
    "content": {"description": "text, or text parts (image and audio parts get a 400: no "
                               "vision or audio models)",
                "anyOf": [STR, arr(_TEXT_PART), {"type": "null"}]},
    "name": STR, "tool_calls": arr(_OPENAI_CALL), "tool_call_id": STR}, ["role"])
_TOOL_CHOICE: Schema = {"anyOf": [{"type": "string", "enum": ["none", "auto", "required"]},
                                  obj({"type": STR, "function": obj({"name": STR}, ["name"])},
                                      ["function"])]}
_RESPONSE_FORMAT = obj({"type": {"type": "string", "enum": ["text", "json_object",
                                                            "json_schema"]},
                        "json_schema": obj({"name": STR, "schema": ANY_OBJ})}, ["type"])

# The Responses API (gateway/routes/responses.py).
_RESPONSES_TEXT = obj({"type": {"type": "string", "enum": ["input_text", "output_text"]},
                       "text": STR}, ["type", "text"])
_RESPONSES_CONTENT: Schema = {
    "description": "text, or text parts (input_image gets a 400: no vision models)",
    "anyOf": [STR, arr(_RESPONSES_TEXT)]}
_RESPONSES_ITEM: Schema = {"anyOf": [
    obj({"type": {"const": "message"},
         "role": {"type": "string", "enum": ["user", "assistant", "system", "developer"]},
         "content": _RESPONSES_CONTENT}, ["role", "content"]),
    obj({"type": {"const": "function_call"}, "call_id": STR, "name": STR, "namespace": STR,
         "arguments": {"type": "string", "description": "a JSON object"}},
        ["type", "call_id", "name", "arguments"]),
    obj({"type": {"const": "function_call_output"}, "call_id": STR,
         "output": _RESPONSES_CONTENT}, ["type", "call_id", "output"]),
    obj({"type": {"const": "reasoning"}, "id": STR, "summary": arr(ANY_OBJ),
         "content": arr(ANY_OBJ), "encrypted_content": nullable(STR)}, ["type"])]}
_RESPONSES_FUNCTION = obj({"type": {"const": "function"}, "name": STR, "description": STR,
                           "parameters": ANY_OBJ, "strict": BOOL}, ["type", "name"])
_RESPONSES_TOOL: Schema = {
    "description": "function tools, and namespaces of them; a built-in tool type gets a 400",
    "anyOf": [_RESPONSES_FUNCTION,
              obj({"type": {"const": "namespace"}, "name": STR, "description": STR,
                   "tools": arr(_RESPONSES_FUNCTION)}, ["type", "name", "tools"])]}
_RESPONSES_OUTPUT: Schema = {"anyOf": [
    obj({"id": STR, "type": {"const": "message"}, "role": {"const": "assistant"},
         "status": STR, "content": arr(obj({"type": {"const": "output_text"}, "text": STR,
                                            "annotations": arr(ANY_OBJ)}, ["type", "text"]))},
        ["id", "type", "role", "status", "content"]),
    obj({"id": STR, "type": {"const": "function_call"}, "status": STR, "call_id": STR,
         "name": STR, "namespace": STR, "arguments": STR},
        ["id", "type", "call_id", "name", "arguments"]),
    obj({"id": STR, "type": {"const": "reasoning"}, "summary": arr(ANY_OBJ),
         "content": arr(obj({"type": {"const": "reasoning_text"}, "text": STR})),
         "encrypted_content": STR}, ["id", "type", "summary"])]}
_RESPONSES_USAGE = obj({"input_tokens": INT,
                        "input_tokens_details": obj({"cached_tokens": INT}, ["cached_tokens"]),
                        "output_tokens": INT,
                        "output_tokens_details": obj({"reasoning_tokens": INT},
                                                     ["reasoning_tokens"]),
                        "total_tokens": INT},
                       ["input_tokens", "input_tokens_details", "output_tokens",
                        "output_tokens_details", "total_tokens"])

COMPONENTS: dict[str, Schema] = {
    "Error": obj({"error": STR}, ["error"]),
    "OpenAIError": obj({"error": obj({"message": STR, "type": STR, "param": nullable(STR),
                                      "code": nullable(STR)},
                                     ["message", "type", "param", "code"])}, ["error"]),
    "Options": options_schema(),
    "Details": _DETAILS,
    "Message": obj({"role": STR, "content": STR, "thinking": STR, "images": arr(STR),
                    "tool_calls": arr(_TOOL_CALL), "tool_name": STR}, ["role"]),
    "Tool": obj({"type": STR, "function": ANY_OBJ}),
    "Progress": _PROGRESS,
    "VersionResponse": obj({"version": STR}, ["version"]),
    "TagsResponse": obj({"models": arr(obj({
        "name": STR, "model": STR, "modified_at": TIME, "size": INT, "digest": DIGEST,
        "details": ref("Details"), "capabilities": arr(STR)},
        ["name", "model", "modified_at", "size", "digest", "details"]))}, ["models"]),
    "PsResponse": obj({"models": arr(obj({
        "name": STR, "model": STR, "size": INT, "digest": DIGEST, "details": ref("Details"),
        "expires_at": TIME, "size_vram": INT, "context_length": INT, "corral": ANY_OBJ},
        ["name", "model", "size", "digest", "details", "expires_at", "size_vram"]))},
        ["models"]),
    "ShowRequest": obj({"model": STR, "name": STR, "verbose": BOOL, "system": STR,
                        "template": STR, "options": ANY_OBJ}),
    "ShowResponse": obj({
        "license": STR, "modelfile": STR, "parameters": STR, "template": STR, "system": STR,
        "details": ref("Details"), "messages": arr(ANY_OBJ), "model_info": ANY_OBJ,
        "projector_info": ANY_OBJ, "tensors": arr(ANY_OBJ), "capabilities": arr(STR),
        "modified_at": TIME}, ["modelfile", "template", "details", "model_info", "modified_at"]),
    "GenerateRequest": obj({
        "model": STR, "prompt": STR, "suffix": STR, "system": STR, "template": STR,
        "context": arr(INT), "stream": BOOL, "raw": BOOL, "format": FORMAT,
        "options": ref("Options"), "keep_alive": KEEP_ALIVE, "images": arr(STR),
        "think": THINK, "truncate": BOOL, "shift": BOOL, "logprobs": BOOL,
        "top_logprobs": TOP_LOGPROBS}, ["model"]),
    "GenerateResponse": obj({
        "model": STR, "created_at": TIME, "response": STR, "thinking": STR, "done": BOOL,
        "done_reason": STR, "context": arr(INT), **_METRICS, **_LOGPROBS},
        ["model", "created_at", "response", "done"]),
    "ChatRequest": obj({
        "model": STR, "messages": arr(ref("Message")), "tools": arr(ref("Tool")),
        "tool_choice": {"anyOf": [STR, ANY_OBJ]}, "format": FORMAT,
        "options": ref("Options"), "stream": BOOL, "keep_alive": KEEP_ALIVE, "think": THINK,
        "truncate": BOOL, "shift": BOOL, "logprobs": BOOL, "top_logprobs": TOP_LOGPROBS},
        ["model"]),
    "ChatResponse": obj({
        "model": STR, "created_at": TIME, "message": ref("Message"), "done": BOOL,
        "done_reason": STR, **_METRICS, **_LOGPROBS},
        ["model", "created_at", "message", "done"]),
    "EmbedRequest": obj({"model": STR, "input": {"anyOf": [STR, arr(STR)]}, "truncate": BOOL,
                         "dimensions": MAX_TOKENS, "options": ref("Options"),
                         "keep_alive": KEEP_ALIVE}, ["model"]),
    "EmbedResponse": obj({"model": STR, "embeddings": arr(arr(NUM)), **_METRICS},
                         ["model", "embeddings"]),
    "EmbeddingsRequest": obj({"model": STR, "prompt": STR, "options": ref("Options"),
                              "keep_alive": KEEP_ALIVE}, ["model"]),
    "EmbeddingsResponse": obj({"embedding": arr(NUM)}, ["embedding"]),
    "CopyRequest": obj({"source": STR, "destination": STR}, ["source", "destination"]),
    "DeleteRequest": obj({"model": STR, "name": STR}),
    "CreateRequest": obj({
        "model": STR, "from": STR, "files": {"type": "object",
                                             "additionalProperties": STR},
        "adapters": {"type": "object", "additionalProperties": STR}, "template": STR,
        "license": {"anyOf": [STR, arr(STR)]}, "system": STR, "parameters": ANY_OBJ,
        "messages": arr(ref("Message")), "quantize": STR, "stream": BOOL}, ["model"]),
    "TransferRequest": obj({"model": STR, "name": STR, "insecure": BOOL, "stream": BOOL}),
    "OpenAIModel": obj({"id": STR, "object": STR, "created": INT, "owned_by": STR},
                       ["id", "object", "created", "owned_by"]),
    "OpenAIModelList": obj({"object": STR, "data": arr(ref("OpenAIModel"))},
                           ["object", "data"]),
    "ChatCompletionRequest": obj({
        "model": STR, "messages": {**arr(_OPENAI_MESSAGE), "minItems": 1}, "stream": BOOL,
        "stream_options": obj({"include_usage": BOOL}), "temperature": NUM, "top_p": NUM,
        "max_tokens": MAX_TOKENS, "max_completion_tokens": MAX_TOKENS, "n": CHOICES,
        "seed": INT, "stop": {"anyOf": [STR, arr(STR)]}, "frequency_penalty": NUM,
        "presence_penalty": NUM, "response_format": _RESPONSE_FORMAT,
        "tools": arr(ref("Tool")), "tool_choice": _TOOL_CHOICE, "parallel_tool_calls": BOOL,
        "logprobs": BOOL, "top_logprobs": TOP_LOGPROBS, "user": STR, "keep_alive": KEEP_ALIVE,
        "reasoning_effort": STR, "options": ref("Options")}, ["model", "messages"]),
    "ChatCompletion": obj({**_OPENAI_BASE, "choices": arr(obj({
        "index": INT, "message": obj({"role": STR, "content": nullable(STR),
                                      "tool_calls": arr(ANY_OBJ), "reasoning": STR},
                                     ["role"]),
        "logprobs": nullable(ANY_OBJ), "finish_reason": nullable(STR)},
        ["index", "message", "finish_reason"])), "usage": _USAGE},
        ["id", "object", "created", "model", "choices", "usage"]),
    "ChatCompletionChunk": obj({**_OPENAI_BASE, "choices": arr(obj({
        "index": INT, "delta": obj({"role": STR, "content": nullable(STR),
                                    "tool_calls": arr(ANY_OBJ), "reasoning": STR}),
        "logprobs": nullable(ANY_OBJ), "finish_reason": nullable(STR)},
        ["index", "delta", "finish_reason"])), "usage": _USAGE},
        ["id", "object", "created", "model", "choices"]),
    "CompletionRequest": obj({
        "model": STR, "prompt": {"anyOf": [STR, {**arr(STR), "minItems": 1}]},
        "suffix": STR, "echo": BOOL, "stream": BOOL,
        "stream_options": obj({"include_usage": BOOL}), "temperature": NUM, "top_p": NUM,
        "max_tokens": MAX_TOKENS, "n": CHOICES, "seed": INT,
        "stop": {"anyOf": [STR, arr(STR)]}, "frequency_penalty": NUM, "presence_penalty": NUM,
        "logprobs": TOP_LOGPROBS, "user": STR,
        "keep_alive": KEEP_ALIVE, "options": ref("Options")}, ["model", "prompt"]),
    "Completion": obj({**_OPENAI_BASE, "choices": arr(obj({
        "text": STR, "index": INT, "logprobs": nullable(ANY_OBJ),
        "finish_reason": nullable(STR)}, ["text", "index", "finish_reason"])),
        "usage": _USAGE}, ["id", "object", "created", "model", "choices"]),
    "EmbeddingRequest": obj({"model": STR, "input": {"anyOf": [STR, {**arr(STR),
                                                                     "minItems": 1}]},
                             "encoding_format": {"type": "string",
                                                 "enum": ["float", "base64"]},
                             "dimensions": MAX_TOKENS, "user": STR}, ["model", "input"]),
    "EmbeddingList": obj({"object": STR, "model": STR, "usage": obj({
        "prompt_tokens": INT, "total_tokens": INT}), "data": arr(obj({
            "object": STR, "index": INT, "embedding": {"anyOf": [arr(NUM), STR]}},
            ["object", "index", "embedding"]))}, ["object", "data", "model", "usage"]),
    "ResponseRequest": obj({
        "model": STR, "input": {"anyOf": [STR, arr(_RESPONSES_ITEM)]}, "instructions": STR,
        "previous_response_id": STR, "store": BOOL, "stream": BOOL,
        "tools": arr(_RESPONSES_TOOL),
        "tool_choice": {"anyOf": [{"type": "string", "enum": ["none", "auto", "required"]},
                                  obj({"type": {"const": "function"}, "name": STR},
                                      ["type", "name"])]},
        "parallel_tool_calls": BOOL, "max_output_tokens": MAX_TOKENS, "temperature": NUM,
        "top_p": NUM,
        "reasoning": obj({"effort": {"type": "string", "enum": [
            "none", "minimal", "low", "medium", "high", "max", "xhigh", "ultra"]},
            "summary": {"type": "string", "enum": ["auto", "concise", "detailed", "none"]}}),
        "text": obj({"format": obj({
            "type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
            "name": STR, "schema": ANY_OBJ, "strict": BOOL}, ["type"])}),
        "metadata": {"type": "object", "additionalProperties": STR, "maxProperties": 16},
        "include": arr(STR), "prompt_cache_key": STR, "user": STR,
        "keep_alive": KEEP_ALIVE, "options": ref("Options")}, ["model"]),
    "Response": obj({
        "id": STR, "object": {"const": "response"}, "created_at": NUM,
        "status": {"type": "string", "enum": ["completed", "incomplete", "in_progress",
                                              "failed"]},
        "error": nullable(obj({"code": STR, "message": STR}, ["message"])),
        "incomplete_details": nullable(obj({"reason": STR})), "model": STR,
        "output": arr(_RESPONSES_OUTPUT), "previous_response_id": nullable(STR),
        "store": BOOL, "usage": nullable(_RESPONSES_USAGE), "metadata": ANY_OBJ},
        ["id", "object", "created_at", "status", "model", "output"]),
    "ResponseStreamEvent": obj({
        "type": STR, "sequence_number": INT, "response": ref("Response"),
        "output_index": INT, "content_index": INT, "item_id": STR,
        "item": _RESPONSES_OUTPUT, "delta": STR, "text": STR, "arguments": STR,
        "message": STR}, ["type", "sequence_number"]),
    "ResponseDeleted": obj({"id": STR, "object": {"const": "response.deleted"},
                            "deleted": BOOL}, ["id", "object", "deleted"]),
}


# One example per request body: documentation for clients, and the first cases schemathesis
# sends (its "examples" phase).
_MODEL = "gemma3:270m"
_USER = [{"role": "user", "content": "Why is the sky blue?"}]
EXAMPLES: dict[str, dict[str, Any]] = {
    "ShowRequest": {"model": _MODEL},
    "GenerateRequest": {"model": _MODEL, "prompt": "Why is the sky blue?", "stream": False,
                        "options": {"num_predict": 16}},
    "ChatRequest": {"model": _MODEL, "messages": _USER, "options": {"num_predict": 16}},
    "EmbedRequest": {"model": _MODEL, "input": ["Why is the sky blue?", "Rayleigh scattering"]},
    "EmbeddingsRequest": {"model": _MODEL, "prompt": "Why is the sky blue?"},
    "CopyRequest": {"source": _MODEL, "destination": "my-gemma:latest"},
    "DeleteRequest": {"model": "my-gemma:latest"},
    "CreateRequest": {"model": "my-gemma", "from": _MODEL, "system": "Answer briefly."},
    "TransferRequest": {"model": "registry.example.com/library/my-gemma:latest"},
    "ChatCompletionRequest": {"model": _MODEL, "messages": _USER, "max_tokens": 16},
    "CompletionRequest": {"model": _MODEL, "prompt": "The sky is blue because",
                          "max_tokens": 16},
    "EmbeddingRequest": {"model": _MODEL, "input": "Why is the sky blue?"},
    "ResponseRequest": {"model": _MODEL, "input": "Why is the sky blue?",
                        "instructions": "Answer briefly.", "max_output_tokens": 16},
}
for _name, _example in EXAMPLES.items():
    COMPONENTS[_name]["examples"] = [_example]


def _sse(chunk: str) -> Schema:
    """One server-sent event (OpenAPI 3.1 reads an SSE schema per event): JSON data holding a
    chunk (or, mid-stream, an error), or the closing `[DONE]`."""
    return obj({"data": {"anyOf": [
        {"const": "[DONE]"},
        {"type": "string", "contentMediaType": "application/json",
         "contentSchema": {"anyOf": [ref(chunk), ref("OpenAIError")]}}]}}, ["data"])


def _typed_sse(event: str) -> Schema:
    """One event of the Responses API's stream: its type named in `event:`, its JSON in
    `data:` (no closing `[DONE]`)."""
    return obj({"event": STR, "data": {"type": "string", "contentMediaType": "application/json",
                                       "contentSchema": ref(event)}}, ["event", "data"])


# --- operations --------------------------------------------------------------------------------

NATIVE_JSON = "application/json; charset=utf-8"  # what Ollama (Go) writes, and corral
NDJSON = "application/x-ndjson"


def _body(schema: Schema, media: str = "application/json") -> Schema:
    return {"required": True, "content": {media: {"schema": schema}}}


def _reply(description: str, content: dict[str, Schema] | None = None) -> Schema:
    reply: Schema = {"description": description}
    if content:
        reply["content"] = {media: {"schema": schema} for media, schema in content.items()}
    return reply


def _native_errors(*statuses: int) -> dict[str, Schema]:
    error = {NATIVE_JSON: ref("Error")}
    words = {400: "bad request", 403: "host not allowed", 404: "model not found",
             413: "body too large", 499: "client went away", 500: "server error",
             503: "server busy (queue full)"}
    return {str(s): _reply(words[s], error) for s in statuses}


def _openai_errors(*statuses: int) -> dict[str, Schema]:
    error = {"application/json": ref("OpenAIError")}
    words = {400: "bad request", 403: "host not allowed", 404: "model not found",
             413: "body too large", 500: "server error", 503: "server busy (queue full)"}
    return {str(s): _reply(words[s], error) for s in statuses}


_INFERENCE_ERRORS = (400, 404, 500, 503)


def _native(summary: str, request: str | None, ok: dict[str, Schema], *errors: int,
            ok_status: str = "200") -> Schema:
    operation: Schema = {"summary": summary, "tags": ["native"],
                         "responses": {ok_status: _reply("success", ok),
                                       **_native_errors(*errors)}}
    if request is not None:
        operation["requestBody"] = _body(ref(request))
    return operation


def _openai(summary: str, request: str | None, ok: dict[str, Schema], *errors: int) -> Schema:
    operation: Schema = {"summary": summary, "tags": ["openai"],
                         "responses": {"200": _reply("success", ok), **_openai_errors(*errors)}}
    if request is not None:
        operation["requestBody"] = _body(ref(request))
    return operation


def _path_param(name: str, description: str) -> list[Schema]:
    return [{"name": name, "in": "path", "required": True, "description": description,
             "schema": STR}]


OPERATIONS: dict[tuple[str, str], Schema] = {
    ("/", "get"): {"summary": "Liveness: \"Ollama is running\"", "tags": ["native"],
                   "responses": {"200": _reply("running", {"text/plain; charset=utf-8": STR})}},
    ("/", "head"): {"summary": "Liveness, no body", "tags": ["native"],
                    "responses": {"200": _reply("running")}},
    ("/api/version", "get"): _native("Ollama API version corral speaks", None,
                                     {NATIVE_JSON: ref("VersionResponse")}),
    ("/api/version", "head"): {"summary": "Version, no body", "tags": ["native"],
                               "responses": {"200": _reply("ok")}},
    ("/api/tags", "get"): _native("Local models", None, {NATIVE_JSON: ref("TagsResponse")}),
    ("/api/tags", "head"): {"summary": "Local models, no body", "tags": ["native"],
                            "responses": {"200": _reply("ok")}},
    ("/api/ps", "get"): _native("Loaded models", None, {NATIVE_JSON: ref("PsResponse")}),
    ("/api/show", "post"): _native("A model's details", "ShowRequest",
                                   {NATIVE_JSON: ref("ShowResponse")}, 400, 404),
    ("/api/generate", "post"): _native(
        "Complete a prompt (NDJSON stream unless \"stream\": false; an empty prompt loads the "
        "model)", "GenerateRequest",
        {NATIVE_JSON: ref("GenerateResponse"), NDJSON: ref("GenerateResponse")},
        *_INFERENCE_ERRORS),
    ("/api/chat", "post"): _native(
        "Chat (NDJSON stream unless \"stream\": false; no messages loads the model)",
        "ChatRequest", {NATIVE_JSON: ref("ChatResponse"), NDJSON: ref("ChatResponse")},
        *_INFERENCE_ERRORS),
    ("/api/embed", "post"): _native("Embeddings of one or more inputs", "EmbedRequest",
                                    {NATIVE_JSON: ref("EmbedResponse")}, *_INFERENCE_ERRORS),
    ("/api/embeddings", "post"): _native("Embedding of one prompt (older API)",
                                         "EmbeddingsRequest",
                                         {NATIVE_JSON: ref("EmbeddingsResponse")},
                                         *_INFERENCE_ERRORS),
    ("/api/copy", "post"): _native("Copy a model (its manifest; blobs are shared)",
                                   "CopyRequest", {}, 400, 404),
    ("/api/delete", "delete"): _native("Delete a model", "DeleteRequest", {}, 400, 404),
    ("/api/create", "post"): _native("Create a model (NDJSON progress unless \"stream\": false)",
                                     "CreateRequest", {NATIVE_JSON: ref("Progress"),
                                                       NDJSON: ref("Progress")}, 400, 404, 500),
    ("/api/pull", "post"): _native("Pull a model from a registry (NDJSON progress)",
                                   "TransferRequest", {NATIVE_JSON: ref("Progress"),
                                                       NDJSON: ref("Progress")}, 400, 404, 500),
    ("/api/push", "post"): _native("Push a model to a registry (NDJSON progress)",
                                   "TransferRequest", {NATIVE_JSON: ref("Progress"),
                                                       NDJSON: ref("Progress")}, 400, 404, 500),
    ("/api/blobs/{digest}", "head"): {
        "summary": "Whether the store holds a blob", "tags": ["native"],
        "parameters": _path_param("digest", "sha256:<64 hex>"),
        "responses": {"200": _reply("present"), "400": _reply("invalid digest"),
                      "404": _reply("absent")}},
    ("/api/blobs/{digest}", "post"): {
        "summary": "Upload a blob (checked against its digest)", "tags": ["native"],
        "parameters": _path_param("digest", "sha256:<64 hex>"),
        "requestBody": _body({"type": "string", "contentMediaType": "application/octet-stream"},
                             "application/octet-stream"),
        "responses": {"201": _reply("stored"), "200": _reply("already stored"),
                      **_native_errors(400, 413, 500)}},
    ("/v1/models", "get"): _openai("Models, OpenAI's shape", None,
                                   {"application/json": ref("OpenAIModelList")}),
    ("/v1/models/{model}", "get"): {
        **_openai("One model, OpenAI's shape", None, {"application/json": ref("OpenAIModel")},
                  400, 404),
        "parameters": _path_param("model", "a model name")},
    ("/v1/chat/completions", "post"): _openai(
        "Chat completions (SSE with \"stream\": true)", "ChatCompletionRequest",
        {"application/json": ref("ChatCompletion"),
         "text/event-stream": _sse("ChatCompletionChunk")}, *_INFERENCE_ERRORS),
    ("/v1/completions", "post"): _openai(
        "Text completions (SSE with \"stream\": true)", "CompletionRequest",
        {"application/json": ref("Completion"), "text/event-stream": _sse("Completion")},
        *_INFERENCE_ERRORS),
    ("/v1/embeddings", "post"): _openai("Embeddings, OpenAI's shape", "EmbeddingRequest",
                                        {"application/json": ref("EmbeddingList")},
                                        *_INFERENCE_ERRORS),
    ("/v1/responses", "post"): _openai(
        "OpenAI's Responses API (typed SSE events with \"stream\": true); kept for "
        "previous_response_id unless \"store\": false", "ResponseRequest",
        {"application/json": ref("Response"), "text/event-stream": _typed_sse(
            "ResponseStreamEvent")}, *_INFERENCE_ERRORS),
    ("/v1/responses/{response_id}", "get"): {
        **_openai("A stored response (this API key's own)", None,
                  {"application/json": ref("Response")}, 404),
        "parameters": _path_param("response_id", "resp_...")},
    ("/v1/responses/{response_id}", "delete"): {
        **_openai("Delete a stored response", None,
                  {"application/json": ref("ResponseDeleted")}, 404),
        "parameters": _path_param("response_id", "resp_...")},
    ("/openapi.json", "get"): {"summary": "This document", "tags": ["meta"],
                               "responses": {"200": _reply("OpenAPI 3.1",
                                                           {"application/json": ANY_OBJ})}},
}

# The Anthropic Messages API (its own module; it reads the helpers above).
from gateway import openapi_anthropic  # noqa: E402

COMPONENTS.update(openapi_anthropic.COMPONENTS)
OPERATIONS.update(openapi_anthropic.OPERATIONS)

DOCUMENTED_PREFIXES = ("/api/", "/v1/")
DOCUMENTED_PATHS = ("/", "/openapi.json")


def _openapi_path(path: str) -> str:
    """Starlette's `{model:path}` is OpenAPI's `{model}`."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


def _methods(route: Route) -> list[str]:
    """A route's methods, lower case; Starlette adds HEAD to every GET route, which is
    documented only where the route names it (HEAD-only routes, and those listed above)."""
    methods = {m.lower() for m in route.methods or ()}
    path = _openapi_path(route.path)
    if "get" in methods and (path, "head") not in OPERATIONS:
        methods.discard("head")
    return sorted(methods)


def documented_routes(routes: Iterable[BaseRoute]) -> list[tuple[str, str]]:
    """(path, method) of every route of the native and OpenAI APIs in the table."""
    found = []
    for route in routes:
        if not isinstance(route, Route):
            continue
        path = _openapi_path(route.path)
        if path in DOCUMENTED_PATHS or path.startswith(DOCUMENTED_PREFIXES):
            found += [(path, method) for method in _methods(route)]
    return found


def undescribed(routes: Iterable[BaseRoute]) -> list[tuple[str, str]]:
    """Routes served but not described here (kept empty by a test)."""
    return [key for key in documented_routes(routes) if key not in OPERATIONS]


def build(routes: Iterable[BaseRoute]) -> dict[str, Any]:
    """The document for these routes."""
    paths: dict[str, dict[str, Schema]] = {}
    for path, method in documented_routes(routes):
        operation = OPERATIONS.get((path, method))
        if operation is None:  # served but not described yet: listed, bodies unknown
            operation = {"summary": "(not described yet)",
                         "responses": {"default": _reply("see the README")}}
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "corral", "version": __version__,
                 "description": "An Ollama-compatible LLM server: Ollama's native API and "
                                "OpenAI's, as corral serves them. Errors are {\"error\": ...} "
                                "on /api and OpenAI's error object on /v1."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": COMPONENTS},
    }


async def openapi_json(request: Request) -> Response:
    app = request.app
    document = getattr(app.state, "openapi", None)
    if document is None:  # built once: the route table does not change while serving
        document = app.state.openapi = build(app.routes)
    return json_response(document, media_type="application/json")


routes = [Route("/openapi.json", openapi_json, methods=["GET"])]
