"""Where a model runs, with how many slots, and what must make room: pure decisions.

Everything here is a function of an `Inventory` (GPUs, free memory), a memory `Estimate` and the
runners already loaded; nothing starts, stops or measures anything, so every rule is tested
without processes, on any machine. Ollama's scheduler is the model; we go past it with a
per-model `num_parallel` and the largest-slots-that-fit default (up to 16 on GPUs).

Placement order: the whole model on the single GPU with the most free memory if it fits; else
split across the fewest GPUs that hold it (layers in proportion to free memory); else as many
layers as fit on the GPUs and the rest on the CPU; else the CPU. `num_gpu` and `main_gpu` override.

A model whose queue stays long gets another replica on GPUs its replicas do not use, when the
whole model fits there without evicting anything (`plan_replica`); CPU runners share the cores
(`cpu_threads`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from runner.supervisor.estimate import Estimate, ModelShape, estimate
from runner.supervisor.inventory import GPU, Inventory
from shared.errors import CorralError

GPU_RESERVE = 457 * 1024**2  # what a CUDA context and driver keep per GPU (Ollama's figure)
MAX_PARALLEL = 16  # CORRAL_MAX_PARALLEL: the most slots chosen on GPUs
CPU_PARALLEL = 4  # ... and on the CPU
# Slots beyond CPU_PARALLEL only while the runner takes at most this share of the memory free
# now: the rest stays for other models (a model as large again still fits beside it).
EXTRA_SLOTS_SHARE = 0.5
REPLICA_SETTLE = 1.0  # seconds a model's queue must stay long before it gets another replica


class InsufficientMemory(CorralError):
    status = 500


@dataclass(frozen=True)
class Placement:
    """The runner's device decision."""

    gpus: tuple[int, ...]  # GPU indices used, main GPU first; () = CPU only
    gpu_layers: int  # layers offloaded (n_gpu_layers); 0 = CPU only
    total_layers: int
    tensor_split: tuple[float, ...] | None  # per GPU index share, when split over several
    vram: dict[int, int] = field(default_factory=dict)  # bytes per GPU index
    ram: int = 0  # bytes in system memory

    @property
    def main_gpu(self) -> int:
        return self.gpus[0] if self.gpus else 0

    @property
    def on_cpu_only(self) -> bool:
        return self.gpu_layers == 0

    @property
    def size(self) -> int:
        return self.ram + sum(self.vram.values())

    @property
    def size_vram(self) -> int:
        return sum(self.vram.values())

    def describe(self) -> str:
        if self.on_cpu_only:
            return "CPU"
        where = ", ".join(f"GPU {i}" for i in self.gpus)
        return f"{self.gpu_layers}/{self.total_layers} layers on {where}"


def _usable(gpu: GPU, overhead: int) -> int:
    return max(gpu.free - overhead - GPU_RESERVE, 0)


def _split(free: Sequence[int], total: int) -> list[float]:
    s = sum(free)
    return [f / s for f in free] if s else [1 / len(free)] * len(free)


