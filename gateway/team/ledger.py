"""The ledger: per-key rate windows, requests in flight, and usage, in one SQLite file.

Why SQLite and a token bucket of our own, rather than the `limits` library:
- Several gateway processes are coming (the gateway-scale issue). They must see one count per
  key. SQLite in WAL mode with `BEGIN IMMEDIATE` gives atomic read-modify-write across processes
  on one machine with no server to run; `limits` shares state across processes only through
  Redis, Memcached or MongoDB.
- A request's tokens are known only after its reply: tokens per minute must be charged after the
  fact and may overdraw. A token bucket goes negative and the key waits until it is repaid;
  `limits`' strategies refuse a hit that would exceed the limit instead of recording it.
- OpenAI's headers fall straight out of a bucket: remaining = its level, reset = the time until
  it is full again.

Each limit is a bucket of `limit` units that refills continuously at limit/60 per second. A
request takes one unit of its key's requests bucket (refused below one) and needs a token bucket
of at least one. When its prompt and its cap on new tokens are known, a generation reserves
them (`reserve`: refused below one, else taken, perhaps into debt), and at the end the
reservation is settled against what it really used (`finish(reserved=...)`): one reply may still
overdraw the bucket, a burst of concurrent ones may not, since each sees the others'
reservations. Usage (requests and tokens per key and model, and when a key was last used) is
kept by key id, so a new key under a revoked key's name starts from zero. The file lives next to
the keys file, survives restarts, and `corral keys usage` reads it with or without a running
server.
"""

from __future__ import annotations

