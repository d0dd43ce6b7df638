"""What a runner's llama.cpp allocated on each device, read from the lines it logs while loading.

llama.cpp 0.3.36 has no call that returns its buffer sizes, but it logs each one as it allocates
it ("load_tensors:        CUDA0 model buffer size =   235.00 MiB", "llama_kv_cache:  CUDA0 KV
buffer size = ...", "llama_context:  CUDA0 compute buffer size = ..."). The runner hooks
`llama_log_set` for the length of the load, adds the sizes up per buffer, and reports the ones on
a GPU in `Ready.device_bytes`.

Why: the gateway measures each runner's GPU memory through NVML by process id, but inside a
container NVML lists host PIDs, which never match the runner's PID there; this report is what the
pool falls back to (runner/supervisor/inventory.py `runner_gpu_memory`). It covers llama.cpp's own
buffers, not the CUDA context (a few hundred MiB per process) that NVML would also count.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
from collections.abc import Iterator
from typing import Any

# "<buffer> <what> buffer size = <n> MiB": model weights, KV cache, compute graph, logits output,
# LoRA adapters and recurrent state, as llama.cpp 0.3.36 words them.
_LINE = re.compile(
    r"(?P<buffer>[A-Za-z][\w.-]*)\s+(?P<kind>model|KV|compute|output|LoRA|RS)\s+buffer size"
    r"\s*=\s*(?P<mib>\d+(?:\.\d+)?)\s*MiB")
# Kinds as corral's estimate names them (runner/supervisor/estimate.py), for /api/ps and `corral
# plan`.
_KINDS = {"model": "weights", "LoRA": "weights", "KV": "kv", "RS": "kv", "compute": "compute",
          "output": "output"}
_MIB = 1024 * 1024


def is_host_buffer(name: str) -> bool:
    """System-memory buffers: the CPU backend's ("CPU", "CPU_Mapped", "CPU_REPACK"), the extra
    CPU buffer types (AMX) and pinned host memory of a GPU backend ("CUDA_Host")."""
    return name.startswith("CPU") or name.endswith("_Host") or name == "AMX"


def device_of(name: str) -> str | None:
    """The device a buffer lives on ("CUDA0", "ROCm1", "Vulkan0", "Metal"), None for host
    memory. A split buffer ("CUDA0_Split") counts for its first device."""
    if is_host_buffer(name):
        return None
    return name.removesuffix("_Split")


class BufferLog:
    """Collects llama.cpp's buffer-size lines; text may arrive in pieces (GGML_LOG_LEVEL_CONT)."""

    def __init__(self) -> None:
        self.by_buffer: dict[str, int] = {}
        self.by_kind: dict[str, int] = {}  # weights, kv, compute, output: every device
        self._partial = ""

    def feed(self, text: str) -> None:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            match = _LINE.search(line)
            if match:
                nbytes = int(float(match.group("mib")) * _MIB)
                name = match.group("buffer")
                self.by_buffer[name] = self.by_buffer.get(name, 0) + nbytes
                kind = _KINDS[match.group("kind")]
                self.by_kind[kind] = self.by_kind.get(kind, 0) + nbytes

    def device_bytes(self) -> dict[str, int]:
        """Bytes per GPU device; empty when everything is in system memory."""
        totals: dict[str, int] = {}
        for name, nbytes in self.by_buffer.items():
            device = device_of(name)
            if device is not None:
                totals[device] = totals.get(device, 0) + nbytes
        return totals


@contextlib.contextmanager
def capture() -> Iterator[BufferLog]:
    """Route llama.cpp's log through a BufferLog for the duration, passing every line on to
    llama-cpp-python's own handler (which prints it at OLLAMA_DEBUG), and restore that handler."""
    import llama_cpp
    from llama_cpp import _logger

    buffers = BufferLog()
    previous: Any = _logger.llama_log_callback

    @llama_cpp.llama_log_callback
    def hook(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        try:
            buffers.feed(text.decode("utf-8", "replace"))
        finally:
            previous(level, text, user_data)

    llama_cpp.llama_log_set(hook, ctypes.c_void_p(0))
    try:
        yield buffers
    finally:
        # `hook` stays referenced until here, so llama.cpp never calls a freed callback.
        llama_cpp.llama_log_set(previous, ctypes.c_void_p(0))
