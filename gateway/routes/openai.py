"""The OpenAI-compatible API: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings.

Requests become the same `Inference` calls the native API makes; replies take OpenAI's shapes
(as Ollama's compatibility layer writes them), errors OpenAI's `{"error": {...}}` object.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import secrets
import time
from array import array
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway import images
from gateway.formats import openai_format
from gateway.http import Stream, dumps, field, json_response, read_json, unless_disconnected
from gateway.inference import (
    Event,
    Generation,
    Inference,
    Job,
    Thinking,
    ToolCalls,
    check_messages,
    vector,
)
from gateway.options import OPTION_TYPES
from gateway.team import context as team
from gateway.tools import check_tool_choice, check_tools
from registry.store import LocalModel
from shared import protocol as p
from shared.errors import BadRequest, CorralError, NotFound

JSON = "application/json"
FINGERPRINT = "fp_ollama"
MAX_CHOICES = 8  # `n`: each choice takes a parallel slot

# OpenAI's error types by status; the SDKs pick their exception class from the status.
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None
               ) -> dict[str, Any]:
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "api_error"),
                      "param": param, "code": code}}


class InvalidParam(BadRequest):
    """A 400 naming the field at fault, which OpenAI's error object carries (param, code)."""

    def __init__(self, message: str, param: str, code: str) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


# The roles OpenAI's chat API takes; another is its 400. (Ollama's /api/chat passes any role on
# to the template, and so does corral's.)
ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_ROLE_LIST = ", ".join(f"'{r}'" for r in ROLES[:-1]) + f", and '{ROLES[-1]}'"


def _inference(request: Request) -> Inference:
    return request.app.state.inference


# --- request fields ------------------------------------------------------------------------------


def _options(data: dict[str, Any]) -> dict[str, Any]:
    """OpenAI sampling fields as Ollama options; OpenAI's defaults where it differs. Ollama's own
    options may come as extra body fields (`num_ctx`, `top_k`, ...) or in an `options` object."""
    options: dict[str, Any] = {name: data[name] for name in OPTION_TYPES
                               if name in data and name not in _OPENAI_NAMED}
    extra = field(data, "options", dict)
    if extra:
        options.update(extra)
    options["temperature"] = field(data, "temperature", (int, float), 1.0)
    options["top_p"] = field(data, "top_p", (int, float), 1.0) or 1.0
    max_tokens = field(data, "max_completion_tokens", int) or field(data, "max_tokens", int)
    if max_tokens is not None:
        if max_tokens < 1:
            raise BadRequest("max_tokens must be at least 1")
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


# OpenAI fields that share a name with an Ollama option but are read by `_options` itself.
_OPENAI_NAMED = frozenset({"temperature", "top_p", "seed", "frequency_penalty",
                           "presence_penalty", "stop"})


def _choices(data: dict[str, Any]) -> int:
    n = field(data, "n", int, 1)
    if not 1 <= n <= MAX_CHOICES:
        raise BadRequest(f"n must be between 1 and {MAX_CHOICES}")
    return n


# reasoning_effort as Ollama maps it onto `think`.
_EFFORTS: dict[str, bool | str] = {"none": False, "minimal": "low", "low": "low",
                                   "medium": "medium", "high": "high", "max": "max",
                                   "xhigh": "max", "ultra": "max"}


def _think(data: dict[str, Any]) -> Any:
    """`reasoning_effort` (or `reasoning.effort`) as a think value; Ollama's own `think` may
    come as an extra body field."""
    reasoning = data.get("reasoning")
    effort = data.get("reasoning_effort")
    if effort is None and isinstance(reasoning, dict):
        effort = reasoning.get("effort")
    if effort is None:
        return data.get("think")
    if not isinstance(effort, str) or effort not in _EFFORTS:
        raise BadRequest(f"invalid reasoning value: {effort!r} (must be "
                         + ", ".join(f'"{e}"' for e in _EFFORTS) + ")")
    return _EFFORTS[effort]


