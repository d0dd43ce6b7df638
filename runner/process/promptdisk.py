"""The prompt cache kept across reloads: written when a runner unloads, read when it loads again.

One file per model and load settings: `<root>/<model digest>/<fingerprint>.prompts`. The
fingerprint covers everything a saved KV state depends on (the model file, its adapters, the KV
type, flash attention, the context and batch sizes, the slot count and the llama.cpp build), so
requests under other settings never share entries. The file is a magic line, the SHA-256 of the
body, then the body (msgpack); one that does not match is ignored with a log line.

Only entries that served more than one request are written, newest first, within the disk budget.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import msgpack

from runner.process.promptcache import PromptCache, Scope, State

log = logging.getLogger("corral.runner")

MAGIC = b"corral-prompt-cache 3\n"  # 2: states carry their floor; 3: entries their scope


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]


def cache_file(root: str, model_path: str, settings: dict[str, Any]) -> Path:
    """The file for this model (its blob's name is its digest) under these settings."""
    return Path(root) / Path(model_path).name / f"{fingerprint(settings)}.prompts"


def _private_dirs(folder: Path) -> None:
    """Make `folder` and the parents it lacks 0700: saved states hold users' prompts, and
    ~/.ollama/corral/ is the keys file's folder too (mkdir's `mode` skips the parents)."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        made.mkdir(mode=0o700, exist_ok=True)


def save(cache: PromptCache, path: Path, settings: dict[str, Any], budget: int) -> int:
    """Write the entries used more than once, newest first, up to `budget` bytes of states;
    atomically (temp file + rename). Returns how many were written."""
    chosen, total = [], 0
    for entry in sorted(cache.entries, key=lambda e: e.last_used, reverse=True):
        if entry.uses < 2 or total + entry.nbytes > budget:
            continue
        chosen.append(entry)
        total += entry.nbytes
    if not chosen:
        return 0
    body = msgpack.packb({
        "settings": settings,
        "entries": [{"tokens": e.tokens, "uses": e.uses,
                     "scope": [e.scope.salt, e.scope.public],
                     "states": [[s.n_tokens, s.canonical, s.partial, s.data, s.floor]
                                for s in e.states]}
                    for e in chosen],
    }, use_bin_type=True)
    _private_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".prompts-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + hashlib.sha256(body).digest() + body)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(chosen)


def load(cache: PromptCache, path: Path, settings: dict[str, Any]) -> int:
    """Put the saved entries back into `cache`; returns how many. A file that is damaged or was
    written under other settings is ignored, with a log line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.warning("prompt cache %s not read: %s", path, exc)
        return 0
    head = len(MAGIC)
    body = raw[head + 32:]
    if raw[:head] != MAGIC and raw.startswith(MAGIC.split(b" ")[0] + b" "):
        log.info("prompt cache %s ignored: written in another format (%s)", path,
                 raw.split(b"\n", 1)[0].decode("ascii", "replace"))
        return 0
    if raw[:head] != MAGIC or hashlib.sha256(body).digest() != raw[head:head + 32]:
        log.warning("prompt cache %s ignored: its checksum does not match", path)
        return 0
    try:
        data = msgpack.unpackb(body, raw=False)
        if data["settings"] != settings:
            log.warning("prompt cache %s ignored: written under other load settings", path)
            return 0
        loaded = 0
        for item in reversed(data["entries"]):  # oldest first, so the newest end most recent
            states = [State(int(n), bytes(blob), int(canonical), bool(partial), int(floor))
                      for n, canonical, partial, blob, floor in item["states"]]
            salt, public = item["scope"]
            if cache.put([int(t) for t in item["tokens"]], states, uses=int(item["uses"]),
                         scope=Scope(str(salt), int(public))):
                loaded += 1
        return loaded
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("prompt cache %s ignored: %s", path, exc)
        return 0
