"""Check a model store like `git fsck`: every blob against its digest, every manifest's layers
present and of the size it says; and, on request, repair what can be repaired.

What it finds falls in three groups:
- damage: a blob whose content does not match its name, a manifest that cannot be read or whose
  path is not a model name, a layer whose blob is missing or has another size. A store with
  damage serves wrong or no models until it is repaired and the models are pulled again.
- partial downloads (`sha256-<hex>-partial` and its `-partial-<n>` progress files): how an
  interrupted pull resumes, not damage. Listed apart, with how far each got.
- leftovers: blobs no manifest names (what deleting or replacing a model leaves when the server
  is not running to prune them) and temp files of writes that never finished. Not damage
  either: every write in the store is temp file + rename, so a leftover is never half a blob.

`repair` removes damaged blobs (the manifests that name them keep naming them: a later pull
fetches them again), unreferenced blobs and temp files older than TEMP_GRACE_S (younger ones may
be a running server's uploads in flight); with `partials` also the partial downloads. Manifests
are never removed: a damaged one is reported for its owner to pull or delete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from registry.blobs import TEMP_PREFIX, parse_digest
from registry.manifest import Manifest
from registry.names import ModelName
from shared.errors import BadRequest

_BLOB_RE = re.compile(r"^sha256-([0-9a-f]{64})$")
_PARTIAL_RE = re.compile(r"^sha256-([0-9a-f]{64})-partial(?:-(\d+)(?:\.tmp)?)?$")
TEMP_GRACE_S = 60.0
_READ = 4 * 1024 * 1024


@dataclass(frozen=True)
class Finding:
    path: Path
    problem: str


@dataclass(frozen=True)
class Partial:
    """A partial download: the blob it will become, its files, and how far it got."""

    digest: str
    files: tuple[Path, ...]
    completed: int  # bytes the progress files count as downloaded
    size: int  # the blob's size (0 when unknown)


@dataclass
class Report:
    blobs: int = 0  # blobs whose digest was checked
    manifests: int = 0
    damage: list[Finding] = field(default_factory=list)
    partials: list[Partial] = field(default_factory=list)
    unreferenced: list[Path] = field(default_factory=list)
    temp: list[Path] = field(default_factory=list)
    other: list[Path] = field(default_factory=list)  # files the store does not know; kept
    removed: list[Path] = field(default_factory=list)

    @property
    def sound(self) -> bool:
        return not self.damage


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_READ):
            digest.update(block)
    return digest.hexdigest()


def _manifest_files(root: Path) -> Iterator[Path]:
    if root.is_dir():
        yield from sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


def _part_completed(path: Path) -> tuple[int, int]:
    """(completed, size) from a pull's progress file; (0, 0) when unreadable."""
    try:
        data = json.loads(path.read_text())
        return max(0, min(int(data["completed"]), int(data["size"]))), int(data["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0, 0


def verify(root: Path, *, repair: bool = False, partials: bool = False,
           progress: Callable[[str], None] | None = None) -> Report:
    """Check the store at `root` (OLLAMA_MODELS); with `repair`, remove what the module docstring
    says. Reads every blob once."""
    report = Report()
    blobs_dir, manifests_dir = root / "blobs", root / "manifests"
    referenced: dict[str, list[tuple[Path, int]]] = {}  # hex -> (manifest, layer size)

    for path in _manifest_files(manifests_dir):
        if path.name.startswith(".tmp-"):
            report.temp.append(path)
            continue
        report.manifests += 1
        parts = path.relative_to(manifests_dir).parts
        try:
            if len(parts) != 4:
                raise BadRequest("invalid model name")
            ModelName.parse(f"{parts[0]}/{parts[1]}/{parts[2]}:{parts[3]}")
        except BadRequest:
            report.damage.append(Finding(path, "manifest path is not a model name"))
            continue
        try:
            manifest = Manifest.from_bytes(path.read_bytes())
        except (OSError, ValueError, TypeError) as exc:
            report.damage.append(Finding(path, f"unreadable manifest: {exc}"))
            continue
        for layer in manifest.all_layers():
            try:
                hex_digest = parse_digest(layer.digest)
            except BadRequest:
                report.damage.append(Finding(path, f"invalid layer digest {layer.digest!r}"))
                continue
            referenced.setdefault(hex_digest, []).append((path, layer.size))

    present: dict[str, Path] = {}
    groups: dict[str, list[Path]] = {}
    for path in sorted(blobs_dir.iterdir()) if blobs_dir.is_dir() else []:
        name = path.name
        if (match := _BLOB_RE.match(name)) and path.is_file():
            present[match.group(1)] = path
        elif match := _PARTIAL_RE.match(name):
            groups.setdefault(match.group(1), []).append(path)
        elif name.startswith((TEMP_PREFIX, ".tmp-")):
            report.temp.append(path)
        else:
            report.other.append(path)

    for hex_digest, path in present.items():
        if progress is not None:
            progress(f"checking {path.name}")
        report.blobs += 1
        try:
            actual = _sha256(path)
        except OSError as exc:
            report.damage.append(Finding(path, f"unreadable blob: {exc}"))
            continue
        if actual != hex_digest:
            report.damage.append(Finding(path, f"content has digest sha256:{actual}"))
            if repair:
                _remove(path, report)
        elif hex_digest not in referenced:
            report.unreferenced.append(path)
            if repair:
                _remove(path, report)

    for hex_digest, users in referenced.items():
        path = present.get(hex_digest)
        for manifest_path, size in users:
            if path is None:
                report.damage.append(Finding(manifest_path, f"layer sha256:{hex_digest} is "
                                                             "missing"))
            elif (actual_size := _size(path)) is not None and actual_size != size:
                report.damage.append(Finding(manifest_path, f"layer sha256:{hex_digest} is "
                                             f"{actual_size} bytes, the manifest says {size}"))

    for hex_digest, files in sorted(groups.items()):
        completed = size = 0
        for path in files:
            if re.search(r"-partial-\d+$", path.name):
                done, part_size = _part_completed(path)
                completed += done
                size += part_size
        report.partials.append(Partial("sha256:" + hex_digest, tuple(files), completed, size))
        if repair and partials:
            for path in files:
                _remove(path, report)

    if repair:
        cutoff = time.time() - TEMP_GRACE_S
        for path in report.temp:
            with contextlib.suppress(OSError):
                if path.lstat().st_mtime < cutoff:
                    _remove(path, report)
    return report


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _remove(path: Path, report: Report) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    report.removed.append(path)
