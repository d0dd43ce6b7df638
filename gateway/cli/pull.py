"""`corral pull [--insecure] MODEL`: the server's /api/pull stream drawn as progress bars.

Each step (`pulling manifest`, `verifying sha256 digest`, `writing manifest`, `success`) is a
line; each layer gets its own bar with size, speed and time left. Output goes to stderr as
Ollama's does; on a terminal it redraws in place, elsewhere the final state is printed once.
`TransferView` is shared with `corral push`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from gateway.cli.client import Client


class _LayerOnly(ProgressColumn):
    """Shows the wrapped column for layer rows only; step rows are just their text."""

    def __init__(self, inner: ProgressColumn) -> None:
        super().__init__()
        self.inner = inner

    def render(self, task: Task) -> Any:
        return self.inner.render(task) if task.fields.get("layer") else Text("")


class TransferView:
    """Feeds progress objects (`{"status", "digest", "total", "completed"}`) into rich bars."""

    def __init__(self, stream: TextIO | None = None) -> None:
        console = Console(file=stream or sys.stderr, highlight=False)
        self.progress = Progress(
            TextColumn("{task.description}"),
            _LayerOnly(BarColumn(bar_width=30)),
            _LayerOnly(TaskProgressColumn()),
            _LayerOnly(DownloadColumn()),
            _LayerOnly(TransferSpeedColumn()),
            _LayerOnly(TimeRemainingColumn()),
            console=console,
            refresh_per_second=10,
        )
        self._layers: dict[str, TaskID] = {}
        self._last_step: str | None = None
        self.last: dict[str, Any] = {}

    def __enter__(self) -> TransferView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, event: dict[str, Any]) -> None:
        self.last = event
        text = str(event.get("status", ""))
        digest = event.get("digest")
        if digest:
            total = int(event.get("total") or 0)
            completed = int(event.get("completed") or 0)
            task = self._layers.get(digest)
            if task is None:
                task = self.progress.add_task(text, total=total or None, layer=True)
                self._layers[digest] = task
            self.progress.update(task, description=text, total=total or None,
                                 completed=completed)
            return
        if text and text != self._last_step:
            self.progress.add_task(text, total=None, layer=False)
            self._last_step = text


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
