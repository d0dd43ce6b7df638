"""OpenAI's Responses API: POST /v1/responses, GET and DELETE /v1/responses/{response_id}.

A request becomes the same `Inference.generate` call /v1/chat/completions makes (tools, the
forced-call and format grammars, thinking, the prompt cache): gateway/responses/request.py turns
its input items into native messages. The reply takes the Responses shapes: a `response` object
with reasoning, message and function_call output items, or, streamed, OpenAI's typed server-sent
events numbered by `sequence_number`. With `store` (the default, as OpenAI's) the response and the
conversation it ends are kept (gateway/responses/store.py, per API key), so a follow-up names it
in `previous_response_id` and sends only its new input.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.http import Stream, dumps, field, json_response, read_json, unless_disconnected
from gateway.inference import (
    Collected,
    Generation,
    Inference,
    Message,
    Thinking,
    ToolCalls,
    check_messages,
)
from gateway.responses import request as rq
from gateway.responses.store import ResponseStore
from gateway.routes.openai import _EFFORTS, _options
from gateway.team import context as team
from gateway.team.keys import ANONYMOUS
from gateway.thinking import takes_levels
from gateway.tools import check_tool_choice
from shared import protocol as p
from shared.errors import BadRequest, CorralError, NotFound

JSON = "application/json"

# Request fields that only shape the reply or that this server has no use for: accepted as
# OpenAI accepts them (Codex CLI sends `include`, `prompt_cache_key`, `store: false`, ...).
_ACCEPTED = {"include": list, "prompt_cache_key": str, "safety_identifier": str,
             "service_tier": str, "truncation": str, "top_logprobs": int,
             "max_tool_calls": int, "stream_options": dict, "user": str,
             "prompt_cache_retention": str, "client_metadata": dict}
_UNSUPPORTED = ("conversation", "prompt")  # server-side conversations, stored prompt templates


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def _owner() -> str:
    """Whose responses these are: the API key's id (one space for all without keys)."""
    record = team.current()
    return record.key.id if record is not None and record.key is not None else ANONYMOUS


def _store(request: Request) -> ResponseStore:
    return request.app.state.responses


# --- the request ---------------------------------------------------------------------------------


def _metadata(data: dict[str, Any]) -> dict[str, str]:
    metadata = field(data, "metadata", dict, {})
    if len(metadata) > 16 or not all(isinstance(k, str) and len(k) <= 64 and isinstance(v, str)
                                     and len(v) <= 512 for k, v in metadata.items()):
        raise BadRequest("metadata must be an object of at most 16 string values (keys of up to "
                         "64 characters, values of up to 512)")
    return metadata


def _reasoning(data: dict[str, Any]) -> dict[str, Any]:
    reasoning = field(data, "reasoning", dict, {})
    effort = reasoning.get("effort")
    if effort is not None and effort not in _EFFORTS:
        raise BadRequest(f"invalid reasoning.effort: {json.dumps(effort)[:64]} (must be "
                         + ", ".join(f'"{e}"' for e in _EFFORTS) + ")")
    summary = reasoning.get("summary", reasoning.get("generate_summary"))
    if summary is not None and summary not in ("auto", "concise", "detailed", "none"):
        raise BadRequest('reasoning.summary must be "auto", "concise", "detailed" or "none"')
    return {"effort": effort, "summary": summary}


def _think(inference: Inference, model: Any, effort: str | None) -> Any:
    """reasoning.effort as a think value. Agents send an effort whatever the model: for one
    that cannot think it is dropped (not Ollama's 400), and a model that only switches thinking
    on and off gets it on."""
    if effort is None:
        return inference.think_use(model, None, model.display())
    value = _EFFORTS[effort]
    if "thinking" not in model.capabilities:
        value = None
    elif isinstance(value, str) and not takes_levels(model):
        value = True
    return inference.think_use(model, value, model.display())


def _check_accepted(data: dict[str, Any]) -> None:
    for name, kind in _ACCEPTED.items():
        field(data, name, kind)
    for name in _UNSUPPORTED:
        if data.get(name) is not None:
            raise BadRequest(f"{name} is not supported: use previous_response_id to continue "
                             "a conversation" if name == "conversation" else
                             f"{name} is not supported")
    if field(data, "background", bool, False):
        raise BadRequest("background responses are not supported")


# --- output items --------------------------------------------------------------------------------


