"""The runners the gateway has started: placement, reuse, keep-alive, eviction, and shutdown.

One runner process per loaded model, or several (replicas) for a model whose queue stays long
while other GPUs have room. A request leases a runner (`async with pool.lease(...)`): of a
model's replicas, the one with the fewest requests active and queued. When a runner's last lease
ends its keep-alive timer starts, and when it fires that runner is stopped; replicas come and go
one by one, and unloading a model stops all of them.

Loading a model asks the supervisor's pure decisions (runner/supervisor/placement.py) over a fresh
inventory: where it goes, how many slots it gets, and which idle runners must go first; busy runners
are never evicted, the load waits for one to finish instead. Requests to loaded models never wait
behind a load. A runner that died or stops answering health checks is dropped, and the next request
starts a fresh one; a load that fails (out of memory) evicts the other idle runners and tries once
more, and a runner that crashes while loading is started once more in the safe CPU configuration.
Runners that compute on the CPU share its cores: each busy one gets its part as threads (unless the
request set num_thread), told anew whenever a CPU runner starts or stops computing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import math
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import psutil

from registry.gguf_info import read_gguf_safe
from runner.cpusafety import crash_signal, describe_crash
from runner.supervisor.client import RunnerProcess
from runner.supervisor.estimate import Estimate, shape_from_gguf
from runner.supervisor.inventory import Inventory, cpu_cores, read_inventory, runner_gpu_memory
from runner.supervisor.placement import (
    REPLICA_SETTLE,
    ModelPlan,
    Placement,
    Resident,
    cpu_threads,
    plan_model,
    plan_replica,
    queue_is_long,
    with_residents,
)
from shared import protocol as p
from shared.config import Settings
from shared.errors import CorralError, RunnerCrashed, RunnerError, ServerBusy

log = logging.getLogger("corral.pool")

HEALTH_INTERVAL = 5.0
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
REPLICA_RECHECK = 10.0  # seconds before asking again when a long queue got no replica
_serials = itertools.count(1)


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
    threads: int = 0  # CPU threads the supervisor gave it (0: the request's num_thread, or GPU)
    refcount: int = 0
    last_used: float = field(default_factory=time.monotonic)
    timer: asyncio.TimerHandle | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    serial: int = field(default_factory=lambda: next(_serials))

    @property
    def ident(self) -> str:
        """Names this replica among the model's (the decisions evict replicas, not models)."""
        return f"{self.key}#{self.serial}"

    @property
    def on_cpu(self) -> bool:
        """Whether it computes (some layers) on the CPU: simulated GPUs are not really used."""
        return self.simulated or self.placement.gpu_layers < self.placement.total_layers

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


Held = TypeVar("Held")


class Leasing(Generic[Held]):
    """`lease()` over a pool's own `acquire` and `release`: this process's RunnerPool, or an
    HTTP worker's pool that asks the supervisor (gateway/remotepool.py)."""

    async def acquire(self, key: str, name: str, model: Any, load: p.Load,
                      keep_alive: float | None) -> Held:
        raise NotImplementedError

    def release(self, entry: Held, keep_alive: float | None = None) -> None:
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def lease(self, key: str, name: str, model: Any, load: p.Load,
                    keep_alive: float | None) -> AsyncIterator[Held]:
        entry = await self.acquire(key, name, model, load, keep_alive)
        try:
            yield entry
        finally:
            self.release(entry, keep_alive)


