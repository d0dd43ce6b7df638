"""The OpenAI-compatible API: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings.

Requests become the same `Inference` calls the native API makes; replies take OpenAI's shapes
(as Ollama's compatibility layer writes them), errors OpenAI's `{"error": {...}}` object.
"""

from __future__ import annotations

import base64
import secrets
import time
from array import array
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.http import dumps, field, json_response, read_json, unless_disconnected
from gateway.inference import Generation, Inference, check_messages, vector
from shared import protocol as p
from shared.errors import BadRequest, CorralError, NotFound

JSON = "application/json"
FINGERPRINT = "fp_ollama"


def error_body(status: int, message: str) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _inference(request: Request) -> Inference:
    return request.app.state.inference


def _options(data: dict[str, Any]) -> dict[str, Any]:
    """OpenAI sampling fields as Ollama options; OpenAI's defaults where it differs."""
    options: dict[str, Any] = {
        "temperature": field(data, "temperature", (int, float), 1.0),
        "top_p": field(data, "top_p", (int, float), 1.0) or 1.0,
    }
    max_tokens = field(data, "max_completion_tokens", int) or field(data, "max_tokens", int)
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    for key in ("seed", "frequency_penalty", "presence_penalty"):
        if data.get(key) is not None:
            options[key] = field(data, key, (int, float))
    stop = data.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise BadRequest("stop must be a string or an array of strings")
        options["stop"] = stop
    return options


