"""deploy/: every artifact checked by the tool its users' systems run, offline.

systemd-analyze (security rating and verify), deploy/install.sh in a scratch root, the Dockerfiles
through a Dockerfile parser (no image can be built here) and their health check run against a live
server, docker-compose 1.29 `config`, promtool, the Grafana dashboard's queries through promtool,
the Kubernetes manifests through kubernetes-validate and the CRD schemas in deploy/kubernetes/
schemas, and the GPU-memory fallback for runners whose PIDs NVML cannot see (containers).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from runner.process import devicemem
from runner.supervisor.inventory import runner_gpu_memory
from shared import protocol as p
from tests.conftest import ROOT, LiveServer, free_port
from tests.test_placement import FakeNVML

DEPLOY = ROOT / "deploy"
GiB = 1024**3
MiB = 1024**2
CORRAL = Path(sys.executable).parent / "corral"  # this venv's corral, for `verify` and install

# The series /metrics serves (the teams issue names them); the dashboard may use only these.
SERIES = {
    "corral_requests_waiting", "corral_requests_running", "corral_kv_cache_usage_ratio",
    "corral_requests_total", "corral_prompt_tokens_total", "corral_generation_tokens_total",
    "corral_cached_prompt_tokens_total", "corral_time_to_first_token_seconds",
    "corral_inter_token_latency_seconds", "corral_request_duration_seconds",
    "corral_queue_wait_seconds", "corral_loaded_runners", "corral_runner_restarts_total",
    "corral_runner_resident_bytes", "corral_gpu_memory_used_bytes",
    "corral_gpu_memory_total_bytes",
}
HISTOGRAMS = {"corral_time_to_first_token_seconds", "corral_inter_token_latency_seconds",
              "corral_request_duration_seconds", "corral_queue_wait_seconds"}


def tool(name: str) -> str:
    """A Debian tool `make test` installs; missing means the set-up did not run."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `make test` installs it (see Makefile TEST_TOOLS)")
    return path


def run(*args: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120,
                          **kwargs)


# --- systemd -----------------------------------------------------------------------------------

def unit_settings(text: str) -> dict[str, list[str]]:
    """`Key=value` lines of a unit file as Key -> values (systemd allows repeated keys)."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def exposure(unit: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    result = run(tool("systemd-analyze"), "security", "--offline=true", "--threshold=30", unit)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1)), result


def test_unit_is_rated_ok_by_systemd_analyze_security() -> None:
    score, result = exposure(DEPLOY / "corral.service")
    assert score <= 3.0 and result.returncode == 0, result.stdout
    assert "OK" in result.stdout.splitlines()[-1]


def test_the_threshold_catches_a_unit_without_hardening(tmp_path: Path) -> None:
    """The same check fails for the hardening-free unit this replaced (9.2 UNSAFE)."""
    bare = tmp_path / "corral.service"
    lines = (DEPLOY / "corral.service").read_text().split("# --- hardening")[0]
    bare.write_text(lines + "\n[Install]\nWantedBy=multi-user.target\n")
    score, result = exposure(bare)
    assert score > 3.0 and result.returncode != 0


def test_unit_settings_keep_gpus_network_and_psutil_working() -> None:
    unit = unit_settings((DEPLOY / "corral.service").read_text())
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert int(unit["WatchdogSec"][0]) > 0
    assert unit["User"] == ["corral"] and unit["StateDirectory"] == ["corral"]
    assert "-/etc/corral/corral.env" in unit["EnvironmentFile"]
    assert "OLLAMA_MODELS=/var/lib/corral/models" in unit["Environment"]
    # NVIDIA devices stay reachable: no private /dev, and the driver's nodes on the allow-list.
    assert unit.get("PrivateDevices", ["no"]) == ["no"]
    allowed = {v.split()[0]: v.split()[1] for v in unit["DeviceAllow"]}
    assert allowed["char-nvidia-frontend"] == "rw" and allowed["char-nvidia-uvm"] == "rw"
    # The network stays reachable; psutil still reads /proc/meminfo.
    families = unit["RestrictAddressFamilies"][0].split()
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= set(families)
    assert "PrivateNetwork" not in unit and "IPAddressDeny" not in unit
    assert "ProcSubset" not in unit


@pytest.fixture
def scratch_root(tmp_path: Path) -> Path:
    """An empty root with this machine's account files, for install.sh --root."""
    if os.geteuid() != 0:
        pytest.skip("install.sh creates a system user: needs root (CI runs as root)")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        shutil.copy2(Path("/etc") / name, root / "etc" / name)
    return root


