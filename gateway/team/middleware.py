"""The team middleware: API keys, admin-only routes, per-key limits, and the bookkeeping of every
request (usage, metrics, access log).

An ASGI middleware so that the routes stay as they are: it answers 401/403/429 before a route
runs (and before any body is read), adds OpenAI's x-ratelimit-* headers to the replies of
authenticated requests, and when the reply has gone out it reads the request's record
(gateway/team/context.py) for the tokens, model and timings the route and the runner filled in.
What depends on the model (403 for a model a key may not use, filtered lists) happens where the
model is named: `Inference.model` and the list routes, through `gateway.team.context`.

With no keys (no keys file, or one without keys, and no CORRAL_API_KEY) the server trusts its
callers as Ollama does: every request is `anonymous`, and only the bookkeeping runs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.accesslog import AccessLog
from gateway.http import json_response
from gateway.metrics import Metrics
from gateway.routes import anthropic_errors
from gateway.routes.openai import error_body
from gateway.team import context
from gateway.team.keys import ANONYMOUS, ApiKey, KeyRing
from gateway.team.ledger import Admission, Ledger, Limits, ledger_path
from shared.errors import ServerBusy

log = logging.getLogger("corral.team")
T = TypeVar("T")
LEDGER_BUSY = ("the usage ledger is busy (its database is locked by another process); "
               "please retry")

OPEN = {("GET", "/"), ("HEAD", "/"), ("GET", "/openapi.json"), ("HEAD", "/openapi.json")}
ADMIN_PATHS = {"/api/create", "/api/copy", "/api/delete", "/api/pull", "/api/push", "/metrics"}
ADMIN_PREFIXES = ("/api/blobs/",)
# Requests that use a model: they count against a key's requests per minute and concurrency.
MODEL_PATHS = {"/api/generate", "/api/chat", "/api/embed", "/api/embeddings",
               "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages",
               "/v1/responses"}


def _counted(path: str) -> bool:
    """Whether a request counts against its key's requests per minute and concurrency: it uses
    a model, or downloads one (CORRAL_SERVE_REGISTRY's manifests and blobs)."""
    return path in MODEL_PATHS or (path.startswith("/v2/")
                                   and ("/manifests/" in path or "/blobs/" in path))


def error_reply(path: str, status: int, message: str,
                headers: dict[str, str] | None = None, *, anthropic: bool | None = None
                ) -> Response:
    """An error in the shape of the API the path belongs to: Anthropic's for its Messages API
    (`anthropic`: the request is Anthropic's; by default, judged by the path), OpenAI's object
    on /v1 (so the SDKs raise AuthenticationError, PermissionDeniedError, RateLimitError),
    Ollama's elsewhere."""
    if anthropic if anthropic is not None else anthropic_errors.is_anthropic(path):
        status = anthropic_errors.status_for(status)
        response = json_response(anthropic_errors.error_body(status, message), status,
                                 "application/json")
    elif path.startswith("/v1/"):
        response = json_response(error_body(status, message), status, "application/json")
    else:
        response = json_response({"error": message}, status)
    response.headers.update(headers or {})
    return response


def go_duration(seconds: float) -> str:
    """A wait as OpenAI writes x-ratelimit-reset-*: `20ms`, `1s`, `1.5s`, `6m0s`, `1h2m3s`."""
    ms = round(seconds * 1000)
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def ratelimit_headers(admission: Admission) -> dict[str, str]:
    """OpenAI's headers for the limits a key has (none for a limit it lacks)."""
    headers: dict[str, str] = {}
    for kind, window in (("requests", admission.requests), ("tokens", admission.tokens)):
        if window is not None:
            headers[f"x-ratelimit-limit-{kind}"] = str(window.limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(window.remaining)
            headers[f"x-ratelimit-reset-{kind}"] = go_duration(window.reset)
    return headers


def _refusal(key: ApiKey, admission: Admission) -> str:
    wait = go_duration(admission.retry_after)
    if admission.reason == "concurrency":
        return (f"Too many requests in flight for API key '{key.name}' (limit "
                f"{key.concurrency}). Please try again when one of them has finished.")
    limit = key.rpm if admission.reason == "requests" else key.tpm
    return (f"Rate limit reached for {admission.reason} per minute (limit {limit}) for API key "
            f"'{key.name}'. Please try again in {wait}.")


def _bearer(scope: Scope) -> str | None:
    """The key from `Authorization: Bearer`, or from `x-api-key` (what the Anthropic SDKs
    send; Claude Code sends either)."""
    api_key = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value.strip():
            api_key = value.decode("latin-1").strip()
    return api_key


def _admin_only(path: str) -> bool:
    return path in ADMIN_PATHS or path.startswith(ADMIN_PREFIXES)


@dataclass
class Team:
    """What the middleware works with, made once per app."""

    keyring: KeyRing
    metrics: Metrics
    access_log: AccessLog
    routes: Sequence[BaseRoute]
    fair_share: bool = True
    cache_isolation: bool = True  # a key's requests reuse only its own prompt caches
    metrics_port: int | None = None  # CORRAL_METRICS_LISTEN's port: /metrics only, no key
    _ledger: Ledger | None = field(default=None, repr=False)
    _thread: ThreadPoolExecutor | None = field(default=None, repr=False)

    def ledger(self) -> Ledger:
        """Opened on the first authenticated request: a server without keys never makes one.
        Used only on the ledger's thread (`in_ledger`, `after`)."""
        if self._ledger is None:
            self._ledger = Ledger(ledger_path(self.keyring.file.path))
        return self._ledger

    def _executor(self) -> ThreadPoolExecutor:
        # One thread: SQLite's connection stays on it, and the work runs in the order it came
        # (a request's end is recorded before a later request of that process is admitted).
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="corral-ledger")
        return self._thread

    async def in_ledger(self, work: Callable[[Ledger], T]) -> T:
        """Run `work` on the ledger's thread: a lock held by another process (up to the
        ledger's timeout) never stalls the event loop and every stream on it."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor(), lambda: work(self.ledger()))

    def after(self, work: Callable[[Ledger], None], what: str) -> None:
        """Run `work` on the ledger's thread without waiting for it (a finished request's
        bookkeeping: the reply has gone out already)."""
        def report(done: Future[None]) -> None:
            if (error := done.exception()) is not None:  # never lose a reply over bookkeeping
                log.error("could not record %s: %s", what, error)
        self._executor().submit(lambda: work(self.ledger())).add_done_callback(report)

    def close(self) -> None:
        if self._thread is not None:
            if self._ledger is not None:
                self._thread.submit(self._ledger.close).result()
            self._thread.shutdown()
        self.access_log.close()

    def route_of(self, scope: Scope) -> str:
        """The route's path template (`/api/blobs/{digest}`), for low-cardinality labels."""
        route = scope.get("route")
        if route is None:  # answered before routing (401, 429): match it here
            route = next((r for r in self.routes if r.matches(scope)[0] != Match.NONE), None)
        return getattr(route, "path", None) or "other"


