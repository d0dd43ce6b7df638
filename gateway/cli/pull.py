"""`corral pull [--insecure] MODEL`: the server's /api/pull stream drawn as progress bars.

Each step (`pulling manifest`, `verifying sha256 digest`, `writing manifest`, `success`) is a
line; each layer gets its own bar with size, speed and time left. Output goes to stderr as
Ollama's does; on a terminal it redraws in place, elsewhere the final state is printed once.
`TransferView` is shared with `corral push`.
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from gateway.cli.client import Client
from gateway.cli.progress import ProgressView


class TransferView(ProgressView):
    """Feeds progress objects (`{"status", "digest", "total", "completed"}`) into rich bars."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream, time_left=True)
        self.last: dict[str, Any] = {}

    def update(self, event: dict[str, Any]) -> None:
        self.last = event
        text = str(event.get("status", ""))
        if digest := event.get("digest"):
            self.bar(digest, text, int(event.get("total") or 0), int(event.get("completed") or 0))
        else:
            self.step(text)


def run_transfer(client: Client, path: str, model: str, insecure: bool) -> int:
    """Stream `path` and draw it; the bars appear with the first progress object, so an error
    before it (no server, a bad name) prints only the error."""
    body = {"model": model, "insecure": insecure, "stream": True}
    view: TransferView | None = None
    try:
        for event in client.stream(path, body):
            if view is None:
                view = TransferView().__enter__()
            view.update(event)
    finally:
        if view is not None:
            view.__exit__()
    return 0


def cmd_pull(args: argparse.Namespace, client: Client) -> int:
    return run_transfer(client, "/api/pull", args.model, args.insecure)
