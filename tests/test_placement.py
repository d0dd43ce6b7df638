"""Supervisor decisions as tables over simulated inventories: no processes, no GPUs needed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from runner.supervisor.estimate import Estimate
from runner.supervisor.inventory import (
    GPU,
    Inventory,
    _visible,
    cpu_cores,
    gpu_memory_by_pid,
    parse_size,
    simulated_inventory,
)
from runner.supervisor.placement import (
    GPU_RESERVE,
    REPLICA_SETTLE,
    InsufficientMemory,
    Resident,
    choose_parallel,
    cpu_threads,
    eviction_order,
    parallel_choices,
    place,
    plan_load,
    plan_replica,
    queue_is_long,
    with_residents,
)

GiB = 1024**3


def model(total_gib: float, layers: int = 32, other_gib: float = 0.5, kv_gib: float = 1.0,
          compute_gib: float = 0.5) -> Estimate:
    """An estimate with `total_gib` in all: equal layers, an output head, KV and compute."""
    per_layer = int((total_gib - other_gib - compute_gib) * GiB / layers)
    weights = per_layer * layers + int(other_gib * GiB) - int(kv_gib * GiB)
    return Estimate(weights=weights, kv=int(kv_gib * GiB), compute=int(compute_gib * GiB),
                    layer_bytes=(per_layer,) * layers, other_bytes=int(other_gib * GiB))


def gpus(*free_gib: float, total_gib: float | None = None) -> Inventory:
    return Inventory(
        gpus=tuple(GPU(i, f"GPU-{i}", "test", int((total_gib or f) * GiB), int(f * GiB))
                   for i, f in enumerate(free_gib)),
        ram_total=64 * GiB, ram_free=48 * GiB)


CPU_ONLY = Inventory((), 64 * GiB, 48 * GiB)


@pytest.mark.parametrize(("inventory", "size", "expect_gpus", "expect_layers", "split"), [
    (CPU_ONLY, 6, (), 0, False),  # CPU only
    (gpus(24), 6, (0,), 32, False),  # 1 x 24 GB: all on the GPU
    (gpus(80, 80), 30, (0,), 32, False),  # 2 x 80 GB: one GPU is enough, no split
    (gpus(80, 80), 120, (0, 1), 32, True),  # 2 x 80 GB: too big for one -> split
    (gpus(16, 16, 16, 16), 40, (0, 1, 2), 32, True),  # 4 x 16 GB: fewest GPUs that hold it
    (gpus(24, 12), 20, (0,), 32, False),  # mixed: the bigger card alone
    (gpus(24, 12), 30, (0, 1), 32, True),  # mixed: split in proportion to free memory
    (gpus(1.5, total_gib=24), 6, (), 0, False),  # nearly full GPU: nothing fits -> CPU
    (gpus(24, 24), 60, (0, 1), None, True),  # bigger than all GPUs: partial offload
])
def test_placement_table(inventory: Inventory, size: float, expect_gpus: tuple[int, ...],
                         expect_layers: int | None, split: bool) -> None:
    decision = place(model(size), inventory)
    assert decision.gpus == expect_gpus  # exactly these: no more GPUs than needed
    if expect_layers is None:
        assert 0 < decision.gpu_layers < 32 and decision.ram > 0
    else:
        assert decision.gpu_layers == expect_layers
    assert (decision.tensor_split is not None) == split
    assert decision.size >= model(size).total * 0.99


def test_split_follows_free_memory() -> None:
    decision = place(model(30), gpus(24, 12))
    share0, share1 = decision.tensor_split or (0, 0)
    assert share0 > share1 and abs(share0 + share1 - 1) < 1e-3
    usable0, usable1 = 24 * GiB - GPU_RESERVE, 12 * GiB - GPU_RESERVE
    assert share0 == pytest.approx(usable0 / (usable0 + usable1), abs=1e-3)


def test_partial_offload_keeps_the_output_head_on_gpu_and_accounts_ram() -> None:
    decision = place(model(60), gpus(24, 24))
    assert decision.ram + decision.size_vram == pytest.approx(model(60).total, rel=0.01)
    assert decision.size_vram < 48 * GiB


def test_num_gpu_and_main_gpu_override() -> None:
    assert place(model(6), gpus(24), num_gpu=0).on_cpu_only
    capped = place(model(6), gpus(24), num_gpu=10)
    assert capped.gpu_layers == 10 and capped.ram > 0
    pinned = place(model(6), gpus(24, 24), main_gpu=1)
    assert pinned.gpus == (1,) and pinned.tensor_split is None


def test_overhead_is_reserved_per_gpu() -> None:
    assert place(model(20), gpus(24)).gpus == (0,)
    assert place(model(20), gpus(24), overhead=6 * GiB).gpu_layers < 32


@pytest.mark.parametrize(("inventory", "settings", "expected"), [
    # model(4 + 3 x slots) GiB: on GPUs the largest of 16, 8, 4, 2 that fits, else 1; above 4
    # only within half the free memory.
    (gpus(120), {}, 16),  # 52 GiB
    (gpus(80), {}, 8),  # 28 GiB; 16 slots would fit but take two thirds of it
    (gpus(40, 40), {}, 8),  # over two GPUs' room together
    (gpus(48), {}, 4),  # 8 slots would take over half
    (gpus(24), {}, 4),
    (gpus(12), {}, 2),
    (gpus(8), {}, 1),
    (gpus(80), {"max_parallel": 8}, 8),  # CORRAL_MAX_PARALLEL
    (gpus(80), {"max_parallel": 6}, 6),  # ... need not be a power of two
    (gpus(20), {"max_parallel": 6}, 4),
    (gpus(80), {"max_parallel": 1}, 1),
    (CPU_ONLY, {}, 4),  # 48 GiB of RAM would hold 16 slots: the CPU stays at 4
    (CPU_ONLY, {"max_parallel": 2}, 2),
    (gpus(80), {"configured": 3}, 3),  # OLLAMA_NUM_PARALLEL wins
    (gpus(8), {"configured": 32}, 32),  # ... even past what fits or the maximum
    (CPU_ONLY, {"configured": 12}, 12),
    (gpus(80), {"configured": 3, "requested": 2}, 2),  # a model's num_parallel wins over it
    (gpus(80), {"embedding_only": True}, 1),
])
def test_parallel_largest_that_fits(inventory: Inventory, settings: dict,
                                    expected: int) -> None:
    def estimate_for(parallel: int) -> Estimate:
        return model(4 + 3 * parallel)  # KV grows with slots
    assert choose_parallel(estimate_for, inventory, **settings) == expected


def test_parallel_choices() -> None:
    assert parallel_choices(gpus(80)) == [16, 8, 4, 2]
    assert parallel_choices(gpus(80), 12) == [12, 8, 4, 2]
    assert parallel_choices(gpus(80), 2) == [2]
    assert parallel_choices(CPU_ONLY) == [4, 2]
    assert parallel_choices(CPU_ONLY, 3) == [3, 2]


def test_parallel_on_the_cpu_counts_what_a_cpu_runner_holds() -> None:
    """A CPU runner holds less than llama.cpp allocates (its compute buffer's logits rows stay
    unwritten): the slots are chosen by that figure."""
    small_ram = Inventory((), 64 * GiB, int(11.7 * GiB))

    def estimate_for(parallel: int) -> Estimate:
        return dataclasses.replace(model(4 + 2 * parallel), host_compute=0)
    assert estimate_for(4).total > small_ram.ram_free >= estimate_for(4).host_total
    assert choose_parallel(estimate_for, small_ram) == 4


def resident(key: str, *, busy: bool = False, keep_alive: float = 300, last_used: float = 0,
             vram: dict[int, int] | None = None, ram: int = 0) -> Resident:
    return Resident(key, busy, keep_alive, last_used, vram or {}, ram)


def test_eviction_order_shortest_keep_alive_then_least_recent() -> None:
    residents = [resident("a", keep_alive=600, last_used=1), resident("b", keep_alive=60,
                 last_used=5), resident("c", keep_alive=60, last_used=2),
                 resident("busy", busy=True, keep_alive=0)]
    assert [r.key for r in eviction_order(residents)] == ["c", "b", "a"]


def test_plan_evicts_idle_runner_to_make_room() -> None:
    inventory = gpus(10, total_gib=24)  # 14 GiB held by the resident
    residents = [resident("old", vram={0: 14 * GiB})]
    plan = plan_load(model(12), inventory, residents, max_loaded=3)
    assert plan.evict == ("old",) and not plan.wait and plan.placement.gpus == (0,)


def test_plan_never_evicts_busy_runner_it_waits() -> None:
    inventory = gpus(10, total_gib=24)
    plan = plan_load(model(12), inventory, [resident("busy", busy=True, vram={0: 14 * GiB})],
                     max_loaded=3)
    assert plan.wait and plan.evict == ()


def test_plan_respects_max_loaded() -> None:
    residents = [resident("a", last_used=2), resident("b", last_used=1)]
    plan = plan_load(model(2), CPU_ONLY, residents, max_loaded=2)
    assert plan.evict == ("b",) and not plan.wait
    assert plan_load(model(2), CPU_ONLY, residents, max_loaded=3).evict == ()


def test_plan_alone_takes_partial_offload() -> None:
    plan = plan_load(model(60), gpus(24, 24), [], max_loaded=3)
    assert not plan.evict and 0 < plan.placement.gpu_layers < 32


def test_model_too_big_for_memory_is_a_clear_error() -> None:
    tiny_ram = Inventory((), 8 * GiB, 4 * GiB)
    with pytest.raises(InsufficientMemory, match=r"requires more system memory \(6.0 GiB\)"):
        plan_load(model(6), tiny_ram, [], max_loaded=3)


def test_cuda_visible_devices_subsets_and_order() -> None:
    devices = [{"uuid": f"GPU-{c}"} for c in "abcd"]
    assert _visible(devices, None) == devices
    assert _visible(devices, ("2", "0")) == [devices[2], devices[0]]
    assert _visible(devices, ("GPU-b",)) == [devices[1]]
    assert _visible(devices, ("1", "-1", "2")) == [devices[1]]  # CUDA stops at an invalid id
    assert _visible(devices, ("-1",)) == []


def test_simulated_inventory_file(tmp_path: Path) -> None:
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps({"gpus": [{"name": "H100", "total": "80GiB", "free": "78GiB"},
                                         {"name": "L4", "total": 24 * GiB}],
                                "ram_total": "512GiB", "ram_free": "400GiB"}))
    inventory = simulated_inventory(path)
    assert inventory.simulated and [g.name for g in inventory.gpus] == ["H100", "L4"]
    assert inventory.gpus[0].free == 78 * GiB and inventory.gpus[1].free == 24 * GiB
    assert inventory.ram_free == 400 * GiB
    assert parse_size("512MiB") == 512 * 1024**2
    with pytest.raises(ValueError):
        parse_size("lots")


# --- replicas ------------------------------------------------------------------------------------

def replica(inventory: Inventory, replica_gpus: list[tuple[int, ...]], *, size: float = 6,
            waiting: int = 4, slots: int = 4, long_for: float = REPLICA_SETTLE,
            max_replicas: int = 2, loaded: int = 1, max_loaded: int = 6,
            pinned: bool = False):  # noqa: ANN201
    return plan_replica(model(size), inventory, replica_gpus, waiting=waiting, slots=slots,
                        long_for=long_for, max_replicas=max_replicas, loaded=loaded,
                        max_loaded=max_loaded, pinned=pinned)


def test_replica_goes_to_a_gpu_its_model_does_not_use() -> None:
    decision = replica(gpus(24, 24), [(0,)])
    assert decision is not None and decision.gpus == (1,) and decision.ram == 0
    assert decision.gpu_layers == decision.total_layers
    third = replica(gpus(24, 24, 24), [(0,), (1,)], waiting=8, max_replicas=3, loaded=2)
    assert third is not None and third.gpus == (2,)


def test_replica_of_a_split_model_may_split_over_other_gpus() -> None:
    decision = replica(gpus(16, 16, 16, 16), [(0, 1)], size=24)
    assert decision is not None and set(decision.gpus) == {2, 3}


@pytest.mark.parametrize(("why", "inventory", "replica_gpus", "overrides"), [
    ("CPU only", CPU_ONLY, [()], {}),
    ("queue short", gpus(24, 24), [(0,)], {"waiting": 3}),
    ("queue not long for long enough", gpus(24, 24), [(0,)], {"long_for": 0.1}),
    ("every GPU has a replica", gpus(24, 24), [(0,), (1,)], {"waiting": 8, "max_replicas": 4}),
    ("at CORRAL_MAX_REPLICAS", gpus(24, 24, 24), [(0,), (1,)], {"waiting": 8}),
    ("replicas off", gpus(24, 24), [(0,)], {"max_replicas": 1}),
    ("no room without evicting", gpus(24, 4, total_gib=24), [(0,)], {}),
    ("would spill onto the CPU", gpus(24, 24, 10), [(0, 1)], {"size": 30}),
    ("at OLLAMA_MAX_LOADED_MODELS", gpus(24, 24), [(0,)], {"loaded": 3, "max_loaded": 3}),
    ("pinned by num_gpu/main_gpu", gpus(24, 24), [(0,)], {"pinned": True}),
    ("not loaded at all", gpus(24, 24), [], {}),
])
def test_no_replica(why: str, inventory: Inventory, replica_gpus: list[tuple[int, ...]],
                    overrides: dict) -> None:
    assert replica(inventory, replica_gpus, **overrides) is None, why


def test_queue_is_long_counts_every_replicas_slots() -> None:
    assert queue_is_long(1, 1, 1) and not queue_is_long(0, 1, 1)
    assert queue_is_long(8, 4, 2) and not queue_is_long(7, 4, 2)
    assert not queue_is_long(5, 4, 0)


def test_simulated_inventory_counts_what_residents_hold() -> None:
    base = gpus(24, 24)
    simulated = Inventory(base.gpus, base.ram_total, base.ram_free, simulated=True)
    residents = [resident("a", vram={0: 10 * GiB}, ram=2 * GiB)]
    held = with_residents(simulated, residents)
    assert held.gpus[0].free == 14 * GiB and held.gpus[1].free == 24 * GiB
    assert held.ram_free == simulated.ram_free
    assert with_residents(base, residents) is base  # NVML's free already counts them


def test_cpu_threads_share_the_cores() -> None:
    assert cpu_threads(8, 1) == 8 and cpu_threads(8, 2) == 4 and cpu_threads(8, 3) == 2
    assert cpu_threads(2, 2) == 1 and cpu_threads(2, 5) == 1 and cpu_threads(4, 0) == 4
    assert cpu_cores() >= 1


# --- measured VRAM, with a fake NVML ---------------------------------------------------------

class FakeNVML:
    """pynvml's surface that gpu_memory_by_pid uses: two GPUs and their compute processes."""

    class NVMLError(Exception):
        pass

    class Proc:
        def __init__(self, pid: int, used: int | None) -> None:
            self.pid, self.usedGpuMemory = pid, used

    def __init__(self, processes: list[list[tuple[int, int | None]]], *,
                 broken: bool = False) -> None:
        self.processes, self.broken, self.shut = processes, broken, False

    def nvmlInit(self) -> None:
        if self.broken:
            raise self.NVMLError("no driver")

    def nvmlShutdown(self) -> None:
        self.shut = True

    def nvmlDeviceGetCount(self) -> int:
        return len(self.processes)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Proc]:
        if self.processes[handle] is None:
            raise self.NVMLError("not supported")
        return [self.Proc(pid, used) for pid, used in self.processes[handle]]


def test_measured_vram_matches_runner_pids_over_all_gpus() -> None:
    nvml = FakeNVML([[(100, 3 * GiB), (999, 5 * GiB)], [(100, 1 * GiB), (200, 2**64 - 1)]])
    assert gpu_memory_by_pid({100, 200, 300}, nvml) == {100: 4 * GiB, 200: 0, 300: 0}
    assert nvml.shut
    assert gpu_memory_by_pid({100}, FakeNVML([None, [(100, GiB)]])) == {100: GiB}
    assert gpu_memory_by_pid({100}, FakeNVML([[(100, None)]])) == {100: 0}
    assert gpu_memory_by_pid({100}, FakeNVML([], broken=True)) is None
