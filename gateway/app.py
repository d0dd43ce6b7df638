"""The Starlette application: routes, CORS, error shapes, and the runner pool's lifetime."""

from __future__ import annotations

import contextlib
import errno
import logging
import re
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway import metrics, openapi
from gateway.accesslog import AccessLog
from gateway.bodylimit import BodyLimit
from gateway.hostcheck import HostCheck, guards
from gateway.http import SERVER_SEND, json_response
from gateway.inference import Inference
from gateway.remotepool import RemotePool
from gateway.responses.store import ResponseStore
from gateway.routes import (
    anthropic,
    anthropic_errors,
    models,
    oci,
    ollama,
    openai,
    responses,
    transfer,
)
from gateway.team.keys import KeyRing
from gateway.team.middleware import Team, TeamMiddleware
from registry.store import Store
from runner.supervisor.pool import RunnerPool
from shared.config import Settings
from shared.errors import CorralError

log = logging.getLogger("corral.gateway")

# Ollama's built-in allowed origins; OLLAMA_ORIGINS adds to them.
BUILTIN_ORIGINS = (
    "http://localhost", "https://localhost", "http://localhost:*", "https://localhost:*",
    "http://127.0.0.1", "https://127.0.0.1", "http://127.0.0.1:*", "https://127.0.0.1:*",
    "http://0.0.0.0", "https://0.0.0.0", "http://0.0.0.0:*", "https://0.0.0.0:*",
    "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*",
)
# Browsers let a page read these reply headers only when told.
RATELIMIT_HEADERS = [f"x-ratelimit-{what}-{kind}" for what in ("limit", "remaining", "reset")
                     for kind in ("requests", "tokens")] + ["Retry-After"] + [
    f"anthropic-ratelimit-{kind}-{what}" for kind in ("requests", "tokens")
    for what in ("limit", "remaining", "reset")]
ALLOWED_HEADERS = [
    "Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With", "OpenAI-Beta",
    "x-api-key", "anthropic-version", "anthropic-beta", "anthropic-dangerous-direct-browser-access",
    "x-stainless-arch", "x-stainless-async", "x-stainless-custom-poll-interval",
    "x-stainless-helper-method", "x-stainless-lang", "x-stainless-os",
    "x-stainless-package-version", "x-stainless-poll-helper", "x-stainless-retry-count",
    "x-stainless-runtime", "x-stainless-runtime-version", "x-stainless-timeout",
]


def origin_regex(origins: tuple[str, ...]) -> str:
    """One regex for all allowed origins; `*` in a pattern matches anything."""
    patterns = [re.escape(o).replace(r"\*", ".*") for o in (*BUILTIN_ORIGINS, *origins)]
    return "^(" + "|".join(patterns) + ")$"


def _error(request: Request, status: int, message: str, param: str | None = None,
           code: str | None = None) -> Response:
    if anthropic_errors.is_anthropic(request.url.path, request.scope["headers"]):
        status = anthropic_errors.status_for(status)
        return json_response(anthropic_errors.error_body(status, message), status,
                             "application/json")
    if request.url.path.startswith("/v1/"):
        return json_response(openai.error_body(status, message, param, code), status,
                             "application/json")
    return json_response({"error": message}, status)


async def _corral_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CorralError)
    # OpenAI's error object can name the field at fault (openai.InvalidParam).
    response = _error(request, exc.status, exc.message, getattr(exc, "param", None),
                      getattr(exc, "code", None))
    response.headers.update(getattr(exc, "headers", None) or {})  # Retry-After of a 429, 503
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: "404 page not found", 405: "405 method not allowed"}.get(
        exc.status_code, str(exc.detail))
    return _error(request, exc.status_code, message)


async def _unexpected(request: Request, exc: Exception) -> Response:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:  # WebDAV's 507, plainly worded
        log.error("no space left on the disk while serving %s: %s", request.url.path, exc)
        return _error(request, 507, "the server's disk is full: no space left to write to")
    log.exception("unhandled error on %s", request.url.path)
    return _error(request, 500, f"internal error: {exc}")


class App(Starlette):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Streamed bodies write through the server's own send (gateway.http.Stream).
        scope[SERVER_SEND] = send
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        body = _RequestBody(receive)

        async def send_after_body(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                await body.drain()
            await send(message)

        await super().__call__(scope, body.receive, send_after_body)


class _RequestBody:
    """Tracks whether the app read the request body to its end, so that the rest can be read
    before the reply ends. Hypercorn queues at most ten body pieces for the app, and the end of
    a reply puts one more message into that queue: a reply ended while an upload is still
    arriving (an error part way through a blob) would wait on a full queue forever, the client
    still sending and never answered."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.done = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.done = True
        return message

    async def drain(self) -> None:
        while not self.done:
            await self.receive()


def create_app(settings: Settings, store: Store,
               pool: RunnerPool | RemotePool | None = None) -> Starlette:
    """The app; an HTTP worker (CORRAL_HTTP_WORKERS >= 2) passes the supervisor's `pool`."""
    pool = pool or RunnerPool(settings)
    routes = [*ollama.routes, *models.routes, *transfer.routes, *oci.routes, *anthropic.routes,
              *openai.routes, *responses.routes, *metrics.routes, *openapi.routes]
    # API keys, limits, usage, metrics and the access log (gateway/team/middleware.py).
    team = Team(KeyRing(settings.keys_file, settings.api_key, settings.open_without_keys),
                metrics.Metrics(),
                AccessLog(settings.access_log, pid=settings.http_workers > 1), routes,
                fair_share=settings.fair_share, cache_isolation=settings.cache_isolation,
                metrics_port=settings.metrics_listen.port if settings.metrics_listen else None)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool.start()
        try:
            yield
        finally:
            await pool.close()
            team.close()

    app = App(
        routes=routes,
        middleware=[*([Middleware(HostCheck)] if guards(settings.host.host) else []),
                    Middleware(CORSMiddleware, allow_origin_regex=origin_regex(settings.origins),
                               allow_methods=["*"], allow_headers=ALLOWED_HEADERS,
                               expose_headers=RATELIMIT_HEADERS),
                    Middleware(TeamMiddleware, team=team),
                    Middleware(BodyLimit, limit=settings.max_body)],
        exception_handlers={CorralError: _corral_error, HTTPException: _http_error,
                            Exception: _unexpected},
        lifespan=lifespan,
    )
    app.state.inference = Inference(settings, store, pool)
    app.state.pool = pool
    app.state.responses = ResponseStore(settings.responses_root, settings.responses_store,
                                        settings.responses_ttl)
    app.state.metrics = team.metrics
    app.state.team = team
    return app
