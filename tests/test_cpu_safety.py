"""Runners that crash while loading: the safe CPU configuration, the retry and the diagnosis.

The AMX crash needs a current Xeon, so the e2e tests inject the fault: with
CORRAL_TEST_CRASH_AT_WARMUP a runner kills itself with the named signal at its warm-up decode.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runner.cpusafety import build_has_amx, cpu_config, crash_signal, describe_crash
from shared.config import Settings
from tests.conftest import LiveServer, start_server

MODEL = "gemma3:270m"
THIS_BUILD = ("CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | "
              "LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | ")
AMX_BUILD = "CPU : SSE3 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | REPACK = 1 | "


def test_a_build_with_amx_loads_without_the_extra_buffer_types() -> None:
    assert not build_has_amx(THIS_BUILD) and build_has_amx(AMX_BUILD)
    assert cpu_config(False, THIS_BUILD) == (True, "optimized")
    use_extra, why = cpu_config(False, AMX_BUILD)
    assert not use_extra and "AMX" in why
    use_extra, why = cpu_config(True, THIS_BUILD)
    assert not use_extra and why.startswith("safe")


def test_only_crash_signals_count_as_crashes() -> None:
    for sig in (signal.SIGSEGV, signal.SIGILL, signal.SIGBUS, signal.SIGABRT):
        assert crash_signal(-sig) == sig
        assert signal.Signals(sig).name in describe_crash(sig)
    # The OOM killer's SIGKILL, a SIGTERM, a clean or failed exit: no retry would help.
    for code in (-signal.SIGKILL, -signal.SIGTERM, 0, 1, None):
        assert crash_signal(code) is None
    assert "AMX" in describe_crash(signal.SIGSEGV)
    assert "another CPU" in describe_crash(signal.SIGILL)


@pytest.fixture
def crash_server(request: pytest.FixtureRequest, models_dir: Path, tmp_path: Path
                 ) -> Iterator[LiveServer]:
    server = start_server(models_dir, tmp_path / "serve.log",
                          CORRAL_TEST_CRASH_AT_WARMUP=request.param)
    try:
        yield server
    finally:
        server.stop()


def failed_load_error(server: LiveServer) -> str:
    """The error of a generate whose model cannot load (500)."""
    reply = httpx.post(server.url + "/api/generate", timeout=180, json={
        "model": MODEL, "prompt": "Hi", "stream": False})
    assert reply.status_code == 500
    return reply.json()["error"]


@pytest.mark.e2e
@pytest.mark.parametrize("crash_server", ["SIGSEGV"], indirect=True)
def test_a_crash_at_warm_up_is_retried_in_the_safe_configuration(
        crash_server: LiveServer) -> None:
    reply = httpx.post(crash_server.url + "/api/generate", timeout=180, json={
        "model": MODEL, "prompt": "The sky is", "raw": True, "stream": False,
        "options": {"num_predict": 4, "temperature": 0}})
    assert reply.status_code == 200, reply.text
    assert reply.json()["eval_count"] > 0
    [entry] = httpx.get(crash_server.url + "/api/ps").json()["models"]
    assert entry["corral"]["cpu_config"].startswith("safe")
    [runner] = entry["corral"]["runners"]
    assert runner["cpu_config"].startswith("safe") and runner["device"] == "cpu"
    log = crash_server.log.read_text()
    assert "crashed while loading (SIGSEGV" in log and "retrying once" in log


@pytest.mark.e2e
@pytest.mark.parametrize("crash_server", ["SIGILL:always"], indirect=True)
def test_a_second_crash_names_the_signal_and_its_cause(crash_server: LiveServer) -> None:
    error = failed_load_error(crash_server)
    assert "also in the safe CPU configuration" in error
    assert "SIGILL" in error and "another CPU" in error
    assert httpx.get(crash_server.url + "/api/ps").json() == {"models": []}
    assert crash_server.log.read_text().count("retrying once") == 1


@pytest.mark.e2e
@pytest.mark.parametrize("crash_server", ["SIGKILL"], indirect=True)
def test_sigkill_while_loading_is_not_retried(crash_server: LiveServer) -> None:
    assert "killed by SIGKILL" in failed_load_error(crash_server)
    assert "retrying once" not in crash_server.log.read_text()


def test_corral_safe_cpu_is_read_from_the_environment() -> None:
    assert Settings.from_env({"CORRAL_SAFE_CPU": "1"}).safe_cpu
    assert not Settings.from_env({}).safe_cpu


@pytest.mark.e2e
def test_an_operator_can_ask_for_the_safe_configuration(models_dir: Path, tmp_path: Path) -> None:
    server = start_server(models_dir, tmp_path / "serve.log", CORRAL_SAFE_CPU="1")
    try:
        reply = httpx.post(server.url + "/api/generate", timeout=180, json={"model": MODEL})
        assert reply.status_code == 200
        [entry] = httpx.get(server.url + "/api/ps").json()["models"]
        assert entry["corral"]["cpu_config"].startswith("safe (requested")
        assert "retrying" not in server.log.read_text()
    finally:
        server.stop()