def install(root: Path) -> subprocess.CompletedProcess[str]:
    return run("sh", DEPLOY / "install.sh", "--corral", CORRAL, "--root", root)


def test_install_sh_is_idempotent_and_its_unit_verifies(scratch_root: Path) -> None:
    first = install(scratch_root)
    assert first.returncode == 0, first.stderr
    assert "created user corral" in first.stdout
    env_file = scratch_root / "etc/corral/corral.env"
    env_file.write_text(env_file.read_text() + "OLLAMA_HOST=0.0.0.0:11434\n")  # an admin's edit

    second = install(scratch_root)
    assert second.returncode == 0, second.stderr
    assert "created" not in second.stdout and "kept /etc/corral/corral.env" in second.stdout
    passwd = (scratch_root / "etc/passwd").read_text().splitlines()
    [user] = [line.split(":") for line in passwd if line.startswith("corral:")]
    assert user[5] == "/var/lib/corral" and user[6] == "/usr/sbin/nologin"
    assert int(user[2]) < 1000  # a system user
    assert env_file.read_text().endswith("OLLAMA_HOST=0.0.0.0:11434\n")  # the edit survived
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o640
    for folder in ("var/lib/corral", "var/lib/corral/models"):
        info = (scratch_root / folder).stat()
        assert info.st_uid == int(user[2]) and stat.S_IMODE(info.st_mode) == 0o750
    # What to do next, including the first API key in the service's own keys file.
    assert "sudo systemctl enable --now corral" in second.stdout
    assert f"{CORRAL} keys create admin --admin --keys-file /var/lib/corral/keys.json" \
        in second.stdout

    unit = scratch_root / "etc/systemd/system/corral.service"
    assert unit_settings(unit.read_text())["ExecStart"] == [f"{CORRAL} serve"]
    verify = run(tool("systemd-analyze"), "verify", unit)
    assert verify.returncode == 0, verify.stderr
    assert exposure(unit)[0] <= 3.0


def test_verify_fails_when_corral_is_missing(tmp_path: Path) -> None:
    """`verify` really checks ExecStart: the unit as shipped points at /opt/corral, absent here."""
    unit = tmp_path / "corral.service"
    text = (DEPLOY / "corral.service").read_text()
    unit.write_text(text.replace("/opt/corral/.venv/bin/corral", str(tmp_path / "nope")))
    assert run(tool("systemd-analyze"), "verify", unit).returncode != 0


# --- containers --------------------------------------------------------------------------------