def _reasoning_item(item_id: str, thinking: str, encrypted: bool) -> dict[str, Any]:
    item: dict[str, Any] = {"id": item_id, "type": "reasoning", "summary": [],
                            "content": [{"type": "reasoning_text", "text": thinking}],
                            "status": "completed"}
    if encrypted:  # (what a client with store: false sends back to keep the thinking)
        item["encrypted_content"] = rq.encrypt_thinking(thinking)
    return item


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status,
            "content": [] if text is None else [_text_part(text)]}


def _call_item(call: Message, namespaced: dict[str, tuple[str, str]],
               status: str = "completed", arguments: str | None = None) -> dict[str, Any]:
    fn = call["function"]
    item = {"id": _new_id("fc"), "type": "function_call", "status": status,
            "call_id": call["id"], "name": fn["name"],
            "arguments": json.dumps(fn["arguments"]) if arguments is None else arguments}
    if fn["name"] in namespaced:  # a function of a namespace tool: named as it was offered
        item["namespace"], item["name"] = namespaced[fn["name"]]
    return item


def _usage(done: p.Done, reasoning_tokens: int) -> dict[str, Any]:
    return {"input_tokens": done.prompt_eval_count,
            "input_tokens_details": {"cached_tokens": done.cached_tokens},
            "output_tokens": done.eval_count,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": done.prompt_eval_count + done.eval_count}


def _assistant_message(text: str, thinking: str, calls: list[Message]) -> Message:
    """The reply as a native message, for the stored conversation."""
    message: Message = {"role": "assistant", "content": text}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = [{"id": c["id"], "function": {
            "index": i, "name": c["function"]["name"], "arguments": c["function"]["arguments"]}}
            for i, c in enumerate(calls)]
    return message


class Turn:
    """One response being made: the request's echoed fields, and what is kept afterwards."""

    def __init__(self, data: dict[str, Any], name: str, conversation: list[Message],
                 reasoning: dict[str, Any], store: bool, encrypted: bool,
                 namespaced: dict[str, tuple[str, str]]) -> None:
        self.id = _new_id("resp")
        self.namespaced = namespaced
        self.created = int(time.time())
        self.conversation = conversation
        self.store = store
        self.encrypted = encrypted
        text_spec = data.get("text") if isinstance(data.get("text"), dict) else {}
        self.base: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": self.created,
            "status": "in_progress", "background": False, "error": None,
            "incomplete_details": None, "instructions": data.get("instructions"),
            "max_output_tokens": data.get("max_output_tokens"),
            "max_tool_calls": data.get("max_tool_calls"), "model": name, "output": [],
            "parallel_tool_calls": data.get("parallel_tool_calls", True),
            "previous_response_id": data.get("previous_response_id"),
            "prompt_cache_key": data.get("prompt_cache_key"), "reasoning": reasoning,
            "service_tier": "default", "store": store,
            "temperature": data.get("temperature", 1.0),
            "text": {"format": text_spec.get("format") or {"type": "text"},
                     "verbosity": text_spec.get("verbosity", "medium")},
            "tool_choice": data.get("tool_choice", "auto"), "tools": data.get("tools") or [],
            "top_logprobs": data.get("top_logprobs", 0), "top_p": data.get("top_p", 1.0),
            "truncation": data.get("truncation", "disabled"), "usage": None,
            "user": data.get("user"), "metadata": data.get("metadata") or {}}

    def snapshot(self, **changes: Any) -> dict[str, Any]:
        return {**self.base, **changes}

    def finish(self, output: list[dict[str, Any]], done: p.Done, reasoning_tokens: int,
               reply: Message, store: ResponseStore) -> dict[str, Any]:
        """The final response object; kept in the store when asked to."""
        incomplete = done.done_reason == "length"
        response = self.snapshot(
            status="incomplete" if incomplete else "completed", output=output,
            incomplete_details={"reason": "max_output_tokens"} if incomplete else None,
            usage=_usage(done, reasoning_tokens))
        if not incomplete:
            response["completed_at"] = int(time.time())
        if self.store:
            store.put(_owner(), self.id, {"response": response,
                                          "conversation": [*self.conversation, reply]})
        return response


def _output(reply: Collected, turn: Turn) -> list[dict[str, Any]]:
    status = "incomplete" if reply.done.done_reason == "length" else "completed"
    output = []
    if reply.thinking:
        output.append(_reasoning_item(_new_id("rs"), reply.thinking, turn.encrypted))
    if reply.text or not reply.tool_calls:
        output.append(_message_item(_new_id("msg"), reply.text, status))
    output += [_call_item(call, turn.namespaced) for call in reply.tool_calls]
    return output


# --- streaming -----------------------------------------------------------------------------------