class RunnerPool(Leasing[LoadedRunner]):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loaded: dict[str, list[LoadedRunner]] = {}  # model key -> its replicas, oldest first
        self._lock = asyncio.Lock()  # one load or eviction decision at a time
        # Requests waiting for their model to load, by model name: /metrics counts them as
        # waiting (corral_requests_waiting) although no runner holds them yet.
        self.waiting_loads: Counter[str] = Counter()
        self._runtime_dir = Path(tempfile.mkdtemp(prefix="corral-"))  # mode 0700
        self._health_task: asyncio.Task[None] | None = None
        self._long_since: dict[str, float] = {}  # model key -> when its queue became long
        self._checks: dict[str, asyncio.TimerHandle] = {}  # pending replica checks
        self._scaling: set[str] = set()  # models with a replica load in flight
        self._tasks: set[asyncio.Task[Any]] = set()
        self.restarts: Counter[str] = Counter()  # model name -> its runners that died (/metrics)

    def inventory(self) -> Inventory:
        s = self.settings
        inventory = read_inventory(gpus_file=s.gpus_file, cpu_only=s.cpu_only,
                                   cuda_visible_devices=s.cuda_visible_devices)
        return with_residents(inventory, self._residents())

    def max_loaded(self, inventory: Inventory) -> int:
        return self.settings.max_loaded_models or 3 * max(len(inventory.gpus), 1)

    def start(self) -> None:
        self._health_task = asyncio.get_running_loop().create_task(self._health_loop())

    @property
    def waiting(self) -> int:
        return self.waiting_loads.total() + sum(e.queued for e in self.entries())

    def entries(self) -> list[LoadedRunner]:
        """Every loaded runner, replicas included."""
        return [e for group in self.loaded.values() for e in group]

    def _is_loaded(self, entry: LoadedRunner) -> bool:
        return entry in self.loaded.get(entry.key, ())

    def _add(self, entry: LoadedRunner) -> None:
        self.loaded.setdefault(entry.key, []).append(entry)

    def _remove(self, entry: LoadedRunner) -> bool:
        group = self.loaded.get(entry.key)
        if group is None or entry not in group:
            return False
        group.remove(entry)
        if not group:
            del self.loaded[entry.key]
            self._long_since.pop(entry.key, None)
        return True

    def _residents(self) -> list[Resident]:
        return [Resident(e.ident, e.refcount > 0, e.keep_alive, e.last_used, e.placement.vram,
                         e.placement.ram) for e in self.entries()]

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(self._tasks.discard)

    # --- leasing ------------------------------------------------------------------------------

    async def acquire(self, key: str, name: str, model: Any, load: p.Load,
                      keep_alive: float | None) -> LoadedRunner:
        if self.waiting >= self.settings.max_queue:
            raise ServerBusy(BUSY_MESSAGE)
        entry = self._pick(key, load)
        if entry is not None:
            return self._hold(entry, keep_alive)  # fast path: never waits behind a load
        self.waiting_loads[name] += 1
        try:
            async with self._lock:
                entry = await self._ensure(key, name, model, load, keep_alive)
                return self._hold(entry, keep_alive)
        finally:
            self.waiting_loads[name] -= 1
            if self.waiting_loads[name] <= 0:
                del self.waiting_loads[name]

    def _pick(self, key: str, load: p.Load) -> LoadedRunner | None:
        """The replica with the fewest requests active and queued that can serve `load`."""
        for dead in [e for e in self.loaded.get(key, ()) if not e.runner.alive]:
            self._drop(dead)
        usable = [e for e in self.loaded.get(key, ()) if e.serves(load)]
        return min(usable, key=lambda e: (e.refcount, e.serial), default=None)

    async def _ensure(self, key: str, name: str, model: Any, load: p.Load,
                      keep_alive: float | None) -> LoadedRunner:
        retried = False
        while True:
            entry = self._pick(key, load)
            if entry is not None:
                return entry
            if stale := self.loaded.get(key):  # loaded with other options: replace them
                await self._retire(stale[0])
                continue
            try:
                return await self._load(key, name, model, load, keep_alive)
            except RunnerError as exc:
                idle = [e for e in self.entries() if e.refcount == 0]
                if retried or not idle or isinstance(exc, RunnerCrashed):
                    raise
                retried = True  # out of memory, perhaps: free what we can and try once more
                log.warning("loading %s failed; unloading %d idle runner(s) and retrying", name,
                            len(idle))
                for other in idle:
                    await self._unload(other)

    def _hold(self, entry: LoadedRunner, keep_alive: float | None) -> LoadedRunner:
        entry.refcount += 1
        if entry.refcount == 1 and entry.threads:  # one more CPU runner computing
            self._spawn(self._rebalance_threads())
        entry.idle.clear()
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if keep_alive is not None:
            entry.keep_alive = keep_alive
        self._note_queue(entry.key)
        return entry

    def release(self, entry: LoadedRunner, keep_alive: float | None = None) -> None:
        entry.refcount -= 1
        entry.last_used = time.monotonic()
        if keep_alive is not None:
            entry.keep_alive = keep_alive
        self._note_queue(entry.key)
        if entry.refcount > 0:
            return
        entry.idle.set()
        if entry.threads:  # one fewer CPU runner computing: the others get its cores
            self._spawn(self._rebalance_threads())
        if self._is_loaded(entry):
            self._arm_expiry(entry)

    def _arm_expiry(self, entry: LoadedRunner) -> None:
        """Start an idle runner's keep-alive timer."""
        if entry.keep_alive <= 0 or not entry.runner.alive:
            entry.expires_at = time.time()
            self._spawn(self._expire(entry))
        elif math.isinf(entry.keep_alive):
            entry.expires_at = math.inf
        else:
            entry.expires_at = time.time() + entry.keep_alive
            entry.timer = asyncio.get_running_loop().call_later(
                entry.keep_alive, lambda: self._spawn(self._expire(entry)))

    # --- replicas -----------------------------------------------------------------------------

    def _queue(self, key: str) -> tuple[int, int, int]:
        """(requests waiting beyond the busy slots, slots per replica, replicas) of a model."""
        group = [e for e in self.loaded.get(key, ()) if e.runner.alive]
        if not group:
            return 0, 0, 0
        return sum(e.queued for e in group), group[0].parallel, len(group)

    def _note_queue(self, key: str) -> None:
        """Track since when a model's queue has been long; check for a replica once it stays."""
        waiting, slots, replicas = self._queue(key)
        if replicas >= self.settings.max_replicas or not queue_is_long(waiting, slots, replicas):
            self._long_since.pop(key, None)  # (no checks at all once it has every replica)
        elif key not in self._long_since:
            self._long_since[key] = time.monotonic()
            self._schedule_check(key, REPLICA_SETTLE)

    def _schedule_check(self, key: str, delay: float) -> None:
        if key in self._checks:
            return

        def fire() -> None:
            self._checks.pop(key, None)
            self._spawn(self._check_replicas(key))

        self._checks[key] = asyncio.get_running_loop().call_later(delay, fire)

    async def _check_replicas(self, key: str) -> None:
        since = self._long_since.get(key)
        if since is None or key in self._scaling:
            return  # the queue got short again, or a replica is already on its way
        if (left := REPLICA_SETTLE - (time.monotonic() - since)) > 0:
            self._schedule_check(key, left)  # it became long again only lately
            return
        self._scaling.add(key)
        try:
            async with self._lock:
                if not await self._add_replica(key) and key in self._long_since:
                    self._schedule_check(key, REPLICA_RECHECK)  # no room now; maybe later
        except CorralError as exc:
            log.warning("could not start another replica of %s: %s", key, exc.message)
        except Exception:  # a background task: log it rather than lose it
            log.exception("could not start another replica of %s", key)
        finally:
            self._scaling.discard(key)

    def replica_placement(self, key: str, inventory: Inventory) -> Placement | None:
        """The supervisor's answer to "start another replica of this model, and where?"."""
        group = [e for e in self.loaded.get(key, ()) if e.runner.alive]
        if not group or key not in self._long_since:
            return None
        first, (waiting, slots, _) = group[0], self._queue(key)
        pinned = first.requested.num_gpu >= 0 or first.requested.main_gpu >= 0 \
            or first.keep_alive <= 0  # pinned by the user, or on its way out
        return plan_replica(
            first.estimate, inventory, [e.placement.gpus for e in group], waiting=waiting,
            slots=slots, long_for=time.monotonic() - self._long_since[key],
            max_replicas=self.settings.max_replicas, loaded=len(self.entries()),
            max_loaded=self.max_loaded(inventory), pinned=pinned,
            overhead=self.settings.gpu_overhead)

    async def _add_replica(self, key: str) -> bool:
        inventory = self.inventory()
        placement = self.replica_placement(key, inventory)
        if placement is None:
            return False
        first = self.loaded[key][0]
        log.info("%s: queue of %d stays long; starting replica %d", first.name,
                 self._queue(key)[0], len(self.loaded[key]) + 1)
        await self._start(key, first.name, first.model, first.requested, first.keep_alive,
                          placement, first.estimate, first.parallel, inventory, replica=True)
        self._long_since.pop(key, None)  # judge the queue afresh against the new slot count
        self._note_queue(key)
        return True

    # --- loading ------------------------------------------------------------------------------

    def decide(self, model: Any, load: p.Load, inventory: Inventory) -> ModelPlan:
        """The supervisor's plan for loading `model` next to the runners loaded now."""
        info = model.gguf
        if info is None:
            raise CorralError(f"cannot read the GGUF metadata of {model.display()}")
        s = self.settings
        return plan_model(
            shape_from_gguf(info, model.projector_gguf,
                            read_gguf_safe(load.draft_path) if load.draft_path else None),
            inventory, self._residents(),
            num_ctx=load.num_ctx,
            num_batch=load.num_batch, num_gpu=load.num_gpu,
            main_gpu=load.main_gpu if load.main_gpu >= 0 else None,
            requested_parallel=load.parallel, configured_parallel=s.num_parallel,
            kv_cache_type=s.kv_cache_type, overhead=s.gpu_overhead,
            max_loaded=self.max_loaded(inventory), max_parallel=s.max_parallel)

    async def _load(self, key: str, name: str, model: Any, load: p.Load,
                    keep_alive: float | None) -> LoadedRunner:
        while True:
            inventory = self.inventory()
            decision = self.decide(model, load, inventory)
            need, parallel, plan = decision.estimate, decision.parallel, decision.load
            for ident in plan.evict:
                victim = next((e for e in self.entries() if e.ident == ident), None)
                if victim is not None:
                    log.info("evicting %s (pid %s) to make room for %s", victim.name,
                             victim.runner.pid, name)
                    await self._unload(victim)
            if not plan.wait:
                break
            busy = [e.idle.wait() for e in self.entries() if e.refcount > 0]
            log.info("%s waits for a busy runner to finish before it can load", name)
            await asyncio.wait([asyncio.ensure_future(w) for w in busy],
                               return_when=asyncio.FIRST_COMPLETED)
        ka = self.settings.keep_alive if keep_alive is None else keep_alive
        return await self._start(key, name, model, load, ka, plan.placement, need, parallel,
                                 inventory)

    async def _start(self, key: str, name: str, model: Any, load: p.Load, keep_alive: float,
                     placement: Placement, need: Estimate, parallel: int,
                     inventory: Inventory, *, replica: bool = False) -> LoadedRunner:
        """Start one runner (a model's first, or another `replica`) where it was decided."""
        # Simulated GPUs are not really there: the model runs on the CPU.
        on_gpu = placement.gpu_layers if not inventory.simulated else 0
        on_cpu = on_gpu < placement.total_layers
        threads = 0
        if on_cpu and not load.num_thread:
            threads = cpu_threads(cpu_cores(), 1 + len(self._busy_cpu_runners()))
            await self._rebalance_threads(extra=1)  # make room before it starts decoding
        effective = dataclasses.replace(
            load, parallel=parallel, num_gpu=on_gpu, main_gpu=placement.main_gpu,
            num_thread=load.num_thread or threads, safe_cpu=load.safe_cpu or self.settings.safe_cpu,
            tensor_split=list(placement.tensor_split) if placement.tensor_split and on_gpu
            else None)
        log.info("loading %s: %s, %d slot(s) of %d tokens, estimated %.0f MiB%s", name,
                 placement.describe(), parallel, load.num_ctx, need.total / 2**20,
                 f", {threads} CPU thread(s)" if threads else "")
        started = time.perf_counter()
        try:
            runner = await self._launch(name, effective)
        except BaseException:  # failed, timed out, or cancelled (shutdown, client gone)
            await self._rebalance_threads()  # give the others their cores back
            raise
        log.info("loaded %s in %.2fs (pid %s)", name, time.perf_counter() - started, runner.pid)
        entry = LoadedRunner(key, name, model, load, runner, placement, need, parallel,
                             keep_alive, time.time() + keep_alive, simulated=inventory.simulated,
                             threads=threads)
        self._add(entry)
        if replica:  # nobody holds it yet: its keep-alive runs from now
            self._arm_expiry(entry)
        return entry

    async def _launch(self, name: str, load: p.Load) -> RunnerProcess:
        """Start a runner process. One that crashes while loading (SIGSEGV, SIGILL, SIGBUS,
        SIGABRT; not SIGKILL, the OOM killer's) is retried once in the safe CPU configuration."""
        runner = RunnerProcess(name, load, self._runtime_dir, debug=self.settings.debug > 0)
        try:
            await runner.start(self.settings.load_timeout or 1e9)
            return runner
        except RunnerError:
            await runner.stop()
            number = crash_signal(runner.returncode)
            if number is None:
                raise
            if load.safe_cpu:
                raise RunnerCrashed(
                    f"the runner for {name} crashed while loading, also in the safe CPU "
                    f"configuration: {describe_crash(number)}") from None
            log.warning(
                "the runner for %s crashed while loading (%s); retrying once in the safe CPU "
                "configuration (no AMX, no repacked weights), which /api/ps will show",
                name, describe_crash(number))
        except BaseException:
            await runner.stop()
            raise
        return await self._launch(name, dataclasses.replace(load, safe_cpu=True))

    def _cpu_runners(self) -> list[LoadedRunner]:
        return [e for e in self.entries() if e.on_cpu and e.runner.alive]

    def _busy_cpu_runners(self) -> list[LoadedRunner]:
        return [e for e in self._cpu_runners() if e.refcount > 0]

    async def _rebalance_threads(self, extra: int = 0) -> None:
        """Share the cores among the CPU runners that are computing now (and `extra` about to
        start). Idle runners do not spin, so they do not count; each gets its share again when
        it next becomes busy."""
        busy = self._busy_cpu_runners()
        share = cpu_threads(cpu_cores(), len(busy) + extra)
        for entry in busy:
            if entry.threads and entry.threads != share:
                log.info("%s (pid %s): %d CPU thread(s)", entry.name, entry.runner.pid, share)
                entry.threads = share
                await entry.runner.set_threads(share)

    async def _retire(self, entry: LoadedRunner) -> None:
        """Wait for the runner's requests to finish (unless it is dead), then stop it."""
        entry.keep_alive = 0
        if entry.runner.alive and entry.refcount > 0:
            await entry.idle.wait()
        await self._unload(entry)

    async def _expire(self, entry: LoadedRunner) -> None:
        if entry.refcount == 0 and self._is_loaded(entry):
            await self._unload(entry)

    async def _unload(self, entry: LoadedRunner) -> None:
        self._remove(entry)
        if entry.timer is not None:
            entry.timer.cancel()
        log.info("unloading %s (pid %s)", entry.name, entry.runner.pid)
        await entry.runner.stop()
        await self._rebalance_threads()

    async def unload(self, key: str) -> bool:
        """Unload all of a model's replicas now if idle, else each as soon as its requests
        finish. False if not loaded."""
        group = list(self.loaded.get(key, ()))
        for entry in group:
            entry.keep_alive = 0
            if entry.refcount == 0:
                await self._unload(entry)
        return bool(group)

    # --- liveness -----------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL)
            for entry in self.entries():
                if not entry.runner.alive:
                    self._drop(entry)
                elif not await entry.runner.health(self.settings.health_timeout):
                    log.error("%s: runner pid %s stopped answering; killing it", entry.name,
                              entry.runner.pid)
                    # What its requests are told (instead of "killed by SIGKILL").
                    entry.runner.dead = (f"the runner stopped answering (no health reply in "
                                         f"{self.settings.health_timeout:g}s) and was replaced")
                    entry.runner.kill_now()
                    self._drop(entry)

    def _drop(self, entry: LoadedRunner) -> None:
        if self._remove(entry):
            self.restarts[entry.name] += 1  # it died: the next request starts a fresh one
            if entry.timer is not None:
                entry.timer.cancel()
            self._spawn(self._rebalance_threads())

    def running(self) -> list[list[LoadedRunner]]:
        """Loaded models, each as its live replicas, the latest to expire first."""
        for entry in [e for e in self.entries() if not e.runner.alive]:
            self._drop(entry)
        groups = [list(group) for group in self.loaded.values() if group]
        return sorted(groups, key=lambda g: max(e.expires_at for e in g), reverse=True)

    async def measured_vram(self) -> dict[int, int] | None:
        """GPU memory each runner process holds (by pid): NVML's figure, or what the runner's
        llama.cpp allocated where NVML cannot see the PID (containers); None without either."""
        reported = {e.runner.pid: sum(e.ready.device_bytes.values())
                    for e in self.entries() if e.runner.pid and e.runner.ready is not None}
        return await asyncio.to_thread(runner_gpu_memory, reported)

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
        for handle in self._checks.values():
            handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        entries = self.entries()
        self.loaded.clear()
        await asyncio.gather(*(e.runner.stop() for e in entries), return_exceptions=True)
        shutil.rmtree(self._runtime_dir, ignore_errors=True)

    def kill_all(self) -> None:
        for entry in self.entries():
            entry.runner.kill_now()
