"""Ollama's native API: /api/generate, /api/chat, /api/embed, model listing and management.

Shapes, statuses and NDJSON framing follow the responses recorded from Ollama in
../shared/reference/ollama-responses. The per-token path formats one JSON line per chunk.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gateway import images
from gateway.http import dumps, field, json_response, ndjson, read_json, unless_disconnected
from gateway.inference import (
    Collected,
    Generation,
    Inference,
    Job,
    Thinking,
    ToolCalls,
    check_messages,
    vector,
)
from gateway.remotepool import RemotePool
from gateway.team import context as team
from gateway.tools import check_tool_choice, check_tools
from registry.names import ModelName
from registry.show import show_response
from registry.store import model_details, tags_entry
from registry.timefmt import rfc3339_nano
from runner.supervisor.pool import RunnerPool
from shared import protocol as p
from shared.errors import BadRequest, CorralError
from shared.version import OLLAMA_COMPAT_VERSION, __version__


def _inference(request: Request) -> Inference:
    return request.app.state.inference


def _final_metrics(job: Job, done: p.Done) -> dict[str, Any]:
    return {
        "done_reason": done.done_reason,
        "total_duration": job.total_duration(),
        "load_duration": job.load_duration,
        "prompt_eval_count": done.prompt_eval_count,
        # corral's extra: how many of those prompt tokens came from the prefix cache.
        "prompt_eval_cached_count": done.cached_tokens,
        "prompt_eval_duration": done.prompt_eval_duration,
        "eval_count": done.eval_count,
        "eval_duration": done.eval_duration,
    }


def _format(data: dict[str, Any]) -> str | dict[str, Any] | None:
    """`format`: "json" or a JSON schema object (checked again when it becomes a grammar)."""
    value = data.get("format")
    if value in (None, ""):
        return None
    if value != "json" and not isinstance(value, dict):
        raise BadRequest('invalid format: expected "json" or a JSON schema object')
    return value


def _logprobs(data: dict[str, Any]) -> int:
    """`logprobs` and `top_logprobs` as the runner's count: -1 none, else rivals per token."""
    top = field(data, "top_logprobs", int, 0)
    if not 0 <= top <= p.MAX_TOP_LOGPROBS:
        raise BadRequest(f"top_logprobs must be between 0 and {p.MAX_TOP_LOGPROBS}")
    return top if field(data, "logprobs", bool, False) else -1


def _with_logprobs(line: str, chunk: p.Chunk | Thinking) -> str:
    """A chunk's NDJSON line with its logprobs (if any) spliced in before the closing brace."""
    if not chunk.logprobs:
        return line
    return line[:-2] + ',"logprobs":' + dumps(chunk.logprobs) + "}\n"


def _line(event: Any, chunk_line: Callable[[str], str],
          final: Callable[[Collected | None, p.Done], dict[str, Any]],
          calls_line: Callable[[list[dict[str, Any]]], str] | None,
          thinking_line: Callable[[str], str] | None) -> str:
    """The NDJSON line of one event ("" for an event this endpoint does not show)."""
    if isinstance(event, p.Chunk):
        return _with_logprobs(chunk_line(event.text), event)
    if isinstance(event, Thinking):
        return _with_logprobs(thinking_line(event.text), event) if thinking_line else ""
    if isinstance(event, ToolCalls):
        return calls_line(event.calls) if calls_line else ""
    return dumps(final(None, event)) + "\n"


