"""How many slots and models fit on simulated GPUs, before and after issue 14 (no processes).

    .venv/bin/python -m tests.bench.slots_fit [--ctx 4096]

Before: every layer's KV cache num_ctx long (llama.cpp's `swa_full = true`), compute as
4 x ubatch x (vocabulary + 8 x embedding), slots the largest of 4, 2, 1 that fit. Now: windowed
caches for sliding-window layers, compute as llama.cpp sizes it, slots up to CORRAL_MAX_PARALLEL
(16) on GPUs. For each model alone on an empty 24 GiB or 80 GiB GPU, the slots the supervisor
chooses and the memory it plans; then how many distinct models of that shape load one after
another without evicting anything (each choosing its slots from what the ones before left free),
and their slots in all. Model shapes are from their GGUF headers (layers, heads, window,
vocabulary), weights rounded from their Q4_K_M files; the bundled Gemma 3 270M is read from its
file.
"""

from __future__ import annotations

import argparse
import dataclasses

from rich.console import Console
from rich.table import Table

from runner.kvlayout import swa_layers
from runner.supervisor.estimate import Estimate, ModelShape, estimate, shape_from_gguf
from runner.supervisor.inventory import GPU, Inventory
from runner.supervisor.placement import (
    MAX_PARALLEL,
    Resident,
    choose_parallel,
    plan_load,
    with_residents,
)

GiB = 1024**3


def shape(arch: str, *, layers: int, weights_gib: float, kv_heads: int, head: int, vocab: int,
          embd: int, ff: int, window: int = 0, pattern: int | None = None) -> ModelShape:
    other = int(vocab * embd * 0.56)  # embeddings and output head at about 4.5 bits
    per_layer = (int(weights_gib * GiB) - other) // layers
    swa = swa_layers(arch, layers, pattern) if window else ()
    return ModelShape(n_layers=layers, layer_bytes=(per_layer,) * layers, other_bytes=other,
                      n_kv_heads=kv_heads, key_length=head, value_length=head, n_vocab=vocab,
                      n_embd=embd, context_length=131072, embedding_only=False, n_ff=ff,
                      n_swa=window if any(swa) else 0, swa_layers=swa)


def models() -> dict[str, ModelShape]:
    shapes = {
        "llama3.1:8b": shape("llama", layers=32, weights_gib=4.58, kv_heads=8, head=128,
                             vocab=128256, embd=4096, ff=14336),
        "gemma3:12b": shape("gemma3", layers=48, weights_gib=7.3, kv_heads=8, head=256,
                            vocab=262144, embd=3840, ff=15360, window=1024),
        "gemma3:27b": shape("gemma3", layers=62, weights_gib=15.4, kv_heads=16, head=128,
                            vocab=262144, embd=5376, ff=21504, window=1024),
        "gpt-oss:20b": shape("gpt-oss", layers=24, weights_gib=12.8, kv_heads=8, head=64,
                             vocab=201088, embd=2880, ff=2880, window=128),
    }
    try:
        from registry.gguf_info import read_gguf
        from tests.bench._model import bundled_model_path

        shapes = {"gemma3:270m": shape_from_gguf(read_gguf(bundled_model_path())), **shapes}
    except Exception:  # noqa: BLE001 - the bundled package is optional here
        pass
    return shapes


def before(model: ModelShape, *, num_ctx: int, parallel: int, kv_cache_type: str = "f16",
           num_batch: int = 512) -> Estimate:
    full = estimate(model, num_ctx=num_ctx, parallel=parallel, kv_cache_type=kv_cache_type,
                    num_batch=num_batch, swa_full=True)
    ubatch = min(num_batch, num_ctx * parallel)
    return dataclasses.replace(full, compute=4 * ubatch * (model.n_vocab + 8 * model.n_embd))


def fill(model: ModelShape, gib: int, num_ctx: int, *, now: bool) -> tuple[int, int, int, int]:
    """On one GPU of `gib`: the first model's slots and planned bytes, then how many models
    load one after another without evicting anything or spilling to the CPU, and their slots."""
    inventory = Inventory((GPU(0, "GPU-0", f"sim-{gib}", gib * GiB, gib * GiB),),
                          128 * GiB, 96 * GiB, simulated=True)
    sized = estimate if now else before
    residents: list[Resident] = []
    first: tuple[int, int] | None = None
    slots = 0
    while len(residents) < 64:
        room = with_residents(inventory, residents)
        parallel = choose_parallel(
            lambda p: sized(model, num_ctx=num_ctx, parallel=p), room,
            max_parallel=MAX_PARALLEL if now else 4)
        need = sized(model, num_ctx=num_ctx, parallel=parallel)
        load = plan_load(need, room, residents, max_loaded=64)
        if load.evict or load.placement.ram > 0 or load.placement.on_cpu_only:
            break
        first = first or (parallel, need.total)
        slots += parallel
        residents.append(Resident(f"m{len(residents)}", True, 300, 0,
                                  dict(load.placement.vram), 0))
    return (*(first or (0, 0)), len(residents), slots)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ctx", type=int, default=4096, help="num_ctx per slot")
    args = parser.parse_args()
    table = Table(title=f"Slots and models on one simulated GPU, num_ctx {args.ctx}, f16 KV "
                        "(before -> now)")
    for column in ("model", "GPU", "slots alone", "planned GiB alone", "models that fit",
                   "slots in all"):
        table.add_column(column, justify="right" if column != "model" else "left")
    for name, model in models().items():
        for gib in (24, 80):
            old = fill(model, gib, args.ctx, now=False)
            new = fill(model, gib, args.ctx, now=True)
            table.add_row(name, f"{gib} GiB", f"{old[0]} -> {new[0]}",
                          f"{old[1] / GiB:.1f} -> {new[1] / GiB:.1f}",
                          f"{old[2]} -> {new[2]}", f"{old[3]} -> {new[3]}")
    Console().print(table)


if __name__ == "__main__":
    main()
