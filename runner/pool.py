"""The runners the gateway has started: placement, reuse, keep-alive, eviction, and shutdown.

One runner process per loaded model. A request leases a runner (`async with pool.lease(...)`);
when the last lease ends the keep-alive timer starts, and when it fires the runner is stopped.

Loading a model asks the supervisor's pure decisions (runner/placement.py) over a fresh inventory:
where it goes, how many slots it gets, and which idle runners must go first; busy runners are never
evicted, the load waits for one to finish instead. Requests to loaded models never wait behind a
load. A runner that died or stops answering health checks is dropped, and the next request starts
a fresh one; a load that fails (out of memory) evicts the other idle runners and tries once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from runner.client import RunnerProcess
from runner.estimate import Estimate, shape_from_gguf
from runner.inventory import Inventory, read_inventory
from runner.placement import ModelPlan, Placement, Resident, plan_model
from shared import protocol as p
from shared.config import Settings
from shared.errors import CorralError, RunnerError, ServerBusy

log = logging.getLogger("corral.pool")

HEALTH_INTERVAL = 5.0
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"


@dataclass(eq=False)
class LoadedRunner:
    key: str  # the model's manifest digest: copies of a model share a runner
    name: str  # display name of the model that loaded it
    model: Any  # registry LocalModel, for /api/ps
    requested: p.Load  # what the gateway asked for (reuse is judged against this)
    runner: RunnerProcess
    placement: Placement
    estimate: Estimate
    parallel: int
    keep_alive: float
    expires_at: float  # unix time at which an idle runner is unloaded (inf = never)
    simulated: bool = False
    refcount: int = 0
    last_used: float = field(default_factory=time.monotonic)
    timer: asyncio.TimerHandle | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ready(self) -> p.Ready:
        assert self.runner.ready is not None
        return self.runner.ready

    @property
    def queued(self) -> int:
        """Requests holding this runner beyond its slots: they wait in its queue."""
        return max(0, self.refcount - self.parallel)

    def serves(self, wanted: p.Load) -> bool:
        """Whether this runner can take a request with these load options without a reload:
        the same options, and a context at least as large as the one asked for."""
        have = self.requested
        same = dataclasses.replace(wanted, num_ctx=have.num_ctx, parallel=have.parallel)
        if wanted.num_gpu < 0:  # automatic offload accepts whatever was decided
            same = dataclasses.replace(same, num_gpu=have.num_gpu)
        return wanted.num_ctx <= have.num_ctx and same == have and \
            wanted.parallel in (0, self.parallel)

    def measured_rss(self) -> int:
        try:
            return psutil.Process(self.runner.pid).memory_info().rss if self.runner.pid else 0
        except psutil.Error:
            return 0


class RunnerPool:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loaded: dict[str, LoadedRunner] = {}
        self._lock = asyncio.Lock()  # one load or eviction decision at a time
        self._waiting_loads = 0
        self._runtime_dir = Path(tempfile.mkdtemp(prefix="corral-"))  # mode 0700
        self._health_task: asyncio.Task[None] | None = None

    def inventory(self) -> Inventory:
        s = self.settings
        return read_inventory(gpus_file=s.gpus_file, cpu_only=s.cpu_only,
                              cuda_visible_devices=s.cuda_visible_devices)

    def max_loaded(self, inventory: Inventory) -> int:
        return self.settings.max_loaded_models or 3 * max(len(inventory.gpus), 1)

    def start(self) -> None:
        self._health_task = asyncio.get_running_loop().create_task(self._health_loop())

    @property
    def waiting(self) -> int:
        return self._waiting_loads + sum(e.queued for e in self.loaded.values())

    # --- leasing ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, key: str, name: str, model: Any, load: p.Load,
                    keep_alive: float | None) -> AsyncIterator[LoadedRunner]:
        entry = await self.acquire(key, name, model, load, keep_alive)
        try:
            yield entry
        finally:
            self.release(entry, keep_alive)

    async def acquire(self, key: str, name: str, model: Any, load: p.Load,
                      keep_alive: float | None) -> LoadedRunner:
        if self.waiting >= self.settings.max_queue:
            raise ServerBusy(BUSY_MESSAGE)
        entry = self.loaded.get(key)
        if entry is not None and entry.runner.alive and entry.serves(load):
            return self._hold(entry, keep_alive)  # fast path: never waits behind a load
        self._waiting_loads += 1
        try:
            async with self._lock:
                entry = await self._ensure(key, name, model, load, keep_alive)
                return self._hold(entry, keep_alive)
        finally:
            self._waiting_loads -= 1

    async def _ensure(self, key: str, name: str, model: Any, load: p.Load,
                      keep_alive: float | None) -> LoadedRunner:
        retried = False
        while True:
            entry = self.loaded.get(key)
            if entry is not None and entry.runner.alive and entry.serves(load):
                return entry
            if entry is not None:  # died, or needs other load options
                await self._retire(entry)
                continue
            try:
                return await self._load(key, name, model, load, keep_alive)
            except RunnerError:
                idle = [e for e in self.loaded.values() if e.refcount == 0]
                if retried or not idle:
                    raise
                retried = True  # out of memory, perhaps: free what we can and try once more
                log.warning("loading %s failed; unloading %d idle runner(s) and retrying", name,
                            len(idle))
                for other in idle:
                    await self._unload(other)

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
        entry.last_used = time.monotonic()
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

    # --- loading ------------------------------------------------------------------------------

    def decide(self, model: Any, load: p.Load, inventory: Inventory) -> ModelPlan:
        """The supervisor's plan for loading `model` next to the runners loaded now."""
        info = model.gguf
        if info is None:
            raise CorralError(f"cannot read the GGUF metadata of {model.display()}")
        s = self.settings
        residents = [Resident(e.key, e.refcount > 0, e.keep_alive, e.last_used,
                              e.placement.vram, e.placement.ram) for e in self.loaded.values()]
        return plan_model(
            shape_from_gguf(info), inventory, residents, num_ctx=load.num_ctx,
            num_batch=load.num_batch, num_gpu=load.num_gpu,
            main_gpu=load.main_gpu if load.main_gpu >= 0 else None,
            requested_parallel=load.parallel, configured_parallel=s.num_parallel,
            kv_cache_type=s.kv_cache_type, overhead=s.gpu_overhead,
            max_loaded=self.max_loaded(inventory))

    async def _load(self, key: str, name: str, model: Any, load: p.Load,
                    keep_alive: float | None) -> LoadedRunner:
        while True:
            inventory = self.inventory()
            decision = self.decide(model, load, inventory)
            need, parallel, plan = decision.estimate, decision.parallel, decision.load
            for victim_key in plan.evict:
                if (victim := self.loaded.get(victim_key)) is not None:
                    log.info("evicting %s to make room for %s", victim.name, name)
                    await self._unload(victim)
            if not plan.wait:
                break
            busy = [e.idle.wait() for e in self.loaded.values() if e.refcount > 0]
            log.info("%s waits for a busy runner to finish before it can load", name)
            await asyncio.wait([asyncio.ensure_future(w) for w in busy],
                               return_when=asyncio.FIRST_COMPLETED)
        placement = plan.placement
        # Simulated GPUs are not really there: the model runs on the CPU.
        on_gpu = placement.gpu_layers if not inventory.simulated else 0
        effective = dataclasses.replace(
            load, parallel=parallel, num_gpu=on_gpu, main_gpu=placement.main_gpu,
            tensor_split=list(placement.tensor_split) if placement.tensor_split and on_gpu
            else None)
        runner = RunnerProcess(name, effective, self._runtime_dir, debug=self.settings.debug > 0)
        log.info("loading %s: %s, %d slot(s) of %d tokens, estimated %.0f MiB", name,
                 placement.describe(), parallel, load.num_ctx, need.total / 2**20)
        started = time.perf_counter()
        await runner.start(self.settings.load_timeout or 1e9)
        log.info("loaded %s in %.2fs (pid %s)", name, time.perf_counter() - started, runner.pid)
        ka = self.settings.keep_alive if keep_alive is None else keep_alive
        entry = LoadedRunner(key, name, model, load, runner, placement, need, parallel, ka,
                             time.time() + ka, simulated=inventory.simulated)
        self.loaded[key] = entry
        return entry

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
