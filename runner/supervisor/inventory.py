"""What this machine has: GPUs from NVML (nvidia-ml-py), system memory from psutil.

Read fresh for every placement decision. `CORRAL_GPUS` (or `corral plan --gpus FILE`) names a
JSON file that describes GPUs that are not there, for tests and capacity planning:

    {"gpus": [{"name": "H100", "total": "80GiB", "free": "78GiB"}, ...],
     "ram_total": "512GiB", "ram_free": "400GiB"}        (ram_* optional: this machine's)

Sizes are bytes or strings like "24GiB"/"512MiB". A simulated inventory is logged loudly, and the
model still runs on the CPU, since the GPUs are not real.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger("corral.inventory")

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


@dataclass(frozen=True)
class GPU:
    index: int  # as CUDA numbers it inside this process (after CUDA_VISIBLE_DEVICES)
    uuid: str
    name: str
    total: int
    free: int
    library: str = "cuda"

    @property
    def used(self) -> int:
        return self.total - self.free


@dataclass(frozen=True)
class Inventory:
    gpus: tuple[GPU, ...]
    ram_total: int
    ram_free: int
    simulated: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def vram_total(self) -> int:
        return sum(g.total for g in self.gpus)


def parse_size(value: Any) -> int:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"invalid size {value!r}: expected bytes or e.g. 24GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def simulated_inventory(path: Path) -> Inventory:
    data = json.loads(Path(path).read_text())
    gpus = []
    for i, raw in enumerate(data.get("gpus", [])):
        total = parse_size(raw["total"])
        gpus.append(GPU(index=i, uuid=raw.get("uuid", f"GPU-simulated-{i}"),
                        name=raw.get("name", "simulated GPU"), total=total,
                        free=parse_size(raw.get("free", total)),
                        library=raw.get("library", "cuda")))
    memory = psutil.virtual_memory()
    return Inventory(
        gpus=tuple(gpus),
        ram_total=parse_size(data.get("ram_total", memory.total)),
        ram_free=parse_size(data.get("ram_free", memory.available)),
        simulated=True,
        notes=(f"simulated inventory from {path}",),
    )


def _visible(devices: list[Any], visible: tuple[str, ...] | None) -> list[Any]:
    """Apply CUDA_VISIBLE_DEVICES (indices or UUID prefixes) in its order, as CUDA does."""
    if visible is None:
        return devices
    chosen = []
    for item in visible:
        if item.isdigit():
            if int(item) < len(devices):
                chosen.append(devices[int(item)])
        else:
            chosen += [d for d in devices if d["uuid"].startswith(item)]
        if item.startswith("-"):  # CUDA stops at the first invalid entry
            break
    return chosen


def nvml_gpus(visible: tuple[str, ...] | None) -> tuple[GPU, ...]:
    try:
        import pynvml
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return ()  # no driver: a CPU machine
    try:
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            devices.append({"uuid": uuid.decode() if isinstance(uuid, bytes) else uuid,
                            "name": name.decode() if isinstance(name, bytes) else name,
                            "total": int(memory.total), "free": int(memory.free)})
    finally:
        pynvml.nvmlShutdown()
    return tuple(GPU(index=i, **d) for i, d in enumerate(_visible(devices, visible)))


_announced: set[Path] = set()


def read_inventory(*, gpus_file: Path | None = None, cpu_only: bool = False,
                   cuda_visible_devices: tuple[str, ...] | None = None) -> Inventory:
    if gpus_file is not None:
        inventory = simulated_inventory(gpus_file)
        # Loudly the first time; every placement decision reads it again.
        level = logging.DEBUG if gpus_file in _announced else logging.WARNING
        _announced.add(gpus_file)
        log.log(level, "SIMULATED GPU INVENTORY from %s: %d GPU(s) that are not really here; "
                "models will run on the CPU", gpus_file, len(inventory.gpus))
        return inventory
    memory = psutil.virtual_memory()
    gpus = () if cpu_only else nvml_gpus(cuda_visible_devices)
    return Inventory(gpus=gpus, ram_total=memory.total, ram_free=memory.available)


# NVML reports this (~0ULL) when a process's memory is not known (e.g. under WDDM).
_NVML_NOT_AVAILABLE = 2**64 - 1


def _compute_processes(nvml: Any = None) -> dict[int, int | None] | None:
    """Every compute process NVML lists, by PID, with its GPU memory summed over every GPU (None
    where NVML does not know the amount); None where there is no NVML."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return None
    try:
        nvml.nvmlInit()
    except nvml.NVMLError:
        return None
    seen: dict[int, int | None] = {}
    try:
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            try:
                processes = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except nvml.NVMLError:
                continue  # e.g. a MIG parent or a GPU that fell off the bus: skip it
            for proc in processes:
                nbytes = proc.usedGpuMemory
                known = nbytes is not None and nbytes != _NVML_NOT_AVAILABLE
                before = seen.get(proc.pid)
                seen[proc.pid] = (before or 0) + int(nbytes) if known else before
    finally:
        nvml.nvmlShutdown()
    return seen


def gpu_memory_by_pid(pids: set[int], nvml: Any = None) -> dict[int, int] | None:
    """GPU memory each of `pids` really holds, summed over every GPU (NVML's compute processes);
    None where there is no NVML. A PID NVML does not list reads as 0."""
    seen = _compute_processes(nvml)
    if seen is None:
        return None
    return {pid: seen.get(pid) or 0 for pid in pids}


def runner_gpu_memory(reported: dict[int, int], nvml: Any = None) -> dict[int, int] | None:
    """GPU memory of each runner (PID -> bytes reported by its llama.cpp at load): NVML's figure
    where NVML lists the PID with a known amount, else the runner's own report. Inside a container
    NVML lists host PIDs, which never match the runners' PIDs there, so every runner falls back to
    its report. None only when there is neither NVML nor any report of GPU memory."""
    seen = _compute_processes(nvml)
    if seen is None:
        return dict(reported) if any(reported.values()) else None
    return {pid: measured if (measured := seen.get(pid)) is not None else own
            for pid, own in reported.items()}


def cpu_cores() -> int:
    """Physical cores this process may run on: llama.cpp's threads spin, so hyper-threads and
    cores outside our affinity mask only slow it down."""
    physical = psutil.cpu_count(logical=False) or psutil.cpu_count() or 1
    try:
        allowed = len(psutil.Process().cpu_affinity() or ())
    except (AttributeError, psutil.Error):
        allowed = 0
    return max(1, min(physical, allowed) if allowed else physical)