async def _reply(
    request: Request,
    generation: Generation,
    want_stream: bool,
    chunk_line: Callable[[str], str],
    final: Callable[[Collected | None, p.Done], dict[str, Any]],
    calls_line: Callable[[list[dict[str, Any]]], str] | None = None,
    thinking_line: Callable[[str], str] | None = None,
) -> Response:
    """Either an NDJSON stream (a line per chunk, then the final object) or one JSON object.

    `chunk_line(text)` frames one delta, `thinking_line(text)` one delta of thinking,
    `calls_line(calls)` a chunk of tool calls;
    `final(collected, done)` builds the closing object, where collected is None when streaming
    (the deltas already went out).
    """
    if not want_stream:
        collected = await unless_disconnected(request, generation.collect())
        return json_response(final(collected, collected.done))

    async def lines() -> AsyncIterator[bytes]:
        try:  # what arrived together goes out as one write
            async for batch in generation.batches():
                if text := "".join([_line(event, chunk_line, final, calls_line, thinking_line)
                                    for event in batch]):
                    yield text.encode()
        except CorralError as exc:  # mid-stream failure: status is already 200
            yield (dumps({"error": exc.message}) + "\n").encode()

    return ndjson(lines())


# --- generate and chat -----------------------------------------------------------------------


async def generate(request: Request) -> Response:
    data = await read_json(request)
    inference = _inference(request)
    name = data.get("model")
    model = inference.model(name)
    prompt = field(data, "prompt", str, "")
    raw = field(data, "raw", bool, False)
    system = field(data, "system", str)
    context = field(data, "context", list)
    if context and not all(type(t) is int and 0 <= t < 2**31 for t in context):
        raise BadRequest("context must be a list of token ids")
    if raw and (data.get("template") or system or context):
        raise BadRequest("raw mode does not support template, system, or context")
    suffix = field(data, "suffix", str, "")
    if suffix and raw:
        raise BadRequest("raw mode does not support suffix")
    raw_images = field(data, "images", list) or []
    image_data = [images.decode_base64(v, f"images[{j}]") for j, v in enumerate(raw_images)]
    think = inference.think_use(model, data.get("think"), name)
    inference.check_completion(model, name, "generate")
    if template := field(data, "template", str):  # the request's, in place of the model's
        model = inference.with_template(model, template)
    job = inference.job(model, data.get("options"), data.get("keep_alive"))
    created = rfc3339_nano

    if not prompt:
        reason = await inference.load_or_unload(job)
        return json_response({"model": name, "created_at": created(), "response": "",
                              "done": True, "done_reason": reason})

    limits = {"truncate": field(data, "truncate", bool, True),
              "shift": field(data, "shift", bool, True), "format_": _format(data),
              "logprobs": _logprobs(data), "whole": not field(data, "stream", bool, True)}
    if suffix:  # fill in the middle: the TEMPLATE runs on .Prompt and .Suffix
        work = inference.generate(job, prompt=inference.fill_in_middle(model, prompt, suffix),
                                  **limits)
    elif raw:
        work = inference.generate(job, prompt=prompt, think=think, image_data=image_data,
                                  **limits)
    else:
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
        if image_data:
            messages[0]["images"] = image_data
        sys_text = system if system is not None else model.system
        if sys_text:
            messages.insert(0, {"role": "system", "content": sys_text})
        # An explicit TEMPLATE is rendered as written, `{{ .Prompt }}` included (Ollama).
        work = inference.generate(job, messages=messages, context=context, think=think,
                                  as_written=True, **limits)
    generation = await unless_disconnected(request, work)

    head = '{"model":' + dumps(name) + ',"created_at":"'

    def chunk_line(text: str) -> str:
        return head + created() + '","response":' + dumps(text) + ',"done":false}\n'

    def thinking_line(text: str) -> str:
        return (head + created() + '","response":"","thinking":' + dumps(text)
                + ',"done":false}\n')

    def final(whole: Collected | None, done: p.Done) -> dict[str, Any]:
        body: dict[str, Any] = {"model": name, "created_at": created(),
                                "response": whole.text if whole else "",
                                "done": True, **_final_metrics(job, done)}
        if whole and whole.thinking:
            body["thinking"] = whole.thinking
        if not raw:
            body["context"] = done.context
        if whole and whole.logprobs:
            body["logprobs"] = whole.logprobs
        return body

    return await _reply(request, generation, field(data, "stream", bool, True), chunk_line,
                        final, thinking_line=thinking_line)


