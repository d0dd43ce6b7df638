"""The Responses API's store: responses kept on disk for `previous_response_id`, GET and DELETE.

One JSON file per response, `<root>/<owner>/<resp_id>.json`, where the owner folder is a hash of
the API key's id (one folder for every request when the server has no keys): a key reads, chains
and deletes only its own responses, and another key's id is simply not found. Each file holds
the response object as it was answered and the conversation it ends (the native chat messages,
earlier turns included), so a follow-up turn reads one file rather than walking a chain.

Files are written to a temporary name and renamed (a reader never sees half a file), mode 0600
in 0700 folders (they hold prompts and replies). Bounded two ways, both settings: an age
(CORRAL_RESPONSES_TTL; an older file is not found and is removed) and a size in all
(CORRAL_RESPONSES_STORE; the oldest files go first). The sweep that enforces them runs after a
write once a minute has passed or an eighth of the limit has been written since the last one, so
a write stays cheap; with several HTTP workers each sweeps the same folders, which is harmless.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("corral.responses")

ID_PATTERN = re.compile(r"resp_[A-Za-z0-9_-]{1,128}")
SWEEP_EVERY = 60.0  # seconds


def _owner_folder(owner: str) -> str:
    return hashlib.sha256(owner.encode()).hexdigest()[:32]


class ResponseStore:
    def __init__(self, root: Path, limit: int, ttl: float) -> None:
        self.root = root
        self.limit = limit
        self.ttl = ttl
        self._lock = threading.Lock()
        self._last_sweep = 0.0
        self._written = 0  # bytes since the last sweep

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def _path(self, owner: str, response_id: str) -> Path | None:
        if not ID_PATTERN.fullmatch(response_id):
            return None  # never a path from a malformed id
        return self.root / _owner_folder(owner) / f"{response_id}.json"

    def put(self, owner: str, response_id: str, record: dict[str, Any]) -> bool:
        """Keep `record`; False when the store is off or the record alone is over the limit."""
        path = self._path(owner, response_id)
        if not self.enabled or path is None:
            return False
        data = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
        if len(data) > self.limit:
            log.warning("response %s (%d bytes) is larger than CORRAL_RESPONSES_STORE; not kept",
                        response_id, len(data))
            return False
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.parent.mkdir(exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)  # mkstemp: mode 0600
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with self._lock:
            self._written += len(data)
            due = (time.monotonic() - self._last_sweep > SWEEP_EVERY
                   or self._written > self.limit // 8)
        if due:
            self.sweep()
        return True

    def get(self, owner: str, response_id: str) -> dict[str, Any] | None:
        path = self._path(owner, response_id)
        if path is None:
            return None
        try:
            if time.time() - path.stat().st_mtime > self.ttl:
                path.unlink(missing_ok=True)
                return None
            record = json.loads(path.read_bytes())
        except (OSError, ValueError):  # absent, or cut short by a crash: not found
            return None
        return record if isinstance(record, dict) else None

    def delete(self, owner: str, response_id: str) -> bool:
        path = self._path(owner, response_id)
        if path is None:
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def sweep(self) -> None:
        """Remove what is past its age, then the oldest until the rest fits the limit."""
        with self._lock:
            self._last_sweep = time.monotonic()
            self._written = 0
        now = time.time()
        files: list[tuple[float, int, Path]] = []
        for path in self.root.glob("*/resp_*.json"):
            try:
                stat = path.stat()
            except OSError:
                continue
            if now - stat.st_mtime > self.ttl:
                path.unlink(missing_ok=True)
            else:
                files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files, key=lambda f: f[0]):
            if total <= self.limit:
                break
            path.unlink(missing_ok=True)
            total -= size