def place(estimate: Estimate, inventory: Inventory, *, num_gpu: int = -1,
          main_gpu: int | None = None, overhead: int = 0) -> Placement:
    """Decide where one model runs. `num_gpu` caps the offloaded layers (-1 = automatic)."""
    n_layers = len(estimate.layer_bytes)
    # On the CPU a runner holds less than llama.cpp allocates (runner/supervisor/estimate.py).
    cpu = Placement((), 0, n_layers, None, {}, estimate.host_total)
    gpus = list(inventory.gpus)
    if num_gpu == 0 or not gpus:
        return cpu
    if main_gpu is not None:
        gpus = [g for g in gpus if g.index == main_gpu] or gpus[:1]

    # 1. The whole model on the one GPU with the most room.
    best = max(gpus, key=lambda g: _usable(g, overhead))
    if num_gpu < 0 and _usable(best, overhead) >= estimate.total:
        return Placement((best.index,), n_layers, n_layers, None, {best.index: estimate.total}, 0)

    # 2. Split over the fewest GPUs (most free first) that hold all of it.
    ranked = sorted(gpus, key=lambda g: _usable(g, overhead), reverse=True)
    if num_gpu < 0 and main_gpu is None:
        for k in range(2, len(ranked) + 1):
            chosen = ranked[:k]
            room = [_usable(g, overhead) for g in chosen]
            if sum(room) >= estimate.total:
                shares = _split(room, estimate.total)
                vram = {g.index: math.ceil(estimate.total * s) for g, s in zip(chosen, shares,
                                                                              strict=True)}
                return Placement(tuple(g.index for g in chosen), n_layers, n_layers,
                                 _split_vector(chosen, shares), vram, 0)

    # 3. As many layers as fit (the last layers and the output head first, as llama.cpp
    #    offloads them), the rest on the CPU.
    room = [_usable(g, overhead) for g in ranked]
    # held on the GPU whatever the layer split (a draft model sits whole on the main GPU)
    fixed = estimate.compute + estimate.projector + estimate.draft
    budget = sum(room) - fixed
    limit = n_layers if num_gpu < 0 else min(num_gpu, n_layers)
    layers, used = 0, 0
    for layer_bytes in reversed(estimate.layer_bytes):
        extra = layer_bytes + (estimate.other_bytes if layers == 0 else 0)
        if layers >= limit or used + extra > budget:
            break
        layers, used = layers + 1, used + extra
    if layers == 0:
        return cpu
    chosen = [g for g, r in zip(ranked, room, strict=True) if r > 0] or ranked[:1]
    shares = _split([_usable(g, overhead) for g in chosen], used)
    gpu_bytes = used + fixed
    vram = {g.index: math.ceil(gpu_bytes * s) for g, s in zip(chosen, shares, strict=True)}
    return Placement(tuple(g.index for g in chosen), layers, n_layers,
                     _split_vector(chosen, shares) if len(chosen) > 1 else None, vram,
                     max(estimate.total - gpu_bytes, 0))


def _split_vector(chosen: Sequence[GPU], shares: Sequence[float]) -> tuple[float, ...]:
    """llama.cpp's tensor_split: one share per device index, zeros for unused devices."""
    vector = [0.0] * (max(g.index for g in chosen) + 1)
    for gpu, share in zip(chosen, shares, strict=True):
        vector[gpu.index] = round(share, 4)
    return tuple(vector)


def parallel_choices(inventory: Inventory, max_parallel: int = MAX_PARALLEL) -> list[int]:
    """The slot counts tried, largest first: on GPUs CORRAL_MAX_PARALLEL and the powers of two
    below it; on the CPU 4, 2 (more slots there only split the same cores)."""
    top = max(1, max_parallel if inventory.gpus else min(max_parallel, CPU_PARALLEL))
    return [top] + [2**k for k in range(top.bit_length() - 1, 0, -1) if 2**k < top]


def choose_parallel(estimate_for: Callable[[int], Estimate], inventory: Inventory, *,
                    configured: int = 0, requested: int | None = None,
                    embedding_only: bool = False, overhead: int = 0,
                    max_parallel: int = MAX_PARALLEL) -> int:
    """Slots per runner: a per-model/request `num_parallel`, else OLLAMA_NUM_PARALLEL, else the
    largest of `parallel_choices` whose memory fits what is free now (embedding models always
    get 1). On GPUs that goes up to CORRAL_MAX_PARALLEL, where sliding-window caches leave room
    that 4 slots would waste; but more than 4 only while the runner takes at most half of what
    is free, so that more slots never cost a model of the same size its place beside it."""
    if embedding_only:
        return 1
    if requested:
        return max(1, requested)
    if configured:
        return configured
    if inventory.gpus:
        room = sum(_usable(g, overhead) for g in inventory.gpus)
        fits = [p for p in parallel_choices(inventory, max_parallel)
                if estimate_for(p).total <= (room if p <= CPU_PARALLEL
                                             else room * EXTRA_SLOTS_SHARE)]
    else:
        fits = [p for p in parallel_choices(inventory, max_parallel)
                if estimate_for(p).host_total <= inventory.ram_free]
    return fits[0] if fits else 1


