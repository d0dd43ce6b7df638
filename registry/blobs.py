"""Content-addressed blob files: digest parsing and an atomic, hashing writer.

A blob is written to a temp file inside blobs/ (same filesystem, so the final os.replace is atomic),
hashed while it streams, checked against the expected digest, fsynced, then renamed into place.
On any failure the temp file is removed, so blobs/ never holds a half-written `sha256-<hex>`.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from registry.manifest import Layer
from shared.errors import BadRequest

_DIGEST_RE = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")
TEMP_PREFIX = ".tmp-sha256-"  # never a valid blob name, so pruning can recognise leftovers


def parse_digest(digest: str) -> str:
    """Digest "sha256:<hex>" or "sha256-<hex>" -> lowercase hex; anything else is a 400."""
    m = _DIGEST_RE.match(digest or "")
    if not m:
        raise BadRequest("invalid digest format")
    return m.group(1).lower()


def normalize_digest(digest: str) -> str:
    """Canonical "sha256:<hex>" form of a digest."""
    return "sha256:" + parse_digest(digest)


def blob_filename(digest: str) -> str:
    """On disk the colon becomes a dash: sha256-<hex>."""
    return "sha256-" + parse_digest(digest)


@dataclass(frozen=True)
class Blob:
    digest: str  # "sha256:<hex>"
    size: int

    def layer(self, media_type: str, from_: str | None = None) -> Layer:
        return Layer(media_type=media_type, digest=self.digest, size=self.size, from_=from_)


def fsync_dir(path: Path) -> None:
    """Make a rename durable; not every platform lets a directory be opened, so best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class BlobWriter:
    """Incremental blob writer, for callers that receive data piecemeal (e.g. an async body).

    Use as a context manager: `write()` chunks, then `commit()`; leaving the block without a
    commit (or with an exception) removes the temp file.
    """

    def __init__(self, blobs_dir: Path) -> None:
        self._dir = blobs_dir
        self._dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=blobs_dir)
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; blobs are world-readable like Ollama's
        self._file = os.fdopen(fd, "wb")
        self._temp = Path(name)
        self._hash = hashlib.sha256()
        self._size = 0
        self._done = False

    @property
    def size(self) -> int:
        return self._size

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._hash.update(chunk)
        self._size += len(chunk)

    def commit(self, expected_digest: str | None = None) -> Blob:
        """Verify, fsync and rename into place; returns the blob. Raises BadRequest on mismatch."""
        try:
            actual = "sha256:" + self._hash.hexdigest()
            if expected_digest is not None:
                expected = normalize_digest(expected_digest)
                if expected != actual:
                    raise BadRequest(
                        f'digest mismatch, expected "{expected_digest}", got "{actual}"'
                    )
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            final = self._dir / blob_filename(actual)
            if final.exists():
                # Same content already stored (another writer won); keep theirs.
                self._temp.unlink(missing_ok=True)
            else:
                os.replace(self._temp, final)
                fsync_dir(self._dir)
            self._done = True
            return Blob(actual, self._size)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._file.close()
        finally:
            self._temp.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()
