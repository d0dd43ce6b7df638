"""How `make install` chooses llama.cpp's build flags (runner/build.py), on described machines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner import build

SAPPHIRE_RAPIDS = (
    "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2 avx_vnni avx512f avx512cd "
    "avx512vl avx512dq avx512bw avx512vbmi avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16\n"
)
ZEN4 = (
    "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2 avx512f avx512cd avx512vl "
    "avx512dq avx512bw avx512_vnni\n"
)
GRACE = "processor\t: 0\nFeatures\t: fp asimd sve sve2 i8mm bf16\n"
REQ = "llama-cpp-python==0.3.36"


def plan(cpuinfo: str, machine: str = "x86_64", cuda: bool = False, **env: str) -> build.BuildPlan:
    return build.plan_build(env, cpuinfo, machine, REQ, cuda)


def test_amx_cpu_names_its_features_and_leaves_amx_out() -> None:
    args = plan(SAPPHIRE_RAPIDS).cmake_args
    assert "-DGGML_NATIVE=OFF" in args
    for option in ("AVX", "AVX2", "FMA", "F16C", "BMI2", "AVX_VNNI", "AVX512", "AVX512_VBMI",
                   "AVX512_VNNI", "AVX512_BF16", "SSE42"):
        assert f"-DGGML_{option}=ON" in args, option
    for option in ("AMX_TILE", "AMX_INT8", "AMX_BF16"):
        assert f"-DGGML_{option}=OFF" in args


def test_features_the_cpu_lacks_are_off() -> None:
    # AVX512 needs all five of the subsets ggml compiles it with.
    partial = SAPPHIRE_RAPIDS.replace(" avx512vl", "").replace(" avx_vnni", "")
    args = plan(partial).cmake_args
    assert "-DGGML_AVX512=OFF" in args and "-DGGML_AVX_VNNI=OFF" in args
    assert "-DGGML_AVX2=ON" in args


def test_cpus_without_amx_keep_the_native_build() -> None:
    assert plan(ZEN4).cmake_args == ()
    assert plan(GRACE, machine="aarch64").cmake_args == ()
    assert plan("").cmake_args == ()  # no /proc/cpuinfo: llama.cpp's defaults


def test_cuda_when_the_driver_and_the_compiler_are_there() -> None:
    cuda = plan(ZEN4, cuda=True)
    assert cuda.cuda
    assert cuda.cmake_args[:2] == ("-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=native")
    assert any("CUDA" in reason for reason in cuda.reasons)
    assert not plan(ZEN4).cuda
    both = plan(SAPPHIRE_RAPIDS, cuda=True).cmake_args
    assert "-DGGML_CUDA=on" in both and "-DGGML_AMX_INT8=OFF" in both


def test_the_users_cmake_args_win() -> None:
    chosen = plan(SAPPHIRE_RAPIDS, cuda=True, CMAKE_ARGS="-DGGML_VULKAN=on  -DGGML_NATIVE=ON")
    assert chosen.cmake_args == ("-DGGML_VULKAN=on", "-DGGML_NATIVE=ON")
    assert "user" in chosen.reasons[0]


def test_the_cache_key_follows_the_flags_and_the_cpu_of_a_native_build() -> None:
    # Other flags, another wheel: pip's own cache would have reused one wheel for all of these.
    keys = {plan(ZEN4).key, plan(ZEN4, cuda=True).key, plan(SAPPHIRE_RAPIDS).key,
            plan(ZEN4, CMAKE_ARGS="-DGGML_BLAS=on").key}
    assert len(keys) == 4
    # A native build belongs to its CPU; an explicit one to its flags alone.
    assert plan(ZEN4).key != plan(ZEN4.replace(" avx512_vnni", "")).key
    with_more = SAPPHIRE_RAPIDS.replace("amx_bf16", "amx_bf16 sha_ni")
    assert plan(SAPPHIRE_RAPIDS).key == plan(with_more).key
    assert plan(ZEN4).key == plan(ZEN4).key


def test_the_pin_is_read_from_pyproject(tmp_path: Path) -> None:
    assert build.pinned_requirement().startswith("llama-cpp-python==")
    other = tmp_path / "pyproject.toml"
    other.write_text('[project]\ndependencies = ["llama_cpp_python>=0.3"]\n')
    assert build.pinned_requirement(other) == "llama_cpp_python>=0.3"


def test_cache_dir_is_corrals_own(tmp_path: Path) -> None:
    assert build.cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "corral" / "wheels"
    assert build.cache_dir({"CORRAL_WHEEL_CACHE": "/x"}) == Path("/x")


def test_this_venv_records_the_build_it_got() -> None:
    """`make install` wrote down the flags of the llama.cpp in the venv running the tests."""
    marker = build.ROOT / ".venv" / ".llama-build.json"
    if not marker.exists():
        pytest.skip("tests run from an environment that make install did not build")
    record = json.loads(marker.read_text())
    assert record["key"] and isinstance(record["cmake_args"], list) and record["reasons"]
