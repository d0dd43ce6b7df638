"""The Anthropic Messages API: /v1/messages, /v1/messages/count_tokens, and /v1/models in
Anthropic's shape for requests that carry `anthropic-version`.

A request becomes the same `Inference` chat the native and OpenAI routes run (tools, thinking,
format, the prompt cache: gateway/routes/anthropic_request.py translates it); the reply takes
Anthropic's shapes: content blocks, `tool_use` with parsed input, stop reasons, usage with the
prompt cache's reads, and, streamed, Anthropic's typed server-sent events. Errors take
Anthropic's `{"type": "error", ...}` object (gateway/routes/anthropic_errors.py, answered by the
app's handlers and the team middleware).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import string
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.http import (
    ClientDisconnected,
    Stream,
    dumps,
    json_response,
    read_json,
    unless_disconnected,
)
from gateway.inference import Collected, Generation, Inference, Job, Thinking, ThinkUse, ToolCalls
from gateway.routes import anthropic_errors, openai
from gateway.routes.anthropic_request import MessagesRequest, parse
from gateway.team import context as team
from gateway.thinking import LEVELS, takes_levels
from registry.store import LocalModel
from shared import protocol as p
from shared.errors import CorralError, NotFound

JSON = "application/json"
# Streaming: how long the reply may take to start before the 200 and message_start go out, and
# then how often a `ping` keeps the connection alive while the prompt is read (a long agent
# prompt on a CPU takes minutes; clients and proxies drop a silent connection). An error in the
# first START_WAIT seconds (a full queue, a bad prompt) is still an HTTP status.
START_WAIT = 1.0
PING_EVERY = 5.0
_ID_CHARS = string.ascii_letters + string.digits


def _new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ID_CHARS) for _ in range(24))


def _inference(request: Request) -> Inference:
    return request.app.state.inference


def _signature(thinking: str) -> str:
    """A thinking block's `signature`. Anthropic's is its own encrypted check that the block
    came back unchanged; corral checks nothing, so this is a digest of the text, which clients
    store and send back as they would Anthropic's."""
    return base64.b64encode(hashlib.sha256(thinking.encode()).digest()).decode()


# --- the request ---------------------------------------------------------------------------------


def _think(inference: Inference, model: LocalModel, req: MessagesRequest, name: str) -> ThinkUse:
    """Anthropic's thinking switch as a think value. `enabled` on a model that cannot think is
    the native 400; `adaptive` and `output_config.effort` (what Claude Code sends to every
    model) only say how much thinking is wanted, and a model without thinking drops them."""
    effort = req.effort
    if req.thinking == "disabled":
        raw: Any = False
    elif req.thinking == "enabled" or "thinking" in model.capabilities and (
            req.thinking == "adaptive" or effort):
        raw = effort if effort in LEVELS and takes_levels(model) else True
    else:
        raw = None  # the model's default: a thinking model thinks
    return inference.think_use(model, raw, name)


def _job(inference: Inference, model: LocalModel, req: MessagesRequest) -> Job:
    options = dict(req.options)
    if req.stop_sequences:  # added to the model's own stops, which still end a turn
        own = model.params.get("stop") or []
        own = [own] if isinstance(own, str) else list(own)
        options["stop"] = list(dict.fromkeys([*own, *req.stop_sequences]))
    return inference.job(model, None, None, extra_options=options)


def _prepare(request: Request, data: dict[str, Any], *, count_only: bool = False
             ) -> tuple[MessagesRequest, LocalModel, Job, Any, ThinkUse]:
    req = parse(data, count_only=count_only)
    inference = _inference(request)
    name = req.model
    model = inference.model(name)
    tools = inference.tool_use(model, req.tools, req.tool_choice, parallel=req.parallel)
    think = _think(inference, model, req, name)
    job = _job(inference, model, req)
    return req, model, job, tools, think


# --- the reply -----------------------------------------------------------------------------------


def _usage(done: p.Done | None) -> dict[str, int]:
    """Anthropic counts the prompt tokens read from its cache apart from `input_tokens`: their
    sum is the prompt (what count_tokens gives)."""
    prompt = done.prompt_eval_count if done else 0
    cached = done.cached_tokens if done else 0
    return {"input_tokens": prompt - cached, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached, "output_tokens": done.eval_count if done else 0}