class EventStream:
    """The typed events of one response, numbered; output items opened and closed as the
    generation's events change kind (thinking, text, calls). Text deltas are framed from a
    prefix made once per item, so a token costs one string escape."""

    def __init__(self, turn: Turn) -> None:
        self.turn = turn
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self.kind = ""  # the open item's: "reasoning", "message" or ""
        self.parts: list[str] = []  # the open item's text so far
        self.head = b""  # the open item's delta event, up to the delta itself
        self.text: list[str] = []
        self.thinking: list[str] = []
        self.calls: list[Message] = []

    def event(self, kind: str, payload: dict[str, Any]) -> bytes:
        data = dumps({"type": kind, **payload, "sequence_number": self.sequence})
        self.sequence += 1
        return f"event: {kind}\ndata: {data}\n\n".encode()

    def _delta(self, text: str) -> bytes:
        self.parts.append(text)
        tail = f',"sequence_number":{self.sequence}}}\n\n'
        self.sequence += 1
        return self.head + dumps(text).encode() + tail.encode()

    def start(self) -> bytes:
        snapshot = self.turn.snapshot()
        return (self.event("response.created", {"response": snapshot})
                + self.event("response.in_progress", {"response": snapshot}))

    def _open(self, kind: str) -> bytes:
        index = len(self.output)
        if kind == "reasoning":
            item = {"id": _new_id("rs"), "type": "reasoning", "summary": [], "content": [],
                    "status": "in_progress"}
            part = {"type": "reasoning_text", "text": ""}
            delta = "response.reasoning_text.delta"
        else:
            item = _message_item(_new_id("msg"), None, "in_progress")
            part = {**_text_part(""), "logprobs": []}
            delta = "response.output_text.delta"
        self.output.append(item)
        self.kind, self.parts = kind, []
        extra = ',"logprobs":[]' if kind == "message" else ""
        self.head = (f'event: {delta}\ndata: {{"type":"{delta}","item_id":"{item["id"]}",'
                     f'"output_index":{index},"content_index":0{extra},"delta":').encode()
        return (self.event("response.output_item.added", {"output_index": index, "item": item})
                + self.event("response.content_part.added", {
                    "item_id": item["id"], "output_index": index, "content_index": 0,
                    "part": part}))

    def _close(self, status: str = "completed") -> bytes:
        if not self.kind:
            return b""
        index = len(self.output) - 1
        item, text = self.output[index], "".join(self.parts)
        ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
        if self.kind == "reasoning":
            done = _reasoning_item(item["id"], text, self.turn.encrypted)
            part = {"type": "reasoning_text", "text": text}
            out = self.event("response.reasoning_text.done", {**ids, "text": text})
        else:
            done = _message_item(item["id"], text, status)
            part = _text_part(text)
            out = self.event("response.output_text.done", {**ids, "text": text, "logprobs": []})
        self.output[index] = done
        self.kind = ""
        return (out + self.event("response.content_part.done", {**ids, "part": part})
                + self.event("response.output_item.done", {"output_index": index, "item": done}))

    def feed(self, event: Any) -> bytes:
        if isinstance(event, Thinking):
            self.thinking.append(event.text)
            opened = b"" if self.kind == "reasoning" else self._close() + self._open("reasoning")
            return opened + self._delta(event.text)
        if isinstance(event, ToolCalls):
            out = self._close()
            for call in event.calls:
                self.calls.append(call)
                index = len(self.output)
                arguments = json.dumps(call["function"]["arguments"])
                item = _call_item(call, self.turn.namespaced, "in_progress", "")
                done = {**item, "status": "completed", "arguments": arguments}
                self.output.append(done)
                ids = {"item_id": item["id"], "output_index": index}
                out += (self.event("response.output_item.added", {"output_index": index,
                                                                   "item": item})
                        + self.event("response.function_call_arguments.delta",
                                     {**ids, "delta": arguments})
                        + self.event("response.function_call_arguments.done",
                                     {**ids, "arguments": arguments})
                        + self.event("response.output_item.done", {"output_index": index,
                                                                    "item": done}))
            return out
        # text
        self.text.append(event.text)
        opened = b"" if self.kind == "message" else self._close() + self._open("message")
        return opened + self._delta(event.text)

    def end(self, done: p.Done, generation: Generation, store: ResponseStore) -> bytes:
        incomplete = done.done_reason == "length"
        out = self._close("incomplete" if incomplete else "completed")
        if not self.calls and not any(item["type"] == "message" for item in self.output):
            # no text and no call: an empty message, as a whole reply has
            out += self._open("message") + self._close("incomplete" if incomplete
                                                       else "completed")
        reply = _assistant_message("".join(self.text), "".join(self.thinking), self.calls)
        response = self.turn.finish(self.output, done, generation.thinking_tokens, reply, store)
        kind = "response.incomplete" if incomplete else "response.completed"
        return out + self.event(kind, {"response": response})

    def failed(self, exc: CorralError) -> bytes:
        error = {"code": "server_error", "message": exc.message}
        return (self.event("error", {**error, "param": None})
                + self.event("response.failed", {"response": self.turn.snapshot(
                    status="failed", output=self.output, error=error)}))


