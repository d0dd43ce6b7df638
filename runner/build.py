"""Build llama-cpp-python for the machine in front of us, once per set of build flags.

`make install` runs this file as a script before it installs corral itself, so it uses only
the standard library. It chooses llama.cpp's CMake flags from what the machine has:

- **CUDA** when `nvidia-smi` and `nvcc` are both found (`-DGGML_CUDA=on`, the GPUs' own
  architectures).
- **The CPU.** A plain build compiles with `-march=native`. On a CPU with AMX (current Xeons),
  llama.cpp then moves quantized weights into its AMX buffer type, whose matmul segfaults
  (llama.cpp issue #20824). There the build names each CPU feature the CPU reports instead, and
  leaves AMX out, so AVX-512, VNNI and the repacked kernels stay. Other CPUs keep `-march=native`.
- `CMAKE_ARGS` set by the user wins, as in llama-cpp-python's own instructions.

pip's wheel cache keys a built wheel by the source alone, so a wheel built with other flags (or
without CUDA) would be reused silently. The wheel is therefore built with pip's cache off and
kept in corral's own cache, keyed by the flags (and, for a native build, by the CPU it was built
on). The key of what is installed is written into the virtualenv, so a later run does nothing
when it already matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AMX_FLAGS = frozenset({"amx_tile", "amx_int8", "amx_bf16"})

# cpuinfo flag(s) -> ggml's CMake option. AVX512 stands for the five subsets ggml compiles it
# with (-mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw).
X86_FEATURES: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset({"sse4_2"}), "GGML_SSE42"),
    (frozenset({"avx"}), "GGML_AVX"),
    (frozenset({"avx2"}), "GGML_AVX2"),
    (frozenset({"fma"}), "GGML_FMA"),
    (frozenset({"f16c"}), "GGML_F16C"),
    (frozenset({"bmi2"}), "GGML_BMI2"),
    (frozenset({"avx_vnni"}), "GGML_AVX_VNNI"),
    (frozenset({"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"}), "GGML_AVX512"),
    (frozenset({"avx512vbmi"}), "GGML_AVX512_VBMI"),
    (frozenset({"avx512_vnni"}), "GGML_AVX512_VNNI"),
    (frozenset({"avx512_bf16"}), "GGML_AVX512_BF16"),
)
AMX_OPTIONS = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")


@dataclass(frozen=True)
class BuildPlan:
    """What to build and why; `key` names the wheel in corral's cache."""

    cmake_args: tuple[str, ...]
    reasons: tuple[str, ...]
    key: str

    @property
    def cuda(self) -> bool:
        return any(arg.upper().startswith("-DGGML_CUDA=ON") for arg in self.cmake_args)


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (x86 `flags`, Arm `Features`)."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_cmake_args(flags: frozenset[str], machine: str) -> tuple[list[str], str]:
    """CMake arguments for the CPU backend, and a line saying why."""
    x86 = machine.lower() in ("x86_64", "amd64", "i686", "i386")
    if not x86 or not flags & AMX_FLAGS:
        return [], "CPU: -march=native (no AMX on this CPU)"
    args = ["-DGGML_NATIVE=OFF"]
    enabled = []
    for needed, option in X86_FEATURES:
        on = needed <= flags
        args.append(f"-D{option}={'ON' if on else 'OFF'}")
        if on:
            enabled.append(option.removeprefix("GGML_"))
    args += [f"-D{option}=OFF" for option in AMX_OPTIONS]
    why = (
        "CPU: this CPU has AMX, whose llama.cpp path crashes (llama.cpp #20824); building with "
        f"its features named ({', '.join(enabled)}) and AMX left out"
    )
    return args, why


def cuda_available(which=shutil.which) -> bool:
    return bool(which("nvidia-smi") and which("nvcc"))


def pinned_requirement(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The llama-cpp-python pin from pyproject.toml, the one place it is written."""
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    for requirement in dependencies:
        if requirement.replace("_", "-").startswith("llama-cpp-python"):
            return requirement
    raise SystemExit("pyproject.toml does not pin llama-cpp-python")


def plan_build(
    env: dict[str, str],
    cpuinfo: str,
    machine: str,
    requirement: str,
    cuda: bool,
) -> BuildPlan:
    """Choose the CMake arguments for this machine; a pure function of what it is given."""
    flags = cpu_flags(cpuinfo)
    user_args = env.get("CMAKE_ARGS", "").strip()
    if user_args:
        args = user_args.split()
        reasons = ["CMAKE_ARGS set by the user: built as given"]
    else:
        args, why = cpu_cmake_args(flags, machine)
        reasons = [why]
        if cuda:
            args = ["-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=native", *args]
            reasons.insert(0, "GPU: nvidia-smi and nvcc found, building with CUDA")
        else:
            reasons.insert(0, "GPU: no nvidia-smi and nvcc, CPU build")
    # A build without GGML_NATIVE=OFF is specific to the CPU it ran on: key it by that CPU too.
    native = not any(arg.upper() == "-DGGML_NATIVE=OFF" for arg in args)
    identity = {
        "requirement": requirement,
        "python": sysconfig.get_platform() + "-" + sys.implementation.cache_tag,
        "machine": machine,
        "cmake_args": args,
        "cpu": sorted(flags) if native else None,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    return BuildPlan(tuple(args), tuple(reasons), key)


def cache_dir(env: dict[str, str]) -> Path:
    if env.get("CORRAL_WHEEL_CACHE"):
        return Path(env["CORRAL_WHEEL_CACHE"])
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "corral" / "wheels"


def build_wheel(plan: BuildPlan, requirement: str, python: str, into: Path) -> Path:
    """Compile the wheel with pip's cache off, then move it into `into` in one rename."""
    into.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=into.parent) as scratch:
        env = dict(os.environ, CMAKE_ARGS=" ".join(plan.cmake_args))
        env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        command = [
            python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-cache-dir",
            "--no-binary", "llama-cpp-python", "--wheel-dir", scratch, requirement,
        ]
        subprocess.run(command, env=env, check=True)
        (wheel,) = Path(scratch).glob("*.whl")
        staged = Path(scratch) / "staged"
        staged.mkdir()
        wheel.rename(staged / wheel.name)
        staged.rename(into)
    return next(into.glob("*.whl"))


def main(argv: list[str]) -> int:
    venv = Path(argv[1]) if len(argv) > 1 else ROOT / ".venv"
    python = str(venv / "bin" / "python")
    env = dict(os.environ)
    requirement = pinned_requirement()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    plan = plan_build(env, cpuinfo, platform.machine(), requirement, cuda_available())
    marker = venv / ".llama-build.json"
    for reason in plan.reasons:
        print(f"llama.cpp build: {reason}")
    if marker.exists() and json.loads(marker.read_text()).get("key") == plan.key:
        print("llama.cpp build: already installed")
        return 0
    wheels = cache_dir(env) / plan.key
    found = sorted(wheels.glob("*.whl"))
    if found:
        wheel = found[0]
        print(f"llama.cpp build: reusing {wheel}")
    else:
        print("llama.cpp build: compiling llama-cpp-python (5-10 minutes on a small machine)")
        wheel = build_wheel(plan, requirement, python, wheels)
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps", str(wheel)],
        check=True,
    )
    # Its own dependencies (numpy, jinja2, diskcache, ...) come from the index as usual.
    subprocess.run([python, "-m", "pip", "install", "--quiet", str(wheel)], check=True)
    record = {"key": plan.key, "cmake_args": list(plan.cmake_args), "reasons": list(plan.reasons)}
    marker.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