import math
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    key_id TEXT NOT NULL, model TEXT NOT NULL, requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0, generated_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, model));
CREATE TABLE IF NOT EXISTS last_used (key_id TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS buckets (
    key_id TEXT NOT NULL, kind TEXT NOT NULL, level REAL NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (key_id, kind));
CREATE TABLE IF NOT EXISTS inflight (
    key_id TEXT NOT NULL, owner TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (key_id, owner));
"""


def ledger_path(keys_file: Path) -> Path:
    """Where the ledger of a keys file lives: beside it (keys.json -> keys.usage.sqlite)."""
    return keys_file.with_name(keys_file.stem + ".usage.sqlite")


@dataclass(frozen=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None


@dataclass(frozen=True)
class Window:
    """One limit's state, as OpenAI's x-ratelimit-* headers tell it."""

    limit: int
    remaining: int
    reset: float  # seconds until the bucket is full again


@dataclass(frozen=True)
class Admission:
    allowed: bool
    requests: Window | None = None  # None: the key has no such limit
    tokens: Window | None = None
    retry_after: float = 0.0  # seconds, when refused
    reason: str = ""  # "requests", "tokens" or "concurrency", when refused


@dataclass(frozen=True)
class Usage:
    key_id: str
    model: str
    requests: int
    prompt_tokens: int
    generated_tokens: int


def _window(limit: int, level: float) -> Window:
    return Window(limit, max(0, math.floor(level)), max(0.0, (limit - level) * 60.0 / limit))


def _wait_for_one(limit: int, level: float) -> float:
    """Seconds until a bucket at `level` holds one unit."""
    return max(0.0, (1.0 - level) * 60.0 / limit)


class Ledger:
    """One connection to the ledger file; use it from one thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # usage is private too
        os.close(fd)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never torn
        self._db.executescript(_SCHEMA)
        self._host = socket.gethostname()
        self.owner = f"{self._host}:{os.getpid()}"
        self._forget_dead_owners()

    def close(self) -> None:
        self._db.close()

    def _forget_dead_owners(self) -> None:
        """Requests in flight of processes that are gone (a crash, a kill) no longer count."""
        with self._write():
            rows = self._db.execute("SELECT DISTINCT owner FROM inflight").fetchall()
            for (owner,) in rows:
                host, _, pid = owner.rpartition(":")
                if host == self._host and (owner == self.owner or not pid.isdigit()
                                           or not psutil.pid_exists(int(pid))):
                    self._db.execute("DELETE FROM inflight WHERE owner = ?", (owner,))

    def _write(self) -> _Transaction:
        return _Transaction(self._db)

    # --- buckets ------------------------------------------------------------------------------

    def _level(self, key_id: str, kind: str, limit: int, now: float) -> float:
        row = self._db.execute("SELECT level, updated FROM buckets WHERE key_id = ? AND kind = ?",
                               (key_id, kind)).fetchone()
        if row is None:
            return float(limit)
        level, updated = row
        return min(float(limit), level + max(0.0, now - updated) * limit / 60.0)

    def _set_level(self, key_id: str, kind: str, level: float, now: float) -> None:
        self._db.execute("INSERT OR REPLACE INTO buckets (key_id, kind, level, updated) "
                         "VALUES (?, ?, ?, ?)", (key_id, kind, level, now))

    def _inflight(self, key_id: str) -> int:
        row = self._db.execute("SELECT COALESCE(SUM(n), 0) FROM inflight WHERE key_id = ?",
                               (key_id,)).fetchone()
        return int(row[0])

    # --- the interface ------------------------------------------------------------------------

    def admit(self, key_id: str, limits: Limits, *, count: bool = True,
              now: float | None = None) -> Admission:
        """Whether a request may start; with `count`, take it from the requests bucket and count
        it in flight (end it with `finish(..., counted=True)`). Without `count` only the state,
        for the headers of replies that use no model."""
        now = time.time() if now is None else now
        with self._write():
            requests = tokens = None
            req_level = tok_level = 0.0
            if limits.rpm:
                req_level = self._level(key_id, "requests", limits.rpm, now)
            if limits.tpm:
                tok_level = self._level(key_id, "tokens", limits.tpm, now)
            refusal = None
            if count:
                if limits.concurrency and self._inflight(key_id) >= limits.concurrency:
                    refusal = ("concurrency", 1.0)  # unknown: when one of its requests ends
                elif limits.rpm and req_level < 1.0:
                    refusal = ("requests", _wait_for_one(limits.rpm, req_level))
                elif limits.tpm and tok_level < 1.0:
                    refusal = ("tokens", _wait_for_one(limits.tpm, tok_level))
            if count and refusal is None:
                if limits.rpm:
                    req_level -= 1.0
                    self._set_level(key_id, "requests", req_level, now)
                self._db.execute(
                    "INSERT INTO inflight (key_id, owner, n) VALUES (?, ?, 1) "
                    "ON CONFLICT (key_id, owner) DO UPDATE SET n = n + 1", (key_id, self.owner))
            if limits.rpm:
                requests = _window(limits.rpm, req_level)
            if limits.tpm:
                tokens = _window(limits.tpm, tok_level)
        if refusal is not None:
            return Admission(False, requests, tokens, refusal[1], refusal[0])
        return Admission(True, requests, tokens)

    def reserve(self, key_id: str, limits: Limits, tokens: int,
                now: float | None = None) -> Admission:
        """Take `tokens` from the key's tokens bucket for a generation about to start, unless
        the bucket holds less than one (then refused, nothing taken)."""
        now = time.time() if now is None else now
        if not limits.tpm or tokens <= 0:
            return Admission(True)
        with self._write():
            level = self._level(key_id, "tokens", limits.tpm, now)
            if level < 1.0:
                return Admission(False, tokens=_window(limits.tpm, level),
                                 retry_after=_wait_for_one(limits.tpm, level), reason="tokens")
            self._set_level(key_id, "tokens", level - tokens, now)
        return Admission(True, tokens=_window(limits.tpm, level - tokens))

    def finish(self, key_id: str, limits: Limits, *, model: str, prompt_tokens: int,
               generated_tokens: int, counted: bool, reserved: int = 0,
               now: float | None = None) -> None:
        """A request ended: charge its tokens (less what `reserve` took already), add its usage
        (under `model`, when it used one), and, when `admit` counted it, end it in flight."""
        now = time.time() if now is None else now
        spent = prompt_tokens + generated_tokens - reserved
        with self._write():
            if counted:
                self._db.execute("UPDATE inflight SET n = MAX(n - 1, 0) "
                                 "WHERE key_id = ? AND owner = ?", (key_id, self.owner))
            if limits.tpm and spent:  # (negative: the reservation was more than it used)
                level = min(float(limits.tpm),
                            self._level(key_id, "tokens", limits.tpm, now) - spent)
                self._set_level(key_id, "tokens", level, now)
            if model:
                self._db.execute(
                    "INSERT INTO usage (key_id, model, requests, prompt_tokens, generated_tokens)"
                    " VALUES (?, ?, 1, ?, ?) ON CONFLICT (key_id, model) DO UPDATE SET"
                    " requests = requests + 1,"
                    " prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
                    " generated_tokens = generated_tokens + excluded.generated_tokens",
                    (key_id, model, prompt_tokens, generated_tokens))
            self._db.execute("INSERT OR REPLACE INTO last_used (key_id, at) VALUES (?, ?)",
                             (key_id, now))

    def usage(self, key_ids: list[str] | None = None) -> list[Usage]:
        rows = self._db.execute("SELECT key_id, model, requests, prompt_tokens, generated_tokens"
                                " FROM usage ORDER BY key_id, model").fetchall()
        wanted = None if key_ids is None else set(key_ids)
        return [Usage(*row) for row in rows if wanted is None or row[0] in wanted]

    def last_used(self) -> dict[str, float]:
        return dict(self._db.execute("SELECT key_id, at FROM last_used").fetchall())


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): takes the write lock up front, so two
    processes never both read a bucket's old level."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")