def _response_format(data: dict[str, Any]) -> str | dict[str, Any] | None:
    """OpenAI's response_format as Ollama's format: "json" or the JSON schema."""
    spec = data.get("response_format")
    if spec is None:
        return None
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = (spec.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise BadRequest("response_format.json_schema.schema must be an object")
        return schema
    raise BadRequest("response_format.type must be text, json_object or json_schema")


def _finish_reason(done: p.Done) -> str:
    return "length" if done.done_reason == "length" else "stop"


def _usage(done: p.Done) -> dict[str, Any]:
    return {"prompt_tokens": done.prompt_eval_count, "completion_tokens": done.eval_count,
            "total_tokens": done.prompt_eval_count + done.eval_count,
            "prompt_tokens_details": {"cached_tokens": done.cached_tokens}}


def _text_messages(raw: Any) -> list[dict[str, Any]]:
    """OpenAI messages (string or content-part content) as native messages."""
    if not isinstance(raw, list) or not raw:
        raise BadRequest("[] is too short - 'messages'")
    native: list[Any] = []
    for message in raw:
        if not isinstance(message, dict):
            raise BadRequest("each message must be an object")
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise BadRequest("only text content parts are supported")
                texts.append(str(part.get("text", "")))
            content = "".join(texts)
        native.append({"role": message.get("role"), "content": content})
    return check_messages(native)


def _sse(obj: Any) -> str:
    return "data: " + dumps(obj) + "\n\n"


def _sse_reply(generation: Generation, chunk_event: Callable[[str, bool], str],
               done_events: Callable[[p.Done], list[dict[str, Any]]]) -> StreamingResponse:
    """Server-sent events: one per chunk (`chunk_event(text, first)`), the closing events, and
    `data: [DONE]`. A failure midway becomes an OpenAI error event."""

    async def events() -> AsyncIterator[bytes]:
        first = True
        try:
            async for message in generation:
                if isinstance(message, p.Chunk):
                    yield chunk_event(message.text, first).encode()
                    first = False
                else:
                    for event in done_events(message):
                        yield _sse(event).encode()
        except CorralError as exc:
            yield _sse(error_body(exc.status, exc.message)).encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def chat_completions(request: Request) -> Response:
    data = await read_json(request)
    inference = _inference(request)
    name = data.get("model")
    model = inference.model(name)
    messages = _text_messages(data.get("messages"))
    if data.get("tools"):
        raise BadRequest(f"{model.name.full()} does not support tools")
    job = inference.job(model, None, data.get("keep_alive"), extra_options=_options(data))
    work = inference.generate(job, messages=inference.chat_messages(model, messages),
                              format_=_response_format(data))
    generation = await unless_disconnected(request, work)
    base = {"id": f"chatcmpl-{secrets.randbelow(999)}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": name, "system_fingerprint": FINGERPRINT}

    if not field(data, "stream", bool, False):
        text, done = await unless_disconnected(request, generation.collect())
        return json_response({
            **base, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": _finish_reason(done)}],
            "usage": _usage(done),
        }, media_type=JSON)

    include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
    prefix = "data: " + dumps(base)[:-1] + ',"choices":[{"index":0,"delta":'

    def chunk_event(text: str, first: bool) -> str:
        delta = {"role": "assistant", "content": text} if first else {"content": text}
        return prefix + dumps(delta) + ',"finish_reason":null}]}\n\n'

    def done_events(done: p.Done) -> list[dict[str, Any]]:
        events = [{**base, "choices": [{"index": 0, "delta": {},
                                        "finish_reason": _finish_reason(done)}]}]
        if include_usage:
            events.append({**base, "choices": [], "usage": _usage(done)})
        return events

    return _sse_reply(generation, chunk_event, done_events)


async def completions(request: Request) -> Response:
    data = await read_json(request)
    inference = _inference(request)
    name = data.get("model")
    model = inference.model(name)
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    job = inference.job(model, None, data.get("keep_alive"), extra_options=_options(data))
    generation = await unless_disconnected(request, inference.generate(job, prompt=prompt))
    base = {"id": f"cmpl-{secrets.randbelow(999)}", "object": "text_completion",
            "created": int(time.time()), "model": name, "system_fingerprint": FINGERPRINT}

    def choice(text: str, finish_reason: str | None) -> dict[str, Any]:
        return {**base, "choices": [{"text": text, "index": 0, "finish_reason": finish_reason}]}

    if not field(data, "stream", bool, False):
        text, done = await unless_disconnected(request, generation.collect())
        return json_response({**choice(text, _finish_reason(done)), "usage": _usage(done)},
                             media_type=JSON)
    return _sse_reply(generation, lambda text, _: _sse(choice(text, None)),
                      lambda done: [choice("", _finish_reason(done))])


async def embeddings(request: Request) -> Response:
    data = await read_json(request)
    inference = _inference(request)
    name = data.get("model")
    model = inference.model(name)
    raw_input = data.get("input")
    if isinstance(raw_input, str):
        inputs = [raw_input]
    elif isinstance(raw_input, list) and raw_input and all(isinstance(x, str) for x in raw_input):
        inputs = raw_input
    else:
        raise BadRequest("invalid input")
    encoding = field(data, "encoding_format", str, "float")
    if encoding not in ("float", "base64"):
        raise BadRequest("invalid encoding_format: expected float or base64")
    dimensions = field(data, "dimensions", int)
    job = inference.job(model, None, data.get("keep_alive"))
    result = await unless_disconnected(
        request, inference.embed(job, inputs, truncate=True, normalize=True))
    items = []
    for index, raw in enumerate(result.vectors):
        floats = vector(raw, dimensions)
        if encoding == "base64":
            value: Any = base64.b64encode(array("f", floats).tobytes()).decode()
        else:
            value = floats
        items.append({"object": "embedding", "embedding": value, "index": index})
    return json_response({"object": "list", "data": items, "model": name,
                          "usage": {"prompt_tokens": result.prompt_eval_count,
                                    "total_tokens": result.prompt_eval_count}}, media_type=JSON)


def _model_entry(model: Any) -> dict[str, Any]:
    return {"id": model.display(), "object": "model", "created": int(model.modified_at.timestamp()),
            "owned_by": model.name.namespace}


async def list_models(request: Request) -> Response:
    store = _inference(request).store
    return json_response({"object": "list", "data": [_model_entry(m) for m in store.list()]},
                         media_type=JSON)


async def get_model(request: Request) -> Response:
    name = request.path_params["model"]
    model = _inference(request).store.find(name)
    if model is None:
        raise NotFound(f"model '{name}' not found")
    return json_response(_model_entry(model), media_type=JSON)


routes = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
]
