"""Keeping llama.cpp off the code paths known to crash, and explaining a runner that crashed.

llama.cpp's "extra buffer types" move weights into layouts for faster CPU kernels: repacked
Q4_0/Q4_K blocks, and on CPUs with AMX (current Xeons) the AMX tiles, whose matmul segfaults
(llama.cpp issue #20824). `make install` builds without AMX on such CPUs (runner/build.py), but a
user may bring their own build: a build that reports AMX loads without the extra buffer types.
When a runner dies by a crash signal while loading anyway, the pool retries once with the same
conservative configuration (`Load.safe_cpu`).
"""

from __future__ import annotations

import os
import signal

# Signals that mean the runner crashed in native code; SIGKILL is not one (the OOM killer or an
# operator sent it, and a retry would not help).
CRASH_SIGNALS: dict[int, str] = {
    signal.SIGSEGV: "an invalid memory access inside llama.cpp (a known case: the AMX matmul "
                    "on current Intel Xeons, llama.cpp issue #20824)",
    signal.SIGILL: "an instruction this CPU does not have: llama-cpp-python was built for "
                   "another CPU (run `make install` on this machine to rebuild it)",
    signal.SIGBUS: "the model file could not be read through mmap (a truncated file, or a "
                   "disk that is full or was removed)",
    signal.SIGABRT: "llama.cpp stopped on a failed check (often out of memory, or a model "
                    "or GPU this llama.cpp build does not support)",
}

# Test hook: `CORRAL_TEST_CRASH_AT_WARMUP=SIGSEGV` makes a runner kill itself with that signal at
# warm-up in the optimized configuration; `SIGSEGV:always` in the safe one as well. It stands in
# for hardware the development machines may not have.
FAULT_ENV = "CORRAL_TEST_CRASH_AT_WARMUP"


def build_has_amx(system_info: str) -> bool:
    """Whether llama.cpp's `llama_print_system_info()` says the build compiled AMX in."""
    features = {part.strip() for part in system_info.replace("|", "\n").splitlines()}
    return any(f.startswith("AMX") and f.endswith("= 1") for f in features)


def cpu_config(safe_requested: bool, system_info: str) -> tuple[bool, str]:
    """(use the extra buffer types?, how /api/ps describes the choice)."""
    if safe_requested:
        return False, "safe (requested: after a crash while loading, or CORRAL_SAFE_CPU)"
    if build_has_amx(system_info):
        return False, "safe (this llama.cpp build has AMX, whose path crashes)"
    return True, "optimized"


def crash_signal(returncode: int | None) -> int | None:
    """The crash signal a runner died of, from its exit status, or None."""
    if returncode is None or returncode >= 0:
        return None
    number = -returncode
    return number if number in CRASH_SIGNALS else None


def describe_crash(number: int) -> str:
    name = signal.Signals(number).name
    return f"{name}: {CRASH_SIGNALS[number]}"


def inject_fault(safe: bool) -> None:
    """Crash now if the test hook asks for it in this configuration."""
    wanted = os.environ.get(FAULT_ENV, "")
    if not wanted:
        return
    name, _, when = wanted.partition(":")
    if safe and when != "always":
        return
    number = getattr(signal, name)
    if number != signal.SIGKILL:  # the one that cannot be handled, nor reset
        signal.signal(number, signal.SIG_DFL)
    signal.raise_signal(number)