def _chat_logprobs(data: dict[str, Any]) -> int:
    top = field(data, "top_logprobs", int)
    if top is not None and not 0 <= top <= p.MAX_TOP_LOGPROBS:
        raise BadRequest(f"top_logprobs must be between 0 and {p.MAX_TOP_LOGPROBS}")
    if not field(data, "logprobs", bool, False):
        if top is not None:
            raise BadRequest("top_logprobs requires logprobs to be true")
        return -1
    return top or 0


def _part_text(part: Any) -> str | bytes:
    """One content part's text, or an image part's bytes (a base64 data URL); audio parts are
    refused clearly."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise BadRequest("a text content part needs a string text")
        return text
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        return images.from_url(url, "image_url")
    if kind == "input_audio":
        raise BadRequest("audio input is not supported")
    raise BadRequest(f"unknown content part type {kind!r}")


def _native_calls(raw: Any) -> list[dict[str, Any]]:
    """An assistant message's OpenAI tool_calls (arguments as a JSON string) as Ollama's."""
    if not isinstance(raw, list):
        raise BadRequest("tool_calls must be an array")
    calls = []
    for index, call in enumerate(raw):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRequest("each tool call needs function.name")
        arguments = fn.get("arguments") or "{}"
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                raise BadRequest(f"tool call arguments of {fn['name']!r} are not valid JSON"
                                 ) from None
        if not isinstance(call.get("id", ""), str):
            raise BadRequest("tool call id must be a string")
        calls.append({"id": call.get("id"), "function": {"index": index, "name": fn["name"],
                                                         "arguments": arguments}})
    return calls


def _messages(raw: Any) -> list[dict[str, Any]]:
    """OpenAI messages as native ones: content parts joined, `developer` as system, tool calls
    with object arguments, tool results named after the call they answer."""
    if not isinstance(raw, list) or not raw:
        raise BadRequest("[] is too short - 'messages'")
    native: list[Any] = []
    call_names: dict[str, str] = {}  # tool call id -> function name
    for index, message in enumerate(raw):
        if not isinstance(message, dict):
            raise BadRequest("each message must be an object")
        role = message.get("role")
        if role is None:
            raise InvalidParam(f"Missing required parameter: 'messages[{index}].role'.",
                               f"messages[{index}].role", "missing_required_parameter")
        if role not in ROLES:
            shown = f"'{role[:100]}'" if isinstance(role, str) else json.dumps(role)[:100]
            raise InvalidParam(f"Invalid value: {shown}. Supported values are: {_ROLE_LIST}.",
                               f"messages[{index}].role", "invalid_value")
        content = message.get("content")
        pictures: list[bytes] = []
        if isinstance(content, list):  # images go before the text, as Ollama's layer puts them
            parts = [_part_text(part) for part in content]
            pictures = [part for part in parts if isinstance(part, bytes)]
            content = "".join(part for part in parts if isinstance(part, str))
        item: dict[str, Any] = {"role": "system" if role == "developer" else role,
                                "content": content}
        if pictures:
            item["images"] = pictures
        # Earlier thinking: DeepSeek's and vLLM's name, or Ollama's compatibility layer's.
        thinking = message.get("reasoning_content") or message.get("reasoning")
        if thinking:
            item["thinking"] = thinking
        if message.get("tool_calls"):
            item["tool_calls"] = _native_calls(message["tool_calls"])
            call_names.update((c["id"], c["function"]["name"]) for c in item["tool_calls"]
                              if c["id"])
        if role == "tool":
            call_id = message.get("tool_call_id")
            item["tool_call_id"] = call_id
            item["tool_name"] = message.get("name") or call_names.get(call_id or "", "")
        native.append(item)
    return check_messages(native)


# --- reply pieces --------------------------------------------------------------------------------


def _finish_reason(done: p.Done, called: bool) -> str:
    if done.done_reason == "length":
        return "length"
    return "tool_calls" if called else "stop"


def _usage(dones: dict[int, p.Done], n: int, reasoning: int | None = None) -> dict[str, Any]:
    """Usage over all choices (by index; `n` per prompt): each prompt counted once, every
    choice's completion; `reasoning`: the tokens of their thinking (chat only)."""
    ordered = [dones[index] for index in sorted(dones)]
    firsts = ordered[::n]  # one choice per prompt
    prompt = sum(done.prompt_eval_count for done in firsts)
    completion = sum(done.eval_count for done in ordered)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion,
             "total_tokens": prompt + completion,
             "prompt_tokens_details": {"cached_tokens": sum(d.cached_tokens for d in firsts)}}
    if reasoning is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


