"""The keys file: who may call the server, which models each key may use, and its limits.

JSON at CORRAL_KEYS_FILE (default ~/.ollama/corral/keys.json), mode 0600 in a 0700 folder,
replaced atomically (temp file + rename) under an exclusive lock, so two `corral keys` commands
never lose each other's change and a server never reads half a file. Secrets are never stored:
a key is found by the SHA-256 of the secret presented. Secrets are 256 random bits, so a plain
hash is enough (a slow hash protects guessable passwords; nobody guesses 2^256).

The server holds a `KeyRing`: it checks the file's identity (inode, size, mtime) on every request,
a stat call of a few microseconds, and reads it again when it changed, so `corral keys create`
and `revoke` take effect on the next request without a restart.

Once authentication has been on it fails closed: when the last key is revoked or the keys file
is deleted, every request gets 401 until a key exists again or the operator opens the server on
purpose (CORRAL_OPEN_WITHOUT_KEYS=1). "Has been on" is remembered in a marker file beside the
keys file (`keys.json.auth`), written whenever keys are saved or read, so it survives restarts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from registry.names import ModelName
from registry.store import atomic_write
from shared.config import parse_go_duration
from shared.errors import BadRequest

log = logging.getLogger("corral.keys")

FILE_VERSION = 1
SECRET_PREFIX = "corral-"
ENV_KEY_NAME = "env"  # CORRAL_API_KEY's key
ANONYMOUS = "anonymous"  # callers of a server without keys, in usage and metrics
_RESERVED = {ENV_KEY_NAME, ANONYMOUS}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DAYS = re.compile(r"(\d+(?:\.\d+)?)([dw])")


class KeysFileError(ValueError):
    """The keys file cannot be read, or a change to it is not valid."""


def hash_secret(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def parse_expiry(text: str) -> float:
    """A lifetime in seconds: a Go duration (`12h`, `90m`) or days and weeks (`30d`, `2w`)."""
    stripped = text.strip()
    m = _DAYS.fullmatch(stripped)
    try:
        seconds = (float(m.group(1)) * (86400 if m.group(2) == "d" else 7 * 86400) if m
                   else parse_go_duration(stripped))
    except ValueError:
        seconds = math.nan
    if not seconds > 0:  # (also NaN)
        raise KeysFileError(f"invalid duration {text!r}: expected e.g. 30d, 2w, 12h or 90m")
    return seconds


def model_pattern(text: str) -> str:
    """A `--models` entry as stored: a model name in its shortest form (`gemma3` is
    `gemma3:latest`, as Ollama reads it), or a pattern with `*` (`gemma3:*`, `*`), case-folded."""
    text = text.strip()
    if "*" in text:
        return text.casefold()
    try:
        return ModelName.parse(text).display().casefold()
    except BadRequest:
        raise KeysFileError(f"invalid model name {text!r}") from None


def _stamp(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _unstamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class ApiKey:
    """One key: its name (shown in logs, metrics and usage), its id (usage is kept by id, so a
    new key under an old name starts from zero), and what it may do."""

    name: str
    id: str
    digest: str  # hash_secret(secret)
    models: tuple[str, ...] = ()  # model_pattern()s; empty: every model
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # prompt + generated tokens per minute
    concurrency: int | None = None  # requests in flight
    admin: bool = False
    created: float = field(default_factory=time.time)
    expires: float | None = None  # unix time

    def expired(self, now: float | None = None) -> bool:
        return self.expires is not None and (time.time() if now is None else now) >= self.expires

    def may_use(self, name: ModelName) -> bool:
        if not self.models:
            return True
        shown = name.display().casefold()
        return any(fnmatchcase(shown, pattern) if "*" in pattern else shown == pattern
                   for pattern in self.models)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "id": self.id, "hash": self.digest,
                "models": list(self.models), "rpm": self.rpm, "tpm": self.tpm,
                "concurrency": self.concurrency, "admin": self.admin,
                "created": _stamp(self.created),
                "expires": None if self.expires is None else _stamp(self.expires)}

    @classmethod
    def from_json(cls, raw: Any) -> ApiKey:
        if not isinstance(raw, dict):
            raise KeysFileError("each key must be an object")
        try:
            limits = {k: None if raw.get(k) is None else int(raw[k])
                      for k in ("rpm", "tpm", "concurrency")}
            return cls(name=str(raw["name"]), id=str(raw["id"]), digest=str(raw["hash"]),
                       models=tuple(str(m) for m in raw.get("models") or ()),
                       admin=bool(raw.get("admin", False)), created=_unstamp(raw["created"]),
                       expires=None if raw.get("expires") is None else _unstamp(raw["expires"]),
                       **limits)
        except (KeyError, TypeError, ValueError) as exc:
            raise KeysFileError(f"a key is malformed: {exc!r}") from None


def env_key(secret: str) -> ApiKey:
    """CORRAL_API_KEY's admin key, as vLLM's and llama-server's --api-key."""
    return ApiKey(ENV_KEY_NAME, ENV_KEY_NAME, hash_secret(secret), admin=True, created=0.0)


def auth_marker(keys_file: Path) -> Path:
    """The file that says a server with this keys file has had keys (see the module's doc)."""
    return keys_file.with_name(keys_file.name + ".auth")


