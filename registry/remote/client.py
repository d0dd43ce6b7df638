"""HTTP to OCI registries: endpoints from model names, bearer-token auth, proxies, error messages.

Auth follows the distribution token flow as Ollama does it: a request answered `401` with
`WWW-Authenticate: Bearer realm=..,service=..,scope=..` fetches a token from the realm and is sent
once more with `Authorization: Bearer <token>`; the token is kept per registry host and repository
for the next requests. When the realm is on the registry's own host (Ollama's registry) the token
request is signed with the ed25519 identity key (see keys.py); a realm elsewhere gets a plain,
anonymous request, so the key's signature never leaves for another host.

`HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY` are honoured (httpx reads them), except for loopback hosts,
which are always reached directly as Go's HTTP client does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from registry.names import ModelName
from registry.remote.keys import IdentityKey
from shared.config import is_loopback_host
from shared.errors import BadRequest, CorralError
from shared.version import OLLAMA_COMPAT_VERSION, __version__

USER_AGENT = f"corral/{__version__} (ollama/{OLLAMA_COMPAT_VERSION} compatible)"
INSECURE_PROTOCOL = "insecure protocol http"

Content = bytes | Callable[[], AsyncIterator[bytes]] | None


class RegistryError(CorralError):
    """A registry refused or failed a request; the message is ready for the API caller."""


class Unauthorized(RegistryError):
    status = 401


@dataclass(frozen=True)
class Endpoint:
    """Where a model lives: `base` (scheme://host[:port]) and `repo` (namespace/model)."""

    base: str
    repo: str
    tag: str

    @classmethod
    def for_name(cls, name: ModelName, *, insecure: bool = False) -> Endpoint:
        """https by default; `insecure` means plain http; an `http://` name needs `insecure`."""
        if name.scheme == "http" and not insecure:
            raise BadRequest(INSECURE_PROTOCOL)
        scheme = "http" if insecure else name.scheme
        return cls(f"{scheme}://{name.host}", f"{name.namespace}/{name.model}", name.tag)

    @property
    def host(self) -> str:
        return urlsplit(self.base).netloc

    def url(self, path: str) -> str:
        return f"{self.base}/v2/{self.repo}/{path}"

    def manifest_url(self, reference: str | None = None) -> str:
        return self.url(f"manifests/{reference or self.tag}")

    def blob_url(self, digest: str) -> str:
        return self.url(f"blobs/{digest}")


_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="..",service=".."` -> ("bearer", {"realm": .., "service": ..})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {}
    for m in _PARAM.finditer(rest):
        value = m.group(2) if m.group(2) is not None else m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
    return scheme.lower(), params


def _host_of(url: str | httpx.URL) -> str:
    return httpx.URL(str(url)).netloc.decode("ascii").lower()


def registry_message(resp: httpx.Response) -> str:
    """The first `errors[].message` of an OCI error body, else the status line."""
    try:
        data = json.loads(resp.content) if resp.content else None
    except (ValueError, httpx.ResponseNotRead):
        data = None
    if isinstance(data, dict):
        errors = data.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            return str(first.get("message") or first.get("code") or "").strip() or str(first)
        if isinstance(data.get("error"), str):
            return data["error"]
    return f"{resp.status_code} {resp.reason_phrase}".strip()


def describe(exc: BaseException) -> str:
    """An httpx error in words, with its request when it has one."""
    text = str(exc) or type(exc).__name__
    cause: BaseException | None = exc
    while cause is not None:  # anyio hides "connection refused" behind "attempts failed"
        if isinstance(cause, OSError) and (cause.errno or cause.strerror):
            known = cause.errno and cause.errno > 0 and not isinstance(cause, socket.gaierror)
            text = (os.strerror(cause.errno) if known else str(cause.strerror)).lower()
            break
        if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
            cause = cause.exceptions[0]
            continue
        cause = cause.__cause__ or cause.__context__
    try:
        request = exc.request  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):
        return text
    return f'{request.method} "{request.url}": {text}'


class RegistryClient:
    """One per pull or push (or longer): httpx clients, the token cache, the identity key."""

    def __init__(
        self,
        *,
        key_path: Path | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        read_timeout: float = 30.0,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.key_path = key_path
        self._transport = transport
        self._timeout = httpx.Timeout(connect=30.0, read=read_timeout, write=120.0, pool=None)
        self._headers = {"User-Agent": user_agent}
        self._clients: dict[bool, httpx.AsyncClient] = {}
        self._tokens: dict[tuple[str, str], str] = {}  # (registry host, repo) -> Authorization

    def _client(self, url: str) -> httpx.AsyncClient:
        direct = is_loopback_host(httpx.URL(url).host)
        client = self._clients.get(direct)
        if client is None:
            client = httpx.AsyncClient(
                timeout=self._timeout, headers=self._headers, trust_env=not direct,
                transport=self._transport, follow_redirects=False,
            )
            self._clients[direct] = client
        return client

    def fork(self) -> RegistryClient:
        """A client of its own for a task that may outlive this one, with the tokens so far."""
        other = RegistryClient(key_path=self.key_path, transport=self._transport,
                               read_timeout=self._timeout.read or 30.0,
                               user_agent=self._headers["User-Agent"])
        other._tokens = dict(self._tokens)
        return other

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def send(
        self,
        method: str,
        url: str,
        *,
        repo: str | None = None,
        headers: dict[str, str] | None = None,
        content: Content = None,
        stream: bool = False,
    ) -> httpx.Response:
        """One request, with the cached token for (host, repo); a 401 fetches a token from the
        challenge and sends the request once more. `repo=None` sends no credentials (CDN URLs).
        A streamed response must be closed by the caller (`await resp.aclose()`)."""
        host = _host_of(url)
        key = (host, repo or "")
        for attempt in (0, 1):
            hdrs = dict(headers or {})
            if repo is not None and key in self._tokens:
                hdrs["Authorization"] = self._tokens[key]
            body = content() if callable(content) else content
            request = self._client(url).build_request(method, url, headers=hdrs, content=body)
            resp = await self._client(url).send(request, stream=stream)
            if resp.status_code != 401 or repo is None or attempt == 1:
                return resp
            challenge = resp.headers.get("WWW-Authenticate", "")
            await resp.aclose()
            scheme, params = parse_challenge(challenge)
            if scheme != "bearer" or not params.get("realm"):
                return resp
            self._tokens[key] = "Bearer " + await self._fetch_token(params, host)
        raise AssertionError("unreachable")

    async def _fetch_token(self, challenge: dict[str, str], registry_host: str) -> str:
        realm = challenge["realm"]
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise Unauthorized(f"unauthorized: bad token realm {realm!r}")
        query = parse_qsl(parts.query, keep_blank_values=True)
        if challenge.get("service"):
            query.append(("service", challenge["service"]))
        for scope in challenge.get("scope", "").split():
            query.append(("scope", scope))
        signed = parts.netloc.lower() == registry_host
        if signed:  # Ollama's registry: a timestamped, nonced request signed with our key
            query.append(("ts", str(int(time.time()))))
            query.append(("nonce", base64.urlsafe_b64encode(secrets.token_bytes(16))
                          .decode().rstrip("=")))
        query.sort(key=lambda kv: kv[0])  # Go's url.Values.Encode order
        url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
        headers: dict[str, str] = {}
        if signed:
            key = IdentityKey.load(self.key_path)
            assert key is not None
            empty = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()
            headers["Authorization"] = key.sign(f"GET,{url},{empty}".encode())
        resp = await self._client(url).get(url, headers=headers)
        if resp.status_code >= 400:
            raise Unauthorized(f"unauthorized: token request failed: {registry_message(resp)}")
        try:
            data: Any = resp.json()
        except ValueError:
            data = None
        token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise Unauthorized("unauthorized: the token endpoint sent no token")
        return token


def part_size_override() -> int | None:
    """CORRAL_PULL_PART_SIZE (bytes): a fixed part size for transfers, a knob for tests and slow
    links; unset means Ollama's sizing (size/16 within [100 MB, 1000 MB])."""
    raw = os.environ.get("CORRAL_PULL_PART_SIZE", "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        return None
    return max(value, 64 * 1024)


MIN_PART = 100 * 1000 * 1000
MAX_PART = 1000 * 1000 * 1000
MAX_PARTS = 16


def part_size(total: int, override: int | None = None) -> int:
    """Ollama's split: total/16 clamped to [100 MB, 1000 MB] (or the override)."""
    if override:
        return override
    return min(max(total // MAX_PARTS, MIN_PART), MAX_PART)