def stages(path: Path) -> list[list[dict[str, Any]]]:
    """The Dockerfile's instructions (dockerfile-parse), split into build stages."""
    with path.open("rb") as dockerfile:  # a fileobj: path= takes only files named Dockerfile
        structure = DockerfileParser(fileobj=dockerfile).structure
    result: list[list[dict[str, Any]]] = []
    for instruction in structure:
        if instruction["instruction"] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def values(stage: list[dict[str, Any]], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


def env_of(stage: list[dict[str, Any]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in values(stage, "ENV"):
        for key, val in re.findall(r'(\w+)=("[^"]*"|\S+)', value):
            env[key] = val.strip('"')
    return env


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_runtime_stage(name: str) -> None:
    *builds, final = stages(DEPLOY / name)
    assert builds, "a build stage compiles llama.cpp; the runtime stage only copies the venv"
    run_text = " ".join(values(final, "RUN"))
    uid = re.search(r"useradd [^&]*--uid (\d+)[^&]* corral", run_text)
    assert uid, "the runtime stage creates the corral user"
    assert values(final, "USER") == [f"{uid.group(1)}:{uid.group(1)}"]  # non-root, by number
    env = env_of(final)
    assert env["OLLAMA_HOST"] == "0.0.0.0:11434"
    assert env["OLLAMA_MODELS"] == "/var/lib/corral/models"
    assert values(final, "VOLUME") == ["/var/lib/corral"]
    assert values(final, "EXPOSE") == ["11434"]
    assert json.loads(values(final, "ENTRYPOINT")[0]) == ["corral"]
    assert json.loads(values(final, "CMD")[0]) == ["serve"]
    [health] = values(final, "HEALTHCHECK")
    assert "--interval=30s" in health and "--timeout=10s" in health and "--retries=3" in health
    # Every file the build copies from the context exists, and .dockerignore keeps it.
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    named_stages = [s[0]["value"].split()[-1] for s in builds]
    for stage in builds + [final]:
        for copy in values(stage, "COPY"):
            parts = copy.split()
            if parts[0].startswith("--from="):
                assert parts[0].removeprefix("--from=") in named_stages
                continue
            for source in parts[:-1]:
                assert (ROOT / source).exists(), source
                assert source not in ignored


def test_cuda_dockerfile_builds_on_devel_and_runs_on_runtime_image() -> None:
    build, final = stages(DEPLOY / "Dockerfile.cuda")
    assert re.fullmatch(r"nvidia/cuda:\$\{CUDA_VERSION\}-devel-\$\{UBUNTU\} AS build",
                        build[0]["value"])
    assert final[0]["value"] == "nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU}"
    cmake = env_of(build)["CMAKE_ARGS"]
    assert "-DGGML_CUDA=on" in cmake and "-DGGML_NATIVE=OFF" in cmake
    assert "utility" in env_of(final)["NVIDIA_DRIVER_CAPABILITIES"]  # NVML


def healthcheck_command(name: str) -> list[str]:
    [health] = values(stages(DEPLOY / name)[-1], "HEALTHCHECK")
    command = json.loads(health.split(" CMD ", 1)[1])
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


@pytest.mark.e2e
def test_image_healthcheck_passes_on_a_live_server_and_fails_without_one(
        corral_server: LiveServer) -> None:
    """The HEALTHCHECK command, run as the image runs it (OLLAMA_HOST names the port)."""
    for name in ("Dockerfile", "Dockerfile.cuda"):
        command = healthcheck_command(name)
        up = run(*command, env={**os.environ, "OLLAMA_HOST": corral_server.host})
        assert up.returncode == 0, up.stderr
        down = run(*command, env={**os.environ, "OLLAMA_HOST": f"127.0.0.1:{free_port()}"})
        assert down.returncode != 0


def compose_config(compose: Path, **env: str) -> dict[str, Any]:
    result = run(tool("docker-compose"), "-f", compose, "--profile", "grafana", "config",
                 cwd=compose.parent, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_file_is_valid_for_docker_compose_1_29() -> None:
    config = compose_config(DEPLOY / "compose.yaml")
    corral = config["services"]["corral"]
    assert corral["ports"] == [{"published": 11434, "target": 11434}]
    assert corral["environment"] == {"OLLAMA_TELEMETRY": "false", "OLLAMA_KEEP_ALIVE": "5m",
                                     "OLLAMA_NUM_PARALLEL": "4"}
    assert corral["volumes"] == ["corral:/var/lib/corral:rw"] and "corral" in config["volumes"]
    assert corral["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert corral["restart"] == "unless-stopped"
    health = corral["healthcheck"]
    assert (health["interval"], health["timeout"], health["retries"]) == ("30s", "10s", 3)
    assert "http://127.0.0.1:11434/'" in health["test"][-1]  # `/`: open with keys on
    assert corral["build"]["dockerfile"] == "deploy/Dockerfile.cuda"
    # Prometheus gets the config file and, as a secret, the key its scrape sends.
    prometheus = config["services"]["prometheus"]
    assert any(v.endswith(":/etc/prometheus/prometheus.yml:ro") for v in prometheus["volumes"])
    [secret] = prometheus["secrets"]
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["authorization"]["credentials_file"] == f"/run/secrets/{secret['source']}"
    grafana = config["services"]["grafana"]
    assert grafana["profiles"] == ["grafana"]
    assert any(v.endswith("/var/lib/grafana/dashboards/corral.json:ro")
               for v in grafana["volumes"])


def test_compose_takes_port_and_settings_from_the_environment() -> None:
    config = compose_config(DEPLOY / "compose.yaml", OLLAMA_PORT="12345",
                            OLLAMA_KEEP_ALIVE="1h", OLLAMA_NUM_PARALLEL="8")
    corral = config["services"]["corral"]
    assert corral["ports"] == [{"published": 12345, "target": 11434}]
    assert corral["environment"]["OLLAMA_KEEP_ALIVE"] == "1h"
    assert corral["environment"]["OLLAMA_NUM_PARALLEL"] == "8"


def test_docker_compose_1_29_rejects_what_it_does_not_know(tmp_path: Path) -> None:
    """The check has teeth: a top-level `name:` (newer Compose) fails under 1.29."""
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    compose = tmp_path / "deploy" / "compose.yaml"
    compose.write_text("name: corral\n" + compose.read_text())
    assert run(tool("docker-compose"), "-f", compose, "config").returncode != 0


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    ok = run(tool("promtool"), "check", "config", "--syntax-only", DEPLOY / "prometheus.yml")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    [scrape] = config["scrape_configs"]
    assert scrape["metrics_path"] == "/metrics" and scrape["authorization"]["type"] == "Bearer"
    assert scrape["static_configs"][0]["targets"] == ["corral:11434"]
    broken = tmp_path / "prometheus.yml"
    broken.write_text((DEPLOY / "prometheus.yml").read_text().replace("scrape_interval",
                                                                      "scrape_intervall"))
    assert run(tool("promtool"), "check", "config", "--syntax-only", broken).returncode != 0


def dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "corral.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def test_dashboard_queries_parse_and_use_only_corral_series(tmp_path: Path) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "corral.json").read_text())
    assert dashboard["uid"] == "corral"
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("tokens/s", "time to first token", "inter-token", "queue", "kv-cache",
                  "gpu memory", "by key"):
        assert topic in titles, topic
    queries = dashboard_queries()
    for query in queries:
        for name in re.findall(r"\bcorral_\w+", query):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in SERIES, name
            assert name == base or base in HISTOGRAMS, name
    assert any("histogram_quantile(0.99" in q and "time_to_first_token" in q for q in queries)
    # PromQL syntax, by Prometheus itself: every query as a recording rule for `promtool check
    # rules`, with Grafana's variables replaced by what Grafana sends.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}",
         "expr": q.replace("$__rate_interval", "5m").replace("$model", ".*")}
        for i, q in enumerate(queries)]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run(tool("promtool"), "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "bad:query", "expr": "sum(rate(corral_requests_total[5m])"}]}]}))
    assert run(tool("promtool"), "check", "rules", path).returncode != 0


# --- GPU memory of runners whose PIDs NVML cannot see (containers) -----------------------------

CUDA_LOAD_LOG = """\
load_tensors: offloaded 19/19 layers to GPU
load_tensors:        CUDA0 model buffer size =   235.00 MiB
load_tensors:   CPU_Mapped model buffer size =    80.00 MiB
llama_context:  CUDA_Host  output buffer size =     4.00 MiB
llama_kv_cache:      CUDA0 KV buffer size =   144.00 MiB
llama_kv_cache:      CUDA1 KV buffer size =    72.50 MiB
llama_context:      CUDA0 compute buffer size =   513.25 MiB
llama_context:  CUDA_Host compute buffer size =    10.00 MiB
"""


def test_buffer_log_adds_up_what_llama_cpp_allocated_per_gpu() -> None:
    log = devicemem.BufferLog()
    # llama.cpp's callback may deliver a line in pieces.
    for i in range(0, len(CUDA_LOAD_LOG), 7):
        log.feed(CUDA_LOAD_LOG[i:i + 7])
    assert log.device_bytes() == {"CUDA0": int((235 + 144 + 513.25) * MiB),
                                  "CUDA1": int(72.5 * MiB)}
    assert log.by_buffer["CPU_Mapped"] == 80 * MiB  # host memory: not on a GPU
    assert devicemem.device_of("CUDA_Host") is None and devicemem.device_of("AMX") is None
    assert devicemem.device_of("ROCm0") == "ROCm0"
    ready = p.Ready(pid=1, n_ctx=4096, n_ctx_train=32768, parallel=4, model_bytes=1,
                    kv_bytes=1, device="gpu:0,1", device_bytes=log.device_bytes())
    assert p.decode(p.encode(ready)) == ready  # the report reaches the gateway intact


def test_capture_sees_real_llama_cpp_buffers_and_reports_none_on_the_cpu(
        models_dir: Path) -> None:
    """The hook on the real llama.cpp: the bundled model loaded on this CPU logs its weight, KV and
    compute buffers, all in system memory."""
    from registry.bundled import import_bundled_model
    from registry.store import Store
    from runner.process.engine import Engine

    store = Store(models_dir)
    import_bundled_model(store)
    model_path = store.get("gemma3:270m").model_path
    with devicemem.capture() as buffers:
        engine = Engine(p.Load(str(model_path), num_ctx=512, parallel=1))
    try:
        sizes = buffers.by_buffer
        # The weights (mapped, some repacked for the CPU's kernels) are what llama.cpp says the
        # model holds; KV cache and compute buffers come on top, all in system memory.
        weights = sizes.get("CPU_Mapped", 0) + sizes.get("CPU_REPACK", 0)
        assert 0.95 * engine.model_bytes <= weights <= 1.15 * engine.model_bytes, sizes
        assert sizes["CPU"] > engine.kv_bytes()
        assert buffers.device_bytes() == {}
        before = dict(buffers.by_buffer)
        engine.close()
        engine = Engine(p.Load(str(model_path), num_ctx=512, parallel=1))
        assert buffers.by_buffer == before  # the hook is gone after the load
    finally:
        engine.close()


HOST_PIDS = [(48213, 3 * GiB), (48377, 1 * GiB)]  # what NVML lists inside a container


def test_runner_gpu_memory_falls_back_to_the_runners_report_when_pids_do_not_match() -> None:
    reported = {12: int(2.5 * GiB), 13: int(0.8 * GiB), 14: 0}  # container PIDs, llama.cpp's sums
    container = FakeNVML([HOST_PIDS])
    assert runner_gpu_memory(reported, container) == reported
    # On bare metal NVML lists the runners themselves: its figure (CUDA context included) wins.
    bare = FakeNVML([[(12, 3 * GiB)], [(12, GiB), (13, 2**64 - 1)]])
    assert runner_gpu_memory(reported, bare) == {12: 4 * GiB, 13: int(0.8 * GiB), 14: 0}
    # Without NVML: the reports if any runner is on a GPU, else nothing is known.
    broken = FakeNVML([], broken=True)
    assert runner_gpu_memory(reported, broken) == reported
    assert runner_gpu_memory({12: 0}, FakeNVML([], broken=True)) is None


async def test_pool_reports_gpu_memory_of_runners_inside_a_container(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """/api/ps's `corral.measured.vram` comes from RunnerPool.measured_vram: with NVML listing
    only host PIDs (the container case), each runner reads what its llama.cpp allocated, not 0."""
    from runner.supervisor.pool import RunnerPool
    from shared.config import Settings

    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML([HOST_PIDS]))
    pool = RunnerPool(Settings.from_env({}))

    def runner(pid: int, device_bytes: dict[str, int]) -> SimpleNamespace:
        ready = p.Ready(pid=pid, n_ctx=4096, n_ctx_train=4096, parallel=4, model_bytes=1,
                        kv_bytes=1, device="gpu:0", device_bytes=device_bytes)
        return SimpleNamespace(runner=SimpleNamespace(pid=pid, ready=ready), ready=ready)

    pool.loaded = {"a": [runner(12, {"CUDA0": 2 * GiB, "CUDA1": GiB})],  # type: ignore[dict-item]
                   "b": [runner(13, {})]}
    try:
        assert await pool.measured_vram() == {12: 3 * GiB, 13: 0}
    finally:
        pool.loaded = {}
        await pool.close()


# --- Kubernetes --------------------------------------------------------------------------------

K8S = DEPLOY / "kubernetes"
CUSTOM_KINDS = {"InferencePool": "inferencepool-v1.json", "Gateway": "gateway-v1.json",
                "HTTPRoute": "httproute-v1.json"}
KUBERNETES_VERSION = "1.30"


def manifests() -> list[dict[str, Any]]:
    """The kustomization's resources as `kubectl kustomize` renders them where kubectl is
    installed, else the listed files themselves (the namespace applied as kustomize does)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    kubectl = shutil.which("kubectl")
    if kubectl:
        result = run(kubectl, "kustomize", K8S)
        assert result.returncode == 0, result.stderr
        return [d for d in yaml.safe_load_all(result.stdout) if d]
    docs = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc and doc["kind"] != "Namespace":
                doc["metadata"].setdefault("namespace", kustomization["namespace"])
            docs.append(doc)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_core_manifests_pass_kubernetes_validate() -> None:
    docs = manifests()
    core = [d for d in docs if d["kind"] not in CUSTOM_KINDS]
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount", "Role", "RoleBinding",
            "Namespace"} <= {d["kind"] for d in core}
    for doc in core:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    broken = json.loads(json.dumps(by_kind(docs, "Deployment")["corral"]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def crd_schema(kind: str) -> dict[str, Any]:
    schema = json.loads((K8S / "schemas" / CUSTOM_KINDS[kind]).read_text())
    assert "gateway-api" in schema["$comment"]  # where it was written from
    return schema


def test_custom_resources_match_the_crd_schemas() -> None:
    docs = manifests()
    custom = [d for d in docs if d["kind"] in CUSTOM_KINDS]
    assert sorted(d["kind"] for d in custom) == ["Gateway", "HTTPRoute", "InferencePool"]
    for doc in custom:
        jsonschema.validate(doc, crd_schema(doc["kind"]))
    # The schemas have teeth: the pre-v1 field name and a bad failure mode are refused.
    pool = json.loads(json.dumps(by_kind(docs, "InferencePool")["corral-pool"]))
    pool["spec"]["targetPortNumber"] = 11434
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(pool, crd_schema("InferencePool"))
    pool = json.loads(json.dumps(by_kind(docs, "InferencePool")["corral-pool"]))
    pool["spec"]["endpointPickerRef"]["failureMode"] = "Retry"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(pool, crd_schema("InferencePool"))


def test_manifests_refer_to_each_other() -> None:
    docs = manifests()
    deployments, services = by_kind(docs, "Deployment"), by_kind(docs, "Service")
    pool = by_kind(docs, "InferencePool")["corral-pool"]
    corral = deployments["corral"]["spec"]["template"]
    # The pool selects the corral pods on the port they serve.
    labels = corral["metadata"]["labels"]
    assert pool["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [container] = corral["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert pool["spec"]["targetPorts"] == [{"number": ports["http"]}]
    # The endpoint picker sends no API key: it scrapes the metrics listener, which serves only
    # /metrics and needs none (CORRAL_METRICS_LISTEN), on the port the pod declares.
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["CORRAL_METRICS_LISTEN"].endswith(f":{ports['metrics']}")
    assert ports["metrics"] != ports["http"]
    # Probes on `/` (open with API keys on); a GPU per pod; models pulled by an init container.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    [init] = corral["spec"]["initContainers"]
    assert "corral pull" in init["args"][0]
    # The endpoint picker: its Service is the one the pool names, and it reads corral's series.
    ref = pool["spec"]["endpointPickerRef"]
    epp_service = services[ref["name"]]
    assert ref["port"]["number"] in [p["port"] for p in epp_service["spec"]["ports"]]
    epp = deployments["corral-epp"]["spec"]["template"]
    assert epp_service["spec"]["selector"].items() <= epp["metadata"]["labels"].items()
    args = dict(a.removeprefix("--").split("=", 1) for a in epp["spec"]["containers"][0]["args"])
    assert args["pool-name"] == pool["metadata"]["name"]
    assert int(args["model-server-metrics-port"]) == ports["metrics"]
    assert args["total-queued-requests-metric"] == "corral_requests_waiting"
    assert args["total-running-requests-metric"] == "corral_requests_running"
    assert args["kv-cache-usage-percentage-metric"] == "corral_kv_cache_usage_ratio"
    assert args["lora-info-metric"] == "" and args["cache-info-metric"] == ""
    # Its service account may watch pools and pods.
    account = epp["spec"]["serviceAccountName"]
    [binding] = [b for b in by_kind(docs, "RoleBinding").values()
                 if b["subjects"][0]["name"] == account]
    rules = by_kind(docs, "Role")[binding["roleRef"]["name"]]["rules"]
    granted = {(g, r) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert {("inference.networking.k8s.io", "inferencepools"), ("", "pods")} <= granted
    # The route sends everything on the Gateway to the pool.
    route = by_kind(docs, "HTTPRoute")["corral-route"]["spec"]
    assert route["parentRefs"][0]["name"] in by_kind(docs, "Gateway")
    [backend] = route["rules"][0]["backendRefs"]
    assert (backend["group"], backend["kind"], backend["name"]) == (
        "inference.networking.k8s.io", "InferencePool", "corral-pool")


# --- README ------------------------------------------------------------------------------------

def test_readme_deploy_section_names_every_deploy_file() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Deploy\n", 1)[1].split("\n## ", 1)[0]
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.parent.name not in ("schemas", "secrets", "dashboards",
                                                       "datasources"):
            assert str(path.relative_to(ROOT)) in section, path
