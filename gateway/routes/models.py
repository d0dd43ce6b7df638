"""Model building: POST /api/create, HEAD and POST /api/blobs/{digest}.

Create runs in a worker thread (reading GGUFs, hashing, quantizing) and reports Ollama's status
objects, streamed as NDJSON or, with `"stream": false`, answered as the last one. An error found
before the first status is sent gets its proper HTTP status; later ones end the stream with an
`{"error": ...}` line, as Ollama does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.http import dumps, field, json_response, ndjson, read_json
from registry.blobs import parse_digest
from registry.store import Store
from shared.errors import CorralError

log = logging.getLogger("corral.create")

_WRITE_BATCH = 8 * 1024 * 1024  # upload bytes handed to the writer thread at a time


def _store(request: Request) -> Store:
    return request.app.state.inference.store


async def create(request: Request) -> Response:
    # Imported here: registry.create needs the gguf package (and so numpy), which a serving
    # gateway that creates no model does not load (tests/test_lean_gateway.py).
    from registry.create import create_model, spec_from_request

    data = await read_json(request)
    spec = spec_from_request(data)  # every cheap check: a 400 before anything streams
    want_stream = field(data, "stream", bool, True)
    settings = request.app.state.inference.settings
    store = _store(request)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    cancel = threading.Event()

    def progress(obj: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, ("progress", obj))

    def work() -> None:
        try:
            create_model(store, spec, progress, prune_old=not settings.noprune, cancel=cancel)
        except CorralError as exc:
            loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))
        except Exception as exc:  # noqa: BLE001 - reported to the client, logged here
            log.exception("create %s failed", spec.name.display())
            loop.call_soon_threadsafe(queue.put_nowait, ("error", CorralError(str(exc))))
        else:
            loop.call_soon_threadsafe(queue.put_nowait, ("done", None))

    task = asyncio.ensure_future(asyncio.to_thread(work))

    async def events() -> AsyncIterator[tuple[str, Any]]:
        try:
            while True:
                kind, value = await queue.get()
                yield kind, value
                if kind != "progress":
                    return
        finally:
            if not task.done():
                cancel.set()  # the client went away: stop at the next step

    stream = events()
    first_kind, first = await anext(stream)
    if first_kind == "error":
        return json_response({"error": first.message}, first.status)

    if not want_stream:
        last: dict[str, Any] = first if first_kind == "progress" else {"status": "success"}
        async for kind, value in stream:
            if kind == "error":
                return json_response({"error": value.message}, value.status)
            if kind == "progress":
                last = value
        return json_response(last)

    async def lines() -> AsyncIterator[str]:
        try:
            if first_kind == "progress":
                yield dumps(first) + "\n"
            async for kind, value in stream:
                if kind == "progress":
                    yield dumps(value) + "\n"
                elif kind == "error":
                    yield dumps({"error": value.message}) + "\n"
        finally:
            await stream.aclose()  # a client that left cancels the create

    return ndjson(lines())


def _digest(request: Request) -> str:
    digest = request.path_params["digest"]
    parse_digest(digest)  # 400 "invalid digest format"
    return digest


async def head_blob(request: Request) -> Response:
    digest = _digest(request)
    if _store(request).has_blob(digest):
        return Response(status_code=200)
    return json_response({"error": f'blob "{digest}" not found'}, 404)


async def post_blob(request: Request) -> Response:
    """Stream the body into a temp file while hashing; rename into place only if the digest
    matches. Any failure (mismatch, client gone) removes the temp file."""
    digest = _digest(request)
    store = _store(request)
    if store.has_blob(digest):
        return Response(status_code=200)  # already there: the body is not read
    writer = await asyncio.to_thread(store.blob_writer)
    try:
        pending: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            pending.append(chunk)
            size += len(chunk)
            if size >= _WRITE_BATCH:
                await asyncio.to_thread(writer.write, b"".join(pending))
                pending, size = [], 0
        if pending:
            await asyncio.to_thread(writer.write, b"".join(pending))
        await asyncio.to_thread(writer.commit, digest)
    except ClientDisconnect:
        writer.abort()
        return Response(status_code=499)
    finally:
        with contextlib.suppress(OSError):
            writer.abort()  # no-op after a successful commit
    return Response(status_code=201)


routes: list[Route] = [
    Route("/api/create", create, methods=["POST"]),
    Route("/api/blobs/{digest}", head_blob, methods=["HEAD"]),
    Route("/api/blobs/{digest}", post_blob, methods=["POST"]),
]
