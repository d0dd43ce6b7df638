"""The OpenAI-compatible API: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings.

Requests become the same `Inference` calls the native API makes; replies take OpenAI's shapes
(as Ollama's compatibility layer writes them), errors OpenAI's `{"error": {...}}` object.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.http import dumps, field, first_and_rest, json_response, read_json
from gateway.inference import Inference, check_messages
from gateway.routes.ollama import _chain, _cut, _floats
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


def _finish_reason(done: p.Done) -> str:
    return "length" if done.done_reason == "length" else "stop"


def _usage(done: p.Done) -> dict[str, int]:
    return {"prompt_tokens": done.prompt_eval_count, "completion_tokens": done.eval_count,
            "total_tokens": done.prompt_eval_count + done.eval_count}


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


async def chat_completions(request: Request) -> Response:
    data = await read_json(request)
    inference = _inference(request)
    name = data.get("model")
    model = inference.model(name)
    messages = _text_messages(data.get("messages"))
    if data.get("tools"):
        raise BadRequest(f"{model.name.full()} does not support tools")
    job = inference.job(model, None, data.get("keep_alive"), extra_options=_options(data))
    stream = inference.generate(job, messages=inference.chat_messages(model, messages))
    completion_id = f"chatcmpl-{secrets.randbelow(999)}"
    created = int(time.time())
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
            "model": name, "system_fingerprint": FINGERPRINT}
    first, rest = await first_and_rest(stream)

    if not field(data, "stream", bool, False):
        parts: list[str] = []
        message = first
        async for message in _chain(first, rest):
            if isinstance(message, p.Chunk):
                parts.append(message.text)
        assert isinstance(message, p.Done)
        return json_response({
            "id": completion_id, "object": "chat.completion", "created": created, "model": name,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": 0,
                         "message": {"role": "assistant", "content": "".join(parts)},
                         "finish_reason": _finish_reason(message)}],
            "usage": _usage(message),
        }, media_type=JSON)

    include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
    prefix = dumps(base)[:-1] + ',"choices":[{"index":0,"delta":'

    async def events() -> AsyncIterator[bytes]:
        role_sent = False
        try:
            async for message in _chain(first, rest):
                if isinstance(message, p.Chunk):
                    delta = {"content": message.text}
                    if not role_sent:
                        delta = {"role": "assistant", **delta}
                        role_sent = True
                    yield ("data: " + prefix + dumps(delta)
                           + ',"finish_reason":null}]}\n\n').encode()
                else:
                    yield _sse({**base, "choices": [{"index": 0, "delta": {},
                                                     "finish_reason": _finish_reason(message)}]}
                               ).encode()
                    if include_usage:
                        yield _sse({**base, "choices": [], "usage": _usage(message)}).encode()
        except CorralError as exc:
            yield _sse(error_body(exc.status, exc.message)).encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def completions(request: Request) -> Response:
    data = await read_json(request)
    inference = _inference(request)
    name = data.get("model")
    model = inference.model(name)
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    job = inference.job(model, None, data.get("keep_alive"), extra_options=_options(data))
    stream = inference.generate(job, prompt=prompt)
    completion_id = f"cmpl-{secrets.randbelow(999)}"
    created = int(time.time())
    base = {"id": completion_id, "object": "text_completion", "created": created, "model": name,
            "system_fingerprint": FINGERPRINT}
    first, rest = await first_and_rest(stream)

    if not field(data, "stream", bool, False):
        parts: list[str] = []
        message = first
        async for message in _chain(first, rest):
            if isinstance(message, p.Chunk):
                parts.append(message.text)
        assert isinstance(message, p.Done)
        return json_response({**base, "choices": [{"text": "".join(parts), "index": 0,
                                                   "finish_reason": _finish_reason(message)}],
                              "usage": _usage(message)}, media_type=JSON)

    async def events() -> AsyncIterator[bytes]:
        try:
            async for message in _chain(first, rest):
                if isinstance(message, p.Chunk):
                    yield _sse({**base, "choices": [{"text": message.text, "index": 0,
                                                     "finish_reason": None}]}).encode()
                else:
                    yield _sse({**base, "choices": [{"text": "", "index": 0,
                                                     "finish_reason": _finish_reason(message)}]}
                               ).encode()
        except CorralError as exc:
            yield _sse(error_body(exc.status, exc.message)).encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


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
    result = await inference.embed(job, inputs, truncate=True, normalize=True)
    items = []
    for index, raw in enumerate(result.vectors):
        vector = _cut(_floats(raw), dimensions)
        if encoding == "base64":
            from array import array
            value: Any = base64.b64encode(array("f", vector).tobytes()).decode()
        else:
            value = vector
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
