"""A reply sent while an upload is still arriving reaches the client (found by the soak's full
disk: a blob upload whose write failed part way was never answered)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator

import httpx
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gateway.app import App
from tests.conftest import free_port


async def gives_up(request: Request) -> PlainTextResponse:
    """Reads a little, works slowly (the server's body queue fills meanwhile), then refuses."""
    async for _chunk in request.stream():
        break
    await asyncio.sleep(0.5)
    return PlainTextResponse("no space left on device", status_code=500)


def test_a_reply_before_the_body_is_read_reaches_a_client_still_sending() -> None:
    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    stop = threading.Event()

    async def until_stopped() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.05)

    app = App(routes=[Route("/upload", gives_up, methods=["POST"])])
    server = threading.Thread(target=lambda: asyncio.run(
        serve(app, config, shutdown_trigger=until_stopped)), daemon=True)  # type: ignore[arg-type]
    server.start()
    try:
        block = os.urandom(1 << 20)

        def body() -> Iterator[bytes]:
            for _ in range(128):  # far more than the socket buffers and the server's queue hold
                yield block

        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.TransportError:
                stop.wait(0.05)
        reply = httpx.post(f"http://127.0.0.1:{port}/upload", content=body(), timeout=30)
        assert reply.status_code == 500 and reply.text == "no space left on device"
    finally:
        stop.set()
        server.join(timeout=10)