def _stop(done: p.Done, called: bool, stop_sequences: list[str]) -> tuple[str, str | None]:
    """stop_reason and stop_sequence."""
    if called:
        return "tool_use", None
    if done.done_reason == "length":
        return "max_tokens", None
    if done.stop and done.stop in stop_sequences:
        return "stop_sequence", done.stop
    return "end_turn", None


def _tool_block(call: dict[str, Any]) -> dict[str, Any]:
    fn = call["function"]
    return {"type": "tool_use", "id": _new_id("toolu_"), "name": fn["name"],
            "input": fn["arguments"]}


def _message(msg_id: str, name: str, content: list[dict[str, Any]],
             stop: tuple[str | None, str | None], usage: dict[str, int]) -> dict[str, Any]:
    return {"id": msg_id, "type": "message", "role": "assistant", "model": name,
            "content": content, "stop_reason": stop[0], "stop_sequence": stop[1],
            "usage": usage}


def _whole(msg_id: str, name: str, reply: Collected, stop_sequences: list[str]
           ) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if reply.thinking:
        content.append({"type": "thinking", "thinking": reply.thinking,
                        "signature": _signature(reply.thinking)})
    if reply.text:
        content.append({"type": "text", "text": reply.text})
    content.extend(_tool_block(call) for call in reply.tool_calls)
    return _message(msg_id, name, content, _stop(reply.done, bool(reply.tool_calls),
                                                 stop_sequences), _usage(reply.done))


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {dumps(data)}\n\n".encode()


_PING = _event("ping", {"type": "ping"})


class _Blocks:
    """Generation events as Anthropic's content-block events: a block opens when the kind of
    output changes (thinking, text, a tool call) and closes before the next one. Text and
    thinking deltas are framed from pre-made bytes (no dict per token)."""

    def __init__(self, stop_sequences: list[str]) -> None:
        self.index = -1
        self.open: str | None = None
        self.thought: list[str] = []
        self.called = False
        self.stop_sequences = stop_sequences
        self._head = b""

    def _start(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self.index += 1
        self.open = kind
        self._head = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
                      + str(self.index).encode() + b',"delta":{"type":"'
                      + (b"thinking_delta" if kind == "thinking" else b"text_delta")
                      + b'","' + kind.encode() + b'":')
        return out + _event("content_block_start", {"type": "content_block_start",
                                                    "index": self.index, "content_block": block})

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        out = b""
        if self.open == "thinking":
            out = _event("content_block_delta", {
                "type": "content_block_delta", "index": self.index,
                "delta": {"type": "signature_delta",
                          "signature": _signature("".join(self.thought))}})
        self.open = None
        return out + _event("content_block_stop", {"type": "content_block_stop",
                                                   "index": self.index})

    def _delta(self, text: str) -> bytes:
        return self._head + dumps(text).encode() + b"}}\n\n"

    def feed(self, event: Any) -> bytes:
        if isinstance(event, Thinking):
            if not event.text:
                return b""
            out = b"" if self.open == "thinking" else self._start(
                "thinking", {"type": "thinking", "thinking": "", "signature": ""})
            self.thought.append(event.text)
            return out + self._delta(event.text)
        if isinstance(event, ToolCalls):
            self.called = True
            out = []
            for call in event.calls:
                block = _tool_block(call)
                arguments = block["input"]
                out.append(self._start("tool_use", {**block, "input": {}}))
                out.append(_event("content_block_delta", {
                    "type": "content_block_delta", "index": self.index,
                    "delta": {"type": "input_json_delta", "partial_json": json.dumps(arguments)}}))
                out.append(self._close())
            return b"".join(out)
        if isinstance(event, p.Done):
            stop = _stop(event, self.called, self.stop_sequences)
            return self._close() + _event("message_delta", {
                "type": "message_delta",
                "delta": {"stop_reason": stop[0], "stop_sequence": stop[1]},
                "usage": _usage(event)}) + _event("message_stop", {"type": "message_stop"})
        if not event.text:
            return b""
        out = b"" if self.open == "text" else self._start("text", {"type": "text", "text": ""})
        return out + self._delta(event.text)