@dataclass(frozen=True)
class Resident:
    """A loaded runner, as the decisions see it."""

    key: str
    busy: bool
    keep_alive: float
    last_used: float
    vram: dict[int, int]
    ram: int


@dataclass(frozen=True)
class LoadPlan:
    placement: Placement
    evict: tuple[str, ...]  # idle runners to stop first
    wait: bool  # every candidate for eviction is busy: wait for one to finish, then decide again


def eviction_order(residents: Sequence[Resident]) -> list[Resident]:
    """Idle runners only: shortest keep_alive first, then least recently used."""
    return sorted((r for r in residents if not r.busy), key=lambda r: (r.keep_alive, r.last_used))


def _without(inventory: Inventory, gone: Sequence[Resident]) -> Inventory:
    """The inventory as it will be once `gone` runners have freed their memory."""
    freed: dict[int, int] = {}
    for r in gone:
        for index, nbytes in r.vram.items():
            freed[index] = freed.get(index, 0) + nbytes
    gpus = tuple(GPU(g.index, g.uuid, g.name, g.total, min(g.total, g.free + freed.get(g.index, 0)),
                     g.library) for g in inventory.gpus)
    ram_free = min(inventory.ram_total, inventory.ram_free + sum(r.ram for r in gone))
    return Inventory(gpus, inventory.ram_total, ram_free, inventory.simulated, inventory.notes)


def plan_load(estimate: Estimate, inventory: Inventory, residents: Sequence[Resident], *,
              max_loaded: int, num_gpu: int = -1, main_gpu: int | None = None,
              overhead: int = 0) -> LoadPlan:
    """Decide how to load a model next to `residents`: where, and who must go first.

    The model must fit entirely on the GPUs it is given while other runners are resident;
    when it does not, idle runners are evicted one by one; with nothing left to evict it takes
    the best partial or CPU placement (as Ollama loads a first model); a model that does not
    fit even in system memory is an error naming what it needs and what there is.
    """
    victims = eviction_order(residents)
    evicted: list[Resident] = []
    while True:
        room = _without(inventory, evicted)
        slots_left = max_loaded - (len(residents) - len(evicted))
        placement = place(estimate, room, num_gpu=num_gpu, main_gpu=main_gpu, overhead=overhead)
        full_fit = placement.ram == 0 or not room.gpus or num_gpu >= 0
        if slots_left > 0 and full_fit and placement.ram <= room.ram_free:
            return LoadPlan(placement, tuple(r.key for r in evicted), False)
        if len(evicted) < len(victims):
            evicted.append(victims[len(evicted)])
            continue
        if len(evicted) < len(residents):  # the rest are busy: wait for one of them
            return LoadPlan(placement, tuple(r.key for r in evicted), True)
        if placement.ram > room.ram_free:
            raise InsufficientMemory(
                f"model requires more system memory ({_gib(placement.ram)}) than is available "
                f"({_gib(room.ram_free)})")
        return LoadPlan(placement, tuple(r.key for r in evicted), False)


