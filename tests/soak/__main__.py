"""The soak suite: faults repeated and load held, against real servers on loopback ports, with the
bundled model. Prints one table; exit status 1 when a scenario failed.

    .venv/bin/python -m tests.soak            # make soak: the full counts (tens of minutes)
    .venv/bin/python -m tests.soak --quick    # make soak-quick: about two minutes, in CI
    .venv/bin/python -m tests.soak --only kills,hang

Each scenario runs servers of its own (stores hard-linked from one imported copy of the bundled
model, each with its own TMPDIR) and stops them by PID; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from registry.bundled import import_bundled_model
from registry.store import Store
from tests.soak import crashes, disconnects, full_disk, hang, kills, load
from tests.soak.common import Row, Scale

SCENARIOS: dict[str, Callable[[Scale, Path, Path], Row]] = {
    "kills": kills.run,
    "load": load.run,
    "disconnects": disconnects.run,
    "crashes": crashes.run,
    "full_disk": full_disk.run,
    "hang": hang.run,
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak")
    parser.add_argument("--quick", action="store_true", help="the two-minute version")
    parser.add_argument("--only", help=f"comma-separated, of {', '.join(SCENARIOS)}")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(SCENARIOS)
    if unknown := set(names) - set(SCENARIOS):
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    scale = Scale.quick() if args.quick else Scale.full()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # servers are stopped on the way out
    err = Console(stderr=True)
    rows: list[Row] = []
    seconds: list[float] = []
    with tempfile.TemporaryDirectory(prefix="corral-soak-") as tmp:
        source = Path(tmp) / "source"
        import_bundled_model(Store(source))
        for name in names:
            err.print(f"soak: {name} ...", style="dim")
            started = time.monotonic()
            try:
                row = SCENARIOS[name](scale, source, Path(tmp) / name)
            except Exception as exc:  # noqa: BLE001 - a broken scenario is a failed row
                row = Row(name, "-", False, f"crashed: {type(exc).__name__}: {exc}",
                          [traceback.format_exc(limit=4)])
            seconds.append(time.monotonic() - started)
            rows.append(row)
            err.print(f"soak: {name}: {'ok' if row.ok else row.ok} in {seconds[-1]:.0f}s",
                      style="dim")
    table = Table(title=f"corral soak ({'quick' if args.quick else 'full'}), bundled model, "
                        "loopback")
    for column in ("scenario", "runs", "result", "figures", "time"):
        table.add_column(column, overflow="fold")
    for row, took in zip(rows, seconds, strict=True):
        result = {True: "pass", False: "FAIL", None: "skipped"}[row.ok]
        table.add_row(row.scenario, row.runs, result, row.figures, f"{took:.0f}s")
    out = Console(width=200)
    out.print(table)
    for row in rows:
        for problem in row.problems[:10]:
            out.print(f"[red]{row.scenario}:[/red] {problem}", highlight=False)
    return 1 if any(row.ok is False for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