class TeamMiddleware:
    def __init__(self, app: ASGIApp, team: Team) -> None:
        self.app = app
        self.team = team

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        team, path = self.team, scope["path"]
        server = scope.get("server")
        if team.metrics_port is not None and server and server[1] == team.metrics_port:
            # The metrics listener: GET /metrics and nothing else, for scrapers that send no key.
            if (scope["method"], path) in (("GET", "/metrics"), ("HEAD", "/metrics")):
                await self.app(scope, receive, send)
            else:
                await Response(b"404 page not found", 404, media_type="text/plain")(
                    scope, receive, send)
            return
        keys = team.keyring.current()
        key: ApiKey | None = None
        counted = False
        headers: dict[str, str] = {}
        refusal: Response | None = None
        if keys.enabled and (scope["method"], path) not in OPEN:
            secret = _bearer(scope)
            key = keys.find(secret) if secret else None
            anthropic = anthropic_errors.is_anthropic(path, scope["headers"])

            def refuse(status: int, message: str,
                       extra: dict[str, str] | None = None) -> Response:
                return error_reply(path, status, message, extra, anthropic=anthropic)

            if keys.error is not None:
                refusal = refuse(500, f"the server's keys file is invalid: {keys.error}")
            elif keys.closed:
                refusal = refuse(401, "this server has no API keys left: authentication stays "
                                      "on until an operator creates a key or opens the server")
            elif secret is None:
                refusal = refuse(401, "missing API key: send the header "
                                      "'Authorization: Bearer <key>'"
                                 + (" or 'x-api-key: <key>'" if anthropic else ""))
            elif key is None:
                refusal = refuse(401, "invalid API key")
            elif key.expired():
                refusal = refuse(401, f"API key '{key.name}' has expired")
            elif _admin_only(path) and not key.admin:
                refusal = refuse(403, f"{path} needs an admin API key")
            else:
                counted = _counted(path)
                limits = Limits(key.rpm, key.tpm, key.concurrency)
                try:
                    admission = await team.in_ledger(
                        lambda ledger: ledger.admit(key.id, limits, count=counted))
                except sqlite3.OperationalError as exc:  # locked past its timeout: retry soon
                    log.warning("API key %s refused: the ledger is busy (%s)", key.name, exc)
                    counted = False
                    refusal = refuse(503, LEDGER_BUSY, {"Retry-After": "1"})
                    admission = Admission(False)
                headers = (anthropic_errors.ratelimit_headers(admission) if anthropic
                           else ratelimit_headers(admission))
                if refusal is None and not admission.allowed:
                    counted = False
                    refusal = refuse(429, _refusal(key, admission), {
                        **headers, "Retry-After": str(max(1, math.ceil(admission.retry_after)))})
            if refusal is not None and refusal.status_code in (401, 500):
                key = None  # not authenticated: logged as anonymous
        record = context.RequestRecord(key, (key.name if key else ANONYMOUS)
                                       if team.fair_share else "",
                                       key.id if key and team.cache_isolation else "")
        if key is not None and key.tpm and refusal is None:
            record.reserver = self._reserver(key)
        context.begin(record)
        status = 500  # unless a reply starts
        extra = [(k.encode(), v.encode()) for k, v in headers.items()]

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if extra:
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        try:
            if refusal is not None:
                status = refusal.status_code
                await refusal(scope, receive, send)
            else:
                await self.app(scope, receive, send_with_headers)
        finally:
            try:
                if record.settling:  # a dropped stream: the tokens it used until then
                    await record.settle()
            finally:
                self._finish(scope, record, status, counted)

    def _reserver(self, key: ApiKey) -> Callable[[int], Awaitable[None]]:
        async def reserve(tokens: int) -> None:
            limits = Limits(key.rpm, key.tpm, key.concurrency)
            try:
                admission = await self.team.in_ledger(
                    lambda ledger: ledger.reserve(key.id, limits, tokens))
            except sqlite3.OperationalError:
                busy = ServerBusy(LEDGER_BUSY)
                busy.headers = {"Retry-After": "1"}  # type: ignore[attr-defined]
                raise busy from None
            if not admission.allowed:
                headers = {**ratelimit_headers(admission),
                           "Retry-After": str(max(1, math.ceil(admission.retry_after)))}
                raise context.RateLimited(_refusal(key, admission), headers)
        return reserve

    def _finish(self, scope: Scope, record: context.RequestRecord, status: int,
                counted: bool) -> None:
        """Usage, token charges, metrics and the access log, once the reply has gone out."""
        team = self.team
        total = time.perf_counter() - record.started
        route, model, name = team.route_of(scope), record.model, record.key_name
        key = record.key
        if key is not None:
            limits = Limits(key.rpm, key.tpm, key.concurrency)
            prompt, generated, reserved = (record.prompt_tokens, record.generated_tokens,
                                           record.reserved)
            team.after(lambda ledger: ledger.finish(
                key.id, limits, model=model, prompt_tokens=prompt, generated_tokens=generated,
                counted=counted, reserved=reserved), f"the usage of API key {name}")
        m = team.metrics
        m.requests.labels(route, model, str(status), name).inc()
        m.request_duration.labels(route, model).observe(total)
        if model:  # (an increment of 0 still makes the series, so a scrape always has it)
            m.prompt_tokens.labels(model, name).inc(record.prompt_tokens)
            m.generation_tokens.labels(model, name).inc(record.generated_tokens)
            m.cached_prompt_tokens.labels(model).inc(record.cached_tokens)
            if record.first_token is not None:
                m.time_to_first_token.labels(model).observe(record.first_token)
            gaps = m.inter_token_latency.labels(model)
            for gap in record.token_gaps:
                gaps.observe(gap)
            waits = m.queue_wait.labels(model)
            for wait in record.queue_waits:
                waits.observe(wait)
        client: Any = scope.get("client")
        team.access_log.write({
            "key": name, "remote": client[0] if client else None, "method": scope["method"],
            # An unknown route's path is whatever a caller sent (a scanner's probes, a secret
            # pasted into a URL): the log keeps only that it matched no route.
            "path": scope["path"] if route != "other" else route, "route": route,
            "model": model or None, "status": status,
            "prompt_tokens": record.prompt_tokens, "generated_tokens": record.generated_tokens,
            "first_token_s": None if record.first_token is None else round(record.first_token, 4),
            "total_s": round(total, 4)})