async def _begin(request: Request, task: asyncio.Future[Generation]) -> Generation | None:
    """The generation if it starts within START_WAIT (or its error, raised while the status can
    still say it); None if it is still reading the prompt."""
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, timeout=START_WAIT,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    if watcher.done() and not watcher.cancelled():
        task.cancel()
        raise ClientDisconnected("request canceled")
    return None


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _stream(msg_id: str, name: str, task: asyncio.Future[Generation],
            generation: Generation | None, stop_sequences: list[str]) -> Response:
    async def body() -> AsyncIterator[bytes]:
        started = generation
        try:
            yield _event("message_start", {"type": "message_start", "message": _message(
                msg_id, name, [], (None, None), _usage(None))})
            while started is None:  # the prompt is still being read
                await asyncio.wait({task}, timeout=PING_EVERY)
                if task.done():
                    started = task.result()
                else:
                    yield _PING
            blocks = _Blocks(stop_sequences)
            async for batch in started.batches():  # what arrived together: one write
                if data := b"".join([blocks.feed(event) for event in batch]):
                    yield data
        except CorralError as exc:  # the status is already 200: Anthropic's error event
            status = anthropic_errors.status_for(exc.status)
            yield _event("error", anthropic_errors.error_body(status, exc.message))
        finally:
            if not task.done():
                task.cancel()
            elif started is None and not task.cancelled() and task.exception() is None:
                started = task.result()
            if started is not None:
                await started.aclose()

    return Stream(body(), headers={"content-type": "text/event-stream; charset=utf-8",
                                   "cache-control": "no-cache"})


# --- endpoints -----------------------------------------------------------------------------------


async def messages(request: Request) -> Response:
    data = await read_json(request)
    req, model, job, tools, think = _prepare(request, data)
    inference = _inference(request)
    name = req.model
    task = asyncio.ensure_future(inference.generate(
        job, messages=inference.chat_messages(model, req.messages), format_=req.format,
        tools=tools, think=think, count_thinking=True, whole=not req.stream))
    msg_id = _new_id("msg_")
    if not req.stream:
        generation = await unless_disconnected(request, task)
        reply = await unless_disconnected(request, generation.collect())
        return json_response(_whole(msg_id, name, reply, req.stop_sequences), media_type=JSON)
    try:
        generation = await _begin(request, task)
    except BaseException:
        if not task.done():
            task.cancel()
        raise
    return _stream(msg_id, name, task, generation, req.stop_sequences)


async def count_tokens(request: Request) -> Response:
    """The prompt tokens the same request would read (its `input_tokens` plus
    `cache_read_input_tokens`): rendered and tokenized as the chat would be."""
    data = await read_json(request)
    req, model, job, tools, think = _prepare(request, data, count_only=True)
    inference = _inference(request)
    count = await unless_disconnected(request, inference.chat_token_count(
        job, inference.chat_messages(model, req.messages), tools, think))
    return json_response({"input_tokens": count}, media_type=JSON)


# --- models, in Anthropic's shape when asked by an Anthropic client ------------------------------


def _wants_anthropic(request: Request) -> bool:
    return "anthropic-version" in request.headers


def _model_info(model: LocalModel) -> dict[str, Any]:
    created = model.modified_at.isoformat(timespec="seconds").replace("+00:00", "Z")
    return {"type": "model", "id": model.display(), "display_name": model.display(),
            "created_at": created}


async def list_models(request: Request) -> Response:
    if not _wants_anthropic(request):
        return await openai.list_models(request)
    models = [_model_info(m) for m in _inference(request).store.list() if team.visible(m.name)]
    return json_response({"data": models, "has_more": False,
                          "first_id": models[0]["id"] if models else None,
                          "last_id": models[-1]["id"] if models else None}, media_type=JSON)


async def get_model(request: Request) -> Response:
    if not _wants_anthropic(request):
        return await openai.get_model(request)
    name = request.path_params["model"]
    team.check_model(name)
    model = _inference(request).store.find(name)
    if model is None:
        raise NotFound(f"model '{name}' not found")
    return json_response(_model_info(model), media_type=JSON)


routes = [
    Route("/v1/messages", messages, methods=["POST"]),
    Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
]