async def chat(request: Request) -> Response:
    data = await read_json(request)
    inference = _inference(request)
    name = data.get("model")
    model = inference.model(name)
    messages = check_messages(data.get("messages"))
    tools = check_tools(data.get("tools"))
    # tool_choice is corral's extra here (Ollama has it only on its OpenAI endpoint).
    tool_use = inference.tool_use(model, tools, check_tool_choice(data.get("tool_choice"), tools))
    think = inference.think_use(model, data.get("think"), name)
    inference.check_completion(model, name, "chat")
    job = inference.job(model, data.get("options"), data.get("keep_alive"))
    created = rfc3339_nano

    if not messages:
        reason = await inference.load_or_unload(job)
        return json_response({"model": name, "created_at": created(),
                              "message": {"role": "assistant", "content": ""},
                              "done": True, "done_reason": reason})

    generation = await unless_disconnected(request, inference.generate(
        job, messages=inference.chat_messages(model, messages), format_=_format(data),
        truncate=field(data, "truncate", bool, True), shift=field(data, "shift", bool, True),
        tools=tool_use, logprobs=_logprobs(data), think=think,
        whole=not field(data, "stream", bool, True)))
    head = '{"model":' + dumps(name) + ',"created_at":"'

    def chunk_line(text: str) -> str:
        return (head + created() + '","message":{"role":"assistant","content":' + dumps(text)
                + '},"done":false}\n')

    def thinking_line(text: str) -> str:
        return (head + created() + '","message":{"role":"assistant","content":"","thinking":'
                + dumps(text) + '},"done":false}\n')

    def calls_line(calls: list[dict[str, Any]]) -> str:
        message = {"role": "assistant", "content": "", "tool_calls": calls}
        return dumps({"model": name, "created_at": created(), "message": message,
                      "done": False}) + "\n"

    def final(whole: Collected | None, done: p.Done) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": whole.text if whole else ""}
        if whole and whole.thinking:
            message["thinking"] = whole.thinking
        if whole and whole.tool_calls:
            message["tool_calls"] = whole.tool_calls
        body = {"model": name, "created_at": created(), "message": message,
                "done": True, **_final_metrics(job, done)}
        if whole and whole.logprobs:
            body["logprobs"] = whole.logprobs
        return body

    return await _reply(request, generation, field(data, "stream", bool, True), chunk_line,
                        final, calls_line, thinking_line)


# --- embeddings ------------------------------------------------------------------------------


async def embed(request: Request) -> Response:
    data = await read_json(request)
    inference = _inference(request)
    name = data.get("model")
    model = inference.model(name)
    raw_input = data.get("input")
    if raw_input is None or raw_input == "":
        inputs: list[str] = []
    elif isinstance(raw_input, str):
        inputs = [raw_input]
    elif isinstance(raw_input, list) and all(isinstance(x, str) for x in raw_input):
        inputs = raw_input
    else:
        raise BadRequest("invalid input type")
    dimensions = field(data, "dimensions", int)
    if dimensions is not None and dimensions <= 0:
        raise BadRequest("dimensions must be a positive integer")
    job = inference.job(model, data.get("options"), data.get("keep_alive"))
    if not inputs:
        await inference.load_or_unload(job)
        return json_response({"model": name, "embeddings": []})
    truncate = field(data, "truncate", bool, True)
    result = await unless_disconnected(request, inference.embed(job, inputs, truncate=truncate,
                                   normalize=True))
    return json_response({
        "model": name,
        "embeddings": [vector(v, dimensions) for v in result.vectors],
        "total_duration": job.total_duration(),
        "load_duration": job.load_duration,
        "prompt_eval_count": result.prompt_eval_count,
    })


