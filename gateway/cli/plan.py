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
from runner.estimate import shape_from_gguf
from runner.inventory import read_inventory
from runner.placement import Resident, plan_model
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


def _residents() -> list[Resident]:
    """Runners loaded by a server on OLLAMA_HOST, if one is running: one per replica."""
    try:
        with Client(connect_timeout=2.0) as client:
            running = client.get("/api/ps").get("models", [])
    except CLIError:
        return []
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
    try:
        decision = plan_model(shape_from_gguf(info), inventory, _residents(), num_ctx=num_ctx,
                              requested_parallel=args.parallel,
                              configured_parallel=settings.num_parallel,
                              kv_cache_type=settings.kv_cache_type,
                              overhead=settings.gpu_overhead,
                              max_loaded=settings.max_loaded_models)
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
                     "total": need.total},
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
    Console().print(table)
    if decision.load.evict:
        print("would first unload:", ", ".join(decision.load.evict))
    if decision.load.wait:
        print("would wait for a busy model to finish first")
    if inventory.simulated:
        print("inventory: simulated (" + "; ".join(inventory.notes) + ")")
    return 0
