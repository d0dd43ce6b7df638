"""Anthropic's error object and rate-limit headers, for the Messages API (/v1/messages).

Kept apart from the route module so that the app's error handlers and the team middleware can
answer in Anthropic's shape without importing the routes. A request is Anthropic's when it goes
to /v1/messages (and /v1/messages/count_tokens) or carries `anthropic-version`, which the
Anthropic SDKs and Claude Code always send (so the SDK's `models.list()` gets its shape too).
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.team.ledger import Admission

PREFIX = "/v1/messages"

# Anthropic's error types by status; its SDKs pick their exception class from the status.
# A full queue is 529 (overloaded_error), as Anthropic answers when it is overloaded.
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
          529: "overloaded_error"}
OVERLOADED = 529


def is_anthropic(path: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> bool:
    return path.startswith(PREFIX) or any(name == b"anthropic-version" for name, _ in headers)


def status_for(status: int) -> int:
    """The status Anthropic answers where corral's other APIs answer `status`: a full queue
    (503) is its 529."""
    return OVERLOADED if status == 503 else status


def error_body(status: int, message: str) -> dict[str, Any]:
    kind = _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message},
            "request_id": "req_" + secrets.token_hex(12)}


def ratelimit_headers(admission: Admission) -> dict[str, str]:
    """Anthropic's `anthropic-ratelimit-*` headers for the limits a key has (none for a limit
    it lacks); the reset is an RFC 3339 time, as Anthropic writes it."""
    headers: dict[str, str] = {}
    now = datetime.datetime.now(datetime.UTC)
    for kind, window in (("requests", admission.requests), ("tokens", admission.tokens)):
        if window is not None:
            reset = now + datetime.timedelta(seconds=window.reset)
            headers[f"anthropic-ratelimit-{kind}-limit"] = str(window.limit)
            headers[f"anthropic-ratelimit-{kind}-remaining"] = str(window.remaining)
            headers[f"anthropic-ratelimit-{kind}-reset"] = reset.isoformat(
                timespec="seconds").replace("+00:00", "Z")
    return headers
