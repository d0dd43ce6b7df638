"""Progress display shared by `corral create`, `pull` and `push`: status lines and rich bars.

Rows are either steps (just their text) or bars of a kind: "bytes" (transfers, with size, speed
and time left) or "count" (e.g. tensors quantized).
"""

from __future__ import annotations

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


class _Only(ProgressColumn):
    """Renders the inner column only for rows of the given kinds; other rows stay blank."""

    def __init__(self, inner: ProgressColumn, *kinds: str) -> None:
        super().__init__()
        self.inner = inner
        self.kinds = kinds

    def render(self, task: Task) -> Any:
        return self.inner.render(task) if task.fields.get("kind") in self.kinds else Text("")


class ProgressView:
    """A context manager drawing steps and bars on stderr (or `stream`)."""

    def __init__(self, stream: TextIO | None = None, *, time_left: bool = False,
                 wide_when_piped: bool = False) -> None:
        console = Console(file=stream or sys.stderr, highlight=False)
        if wide_when_piped and not console.is_terminal:
            console.width = 200  # printed once at the end: room for whole digests
        columns: list[ProgressColumn] = [
            _Only(BarColumn(bar_width=30), "bytes", "count"),
            _Only(TaskProgressColumn(), "bytes", "count"),
            _Only(DownloadColumn(), "bytes"),
            _Only(TransferSpeedColumn(), "bytes"),
        ]
        if time_left:
            columns.append(_Only(TimeRemainingColumn(), "bytes"))
        self.progress = Progress(TextColumn("{task.description}"), *columns, console=console,
                                 refresh_per_second=10)
        self._bars: dict[str, TaskID] = {}
        self._last_step: str | None = None

    def __enter__(self) -> ProgressView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def step(self, text: str) -> None:
        """A status line, shown once however often it repeats."""
        if text and text != self._last_step:
            self.progress.add_task(text, total=None, kind="step")
            self._last_step = text

    def bar(self, key: str, text: str, total: int, completed: int, kind: str = "bytes") -> None:
        """Create or move the bar called `key`."""
        task = self._bars.get(key)
        if task is None:
            task = self.progress.add_task(text, total=total or None, kind=kind)
            self._bars[key] = task
            self._last_step = None
        self.progress.update(task, description=text, total=total or None, completed=completed)
