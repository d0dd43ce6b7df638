"""The progress objects /api/pull and /api/push stream, in Ollama's shapes.

A transfer yields plain dicts: `{"status": "pulling manifest"}` for a step, and for a layer
`{"status": "pulling <12 hex>", "digest": "sha256:..", "total": N, "completed": M}` (`completed`
is left out while it is 0, as Go's omitempty does). While a layer moves, `watch` repeats its object
every `interval` seconds until the work is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

INTERVAL = 0.06  # Ollama reports every 60 ms


def status(text: str) -> dict[str, Any]:
    return {"status": text}


def short(digest: str) -> str:
    """The first 12 hex digits of a digest, as the status line shows it."""
    return digest.split(":", 1)[-1].split("-", 1)[-1][:12]


def layer(verb: str, digest: str, total: int, completed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"status": f"{verb} {short(digest)}", "digest": digest, "total": total}
    if completed:
        out["completed"] = completed
    return out


async def watch(
    done: Awaitable[Any],
    current: Callable[[], dict[str, Any]],
    interval: float = INTERVAL,
) -> AsyncIterator[dict[str, Any]]:
    """Yield `current()` now, then every `interval` while `done` is pending, then once more.

    Exceptions of `done` propagate after the last object. Leaving early cancels `done` (wrap it
    in asyncio.shield to keep it going).
    """
    future = asyncio.ensure_future(done)
    last: dict[str, Any] | None = None
    try:
        while True:
            finished, _ = await asyncio.wait({future}, timeout=interval if last is not None else 0)
            now = current()
            if now != last or finished:
                yield now
                last = now
            if finished:
                future.result()
                return
    finally:
        if not future.done():
            future.cancel()