def private_folder(folder: Path) -> None:
    """The keys file's folder, made 0700, and made so again when it existed with more (another
    part of corral, such as the prompt cache, may have made it first)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        if folder.stat().st_mode & 0o077:
            folder.chmod(0o700)
    except OSError as exc:  # not ours to change: say so, the file itself stays 0600
        log.warning("cannot make %s private (0700): %s", folder, exc.strerror)


def _mark_auth_on(keys_file: Path) -> None:
    private_folder(keys_file.parent)
    marker = auth_marker(keys_file)
    if marker.exists():
        return
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
    except OSError as exc:  # the in-memory flag still holds for this process
        log.warning("cannot write %s: %s", marker, exc.strerror)


def check_limit(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise KeysFileError(f"--{name} must be at least 1")


class KeysFile:
    """The file itself: read it, or change it under its lock."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[ApiKey]:
        """The keys; none when the file does not exist."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise KeysFileError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise KeysFileError(f"{self.path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise KeysFileError(f"{self.path}: expected an object with a list of keys")
        return [ApiKey.from_json(item) for item in data["keys"]]

    @contextlib.contextmanager
    def edit(self) -> Iterator[list[ApiKey]]:
        """The keys as a list to change in place; written back when the block ends cleanly."""
        private_folder(self.path.parent)
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            keys = self.read()
            yield keys
            body = {"version": FILE_VERSION, "keys": [k.to_json() for k in keys]}
            atomic_write(self.path, (json.dumps(body, indent=2) + "\n").encode(), mode=0o600)
            if keys:
                _mark_auth_on(self.path)
        finally:
            os.close(fd)  # (closing releases the lock)

    def create(self, name: str, *, models: list[str] | None = None, rpm: int | None = None,
               tpm: int | None = None, concurrency: int | None = None, admin: bool = False,
               expires_in: float | None = None) -> tuple[ApiKey, str]:
        """A new key and its secret (the only time the secret exists outside its holder)."""
        if not _NAME.fullmatch(name):
            raise KeysFileError(f"invalid key name {name!r}: use letters, digits, '.', '_', '-'"
                                " (at most 64, starting with a letter or digit)")
        if name in _RESERVED:
            raise KeysFileError(f"the name {name!r} is reserved")
        for limit, value in (("rpm", rpm), ("tpm", tpm), ("concurrency", concurrency)):
            check_limit(limit, value)
        patterns = tuple(dict.fromkeys(model_pattern(m) for m in models or () if m.strip()))
        secret = new_secret()
        now = float(int(time.time()))  # whole seconds, as the file keeps them
        expires = None if expires_in is None else float(int(now + expires_in))
        key = ApiKey(name, "k_" + secrets.token_hex(8), hash_secret(secret), patterns, rpm, tpm,
                     concurrency, admin, now, expires)
        with self.edit() as keys:
            if any(k.name == name for k in keys):
                raise KeysFileError(f"a key named {name!r} already exists")
            keys.append(key)
        return key, secret

    def revoke(self, name: str) -> ApiKey:
        with self.edit() as keys:
            found = next((k for k in keys if k.name == name), None)
            if found is None:
                raise KeysFileError(f"no key named {name!r}")
            keys.remove(found)
        return found


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError:
        return (-1, -1, -1)  # unreadable: read() reports why
    return st.st_ino, st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class Keys:
    """What the server knows about keys at one moment."""

    by_digest: dict[str, ApiKey]
    error: str | None = None  # the file is broken: every request is refused (fail closed)
    closed: bool = False  # auth was on and no key is left: every request gets 401

    @property
    def enabled(self) -> bool:
        """Auth is on when any key exists (or the file is broken, or the last key went: better
        closed than open)."""
        return bool(self.by_digest) or self.error is not None or self.closed

    def find(self, secret: str) -> ApiKey | None:
        # A dict lookup by hash: the time it takes tells nothing about any stored secret.
        return self.by_digest.get(hash_secret(secret))


class KeyRing:
    """The server's view of the keys file (plus CORRAL_API_KEY's key), reread when it changes."""

    def __init__(self, path: Path, env_secret: str = "", open_without_keys: bool = False) -> None:
        self.file = KeysFile(path)
        self._env = env_key(env_secret) if env_secret else None
        self._open_without_keys = open_without_keys  # CORRAL_OPEN_WITHOUT_KEYS
        self._was_on = False
        self._identity: tuple[int, int, int] | None | str = "unread"
        self._keys = Keys({})

    def current(self) -> Keys:
        identity = _identity(self.file.path)
        if identity != self._identity:
            self._identity = identity
            self._keys = self._load()
        return self._keys

    def _load(self) -> Keys:
        try:
            listed = self.file.read()
        except KeysFileError as exc:
            log.error("refusing every request until the keys file is fixed: %s", exc)
            return Keys({}, str(exc))
        if listed:
            self._was_on = True
            _mark_auth_on(self.file.path)
        elif self._env is None and not self._open_without_keys and (
                self._was_on or auth_marker(self.file.path).exists()):
            log.error("no API keys left in %s, but authentication has been on: refusing every "
                      "request (401) until a key is created (corral keys create), or set "
                      "CORRAL_OPEN_WITHOUT_KEYS=1 to trust every caller again", self.file.path)
            return Keys({}, closed=True)
        if self._env is not None:
            listed = [*listed, self._env]
        if listed:
            log.info("auth on: %d API key(s) (%s)", len(listed), self.file.path)
        return Keys({k.digest: k for k in listed})


def describe_models(key: ApiKey) -> str:
    return ",".join(key.models) if key.models else "all"


__all__ = ["ANONYMOUS", "ApiKey", "KeyRing", "Keys", "KeysFile", "KeysFileError",
           "describe_models", "env_key", "hash_secret", "model_pattern", "parse_expiry"]
