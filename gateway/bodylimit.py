"""CORRAL_MAX_BODY: a request body larger than the cap gets 413 before it is read whole.

A declared Content-Length over the cap is refused before one byte of the body is read; a chunked
body is counted as it arrives and refused (PayloadTooLarge, which the app answers as 413) once it
passes the cap, so a client cannot make the server buffer gigabytes of JSON. Blob uploads
(`/api/blobs/...`, model weights of many GiB) are streamed to disk and are not capped.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.team.middleware import error_reply
from shared.errors import PayloadTooLarge

EXEMPT_PREFIXES = ("/api/blobs/",)


def _message(limit: int) -> str:
    return f"request body too large: the limit is {limit} bytes (CORRAL_MAX_BODY)"


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(EXEMPT_PREFIXES):
            await self.app(scope, receive, send)
            return
        limit = self.limit
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_reply(scope["path"], 413, _message(limit))(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(_message(limit))
            return message

        await self.app(scope, counted, send)
