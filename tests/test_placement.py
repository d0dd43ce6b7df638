"""Supervisor decisions as tables over simulated inventories: no processes, no GPUs needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.estimate import Estimate
from runner.inventory import GPU, Inventory, _visible, parse_size, simulated_inventory
from runner.placement import (
    GPU_RESERVE,
    InsufficientMemory,
    Resident,
    choose_parallel,
    eviction_order,
    place,
    plan_load,
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
    assert decision.gpus[:len(expect_gpus)] == expect_gpus
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


def test_parallel_largest_that_fits() -> None:
    def estimate_for(parallel: int) -> Estimate:
        return model(4 + 3 * parallel)  # KV grows with slots
    assert choose_parallel(estimate_for, gpus(80)) == 4
    assert choose_parallel(estimate_for, gpus(12)) == 2
    assert choose_parallel(estimate_for, gpus(8)) == 1
    assert choose_parallel(estimate_for, gpus(80), configured=3) == 3
    assert choose_parallel(estimate_for, gpus(80), configured=3, requested=2) == 2
    assert choose_parallel(estimate_for, gpus(80), embedding_only=True) == 1
    assert choose_parallel(estimate_for, CPU_ONLY) == 4  # 48 GiB of RAM holds 16 GiB


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