async def embeddings_legacy(request: Request) -> Response:
    data = await read_json(request)
    inference = _inference(request)
    model = inference.model(data.get("model"))
    prompt = field(data, "prompt", str, "")
    job = inference.job(model, data.get("options"), data.get("keep_alive"))
    if not prompt:
        await inference.load_or_unload(job)
        return json_response({"embedding": []})
    result = await unless_disconnected(
        request, inference.embed(job, [prompt], truncate=True, normalize=False))
    return json_response({"embedding": vector(result.vectors[0])})


# --- models ----------------------------------------------------------------------------------


async def tags(request: Request) -> Response:
    store = _inference(request).store
    return json_response({"models": [tags_entry(m) for m in store.list() if team.visible(m.name)]})


async def show(request: Request) -> Response:
    data = await read_json(request)
    inference = _inference(request)
    name = data.get("model") or data.get("name")
    if not name or not isinstance(name, str):
        raise BadRequest("model is required")
    team.check_model(name)  # 403 for a model the API key may not use
    model = inference.store.get(name, error_name=ModelName.parse(name).display())
    team.found_model(model.name)
    body = show_response(inference.store, model, verbose=field(data, "verbose", bool, False))
    return json_response(body)


async def ps(request: Request) -> Response:
    pool = _inference(request).pool
    # With several HTTP processes the supervisor, which owns the runners, makes the list.
    listing = await (pool.ps() if isinstance(pool, RemotePool) else running_models(pool))
    return json_response({"models": [m for m in listing if team.visible(m["name"])]})


async def running_models(pool: RunnerPool) -> list[dict[str, Any]]:
    """/api/ps's entries for every loaded model, from the supervisor's own pool."""
    groups = pool.running()
    vram = await pool.measured_vram()  # by pid; None without NVML
    models = []
    for group in groups:  # one entry per model, as Ollama; its replicas inside `corral`
        first = group[0]
        placement, need = first.placement, first.estimate
        runners = []
        for entry in group:
            pid = entry.runner.pid
            runners.append({
                "pid": pid,
                "gpus": list(entry.placement.gpus),
                "planned": entry.placement.describe(),
                "active": min(entry.refcount, entry.parallel),
                "queued": entry.queued,
                "threads": entry.threads or entry.requested.num_thread or None,
                "device": entry.ready.device,
                "cpu_config": entry.ready.cpu_config,
                "expires_at": rfc3339_nano(_expiry_ns(entry.expires_at)),
                "measured": {"rss": entry.measured_rss(),
                             "vram": None if vram is None else vram.get(pid or 0, 0)},
                # The runner's own count at its last health check (every few seconds): busy
                # slots, and requests queued or being prepared there.
                "reported": _reported(entry.runner.last_health),
                "prompt_cache": _prompt_cache([entry]),
                "speculative": _speculative([entry]),
            })
        # Sizes add up over replicas: each holds its own copy of the model. The estimate where it
        # was placed: llama.cpp's buffers on GPUs, the runner's RAM on the CPU.
        size = sum(e.placement.size for e in group)
        size_vram = sum(min(0 if e.simulated else e.placement.size_vram, e.estimate.total)
                        for e in group)
        models.append({
            "name": first.name,
            "model": first.name,
            "size": size,
            "digest": first.model.digest,
            "details": model_details(first.model),
            "expires_at": rfc3339_nano(_expiry_ns(max(e.expires_at for e in group))),
            "size_vram": size_vram,
            "context_length": first.ready.n_ctx,
            # corral's placement, beyond Ollama's fields (per replica in "runners")
            "corral": {
                "pid": first.runner.pid,
                "gpus": list(dict.fromkeys(g for e in group for g in e.placement.gpus)),
                "gpu_layers": placement.gpu_layers if not first.simulated else 0,
                "total_layers": placement.total_layers,
                "planned": placement.describe() + (" (simulated GPUs)" if first.simulated
                                                   else ""),
                "parallel": first.parallel,
                "cpu_config": first.ready.cpu_config,
                "replicas": len(group),
                "runners": runners,
                "active": sum(r["active"] for r in runners),
                "queued": sum(r["queued"] for r in runners),
                "estimate": {"weights": need.weights, "kv": need.kv, "compute": need.compute,
                             "projector": need.projector, "draft": need.draft,
                             "total": need.total,
                             "host_total": need.host_total},  # one replica's
                "measured": {
                    "weights": first.ready.model_bytes,
                    # llama.cpp's buffers by kind, from its load log (all devices).
                    "buffers": first.ready.buffer_bytes,
                    "rss": sum(r["measured"]["rss"] for r in runners),
                    "vram": None if vram is None else sum(r["measured"]["vram"]
                                                          for r in runners),
                },
                "keep_alive": None if math.isinf(first.keep_alive) else first.keep_alive,
                # Prompt states kept beyond the slots, summed over replicas, as of the last
                # health check (runner/process/promptcache.py).
                "prompt_cache": _prompt_cache(group),
                # Speculative decoding (prompt lookup) since each runner loaded: tokens guessed
                # and verified, and how many of them held.
                "speculative": _speculative(group),
            },
        })
    return models


