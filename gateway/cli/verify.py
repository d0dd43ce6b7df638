"""`corral verify [--repair [--partials]] [--json]`: check the model store (OLLAMA_MODELS) like
`git fsck`, reading it directly (no server needed).

Exit status: 0 when the store is sound, 1 when damage was found (also when --repair removed
it: the models that used it must be pulled again), 2 on a usage error. Run --repair while no
server writes to the store, or at least not while it pulls or creates: temp files younger than a
minute are spared, but nothing else is.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from registry.verify import Report, verify
from shared.config import Settings
from shared.errors import ConfigError

USAGE_ERROR = 2


def add_verify_parser(sub: Any) -> None:
    """Listed in `corral --help`; `main` hands `corral verify ...` to `cmd_verify`, whose own
    parser gives usage errors their status 2."""
    sub.add_parser("verify", help="Check the model store (blob digests, manifest layers)",
                   add_help=False)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corral verify",
        description="Check every blob's digest and every manifest's layers in OLLAMA_MODELS.")
    parser.add_argument("--repair", action="store_true",
                        help="remove damaged and unreferenced blobs and stale temp files")
    parser.add_argument("--partials", action="store_true",
                        help="with --repair: also remove partial downloads")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def _as_json(report: Report) -> dict[str, Any]:
    return {
        "sound": report.sound,
        "blobs": report.blobs,
        "manifests": report.manifests,
        "damage": [{"path": str(f.path), "problem": f.problem} for f in report.damage],
        "partials": [{"digest": p.digest, "completed": p.completed, "size": p.size,
                      "files": [str(f) for f in p.files]} for p in report.partials],
        "unreferenced": [str(p) for p in report.unreferenced],
        "temp": [str(p) for p in report.temp],
        "other": [str(p) for p in report.other],
        "removed": [str(p) for p in report.removed],
    }


def _print(report: Report, root: str, repair: bool) -> None:
    out = sys.stdout.write
    out(f"checked {report.blobs} blobs and {report.manifests} manifests in {root}\n")
    if report.damage:
        out("damage:\n")
        for finding in report.damage:
            out(f"  {finding.path}: {finding.problem}\n")
    if report.partials:
        out("partial downloads (a pull resumes from them; not damage):\n")
        for partial in report.partials:
            got = (f"{_size(partial.completed)} of {_size(partial.size)}" if partial.size
                   else "progress unknown")
            out(f"  {partial.digest}: {got}\n")
    if report.unreferenced:
        total = sum(p.stat().st_size for p in report.unreferenced if p.exists())
        out(f"unreferenced blobs: {len(report.unreferenced)} ({_size(total)})"
            f"{'' if repair else '; --repair removes them'}\n")
    if report.temp:
        out(f"temp files of unfinished writes: {len(report.temp)}\n")
    for path in report.other:
        out(f"  unknown file (kept): {path}\n")
    if report.removed:
        out(f"removed {len(report.removed)} files\n")
    out("store is sound\n" if report.sound else "store is damaged: pull or delete the models "
        "named above\n")


def cmd_verify(argv: list[str]) -> int:
    parser = _parser()
    try:  # argparse exits 2 on a usage error (0 for --help)
        args = parser.parse_args(argv)
        if args.partials and not args.repair:
            parser.error("--partials needs --repair")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else USAGE_ERROR
    try:
        root = Settings.from_env().models
    except ConfigError as exc:
        sys.stderr.write(f"Error: {exc}\n")
        return USAGE_ERROR
    if not root.is_dir():
        sys.stderr.write(f"Error: no model store at {root} (OLLAMA_MODELS)\n")
        return USAGE_ERROR
    report = verify(root, repair=args.repair, partials=args.partials)
    if args.json:
        sys.stdout.write(json.dumps(_as_json(report), indent=2) + "\n")
    else:
        _print(report, str(root), args.repair)
    return 0 if report.sound else 1
