"""GET /metrics, the access log and CORRAL_MAX_BODY on a live server without keys.

The scrape is parsed with prometheus-client's own parser. One slot, so that a burst of three
requests makes two of them wait.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LiveServer, start_server

pytestmark = pytest.mark.e2e

MODEL = "gemma3:270m"
MAX_BODY = 64 * 1024

SERIES = [
    "corral_requests_waiting", "corral_requests_running", "corral_kv_cache_usage_ratio",
    "corral_requests_total", "corral_prompt_tokens_total", "corral_generation_tokens_total",
    "corral_cached_prompt_tokens_total", "corral_time_to_first_token_seconds_count",
    "corral_inter_token_latency_seconds_count", "corral_request_duration_seconds_count",
    "corral_queue_wait_seconds_count", "corral_loaded_runners", "corral_runner_resident_bytes",
]
# Families with no sample on this machine (no restarts, no GPUs) still have their TYPE line.
FAMILIES = ["corral_runner_restarts", "corral_gpu_memory_used_bytes",
            "corral_gpu_memory_total_bytes"]


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("metrics")
    live = start_server(models_dir, folder / "serve.log", OLLAMA_NUM_PARALLEL="1",
                        OLLAMA_KEEP_ALIVE="10m", CORRAL_ACCESS_LOG=str(folder / "access.log"),
                        CORRAL_MAX_BODY=str(MAX_BODY))
    try:
        yield live
    finally:
        live.stop()


def scrape(server: LiveServer) -> tuple[set[str], dict[tuple[str, frozenset], float]]:
    """(family names, {(sample name, labels): value})."""
    reply = httpx.get(server.url + "/metrics", timeout=30)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    families, samples = set(), {}
    for family in text_string_to_metric_families(reply.text):
        families.add(family.name)
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return families, samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_scrape_has_every_series_and_moves_with_requests(server: LiveServer) -> None:
    client = ollama.Client(host=server.url)
    client.generate(MODEL, "The capital of France is", options={"num_predict": 8})
    families, before = scrape(server)
    names = {name for name, _ in before}
    assert [s for s in SERIES if s not in names] == []
    assert [f for f in FAMILIES if f not in families] == []
    for gauge in ("corral_requests_waiting", "corral_requests_running",
                  "corral_kv_cache_usage_ratio"):  # per model and over all models
        assert (gauge, frozenset()) in before
        assert (gauge, frozenset({("model", MODEL)})) in before
    assert value(before, "corral_loaded_runners", model=MODEL) == 1
    assert value(before, "corral_runner_resident_bytes", model=MODEL) > 10_000_000

    ok = {"route": "/api/generate", "model": MODEL, "status": "200", "key": "anonymous"}
    reply = client.generate(MODEL, "Monday, Tuesday,", options={"num_predict": 6})
    _, after = scrape(server)
    assert value(after, "corral_requests_total", **ok) == value(before, "corral_requests_total",
                                                                **ok) + 1
    for name, count in (("corral_prompt_tokens_total", reply.prompt_eval_count),
                        ("corral_generation_tokens_total", reply.eval_count)):
        assert value(after, name, model=MODEL, key="anonymous") == value(
            before, name, model=MODEL, key="anonymous") + count
    ttft = "corral_time_to_first_token_seconds_count"
    assert value(after, ttft, model=MODEL) == value(before, ttft, model=MODEL) + 1
    gaps = "corral_inter_token_latency_seconds_count"
    assert value(after, gaps, model=MODEL) > value(before, gaps, model=MODEL)
    duration = "corral_request_duration_seconds_count"
    assert value(after, duration, route="/api/generate", model=MODEL) == value(
        before, duration, route="/api/generate", model=MODEL) + 1
    assert value(after, "corral_requests_total", route="/metrics", model="", status="200",
                 key="anonymous") >= 1


def test_a_burst_beyond_the_slots_shows_waiting_requests(server: LiveServer) -> None:
    _, before = scrape(server)
    peak = {"waiting": 0.0, "running": 0.0, "kv": 0.0}
    replies: list[int] = []
    prompts: list[int] = []

    def stream() -> None:
        with httpx.stream("POST", server.url + "/api/generate", timeout=180, json={
                "model": MODEL, "prompt": "Write a long story about a fox.",
                "options": {"num_predict": 24}}) as reply:
            for line in reply.iter_lines():
                if line and (chunk := json.loads(line)).get("done"):
                    prompts.append(chunk["prompt_eval_count"])
            replies.append(reply.status_code)

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        _, now = scrape(server)
        peak["waiting"] = max(peak["waiting"], value(now, "corral_requests_waiting"))
        peak["running"] = max(peak["running"], value(now, "corral_requests_running", model=MODEL))
        peak["kv"] = max(peak["kv"], value(now, "corral_kv_cache_usage_ratio", model=MODEL))
        if peak["waiting"] >= 1 and peak["kv"] > 0:
            break
        time.sleep(0.1)
    for thread in threads:
        thread.join(180)
    assert replies == [200, 200, 200]
    assert peak["waiting"] >= 1 and peak["running"] == 1
    # The one running request holds at most its prompt and 24 new tokens of all the positions
    # of the runner's slots (a ratio that says "full" whenever anything runs must fail here).
    entry = server.ps(MODEL)
    assert entry is not None
    positions = entry["context_length"] * entry["corral"]["parallel"]
    assert 0 < peak["kv"] <= (max(prompts) + 25) / positions, (peak, prompts, positions)
    _, after = scrape(server)
    assert value(after, "corral_requests_waiting") == 0
    waits = "corral_queue_wait_seconds"
    assert value(after, waits + "_count", model=MODEL) == value(
        before, waits + "_count", model=MODEL) + 3
    assert value(after, waits + "_sum", model=MODEL) > value(before, waits + "_sum", model=MODEL)


def test_a_request_waiting_for_its_model_to_load_is_waiting(server: LiveServer) -> None:
    """Before its runner exists a request waits for the load: corral_requests_waiting counts it
    (issue 24: only requests queued at a loaded runner were counted)."""
    client = ollama.Client(host=server.url)
    client.generate(MODEL, "", keep_alive=0)  # unloads
    deadline = time.monotonic() + 60
    while server.ps(MODEL) is not None:
        assert time.monotonic() < deadline, "the model did not unload"
        time.sleep(0.1)
    seen: list[tuple[float, float]] = []  # (waiting, running) of the model at each scrape
    done: list[int] = []
    thread = threading.Thread(target=lambda: done.append(client.generate(
        MODEL, "Hi", options={"num_predict": 2}).eval_count))
    thread.start()
    while thread.is_alive():
        _, now = scrape(server)
        seen.append((value(now, "corral_requests_waiting", model=MODEL),
                     value(now, "corral_requests_running", model=MODEL)))
        if seen[-1][0] >= 1:
            break
    thread.join(180)
    assert done == [2]
    assert (1.0, 0.0) in seen, seen  # waiting, nothing running yet: the load
    _, after = scrape(server)
    assert value(after, "corral_requests_waiting", model=MODEL) == 0
    assert value(after, "corral_requests_waiting") == 0


def test_access_log_has_one_json_line_per_request_and_no_text(server: LiveServer) -> None:
    secret_prompt = "Zanzibar-marmalade-" + os.urandom(4).hex()
    reply = ollama.Client(host=server.url).generate(MODEL, secret_prompt,
                                                    options={"num_predict": 5})
    log = Path(server.env["CORRAL_ACCESS_LOG"])
    deadline = time.monotonic() + 5
    while True:
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        mine = [e for e in entries if e["path"] == "/api/generate"
                and e["prompt_tokens"] == reply.prompt_eval_count
                and e["generated_tokens"] == reply.eval_count]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert mine, entries[-3:]
    entry = mine[-1]
    assert entry["key"] == "anonymous" and entry["remote"] == "127.0.0.1"
    assert entry["model"] == MODEL and entry["status"] == 200 and entry["method"] == "POST"
    assert 0 < entry["first_token_s"] <= entry["total_s"]
    assert entry["time"].endswith("Z")
    text = log.read_text()
    assert secret_prompt not in text and reply.response.strip()[:20] not in text
    assert secret_prompt not in server.log.read_text()


def test_a_dropped_stream_counts_the_tokens_it_generated(server: LiveServer) -> None:
    """A client that leaves mid-stream used the prompt and the tokens generated until then: the
    access log and the token counters count them (issue 24: they counted 0)."""
    log = Path(server.env["CORRAL_ACCESS_LOG"])
    seen = len(log.read_text().splitlines())
    _, before = scrape(server)
    lines = 0
    with httpx.stream("POST", server.url + "/api/generate", timeout=180, json={
            "model": MODEL, "prompt": "Count: 1, 2, 3,", "raw": True,
            "options": {"num_predict": 100_000, "temperature": 0}}) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            assert json.loads(line)["done"] is False
            lines += 1
            if lines == 8:
                break  # leaving the block drops the connection
    deadline = time.monotonic() + 60  # written once the server has seen the client go
    while not (mine := [e for e in map(json.loads, log.read_text().splitlines()[seen:])
                        if e["path"] == "/api/generate"]):
        assert time.monotonic() < deadline, "no access log line for the dropped stream"
        time.sleep(0.1)
    [entry] = mine
    # Each line carried at least one token; the runner had made a few more by the cancel.
    assert entry["generated_tokens"] >= 8 and entry["prompt_tokens"] >= 5, entry
    _, after = scrape(server)
    for name, field in (("corral_generation_tokens_total", "generated_tokens"),
                        ("corral_prompt_tokens_total", "prompt_tokens")):
        assert value(after, name, model=MODEL, key="anonymous") - value(
            before, name, model=MODEL, key="anonymous") == entry[field], name


def test_a_body_over_the_cap_is_413(server: LiveServer) -> None:
    big = "x" * (MAX_BODY + 1)
    native = httpx.post(server.url + "/api/generate", json={"model": MODEL, "prompt": big})
    assert native.status_code == 413 and "CORRAL_MAX_BODY" in native.json()["error"]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": big}])
    assert err.value.status_code == 413 and "CORRAL_MAX_BODY" in err.value.message

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"model": "gemma3:270m", "prompt": "'
        for _ in range(MAX_BODY // 4096 + 2):
            yield b"y" * 4096
        yield b'"}'

    chunked = httpx.post(server.url + "/api/generate", content=chunks())
    assert chunked.status_code == 413
    fine = httpx.post(server.url + "/api/show", json={"model": MODEL})
    assert fine.status_code == 200


def test_blob_uploads_are_not_capped(server: LiveServer) -> None:
    data = os.urandom(MAX_BODY * 2)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    reply = httpx.post(f"{server.url}/api/blobs/{digest}", content=data)
    assert reply.status_code == 201
    assert httpx.head(f"{server.url}/api/blobs/{digest}").status_code == 200