def _reported(health: p.HealthReply | None) -> dict[str, int] | None:
    if health is None:
        return None
    return {"active": health.active, "queued": health.queued}


def _prompt_cache(entries: list[Any]) -> dict[str, int]:
    totals = [0, 0, 0, 0]
    for entry in entries:
        health = entry.runner.last_health
        for i, value in enumerate(health.prompt_cache if health is not None else ()):
            totals[i] += value
    return dict(zip(("entries", "bytes", "hits", "misses"), totals, strict=True))


def _speculative(entries: list[Any]) -> dict[str, int]:
    totals = [0, 0]
    for entry in entries:
        health = entry.runner.last_health
        for i, value in enumerate(health.speculative if health is not None else ()):
            totals[i] += value
    return dict(zip(("drafted", "accepted"), totals, strict=True))


def _expiry_ns(expires_at: float) -> int:
    if math.isinf(expires_at):  # forever: a date ~292 years ahead, as Ollama shows it
        return int((time.time() + _FOREVER_SECONDS) * 1e9)
    return int(expires_at * 1e9)


_FOREVER_SECONDS = 292 * 365 * 86400


async def copy(request: Request) -> Response:
    data = await read_json(request)
    source, destination = data.get("source"), data.get("destination")
    if not source or not isinstance(source, str):
        raise BadRequest("source is required")
    if not destination or not isinstance(destination, str):
        raise BadRequest("destination is required")
    _inference(request).store.copy(source, destination)
    return Response(status_code=200)


async def delete(request: Request) -> Response:
    data = await read_json(request)
    name = data.get("model") or data.get("name")
    if not name or not isinstance(name, str):
        raise BadRequest("model is required")
    inference = _inference(request)
    model = inference.store.get(name)
    # Stop its runner first (keyed like Job.key, by manifest digest): at once if idle, else when
    # its requests end, the weights staying readable to it meanwhile as an unlinked file does.
    # Blobs that other models use are kept.
    await request.app.state.pool.unload(model.digest)
    inference.store.delete(name)
    return Response(status_code=200)


async def version(request: Request) -> Response:
    return json_response({"version": OLLAMA_COMPAT_VERSION, "corral": __version__})


async def root(request: Request) -> Response:
    return PlainTextResponse("Ollama is running")


routes = [
    Route("/", root, methods=["GET", "HEAD"]),
    Route("/api/version", version, methods=["GET", "HEAD"]),
    Route("/api/tags", tags, methods=["GET", "HEAD"]),
    Route("/api/show", show, methods=["POST"]),
    Route("/api/ps", ps, methods=["GET"]),
    Route("/api/generate", generate, methods=["POST"]),
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/embed", embed, methods=["POST"]),
    Route("/api/embeddings", embeddings_legacy, methods=["POST"]),
    Route("/api/copy", copy, methods=["POST"]),
    Route("/api/delete", delete, methods=["DELETE"]),
]