def _stream(events: EventStream, generation: Generation, store: ResponseStore) -> Stream:
    async def body() -> AsyncIterator[bytes]:
        try:
            yield events.start()
            async for batch in generation.batches():  # what arrived together: one write
                out = []
                for event in batch:
                    if isinstance(event, p.Done):
                        out.append(events.end(event, generation, store))
                    else:
                        out.append(events.feed(event))
                yield b"".join(out)
        except CorralError as exc:
            yield events.failed(exc)
        finally:
            await generation.aclose()

    # The header as OpenAI sends it (Starlette would add a charset to a text/* media type).
    return Stream(body(), headers={"content-type": "text/event-stream"})


# --- endpoints -----------------------------------------------------------------------------------


async def create_response(request: Request) -> Response:
    data = await read_json(request)
    inference: Inference = request.app.state.inference
    store = _store(request)
    _check_accepted(data)
    name = data.get("model")
    model = inference.model(name)
    previous = field(data, "previous_response_id", str)
    history: list[Message] = []
    if previous is not None:
        record = store.get(_owner(), previous)
        if record is None:
            raise _NotFound(f"Previous response with id '{previous[:100]}' not found.",
                             "previous_response_id")
        history = record.get("conversation") or []
    new = rq.input_messages(data.get("input"), history)
    if not new and not history:
        raise BadRequest("input is required")
    instructions = field(data, "instructions", str)
    conversation = [*history, *new]
    messages = inference.chat_messages(model, check_messages([
        *([{"role": "system", "content": instructions}] if instructions else []),
        *conversation]))
    tools, namespaced = rq.function_tools(data.get("tools"))
    tool_use = inference.tool_use(model, tools,
                                  check_tool_choice(rq.tool_choice(data.get("tool_choice")),
                                                    tools),
                                  parallel=field(data, "parallel_tool_calls", bool, True))
    reasoning = _reasoning(data)
    think = _think(inference, model, reasoning["effort"])
    format_ = rq.text_format(data.get("text"))
    _metadata(data)
    max_output = field(data, "max_output_tokens", int)
    stream = field(data, "stream", bool, False)
    options = _options({**{k: v for k, v in data.items() if k not in ("max_tokens", "stop")},
                        "max_tokens": max_output})
    job = inference.job(model, None, data.get("keep_alive"), extra_options=options)
    include = data.get("include") or []
    turn = Turn(data, name, conversation, reasoning, field(data, "store", bool, True),
                "reasoning.encrypted_content" in include, namespaced)
    generation = await unless_disconnected(request, inference.generate(
        job, messages=messages, format_=format_, tools=tool_use, think=think,
        count_thinking=True, whole=not stream))
    if stream:
        return _stream(EventStream(turn), generation, store)
    reply = await unless_disconnected(request, generation.collect())
    response = turn.finish(_output(reply, turn), reply.done,
                           generation.thinking_tokens,
                           _assistant_message(reply.text, reply.thinking, reply.tool_calls),
                           store)
    return json_response(response, media_type=JSON)


class _NotFound(NotFound):
    """A 404 naming the field at fault, as OpenAI's error object does."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param
        self.code = None


def _stored(request: Request) -> tuple[str, dict[str, Any]]:
    response_id = request.path_params["response_id"]
    record = _store(request).get(_owner(), response_id)
    if record is None or not isinstance(record.get("response"), dict):
        raise _NotFound(f"Response with id '{response_id[:100]}' not found.", "response_id")
    return response_id, record


async def get_response(request: Request) -> Response:
    _, record = _stored(request)
    return json_response(record["response"], media_type=JSON)


async def delete_response(request: Request) -> Response:
    response_id, _ = _stored(request)
    _store(request).delete(_owner(), response_id)
    return json_response({"id": response_id, "object": "response.deleted", "deleted": True},
                         media_type=JSON)


routes = [
    Route("/v1/responses", create_response, methods=["POST"]),
    Route("/v1/responses/{response_id}", get_response, methods=["GET"]),
    Route("/v1/responses/{response_id}", delete_response, methods=["DELETE"]),
]
