"""Small HTTP helpers shared by the route modules: body parsing and JSON/NDJSON responses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from shared.errors import BadRequest

JSON_TYPE = "application/json; charset=utf-8"
NDJSON_TYPE = "application/x-ndjson"


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def json_response(obj: Any, status: int = 200, media_type: str = JSON_TYPE) -> Response:
    return Response(dumps(obj).encode(), status_code=status, media_type=media_type)


async def read_json(request: Request) -> dict[str, Any]:
    """The request body as a JSON object; Ollama's 400s for a missing or malformed body."""
    body = await request.body()
    if not body.strip():
        raise BadRequest("missing request body")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def field(data: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None
          ) -> Any:
    """A typed optional field; the wrong JSON type is a 400 that names the field."""
    value = data.get(name)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise BadRequest(f"invalid value for field {name!r}: expected {expected}")
    return value


def ndjson(lines: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(_encode(lines), media_type=NDJSON_TYPE)


async def _encode(lines: AsyncIterator[str]) -> AsyncIterator[bytes]:
    async for line in lines:
        yield line.encode()