def _reasoning(thinking: str) -> dict[str, str]:
    """Thinking under both names clients read: `reasoning_content` (llama.cpp's server, vLLM,
    DeepSeek) and `reasoning` (Ollama's compatibility layer)."""
    return {"reasoning_content": thinking, "reasoning": thinking} if thinking else {}


def _openai_calls(calls: list[dict[str, Any]], *, streamed: bool) -> list[dict[str, Any]]:
    """Native tool calls in OpenAI's shape (arguments as a JSON string)."""
    out = []
    for call in calls:
        fn = call["function"]
        entry: dict[str, Any] = {"id": call["id"], "type": "function",
                                 "function": {"name": fn["name"],
                                              "arguments": json.dumps(fn["arguments"])}}
        if streamed:
            entry = {"index": fn["index"], **entry}
        out.append(entry)
    return out


def _completion_logprobs(entries: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    """Chat-style logprob entries in the legacy completions shape."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry["token"])
    return {"tokens": [e["token"] for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]}
                             for e in entries],
            "text_offset": offsets}


def _sse(obj: Any) -> bytes:
    return ("data: " + dumps(obj) + "\n\n").encode()


async def _start_all(works: list[Awaitable[Generation]]) -> list[Generation]:
    """Start several generations at once (they take parallel slots); if one fails, stop the
    others and raise its error."""
    results = await asyncio.gather(*works, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        for result in results:
            if isinstance(result, Generation):
                await result.aclose()
        raise failures[0]
    return [r for r in results if isinstance(r, Generation)]


async def _merged(generations: list[Generation]
                  ) -> AsyncIterator[tuple[int, list[Event]]]:
    """Events of several generations as they come, a list per arrival, tagged with the
    generation's index."""
    if len(generations) == 1:  # the common case: no queue hop per token
        async for batch in generations[0].batches():
            yield 0, batch
        return
    queue: asyncio.Queue[tuple[int, list[Event] | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, generation: Generation) -> None:
        try:
            async for batch in generation.batches():
                await queue.put((index, batch))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            await queue.put((index, exc))
        await queue.put((index, None))

    tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(generations)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        for generation in generations:
            await generation.aclose()


def _stream(events: AsyncIterator[bytes]) -> StreamingResponse:
    """Server-sent events, ending with `data: [DONE]`; a failure midway becomes an OpenAI error
    event (the status is already 200)."""

    async def body() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield event
        except CorralError as exc:
            yield _sse(error_body(exc.status, exc.message))
        yield b"data: [DONE]\n\n"

    # The header set as is: Starlette would add "; charset=utf-8" to a text/* media type, which
    # neither OpenAI nor Ollama sends.
    return Stream(body(), headers={"content-type": "text/event-stream"})


def _chunk_head(base: dict[str, Any]) -> bytes:
    """An SSE chunk's bytes up to its choices, framed once per stream rather than per token."""
    return ("data: " + dumps(base)[:-1] + ',"choices":[').encode()


def _base(kind: str, prefix: str, name: str) -> dict[str, Any]:
    return {"id": f"{prefix}-{secrets.randbelow(999)}", "object": kind,
            "created": int(time.time()), "model": name, "system_fingerprint": FINGERPRINT}


def _jobs(inference: Inference, model: LocalModel, data: dict[str, Any], n: int) -> list[Job]:
    """One job per choice; with a seed, choice i samples with seed + i so the choices differ."""
    job = inference.job(model, None, data.get("keep_alive"), extra_options=_options(data))
    seed = int(job.options.get("seed", -1))
    if n == 1:
        return [job]
    return [dataclasses.replace(job, options={**job.options, "seed": seed + i} if seed >= 0
                                else job.options) for i in range(n)]


# --- endpoints -----------------------------------------------------------------------------------


async def chat_completions(request: Request) -> Response:
    data = await read_json(request)
    inference = _inference(request)
    name = data.get("model")
    model = inference.model(name)
    messages = inference.chat_messages(model, _messages(data.get("messages")))
    tools = check_tools(data.get("tools"))
    tool_use = inference.tool_use(model, tools, check_tool_choice(data.get("tool_choice"), tools),
                                  parallel=field(data, "parallel_tool_calls", bool, True))
    field(data, "user", str)  # accepted, as OpenAI does; not used
    think = inference.think_use(model, _think(data), name)
    inference.check_completion(model, name, "chat")
    logprobs = _chat_logprobs(data)
    format_ = openai_format(data.get("response_format"), "response_format", nested=True)
    jobs = _jobs(inference, model, data, _choices(data))
    generations = await unless_disconnected(request, _start_all([
        inference.generate(job, messages=messages, format_=format_, tools=tool_use,
                           logprobs=logprobs, think=think, count_thinking=True,
                           whole=not field(data, "stream", bool, False))
        for job in jobs]))

    def reasoning() -> int:  # the choices' thinking tokens, counted as each one ends
        return sum(g.thinking_tokens for g in generations)

    base = _base("chat.completion.chunk", "chatcmpl", name)

    if not field(data, "stream", bool, False):
        replies = await unless_disconnected(
            request, asyncio.gather(*(g.collect() for g in generations)))
        choices = []
        for index, reply in enumerate(replies):
            message: dict[str, Any] = {"role": "assistant", "content": reply.text,
                                       **_reasoning(reply.thinking)}
            if reply.tool_calls:
                message["tool_calls"] = _openai_calls(reply.tool_calls, streamed=False)
            choices.append({"index": index, "message": message,
                            "logprobs": {"content": reply.logprobs} if logprobs >= 0 else None,
                            "finish_reason": _finish_reason(reply.done, bool(reply.tool_calls))})
        return json_response({**base, "object": "chat.completion", "choices": choices,
                              "usage": _usage(dict(enumerate(r.done for r in replies)),
                                              len(jobs), reasoning())}, media_type=JSON)

    include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
    head = _chunk_head(base)

    started: set[int] = set()
    called: set[int] = set()
    dones: dict[int, p.Done] = {}

    def event_bytes(index: int, event: Event) -> bytes:
        if isinstance(event, p.Done):
            dones[index] = event
            choice = {"index": index, "delta": {},
                      "finish_reason": _finish_reason(event, index in called)}
            return _sse({**base, "choices": [choice]})
        delta: dict[str, Any] = {} if index in started else {"role": "assistant"}
        started.add(index)
        choice = {"index": index, "delta": delta, "finish_reason": None}
        if isinstance(event, ToolCalls):
            called.add(index)
            delta["tool_calls"] = _openai_calls(event.calls, streamed=True)
        elif isinstance(event, Thinking):
            delta.update(_reasoning(event.text))
            if logprobs >= 0:
                choice["logprobs"] = {"content": event.logprobs or []}
        else:
            delta["content"] = event.text
            if logprobs >= 0:
                choice["logprobs"] = {"content": event.logprobs or []}
        return head + dumps(choice).encode() + b"]}\n\n"

    async def events() -> AsyncIterator[bytes]:
        async for index, batch in _merged(generations):  # what arrived together: one write
            if data := b"".join([event_bytes(index, event) for event in batch]):
                yield data
        if include_usage:
            yield _sse({**base, "choices": [], "usage": _usage(dones, len(jobs), reasoning())})

    return _stream(events())


def _prompts(data: dict[str, Any]) -> list[str]:
    prompt = data.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(x, str) for x in prompt):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(x, int) for x in prompt):
        raise BadRequest("token arrays are not supported as prompt; send text")
    raise BadRequest("prompt must be a string or a non-empty array of strings")


