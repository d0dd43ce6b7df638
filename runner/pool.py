"""The runners the gateway has started: reuse, keep-alive, reload, eviction, and shutdown.

One runner process per loaded model. A request leases a runner (`async with pool.lease(...)`);
when the last lease ends the keep-alive timer starts, and when it fires the runner is stopped.
A runner whose load options differ from a request's is drained and replaced; one that died or stops
answering health checks is dropped, and the next request starts a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from runner.client import RunnerProcess
from shared import protocol as p
from shared.config import Settings
from shared.errors import ServerBusy

log = logging.getLogger("corral.pool")

HEALTH_INTERVAL = 5.0


@dataclass(eq=False)
class LoadedRunner:
    key: str  # the model blob path: two names of one model share a runner
    name: str  # display name of the model that loaded it
    model: object  # registry LocalModel, for /api/ps
    runner: RunnerProcess
    keep_alive: float
    expires_at: float  # unix time at which an idle runner is unloaded (inf = never)
    refcount: int = 0
    timer: asyncio.TimerHandle | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ready(self) -> p.Ready:
        assert self.runner.ready is not None
        return self.runner.ready


class RunnerPool:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loaded: dict[str, LoadedRunner] = {}
        self._lock = asyncio.Lock()  # one load or eviction decision at a time
        self._waiting = 0
        self._runtime_dir = Path(tempfile.mkdtemp(prefix="corral-"))  # mode 0700
        self._health_task: asyncio.Task[None] | None = None

    @property
    def max_loaded(self) -> int:
        return self.settings.max_loaded_models or 3

    def start(self) -> None:
        self._health_task = asyncio.get_running_loop().create_task(self._health_loop())

    # --- leasing ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, key: str, name: str, model: object, load: p.Load,
                    keep_alive: float | None) -> AsyncIterator[LoadedRunner]:
        entry = await self.acquire(key, name, model, load, keep_alive)
        try:
            yield entry
        finally:
            self.release(entry, keep_alive)

    async def acquire(self, key: str, name: str, model: object, load: p.Load,
                      keep_alive: float | None) -> LoadedRunner:
        entry = self.loaded.get(key)
        if entry is not None and entry.runner.alive and entry.runner.load == load:
            return self._hold(entry, keep_alive)  # fast path: loaded and usable
        if self._waiting >= self.settings.max_queue:
            raise ServerBusy("server busy, please try again.  maximum pending requests exceeded")
        self._waiting += 1
        try:
            async with self._lock:
                while True:
                    entry = self.loaded.get(key)
                    if entry is not None and entry.runner.alive and entry.runner.load == load:
                        break
                    if entry is not None:  # died, or needs other load options
                        await self._retire(entry)
                        continue
                    if len(self.loaded) >= self.max_loaded:
                        await self._retire(self._victim())
                        continue
                    entry = await self._start(key, name, model, load, keep_alive)
                    break
                return self._hold(entry, keep_alive)
        finally:
            self._waiting -= 1

    def _hold(self, entry: LoadedRunner, keep_alive: float | None) -> LoadedRunner:
        entry.refcount += 1
        entry.idle.clear()
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if keep_alive is not None:
            entry.keep_alive = keep_alive
        return entry

    def release(self, entry: LoadedRunner, keep_alive: float | None = None) -> None:
        entry.refcount -= 1
        if keep_alive is not None:
            entry.keep_alive = keep_alive
        if entry.refcount > 0:
            return
        entry.idle.set()
        if self.loaded.get(entry.key) is not entry:
            return
        if entry.keep_alive <= 0 or not entry.runner.alive:
            entry.expires_at = time.time()
            asyncio.get_running_loop().create_task(self._expire(entry))
        elif math.isinf(entry.keep_alive):
            entry.expires_at = math.inf
        else:
            entry.expires_at = time.time() + entry.keep_alive
            entry.timer = asyncio.get_running_loop().call_later(
                entry.keep_alive, lambda: asyncio.ensure_future(self._expire(entry)))

    async def _start(self, key: str, name: str, model: object, load: p.Load,
                     keep_alive: float | None) -> LoadedRunner:
        runner = RunnerProcess(name, load, self._runtime_dir, debug=self.settings.debug > 0)
        log.info("loading %s (num_ctx=%d, parallel=%d)", name, load.num_ctx, load.parallel)
        started = time.perf_counter()
        await runner.start(self.settings.load_timeout if self.settings.load_timeout else 1e9)
        log.info("loaded %s in %.2fs (pid %s)", name, time.perf_counter() - started, runner.pid)
        ka = self.settings.keep_alive if keep_alive is None else keep_alive
        entry = LoadedRunner(key, name, model, runner, ka, time.time() + ka)
        self.loaded[key] = entry
        return entry

    def _victim(self) -> LoadedRunner:
        """Ollama's order: the shortest keep_alive goes first, idle runners before busy ones."""
        ranked = sorted(self.loaded.values(), key=lambda e: (e.refcount > 0, e.keep_alive, e.key))
        return ranked[0]

    async def _retire(self, entry: LoadedRunner) -> None:
        """Wait for the runner's requests to finish (unless it is dead), then stop it."""
        entry.keep_alive = 0
        if entry.runner.alive and entry.refcount > 0:
            await entry.idle.wait()
        await self._unload(entry)

    async def _expire(self, entry: LoadedRunner) -> None:
        if entry.refcount == 0 and self.loaded.get(entry.key) is entry:
            await self._unload(entry)

    async def _unload(self, entry: LoadedRunner) -> None:
        if self.loaded.get(entry.key) is entry:
            del self.loaded[entry.key]
        if entry.timer is not None:
            entry.timer.cancel()
        log.info("unloading %s", entry.name)
        await entry.runner.stop()

    async def unload(self, key: str) -> bool:
        """Unload now if idle, else as soon as its requests finish. False if not loaded."""
        entry = self.loaded.get(key)
        if entry is None:
            return False
        entry.keep_alive = 0
        if entry.refcount == 0:
            await self._unload(entry)
        return True

    # --- liveness -----------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL)
            for entry in list(self.loaded.values()):
                if not entry.runner.alive:
                    self._drop(entry)
                elif not await entry.runner.health():
                    log.error("%s: runner pid %s stopped answering; killing it", entry.name,
                              entry.runner.pid)
                    entry.runner.kill_now()
                    self._drop(entry)

    def _drop(self, entry: LoadedRunner) -> None:
        if self.loaded.get(entry.key) is entry:
            del self.loaded[entry.key]

    def running(self) -> list[LoadedRunner]:
        for entry in [e for e in self.loaded.values() if not e.runner.alive]:
            self._drop(entry)
        return sorted(self.loaded.values(), key=lambda e: e.expires_at, reverse=True)

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
        entries = list(self.loaded.values())
        self.loaded.clear()
        await asyncio.gather(*(e.runner.stop() for e in entries), return_exceptions=True)
        shutil.rmtree(self._runtime_dir, ignore_errors=True)

    def kill_all(self) -> None:
        for entry in self.loaded.values():
            entry.runner.kill_now()
