"""`corral plan MODEL`: what the supervisor would decide on this machine, loading nothing.

It reads the model from the local store (OLLAMA_MODELS), the inventory from NVML/psutil or a
described one (`--gpus FILE`, as CORRAL_GPUS), and the runners a running server has loaded (its
/api/ps, when one answers), and prints the same decision the server's pool would make.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gateway.cli.client import Client, CLIError
from gateway.options import DEFAULT_NUM_CTX
from registry.store import Store
from runner.supervisor.estimate import shape_from_gguf
from runner.supervisor.inventory import read_inventory
from runner.supervisor.placement import Resident, plan_model
from shared.config import Settings
from shared.errors import CorralError

MiB = 1024**2


def add_plan_parser(sub: Any) -> None:
    p = sub.add_parser("plan", help="Show where a model would be loaded, without loading it")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--ctx", type=int, help="context length per slot (num_ctx)")
    p.add_argument("--parallel", type=int, default=0, help="slots (default: decided)")
    p.add_argument("--gpus", type=Path, help="a JSON file describing GPUs (see CORRAL_GPUS)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _running() -> list[dict[str, Any]]:
    """/api/ps's models of a server on OLLAMA_HOST, if one is running."""
    try:
        with Client(connect_timeout=2.0) as client:
            return client.get("/api/ps").get("models", [])
    except CLIError:
        return []


def _measured(running: list[dict[str, Any]], model: Any) -> dict[str, Any] | None:
    """What the server measures of this model when it is loaded: the runner's RSS (summed over
    replicas), its GPU memory, and llama.cpp's buffers by kind (one replica's)."""
    for m in running:
        if m.get("digest") == model.digest and m.get("name") == model.display():
            extra = m.get("corral") or {}
            return {"parallel": extra.get("parallel"), "context_length": m.get("context_length"),
                    "replicas": extra.get("replicas", 1),
                    "estimate": extra.get("estimate"),  # the server's, for that load
                    **(extra.get("measured") or {})}
    return None


def _residents(running: list[dict[str, Any]]) -> list[Resident]:
    """The server's loaded runners as the decision sees them: one per replica."""
    residents = []
    for m in running:
        extra = m.get("corral") or {}
        runners = extra.get("runners") or [{"gpus": extra.get("gpus") or [],
                                            "active": extra.get("active")}]
        # /api/ps sums sizes over replicas; each replica holds an equal share.
        size_vram = m.get("size_vram", 0) // len(runners)
        ram = (m.get("size", 0) - m.get("size_vram", 0)) // len(runners)
        keep = extra.get("keep_alive")
        for runner in runners:
            gpus = runner.get("gpus") or []
            vram = {g: size_vram // len(gpus) for g in gpus} if gpus else {}
            name = m.get("name") or m["digest"]
            key = name if len(runners) == 1 else f"{name} (pid {runner.get('pid')})"
            residents.append(Resident(key, bool(runner.get("active")),
                                      float("inf") if keep is None else keep, 0.0, vram, ram))
    return residents


def cmd_plan(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    try:
        model = Store(settings.models).get(args.model)
    except CorralError as exc:
        raise CLIError(exc.message) from None
    info = model.gguf
    if info is None:
        raise CLIError(f"cannot read the GGUF metadata of {args.model}")
    inventory = read_inventory(gpus_file=args.gpus or settings.gpus_file,
                               cpu_only=settings.cpu_only,
                               cuda_visible_devices=settings.cuda_visible_devices)
    num_ctx = args.ctx or model.params.get("num_ctx") or settings.context_length or \
        DEFAULT_NUM_CTX
    num_ctx = min(num_ctx, info.context_length or num_ctx)
    running = _running()
    # The plan is for this model's load: a runner of the same model already there is what the
    # plan is measured against, never something it would unload to make room for itself.
    others = [m for m in running if m.get("name") != model.display()
              and m.get("model") != model.display()]
    try:
        decision = plan_model(shape_from_gguf(info, model.projector_gguf), inventory,
                              _residents(others),
                              num_ctx=num_ctx,
                              requested_parallel=args.parallel,
                              configured_parallel=settings.num_parallel,
                              kv_cache_type=settings.kv_cache_type,
                              overhead=settings.gpu_overhead,
                              max_loaded=settings.max_loaded_models,
                              max_parallel=settings.max_parallel)
    except CorralError as exc:
        raise CLIError(exc.message) from None
    placement, need = decision.load.placement, decision.estimate
    report = {
        "model": model.display(),
        "num_ctx": num_ctx,
        "parallel": decision.parallel,
        "inventory": {"gpus": [{"index": g.index, "name": g.name, "total": g.total,
                                "free": g.free} for g in inventory.gpus],
                      "ram_free": inventory.ram_free, "simulated": inventory.simulated},
        "estimate": {"weights": need.weights, "kv": need.kv, "compute": need.compute,
                     "output": need.output, "projector": need.projector, "total": need.total,
                     "host_total": need.host_total},
        # The same model as a running server has it loaded (its own slots and context), or
        # null: what the estimate is held against.
        "measured": _measured(running, model),
        "placement": {"gpus": list(placement.gpus), "gpu_layers": placement.gpu_layers,
                      "total_layers": placement.total_layers,
                      "tensor_split": placement.tensor_split,
                      "vram": {str(k): v for k, v in placement.vram.items()},
                      "ram": placement.ram, "description": placement.describe()},
        "evict": list(decision.load.evict),
        "wait": decision.load.wait,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    table = Table(title=f"{model.display()}: {placement.describe()}, {decision.parallel} slot(s)"
                        f" of {num_ctx} tokens")
    table.add_column("where")
    table.add_column("MiB", justify="right")
    for index, nbytes in placement.vram.items():
        table.add_row(f"GPU {index}", f"{nbytes / MiB:.0f}")
    table.add_row("system memory", f"{placement.ram / MiB:.0f}")
    table.add_row("weights (estimate)", f"{need.weights / MiB:.0f}")
    table.add_row("KV cache (estimate)", f"{need.kv / MiB:.0f}")
    table.add_row("compute buffers (estimate)", f"{need.compute / MiB:.0f}")
    if need.projector:
        table.add_row("vision projector (estimate)", f"{need.projector / MiB:.1f}")
    table.add_row("runner RAM on the CPU (estimate)", f"{need.host_total / MiB:.0f}")
    measured = report["measured"]
    if measured is not None:
        buffers = measured.get("buffers") or {}
        for kind in ("weights", "kv", "compute", "output"):
            if kind in buffers:
                table.add_row(f"{kind} (measured)", f"{buffers[kind] / MiB:.0f}")
        loaded = measured.get("estimate") or {}
        if loaded.get("host_total"):
            table.add_row("runner RAM (that load's estimate)", f"{loaded['host_total'] / MiB:.0f}")
        if measured.get("rss"):
            table.add_row("runner RSS (measured)", f"{measured['rss'] / MiB:.0f}")
        if measured.get("vram"):
            table.add_row("GPU memory (measured)", f"{measured['vram'] / MiB:.0f}")
    Console().print(table)
    if measured is not None:
        print(f"loaded now: {measured['replicas']} runner(s) of {measured['parallel']} slot(s) of "
              f"{measured['context_length']} tokens; the measured rows are that load's (buffers "
              "as llama.cpp logged them, RSS summed over the runners)")
    if decision.load.evict:
        print("would first unload:", ", ".join(decision.load.evict))
    if decision.load.wait:
        print("would wait for a busy model to finish first")
    if inventory.simulated:
        print("inventory: simulated (" + "; ".join(inventory.notes) + ")")
    return 0