async def completions(request: Request) -> Response:
    data = await read_json(request)
    inference = _inference(request)
    name = data.get("model")
    model = inference.model(name)
    prompts = _prompts(data)
    inference.check_completion(model, name, "generate")
    suffix = field(data, "suffix", str)
    echo = field(data, "echo", bool, False)
    top = field(data, "logprobs", int)
    if top is not None and not 0 <= top <= p.MAX_TOP_LOGPROBS:
        raise BadRequest(f"logprobs must be between 0 and {p.MAX_TOP_LOGPROBS}")
    logprobs = -1 if top is None else top
    n = _choices(data)
    texts = [inference.fill_in_middle(model, prompt, suffix) if suffix else prompt
             for prompt in prompts]
    jobs = _jobs(inference, model, data, n)
    # Choice i*n + j is the j-th completion of prompt i, as OpenAI numbers them.
    generations = await unless_disconnected(request, _start_all([
        inference.generate(job, prompt=text, logprobs=logprobs,
                           whole=not field(data, "stream", bool, False))
        for text in texts for job in jobs]))
    base = _base("text_completion", "cmpl", name)
    echoed = [prompts[i // n] if echo else "" for i in range(len(generations))]

    def choice(index: int, text: str, entries: list[dict[str, Any]] | None, offset: int,
               finish_reason: str | None) -> dict[str, Any]:
        return {"text": text, "index": index,
                "logprobs": _completion_logprobs(entries or [], offset) if top is not None
                else None,
                "finish_reason": finish_reason}

    if not field(data, "stream", bool, False):
        replies = await unless_disconnected(
            request, asyncio.gather(*(g.collect() for g in generations)))
        choices = [choice(i, echoed[i] + r.text, r.logprobs, len(echoed[i]),
                          _finish_reason(r.done, False)) for i, r in enumerate(replies)]
        return json_response({**base, "choices": choices,
                              "usage": _usage(dict(enumerate(r.done for r in replies)),
                                              len(jobs))}, media_type=JSON)

    include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
    head = _chunk_head(base)

    offsets = [len(text) for text in echoed]
    dones: dict[int, p.Done] = {}

    def event_bytes(index: int, event: Event) -> bytes:
        if isinstance(event, p.Done):
            dones[index] = event
            return _sse({**base, "choices": [
                choice(index, "", None, offsets[index], _finish_reason(event, False))]})
        if isinstance(event, p.Chunk):
            one = choice(index, event.text, event.logprobs, offsets[index], None)
            offsets[index] += len(event.text)
            return head + dumps(one).encode() + b"]}\n\n"
        return b""

    async def events() -> AsyncIterator[bytes]:
        for index, text in enumerate(echoed):
            if text:
                yield _sse({**base, "choices": [choice(index, text, None, 0, None)]})
        async for index, batch in _merged(generations):  # what arrived together: one write
            if data := b"".join([event_bytes(index, event) for event in batch]):
                yield data
        if include_usage:
            yield _sse({**base, "choices": [], "usage": _usage(dones, len(jobs))})

    return _stream(events())


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
    return json_response({"object": "list", "data": [_model_entry(m) for m in store.list()
                                                      if team.visible(m.name)]}, media_type=JSON)


async def get_model(request: Request) -> Response:
    name = request.path_params["model"]
    team.check_model(name)  # 403 for a model the API key may not use
    model = _inference(request).store.find(name)
    if model is None:
        raise NotFound(f"model '{name}' not found")
    team.found_model(model.name)
    return json_response(_model_entry(model), media_type=JSON)


routes = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
]
