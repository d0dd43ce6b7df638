"""Ollama's DNS-rebinding guard: a server bound to loopback answers only requests whose Host names
this machine.

A web page on evil.example can make a browser send requests to a name that resolves to 127.0.0.1;
the browser then sends `Host: evil.example`. Checking the Host header stops such pages from
driving a server that trusts everything local. A server bound to another address is reachable by
name anyway, so it accepts every Host, as Ollama does.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from shared.config import is_loopback_host

_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")


def host_allowed(host_header: str, hostname: str) -> bool:
    """Whether a Host header (with or without its port) names this machine the way Ollama
    accepts: an IP that is loopback, private or unspecified, `localhost`, this machine's name,
    or a name under .localhost, .local or .internal."""
    host = _strip_port(host_header.strip()).lower()
    if not host:
        return True  # HTTP/1.0 without Host: nothing to check
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return (host in ("localhost", hostname.lower())
                or host.endswith(_LOCAL_SUFFIXES))
    return address.is_loopback or address.is_private or address.is_unspecified


def _strip_port(host: str) -> str:
    if host.startswith("["):  # [::1]:11434
        return host[:host.index("]") + 1] if "]" in host else host
    if host.count(":") == 1:  # name:port or v4:port; a bare IPv6 address has several colons
        return host.split(":", 1)[0]
    return host


class HostCheck:
    """ASGI middleware: 403 for a Host that does not name this machine."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.hostname = socket.gethostname()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
            if not host_allowed(host, self.hostname):
                await _forbidden(send, host)
                return
        await self.app(scope, receive, send)


async def _forbidden(send: Send, host: str) -> None:
    body = json.dumps({"error": f"host {host!r} is not allowed for a server bound to loopback"
                                " (DNS-rebinding guard)"}).encode()
    headers: list[Any] = [(b"content-type", b"application/json; charset=utf-8"),
                          (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def guards(bind_host: str) -> bool:
    """The guard applies only when the server listens on loopback."""
    return is_loopback_host(bind_host)