def _gib(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB"


@dataclass(frozen=True)
class ModelPlan:
    """Everything the supervisor decides for one load: memory, slots, placement, evictions."""

    estimate: Estimate
    parallel: int
    load: LoadPlan


def plan_model(shape: ModelShape, inventory: Inventory, residents: Sequence[Resident], *,
               num_ctx: int, num_batch: int = 512, num_gpu: int = -1,
               main_gpu: int | None = None, requested_parallel: int = 0,
               configured_parallel: int = 0, kv_cache_type: str = "f16", overhead: int = 0,
               max_loaded: int = 0, max_parallel: int = MAX_PARALLEL) -> ModelPlan:
    """The whole decision for loading a model of `shape` now (used by the pool and `corral
    plan`): slots, the memory they need, where it goes, and who must make room."""

    def estimate_for(parallel: int) -> Estimate:
        return estimate(shape, num_ctx=num_ctx, parallel=parallel, kv_cache_type=kv_cache_type,
                        num_batch=num_batch)

    parallel = choose_parallel(estimate_for, inventory, configured=configured_parallel,
                               requested=requested_parallel or None,
                               embedding_only=shape.embedding_only, overhead=overhead,
                               max_parallel=max_parallel)
    need = estimate_for(parallel)
    plan = plan_load(need, inventory, residents,
                     max_loaded=max_loaded or 3 * max(len(inventory.gpus), 1),
                     num_gpu=num_gpu, main_gpu=main_gpu, overhead=overhead)
    return ModelPlan(need, parallel, plan)


def with_residents(inventory: Inventory, residents: Sequence[Resident]) -> Inventory:
    """A simulated inventory's GPUs as they are with `residents` loaded: their free figures are
    fixed in a file, while NVML's real ones already count what the runners hold. (System memory
    is left alone: the runners really run on the CPU, so psutil's figure already counts them.)"""
    if not inventory.simulated:
        return inventory
    held: dict[int, int] = {}
    for r in residents:
        for index, nbytes in r.vram.items():
            held[index] = held.get(index, 0) + nbytes
    return dataclasses.replace(inventory, gpus=tuple(
        dataclasses.replace(g, free=max(g.free - held.get(g.index, 0), 0))
        for g in inventory.gpus))


def queue_is_long(waiting: int, slots: int, replicas: int) -> bool:
    """A model's queue is long when the requests waiting beyond its busy slots would fill all
    its replicas' slots once more."""
    return replicas > 0 and waiting >= max(slots, 1) * replicas


def plan_replica(estimate: Estimate, inventory: Inventory,
                 replica_gpus: Sequence[tuple[int, ...]], *, waiting: int, slots: int,
                 long_for: float, max_replicas: int, loaded: int, max_loaded: int,
                 pinned: bool = False, overhead: int = 0,
                 settle: float = REPLICA_SETTLE) -> Placement | None:
    """Where to start one more replica of a model, or None.

    Only when its waiting requests (beyond the busy slots) are at least as many as all its
    replicas' slots and have been for `settle` seconds; only on GPUs none of its replicas uses,
    holding the whole model in their free memory, so nothing is evicted for it; never on a
    CPU-only inventory (a second CPU runner would only split the same cores), never for a
    model pinned by `num_gpu`/`main_gpu`, never beyond `max_replicas` or `max_loaded`.
    """
    if not inventory.gpus or pinned or not replica_gpus:
        return None
    if len(replica_gpus) >= max_replicas or loaded >= max_loaded:
        return None
    if not queue_is_long(waiting, slots, len(replica_gpus)) or long_for < settle:
        return None
    used = {index for gpus in replica_gpus for index in gpus}
    free = tuple(g for g in inventory.gpus if g.index not in used)
    if not free:
        return None
    placement = place(estimate, dataclasses.replace(inventory, gpus=free), overhead=overhead)
    if placement.ram > 0 or placement.gpu_layers < placement.total_layers:
        return None  # it would spill onto the CPU: slower than waiting for the GPU replicas
    return placement


def cpu_threads(cores: int, cpu_runners: int) -> int:
    """Threads for each runner that computes on the CPU: the cores divided among them. ggml's
    threads spin-wait for each other, so runners that together want more threads than there are
    cores make every one of them many times slower."""
    return max(1, cores // max(cpu_runners, 1))
