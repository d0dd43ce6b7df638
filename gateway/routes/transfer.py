"""POST /api/pull and POST /api/push: registry transfers with Ollama's progress stream.

`{model (or name), insecure, stream}`. Streaming (the default) sends one NDJSON progress object
per line; an error after the first line becomes a final `{"error": ...}` line. `stream: false`
answers the last object (`{"status": "success"}`), or the error with its status.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.http import dumps, field, json_response, ndjson, read_json, unless_disconnected
from registry.names import ModelName
from registry.store import Store
from shared.errors import BadRequest, CorralError

log = logging.getLogger("corral.transfer")

Events = AsyncIterator[dict[str, Any]]

# registry.remote (httpx, and cryptography for signing) is imported by the handlers: a serving
# gateway that never pulls or pushes does not hold it (tests/test_lean_gateway.py).


def _store(request: Request) -> Store:
    return request.app.state.inference.store


async def _request(request: Request) -> tuple[ModelName, bool, bool]:
    data = await read_json(request)
    raw = data.get("model") or data.get("name")
    if not raw or not isinstance(raw, str):
        raise BadRequest("model is required")
    name = ModelName.parse(raw)
    insecure = field(data, "insecure", bool, False)
    stream = field(data, "stream", bool, True)
    from registry.remote.client import Endpoint

    Endpoint.for_name(name, insecure=insecure)  # "insecure protocol http" before any byte
    return name, insecure, stream


async def _last(events: Events) -> dict[str, Any]:
    last: dict[str, Any] = {}
    async with contextlib.aclosing(events):
        async for event in events:
            last = event
    return last


async def _lines(events: Events, what: str) -> AsyncIterator[str]:
    async with contextlib.aclosing(events):
        try:
            async for event in events:
                yield dumps(event) + "\n"
        except CorralError as exc:
            yield dumps({"error": exc.message}) + "\n"
        except Exception as exc:  # never a half-closed stream without a reason
            log.exception("%s failed", what)
            yield dumps({"error": f"{what}: {exc}"}) + "\n"


async def _respond(request: Request, events: Events, stream: bool, what: str) -> Response:
    if not stream:
        return json_response(await unless_disconnected(request, _last(events)))
    return ndjson(_lines(events, what))


async def pull(request: Request) -> Response:
    name, insecure, stream = await _request(request)
    from registry.remote.pull import pull_model

    events = pull_model(_store(request), name, insecure=insecure)
    return await _respond(request, events, stream, "pull model")


async def push(request: Request) -> Response:
    name, insecure, stream = await _request(request)
    from registry.remote.push import push_model

    events = push_model(_store(request), name, insecure=insecure)
    return await _respond(request, events, stream, "push model")


routes: list[Route] = [
    Route("/api/pull", pull, methods=["POST"]),
    Route("/api/push", push, methods=["POST"]),
]
