"""A small synchronous client for the Ollama-style HTTP API that `corral serve` speaks.

Every failure surfaces as a `CLIError` whose message is ready to print after "Error: ", so the
command handlers never see httpx exceptions or raw `{"error": ...}` bodies.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from shared.config import HostAddress, Settings, is_loopback_host, parse_host
from shared.errors import ConfigError


class CLIError(Exception):
    """An error to print as `Error: <message>` before exiting 1."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConnectFailed(CLIError):
    """Nothing answers at the server address."""


class APIError(CLIError):
    """The server answered with an error (HTTP status, or an error line mid-stream)."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


def server_address(env: Mapping[str, str] | None = None) -> HostAddress:
    """OLLAMA_HOST as the server reads it; a bad value elsewhere in the env must not stop us."""
    try:
        return Settings.from_env(env).host
    except ConfigError as exc:
        raw = (os.environ if env is None else env).get("OLLAMA_HOST")
        try:
            return parse_host(raw)
        except ValueError:
            raise CLIError(str(exc)) from None


def error_message(body: bytes, status: int, reason: str = "") -> str:
    """The human message in an error response: Ollama's `{"error": "..."}`, else the text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and "error" in data:
        err = data["error"]
        if isinstance(err, dict):  # OpenAI-shaped bodies, in case a proxy sits in between
            err = err.get("message", err)
        return str(err)
    if text:
        return text
    return f"{status} {reason}".strip()


def auth_headers(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`Authorization: Bearer $CORRAL_API_KEY` when it is set (a server with keys wants one)."""
    secret = (os.environ if env is None else env).get("CORRAL_API_KEY", "").strip().strip("\"'")
    return {"Authorization": f"Bearer {secret}"} if secret else {}


class Client:
    """Talks to one corral server; use as a context manager or call close()."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        connect_timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,  # tests inject httpx.MockTransport
    ) -> None:
        address = None if base_url else server_address()
        self.base_url = (base_url or address.client_url()).rstrip("/")  # type: ignore[union-attr]
        host = httpx.URL(self.base_url).host
        # Proxy variables must not hijack requests to this machine (Go's client skips them too).
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(None, connect=connect_timeout),
            trust_env=not is_loopback_host(host),
            headers={"User-Agent": "corral-cli", **auth_headers()},
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _connect_error(self) -> ConnectFailed:
        return ConnectFailed(
            f"could not connect to corral server at {self.base_url}; is it running? "
            "(start it with: corral serve)"
        )

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One request; returns the decoded JSON body, or None when the body is empty."""
        try:
            resp = self._http.request(method, path, json=body)
        except httpx.ConnectError:
            raise self._connect_error() from None
        except httpx.TransportError as exc:
            raise CLIError(f"request to {self.base_url}{path} failed: {exc}") from None
        if resp.status_code >= 400:
            raise APIError(
                error_message(resp.content, resp.status_code, resp.reason_phrase),
                resp.status_code,
            )
        if not resp.content.strip():
            return None
        try:
            return resp.json()
        except ValueError:
            raise CLIError(f"unexpected response from server: {resp.text[:200]!r}") from None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def delete(self, path: str, body: Any) -> Any:
        return self.request("DELETE", path, body)

    def stream(self, path: str, body: Any) -> Iterator[dict[str, Any]]:
        """POST and yield each NDJSON object; an `{"error"}` line raises APIError.

        Closing the generator (or an exception such as KeyboardInterrupt inside it) closes the
        HTTP response, which is how a generation is cancelled: the server sees the disconnect.
        """
        try:
            with self._http.stream("POST", path, json=body) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise APIError(
                        error_message(resp.content, resp.status_code, resp.reason_phrase),
                        resp.status_code,
                    )
                for line in resp.iter_lines():
                    if not line.strip():
                        continue
                    try:
                        chunk = json.loads(line)
                    except ValueError:
                        raise CLIError(f"unexpected response from server: {line[:200]!r}") from None
                    if isinstance(chunk, dict) and chunk.get("error"):
                        raise APIError(str(chunk["error"]))
                    if isinstance(chunk, dict):
                        yield chunk
        except httpx.ConnectError:
            raise self._connect_error() from None
        except httpx.TransportError as exc:
            raise CLIError(f"connection to {self.base_url} lost: {exc}") from None
