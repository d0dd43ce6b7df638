"""The supervisor end to end on this CPU with the real model: eviction, waiting, queue limit."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from registry.manifest import MEDIA_PARAMS, Manifest
from registry.store import Store
from runner.supervisor.inventory import cpu_cores
from tests.conftest import ROOT, LiveServer, start_server

pytestmark = pytest.mark.e2e

MODEL = "gemma3:270m"


def make_variant(models: Path, name: str, params: dict) -> None:
    """A second model on the same weights with other params: its own manifest, its own runner."""
    store = Store(models)
    base = store.get(MODEL)
    blob = store.write_json_blob({**base.params, **params})
    layers = [layer for layer in base.manifest.layers if layer.media_type != MEDIA_PARAMS]
    store.write_manifest(name, Manifest(base.manifest.config,
                                        [*layers, blob.layer(MEDIA_PARAMS)]))


@pytest.fixture
def one_model_server(models_dir: Path, tmp_path: Path):  # noqa: ANN201
    server = start_server(models_dir, tmp_path / "serve.log", OLLAMA_MAX_LOADED_MODELS="1",
                          OLLAMA_NUM_PARALLEL="1", OLLAMA_MAX_QUEUE="1")
    make_variant(models_dir, "variant:test", {"num_ctx": 2048})
    try:
        yield server
    finally:
        server.stop()


def generate(server: LiveServer, model: str, predict: int, timeout: float = 120) -> httpx.Response:
    return httpx.post(server.url + "/api/generate", timeout=timeout, json={
        "model": model, "prompt": "1, 2, 3,", "raw": True, "stream": False,
        "options": {"num_predict": predict, "temperature": 0}})


def test_idle_runner_is_evicted_busy_one_is_not(one_model_server: LiveServer) -> None:
    server = one_model_server
    assert generate(server, MODEL, 2).status_code == 200
    [first] = server.runner_pids()

    # Idle: loading the variant (limit 1) evicts it.
    assert generate(server, "variant:test", 2).status_code == 200
    [second] = server.runner_pids()
    assert second != first and not psutil.pid_exists(first)
    ps = httpx.get(server.url + "/api/ps").json()["models"]
    assert [m["name"] for m in ps] == ["variant:test"]

    # Busy: a long request keeps its runner; the other model waits for it, then loads.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        busy = pool.submit(generate, server, "variant:test", 150)
        server.wait_ps("variant:test", corral_ps(active=1))
        waiting = pool.submit(generate, server, MODEL, 2)
        long_reply = busy.result()
        assert long_reply.status_code == 200 and long_reply.json()["eval_count"] == 150
        assert waiting.result().status_code == 200
    assert waiting.result().json()["load_duration"] > 0


def hold(server: LiveServer, model: str) -> contextlib.AbstractContextManager[httpx.Response]:
    """A streamed request that keeps generating until the `with` block leaves it (which
    cancels it): it holds a slot for exactly as long as a test needs, on any machine."""
    return httpx.stream("POST", server.url + "/api/generate", timeout=120, json={
        "model": model, "prompt": "1, 2, 3,", "raw": True,
        "options": {"num_predict": 100_000, "temperature": 0}})


def corral_ps(**expect: int) -> Callable[[dict | None], bool]:
    """A predicate for `wait_ps`: the model is loaded and these `corral` fields have these
    values (active=1, queued=1, replicas=2, ...)."""
    return lambda e: e is not None and all(e["corral"][k] == v for k, v in expect.items())


def test_queue_overflow_is_503(one_model_server: LiveServer) -> None:
    server = one_model_server
    assert generate(server, MODEL, 1).status_code == 200  # loaded: 1 slot, queue of 1
    with concurrent.futures.ThreadPoolExecutor(1) as pool, hold(server, MODEL) as running:
        assert running.status_code == 200
        server.wait_ps(MODEL, corral_ps(active=1, queued=0))
        queued = pool.submit(generate, server, MODEL, 2)
        server.wait_ps(MODEL, corral_ps(active=1, queued=1))  # the queue is full
        rejected = generate(server, MODEL, 2)
        assert rejected.status_code == 503
        assert "maximum pending requests exceeded" in rejected.json()["error"]
        # The OpenAI endpoint answers the same in OpenAI's error shape (the SDKs raise
        # InternalServerError for it and retry).
        busy = httpx.post(server.url + "/v1/chat/completions", timeout=30, json={
            "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
        assert busy.status_code == 503
        assert busy.json()["error"]["type"] == "api_error"
        assert "maximum pending requests" in busy.json()["error"]["message"]
        assert not queued.done()  # still waiting for the slot
        running.close()  # leaving the stream frees the slot for the queued request
        assert queued.result().status_code == 200


def test_ps_shows_placement(corral_server: LiveServer) -> None:
    assert generate(corral_server, MODEL, 1).status_code == 200
    [entry] = [m for m in httpx.get(corral_server.url + "/api/ps").json()["models"]
               if m["name"] == MODEL]
    extra = entry["corral"]
    assert extra["parallel"] >= 1
    estimate, measured = extra["estimate"], extra["measured"]
    if not corral_server.real_gpus():  # a CPU machine: nothing planned on or measured in VRAM
        assert extra["gpus"] == [] and extra["gpu_layers"] == 0 and entry["size_vram"] == 0
        assert [r["device"] for r in extra["runners"]] == ["cpu"]
        # The estimate of what a CPU runner holds, against what it holds
        # (runner/supervisor/estimate.py; tests/test_estimate.py holds it within 15% over several
        # settings). The prompt cache beyond the slots is bounded and reported on its own.
        held = measured["rss"] - extra["prompt_cache"]["bytes"]
        assert estimate["host_total"] == entry["size"]
        assert abs(held - entry["size"]) < 0.25 * held, (measured, entry)
    else:
        assert estimate["total"] == entry["size"]
    assert measured["rss"] > 100 * 1024**2  # the loaded runner, really measured
    assert measured["weights"] == estimate["weights"]
    # llama.cpp's own buffers, as it logged them at load.
    assert measured["buffers"]["kv"] > 0 and measured["buffers"]["compute"] > 0


def test_simulated_gpus_plan_and_run_on_cpu(models_dir: Path, tmp_path: Path) -> None:
    gpus = tmp_path / "gpus.json"
    gpus.write_text(json.dumps({"gpus": [{"name": "sim-24", "total": "24GiB"},
                                         {"name": "sim-12", "total": "12GiB"}]}))
    server = start_server(models_dir, tmp_path / "serve.log", CORRAL_GPUS=str(gpus))
    try:
        assert generate(server, MODEL, 2).status_code == 200
        [entry] = httpx.get(server.url + "/api/ps").json()["models"]
        assert entry["size_vram"] == 0  # simulated GPUs: it really runs on the CPU
        assert entry["corral"]["gpus"] == [0] and "simulated" in entry["corral"]["planned"]
    finally:
        server.stop()
    assert "SIMULATED GPU INVENTORY" in (tmp_path / "serve.log").read_text()


def test_hot_model_gets_a_replica_on_another_gpu(models_dir: Path, tmp_path: Path) -> None:
    """Two simulated GPUs, one slot per runner: a queue that stays long starts a second runner
    of the model (both really on this CPU, sharing its cores), and requests spread over both."""
    gpus = tmp_path / "gpus.json"
    gpus.write_text(json.dumps({"gpus": [{"name": "sim-a", "total": "24GiB"},
                                         {"name": "sim-b", "total": "24GiB"}]}))
    server = start_server(models_dir, tmp_path / "serve.log", CORRAL_GPUS=str(gpus),
                          OLLAMA_NUM_PARALLEL="1", CORRAL_MAX_REPLICAS="2")

    def ps_entry() -> dict:
        [entry] = httpx.get(server.url + "/api/ps").json()["models"]
        return entry

    try:
        assert generate(server, MODEL, 1).status_code == 200
        assert ps_entry()["corral"]["replicas"] == 1
        # One request in the slot and one queued behind it: the queue stays long (as many
        # waiting as slots) until the replica is there, however fast this machine decodes.
        with concurrent.futures.ThreadPoolExecutor(1) as pool, hold(server, MODEL) as first:
            assert first.status_code == 200
            server.wait_ps(MODEL, corral_ps(active=1))
            second = pool.submit(generate, server, MODEL, 4)
            server.wait_ps(MODEL, corral_ps(active=1, queued=1))
            entry = server.wait_ps(MODEL, corral_ps(replicas=2))
            first.close()  # the queued request gets the slot
            assert second.result().status_code == 200
        assert entry is not None
        extra = entry["corral"]
        assert extra["replicas"] == 2 and extra["gpus"] == [0, 1]
        pids = [r["pid"] for r in extra["runners"]]
        assert len(set(pids)) == 2 and sorted(pids) == sorted(server.runner_pids())
        assert [r["gpus"] for r in extra["runners"]] == [[0], [1]]
        # CPU runners divide the cores between the busy ones (tests/test_placement.py has the
        # rule); here both were busy at some point, with at most all cores each.
        assert all(1 <= r["threads"] <= cpu_cores() for r in extra["runners"])
        assert entry["size"] == 2 * extra["estimate"]["total"] and entry["size_vram"] == 0

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            wave = [pool.submit(generate, server, MODEL, 4) for _ in range(4)]
            assert all(f.result().status_code == 200 for f in wave)
        assert sorted(server.runner_pids()) == sorted(pids)  # spread, not reloaded

        # Unloading the model stops every replica.
        done = httpx.post(server.url + "/api/generate", timeout=60,
                          json={"model": MODEL, "keep_alive": 0}).json()
        assert done["done_reason"] == "unload"
        assert httpx.get(server.url + "/api/ps").json()["models"] == []
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                       for pid in pids)
    finally:
        server.stop()
    assert "starting replica 2" in (tmp_path / "serve.log").read_text()


def test_plan_command(models_dir: Path, tmp_path: Path) -> None:
    # Alone (no server has imported the bundled model into the session's store yet) as well as
    # after the others.
    from registry.bundled import import_bundled_model
    from registry.store import Store

    import_bundled_model(Store(models_dir))
    gpus = tmp_path / "gpus.json"
    gpus.write_text(json.dumps({"gpus": [{"name": "sim", "total": "8GiB"}]}))
    env = {"OLLAMA_MODELS": str(models_dir), "OLLAMA_HOST": "127.0.0.1:9",
           "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "plan", MODEL, "--gpus",
                           str(gpus), "--ctx", "8192", "--json"], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["placement"]["gpus"] == [0] and plan["placement"]["gpu_layers"] == 18
    # A simulated GPU: up to CORRAL_MAX_PARALLEL slots while they take at most half of it.
    assert plan["parallel"] == 16 and plan["estimate"]["kv"] > 0 and plan["evict"] == []
    assert plan["measured"] is None  # no server answers on OLLAMA_HOST
    table = subprocess.run([sys.executable, "-m", "gateway.cli", "plan", MODEL, "--gpus",
                            str(gpus)], capture_output=True, text=True, cwd=ROOT, env=env,
                           timeout=60)
    assert table.returncode == 0 and "GPU 0" in table.stdout


def test_plan_shows_what_the_loaded_model_measures(corral_server: LiveServer) -> None:
    """`corral plan` beside a server that has the model loaded: the estimate and what the
    runner holds, side by side."""
    assert generate(corral_server, MODEL, 1).status_code == 200
    env = {"OLLAMA_MODELS": str(corral_server.models), "OLLAMA_HOST": corral_server.host,
           "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    # Room for one model only: the plan must still never "first unload" the very model it
    # plans (issue 24: it did, counting the model's own runner as another resident).
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "plan", MODEL, "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**env, "OLLAMA_MAX_LOADED_MODELS": "1"})
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert MODEL not in plan["evict"]  # never "unload itself first" (other models may go)
    one = subprocess.run([sys.executable, "-m", "gateway.cli", "plan", MODEL], cwd=ROOT,
                         capture_output=True, text=True, timeout=60,
                         env={**env, "OLLAMA_MAX_LOADED_MODELS": "1"})
    unloads = [line for line in one.stdout.splitlines() if line.startswith("would first unload")]
    assert one.returncode == 0 and all(MODEL not in line for line in unloads), one.stdout
    measured = plan["measured"]
    assert measured is not None and measured["rss"] > 100 * 1024**2
    assert measured["buffers"]["kv"] > 0 and measured["parallel"] >= 1
    table = subprocess.run([sys.executable, "-m", "gateway.cli", "plan", MODEL],
                           capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert table.returncode == 0
    assert "runner RSS (measured" in table.stdout and "kv (measured" in table.stdout


def gpu_memory_used() -> int:
    """Bytes in use on every GPU, as the driver reports them (NVML)."""
    import pynvml

    pynvml.nvmlInit()
    try:
        return sum(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).used
                   for i in range(pynvml.nvmlDeviceGetCount()))
    finally:
        pynvml.nvmlShutdown()


@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="needs an NVIDIA GPU")
def test_layers_on_a_real_gpu(corral_server: LiveServer) -> None:
    """Runs only where an NVIDIA GPU is present and llama-cpp-python was built with CUDA.

    `size_vram` comes from the plan; what is checked is where the runner really put the model:
    its own report of the device, and the GPU memory it holds."""
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        pytest.skip("llama-cpp-python was built without GPU support (see README)")
    assert corral_server.real_gpus() > 0
    unloaded = httpx.post(corral_server.url + "/api/generate", timeout=60,
                          json={"model": MODEL, "keep_alive": 0})
    assert unloaded.json()["done_reason"] == "unload"
    before = gpu_memory_used()
    assert generate(corral_server, MODEL, 2).status_code == 200
    grown = gpu_memory_used() - before
    entry = corral_server.ps(MODEL)
    assert entry is not None and entry["size_vram"] > 0
    extra = entry["corral"]
    assert extra["gpus"] and extra["gpu_layers"] == extra["total_layers"]
    assert all(r["device"].startswith("gpu:") for r in extra["runners"]), extra["runners"]
    # Measured by NVML: the runner's own memory (0 where the container hides its PID from
    # NVML), or else what the GPUs gained while it loaded (weights, KV cache, CUDA context).
    measured = extra["measured"]["vram"] or 0
    assert measured > 0 or grown > 64 * 1024**2, (measured, grown)


def test_smaller_num_ctx_reuses_the_loaded_runner(corral_server: LiveServer) -> None:
    """Independent of what earlier tests left loaded: it unloads the model first, and follows
    this model's runner (not every runner of the server) through /api/ps."""
    def ask(num_ctx: int) -> tuple[int, int]:
        reply = httpx.post(corral_server.url + "/api/generate", timeout=120, json={
            "model": MODEL, "prompt": "Hi", "stream": False,
            "options": {"num_predict": 1, "num_ctx": num_ctx}})
        assert reply.status_code == 200, reply.text
        entry = corral_server.ps(MODEL)
        assert entry is not None
        return entry["corral"]["pid"], entry["context_length"]

    unloaded = httpx.post(corral_server.url + "/api/generate", timeout=60,
                          json={"model": MODEL, "keep_alive": 0})
    assert unloaded.json()["done_reason"] == "unload" and corral_server.ps(MODEL) is None
    pid, ctx = ask(4096)
    assert ctx == 4096
    assert ask(1024) == (pid, 4096)  # fits in the loaded 4096: no reload
    bigger, ctx = ask(8192)  # needs more: reloaded
    assert bigger != pid and ctx == 8192
