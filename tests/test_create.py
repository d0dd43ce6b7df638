"""Creating models: layers, params merge, quantization, adapters, the store staying consistent,
and end to end through the official `ollama` client, raw HTTP and the `corral create` CLI.

The small models here are generated with the `gguf` library: a 2-layer llama with a byte-level
vocabulary (~1.4M parameters, 2.7 MB in F16). llama.cpp loads and runs it (its text is noise),
which is all the quantize -> load -> generate path needs.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import gguf
import httpx
import numpy as np
import ollama
import pytest

from registry import modelfile
from registry.create import CreateSpec, create_model, spec_from_request
from registry.gguf_info import read_gguf
from registry.manifest import (
    MEDIA_ADAPTER,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
)
from registry.show import modelfile_text
from registry.store import Store
from shared.errors import BadRequest, CorralError, NotFound

ROOT = Path(__file__).resolve().parent.parent
CHATML = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""


# --- synthetic GGUFs ---------------------------------------------------------------------------


def write_tiny_gguf(path: Path, *, chat_template: str | None = None, seed: int = 0) -> Path:
    """A loadable 2-layer llama in F16 (K-quant friendly: rows of 256)."""
    n_embd, n_ff, n_layer, n_head = 256, 512, 2, 4
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256)), "▁the", "▁cat"]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types([2, 3, 3, *([6] * 256), 1, 1])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    if chat_template:
        w.add_chat_template(chat_template)
    rng = np.random.default_rng(seed)

    def weight(name: str, shape: tuple[int, int]) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float16))

    weight("token_embd.weight", (len(tokens), n_embd))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for part in ("q", "k", "v", "output"):
            weight(f"blk.{i}.attn_{part}.weight", (n_embd, n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        weight(f"blk.{i}.ffn_gate.weight", (n_ff, n_embd))
        weight(f"blk.{i}.ffn_up.weight", (n_ff, n_embd))
        weight(f"blk.{i}.ffn_down.weight", (n_embd, n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_lora(path: Path, *, arch: str = "llama") -> Path:
    """A rank-8 LoRA on the tiny model's attention q/v, strong enough to change its output."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", 8.0)
    rng = np.random.default_rng(1)
    for i in range(2):
        for part in ("q", "v"):
            w.add_tensor(f"blk.{i}.attn_{part}.weight.lora_a",
                         rng.standard_normal((8, 256)).astype(np.float32))
            w.add_tensor(f"blk.{i}.attn_{part}.weight.lora_b",
                         rng.standard_normal((256, 8)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ggufs")
    return {
        "tiny": write_tiny_gguf(folder / "tiny.gguf"),
        "jinja": write_tiny_gguf(folder / "jinja.gguf", chat_template="{{ messages }}", seed=2),
        "lora": write_lora(folder / "lora.gguf"),
        "lora_other": write_lora(folder / "lora-qwen.gguf", arch="qwen2"),
    }


# --- in-process creation against a Store -------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models")


def upload(store: Store, path: Path) -> str:
    return store.write_blob([path.read_bytes()]).digest


def create(store: Store, body: dict[str, Any], **kwargs: Any) -> tuple[Any, list[dict]]:
    events: list[dict[str, Any]] = []
    model = create_model(store, spec_from_request(body), events.append, **kwargs)
    return model, events


def media(model: Any) -> list[str]:
    return [layer.media_type for layer in model.manifest.layers]


def consistent(store: Store) -> None:
    """Every manifest's blobs exist."""
    for model in store.list():
        for layer in model.manifest.all_layers():
            assert store.has_blob(layer.digest), (model.display(), layer)


def test_create_from_gguf_blob(store: Store, ggufs: dict[str, Path]) -> None:
    digest = upload(store, ggufs["tiny"])
    model, events = create(store, {"model": "tiny", "files": {"tiny.gguf": digest},
                                   "system": "Be brief.", "parameters": {"num_predict": 3}})
    statuses = [e["status"] for e in events]
    assert statuses[0] == "parsing GGUF"
    assert statuses[-2:] == ["writing manifest", "success"]
    assert f"using existing layer {digest}" in statuses  # uploaded before the create
    assert sum(s.startswith("creating new layer") for s in statuses) == 2
    assert media(model) == [MEDIA_MODEL, MEDIA_SYSTEM, MEDIA_PARAMS]  # no template layer
    assert model.template is None
    assert model.params == {"num_predict": 3}
    assert model.system == "Be brief."
    cfg = model.config
    assert (cfg["model_format"], cfg["model_family"], cfg["file_type"]) == ("gguf", "llama", "F16")
    assert cfg["rootfs"]["diff_ids"] == [layer.digest for layer in model.manifest.layers]
    assert (cfg["architecture"], cfg["os"]) == ("amd64", "linux")


def test_a_gguf_chat_template_is_not_turned_into_a_template_layer(
        store: Store, ggufs: dict[str, Path]) -> None:
    model, _ = create(store, {"model": "j", "files": {"j.gguf": upload(store, ggufs["jinja"])}})
    assert media(model) == [MEDIA_MODEL]


def test_from_a_model_inherits_and_merges(store: Store, ggufs: dict[str, Path]) -> None:
    digest = upload(store, ggufs["tiny"])
    base, _ = create(store, {
        "model": "base", "files": {"t.gguf": digest}, "system": "S1", "template": CHATML,
        "parameters": {"temperature": 0.5, "stop": ["a"]}, "license": "L1",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    child, events = create(store, {"model": "child", "from": "base",
                                   "parameters": {"num_predict": 5, "stop": ["b", "c"]},
                                   "license": ["L2"], "messages": []})
    assert child.params == {"num_predict": 5, "stop": ["b", "c"], "temperature": 0.5}
    assert child.system == "S1" and child.template == CHATML
    assert child.license == ["L1", "L2"]
    assert child.messages == base.messages
    inherited = [layer for layer in child.manifest.layers if layer.media_type == MEDIA_MODEL]
    assert inherited[0].digest == digest and inherited[0].from_ == "base:latest"
    assert f"using existing layer {digest}" in [e["status"] for e in events]

    # An empty system removes the layer; a `{{ .Prompt }}` template means "no template".
    bare, _ = create(store, {"model": "bare", "from": "child", "system": "",
                             "template": "{{ .Prompt }}"})
    assert MEDIA_SYSTEM not in media(bare) and MEDIA_TEMPLATE not in media(bare)
    assert bare.config["model_family"] == "llama"


def test_recreating_a_name_removes_its_unused_layers(store: Store,
                                                     ggufs: dict[str, Path]) -> None:
    digest = upload(store, ggufs["tiny"])
    first, _ = create(store, {"model": "m", "files": {"t.gguf": digest}, "system": "old"})
    old_system = first.manifest.find(MEDIA_SYSTEM)[0].digest
    create(store, {"model": "keep", "from": "m"})  # shares the weights
    _, events = create(store, {"model": "m", "from": "m", "system": "new"})
    assert "removing unused layers" not in [e["status"] for e in events]  # "keep" uses it
    create(store, {"model": "keep", "from": "m"})
    _, events = create(store, {"model": "m", "from": "m", "system": "newer"})
    assert store.has_blob(digest)
    assert store.find("keep").system == "new"
    assert store.has_blob(old_system) is False
    create(store, {"model": "m", "from": "m", "system": "x"}, prune_old=False)
    consistent(store)


@pytest.mark.parametrize(("body", "message"), [
    ({"from": "x"}, "model is required"),
    ({"model": "a"}, "neither 'from' or 'files' was specified"),
    ({"model": "bad name!", "from": "x"}, "invalid model name"),
    ({"model": "a", "files": {"m.gguf": "sha256:1234"}}, "invalid digest format"),
    ({"model": "a", "files": {"m.gguf": ""}}, "invalid digest format"),
    ({"model": "a", "files": {"/etc/m.gguf": "sha256:" + "0" * 64}}, "file path must be relative"),
    ({"model": "a", "files": {"../m.gguf": "sha256:" + "0" * 64}}, "file path must be relative"),
    ({"model": "a", "files": {"model.safetensors": "sha256:" + "0" * 64}},
     "importing safetensors (or other non-GGUF) models is not supported"),
    ({"model": "a", "from": "b", "template": "{{ .Nope }}"}, "template error: line 1: unknown"),
    ({"model": "a", "from": "b", "template": "{{ if .System }}"}, "template error: unexpected"),
    ({"model": "a", "from": "b", "parameters": {"bogus": 1}}, "unknown parameter 'bogus'"),
    ({"model": "a", "from": "b", "parameters": {"top_k": 1.5}}, 'option "top_k" must be of'),
    ({"model": "a", "from": "b", "quantize": "q9_X"}, "unsupported quantization type q9_X"),
    ({"model": "a", "from": "b", "license": 3}, "license must be a string or an array"),
    ({"model": "a", "from": "b", "messages": [{"role": "robot", "content": "x"}]},
     "message role must be one of"),
    ({"model": "a", "from": "b", "adapters": {"1.gguf": "sha256:" + "1" * 64,
                                              "2.gguf": "sha256:" + "2" * 64}},
     "only one adapter is supported"),
    ({"model": "a", "modelfile": "FROM b\nPARAMETER nope 1"}, "(line 2): unknown parameter"),
])
def test_request_validation(body: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest) as info:
        spec_from_request(body)
    assert info.value.message.startswith(message), info.value.message


def test_sources_that_cannot_be_used(store: Store, ggufs: dict[str, Path]) -> None:
    with pytest.raises(NotFound, match='model "nope" not found, try pulling it first'):
        create(store, {"model": "a", "from": "nope"})
    with pytest.raises(BadRequest, match="upload it first"):
        create(store, {"model": "a", "files": {"m.gguf": "sha256:" + "3" * 64}})
    lora = upload(store, ggufs["lora"])
    with pytest.raises(BadRequest, match="is a LoRA adapter"):
        create(store, {"model": "a", "files": {"lora.gguf": lora}})
    text = store.write_blob_bytes(b"not a gguf at all").digest
    with pytest.raises(BadRequest, match="not a valid GGUF file"):
        create(store, {"model": "a", "files": {"x.gguf": text}})
    assert store.list() == []


def test_adapters(store: Store, ggufs: dict[str, Path]) -> None:
    digest = upload(store, ggufs["tiny"])
    lora = upload(store, ggufs["lora"])
    model, _ = create(store, {"model": "a", "files": {"t.gguf": digest},
                              "adapters": {"lora.gguf": lora}})
    assert media(model) == [MEDIA_MODEL, MEDIA_ADAPTER]
    assert model.adapter_paths == [store.blob_path(lora)]
    with pytest.raises(BadRequest, match="the adapter is for qwen2 models"):
        create(store, {"model": "b", "from": "a",
                       "adapters": {"x.gguf": upload(store, ggufs["lora_other"])}})
    with pytest.raises(BadRequest, match="not a LoRA adapter"):
        create(store, {"model": "b", "from": "a", "adapters": {"x.gguf": digest}})


def test_quantize(store: Store, ggufs: dict[str, Path]) -> None:
    digest = upload(store, ggufs["tiny"])
    model, events = create(store, {"model": "q", "files": {"t.gguf": digest},
                                   "quantize": "q4_K_M"})
    progress = [e for e in events if e["status"] == "quantizing F16 model to Q4_K_M"]
    assert progress and progress[0]["digest"] == "0"
    assert progress[-1]["completed"] == progress[-1]["total"] == 20  # tensors
    assert "verifying conversion" in [e["status"] for e in events]
    [layer] = model.manifest.find(MEDIA_MODEL)
    assert layer.digest != digest
    info = read_gguf(store.blob_path(layer.digest))
    assert info.file_type == "Q4_K_M"
    assert {t["type"] for t in info.tensors} >= {"Q4_K", "F32"}
    assert model.config["file_type"] == "Q4_K_M"
    assert layer.size < store.blob_path(digest).stat().st_size / 2
    assert not [p for p in store.blobs_dir.iterdir() if p.name.startswith(".tmp")]

    with pytest.raises(BadRequest, match="quantization is only supported for F16, BF16 and F32"):
        create(store, {"model": "qq", "from": "q", "quantize": "q8_0"})
    q8, _ = create(store, {"model": "q8", "files": {"t.gguf": digest}, "quantize": "Q8_0"})
    assert q8.config["file_type"] == "Q8_0"


def test_cancelled_quantization_leaves_nothing(store: Store, ggufs: dict[str, Path]) -> None:
    digest = upload(store, ggufs["tiny"])
    cancel = threading.Event()

    def progress(event: dict[str, Any]) -> None:
        if event["status"].startswith("quantizing"):
            cancel.set()

    with pytest.raises(CorralError, match="canceled"):
        create_model(store, spec_from_request({"model": "c", "files": {"t.gguf": digest},
                                               "quantize": "q4_0"}), progress, cancel=cancel)
    assert store.find("c") is None
    assert not [p for p in store.blobs_dir.iterdir() if p.name.startswith(".tmp")]


def test_legacy_modelfile_request(store: Store, ggufs: dict[str, Path], tmp_path: Path) -> None:
    digest = upload(store, ggufs["tiny"])
    model, _ = create(store, {"name": "legacy", "modelfile": (
        f'FROM @{digest}\nSYSTEM hi\nPARAMETER stop a\nPARAMETER stop b\nTEMPLATE """{CHATML}"""')})
    assert model.params == {"stop": ["a", "b"]} and model.system == "hi"
    assert model.template == CHATML
    # A path on the server's own disk (what Ollama's old server accepted).
    model, _ = create(store, {"model": "local", "modelfile": f"FROM {ggufs['tiny']}"})
    assert model.manifest.find(MEDIA_MODEL)[0].digest == digest
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"{}")
    with pytest.raises(BadRequest, match="safetensors .* not supported"):
        create(store, {"model": "st", "modelfile": f"FROM {folder}"})


def test_show_modelfile_parses_back_to_the_same_model(store: Store,
                                                      ggufs: dict[str, Path]) -> None:
    digest = upload(store, ggufs["tiny"])
    lora = upload(store, ggufs["lora"])
    original, _ = create(store, {
        "model": "orig", "files": {"t.gguf": digest}, "adapters": {"l.gguf": lora},
        "template": CHATML, "system": "  Spaced\nsystem ", "license": ["MIT", "second\nlicense"],
        "parameters": {"temperature": 1, "stop": ["<|im_end|>", " x"], "num_ctx": 512,
                       "use_mmap": False},
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    text = modelfile_text(original, template=original.template, system=original.system,
                          params=original.params)
    parsed = modelfile.parse(text)
    assert parsed.template == original.template and parsed.system == original.system
    assert parsed.parameters == original.params
    assert parsed.messages == original.messages and parsed.licenses == original.license
    copy, _ = create(store, {"model": "again", "modelfile": text})
    assert copy.manifest == original.manifest


def test_a_base_deleted_mid_create_never_leaves_a_dangling_manifest(
        store: Store, ggufs: dict[str, Path]) -> None:
    create(store, {"model": "base", "files": {"t.gguf": upload(store, ggufs["tiny"])}})

    def progress(event: dict[str, Any]) -> None:
        if event["status"] == "writing manifest":
            store.delete("base")  # its weights go: nothing else uses them

    with pytest.raises(CorralError, match="disappeared"):
        create_model(store, spec_from_request({"model": "child", "from": "base",
                                               "system": "s"}), progress)
    assert store.list() == []


def test_concurrent_creates_and_deletes_keep_the_store_consistent(
        store: Store, ggufs: dict[str, Path]) -> None:
    digest = upload(store, ggufs["tiny"])
    create(store, {"model": "base", "files": {"t.gguf": digest}})
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for round_ in range(5):
                spec: CreateSpec = spec_from_request({
                    "model": f"m{n}", "from": "base", "system": f"s{n}-{round_}",
                    "parameters": {"seed": round_}})
                create_model(store, spec, lambda e: None)
                if round_ % 2:
                    store.delete(f"m{n}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(m.display() for m in store.list()) == ["base:latest", "m0:latest",
                                                         "m1:latest", "m2:latest", "m3:latest"]
    consistent(store)
    used = set().union(*(m.manifest.digests() for m in store.list()))
    on_disk = {"sha256:" + p.name.removeprefix("sha256-") for p in store.blobs_dir.iterdir()}
    assert on_disk == used  # deleted and replaced versions left nothing behind


# --- end to end against a live server ----------------------------------------------------------


def cli(server: Any, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=server.env,
                          cwd=cwd or ROOT, capture_output=True, text=True, timeout=300)


def server_store(server: Any) -> Store:
    return Store(server.models)


def show(server: Any, name: str) -> dict[str, Any]:
    """/api/show as JSON (the ollama client's ShowResponse has no `system`)."""
    resp = httpx.post(server.url + "/api/show", json={"model": name})
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.fixture
def client(corral_server: Any) -> ollama.Client:
    return ollama.Client(host=corral_server.url)


@pytest.fixture
def cleanup(client: ollama.Client) -> Any:
    names: list[str] = []
    yield names
    for name in names:
        with contextlib.suppress(ollama.ResponseError):
            client.delete(name)


@pytest.mark.e2e
def test_client_create_with_system_and_parameters(client: ollama.Client, corral_server: Any,
                                                  cleanup: list[str]) -> None:
    cleanup.append("corral-create-a")
    events = list(client.create("corral-create-a", from_="gemma3:270m",
                                system="You are a terse assistant.",
                                parameters={"num_predict": 3, "temperature": 0}, stream=True))
    assert events[-1].status == "success"
    assert "writing manifest" in [e.status for e in events]
    shown = show(corral_server, "corral-create-a")
    assert shown["system"] == "You are a terse assistant."
    assert "num_predict                    3" in shown["parameters"]
    assert "stop                           \"<end_of_turn>\"" in shown["parameters"]

    ask = [{"role": "user", "content": "Tell me a long story about a cat."}]
    reply = client.chat("corral-create-a", messages=ask)
    assert 0 < reply.eval_count <= 3 and reply.done_reason == "length"
    base = client.chat("gemma3:270m", messages=ask, options={"num_predict": 1})
    assert reply.prompt_eval_count > base.prompt_eval_count + 4  # the SYSTEM text is in it
    assert client.chat("corral-create-a", messages=ask,
                       options={"num_predict": 1}).eval_count == 1  # the request wins
    assert client.generate("corral-create-a", "Once upon a time").eval_count <= 3


@pytest.mark.e2e
def test_client_create_stop_parameter(client: ollama.Client, cleanup: list[str]) -> None:
    cleanup.append("corral-create-stop")
    stops = ["e", "a", " ", "\n"]
    done = client.create("corral-create-stop", from_="gemma3:270m",
                         parameters={"stop": stops, "num_predict": 24})
    assert done.status == "success"
    reply = client.chat("corral-create-stop",
                        messages=[{"role": "user", "content": "Describe the sea at night."}])
    assert reply.done_reason == "stop"
    assert not any(s in reply.message.content for s in stops)


@pytest.mark.e2e
def test_create_errors_over_http(client: ollama.Client, corral_server: Any) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.create("corral-create-x", from_="no-such-model")
    assert info.value.status_code == 404
    assert 'model "no-such-model" not found' in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.create("corral-create-x", from_="gemma3:270m", quantize="q4_K_M")
    assert info.value.status_code == 400
    assert info.value.error == "quantization is only supported for F16, BF16 and F32 models"
    with pytest.raises(ollama.ResponseError) as info:
        client.create("corral-create-x", from_="gemma3:270m", template="{{ range .Nope }}")
    assert info.value.status_code == 400 and info.value.error.startswith("template error")
    with pytest.raises(ollama.ResponseError) as info:
        client.create("corral-create-x", files={"model.safetensors": "sha256:" + "0" * 64})
    assert "not supported" in info.value.error
    url = corral_server.url + "/api/create"
    resp = httpx.post(url, json={"model": "corral-create-x"})
    assert (resp.status_code, resp.json()) == (
        400, {"error": "neither 'from' or 'files' was specified"})
    resp = httpx.post(url, json={"model": "x", "modelfile": "FROM gemma3:270m\nFOO"})
    assert resp.status_code == 400 and resp.json()["error"].startswith("(line 2): command must")
    assert "corral-create-x:latest" not in [m.model for m in client.list().models]


@pytest.mark.e2e
def test_legacy_modelfile_shape(corral_server: Any, client: ollama.Client,
                                cleanup: list[str]) -> None:
    cleanup.append("corral-legacy")
    body = {"name": "corral-legacy", "modelfile": "FROM gemma3:270m\nSYSTEM Old style.\n"}
    resp = httpx.post(corral_server.url + "/api/create", json={**body, "stream": False})
    assert resp.status_code == 200 and resp.json() == {"status": "success"}
    with httpx.stream("POST", corral_server.url + "/api/create", json=body) as stream:
        assert stream.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in stream.iter_lines() if line]
    assert lines[-1] == {"status": "success"}
    assert any(e["status"].startswith("using existing layer sha256:") for e in lines)
    assert show(corral_server, "corral-legacy")["system"] == "Old style."


@pytest.mark.e2e
def test_blob_upload(corral_server: Any) -> None:
    data = b"corral blob upload test " * 1000
    import hashlib

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    url = f"{corral_server.url}/api/blobs/{digest}"
    blobs = Path(corral_server.models) / "blobs"
    resp = httpx.head(url)
    assert resp.status_code == 404
    resp = httpx.post(url, content=data[:-1] + b"!")
    assert resp.status_code == 400
    assert resp.json()["error"].startswith(f'digest mismatch, expected "{digest}", got "sha256:')
    assert not (blobs / digest.replace(":", "-")).exists()
    assert not [p for p in blobs.iterdir() if not p.name.startswith("sha256-")]
    assert httpx.post(url, content=data).status_code == 201
    assert httpx.head(url).status_code == 200
    assert httpx.post(url, content=b"not read").status_code == 200
    bad = httpx.post(f"{corral_server.url}/api/blobs/sha256:abc", content=b"x")
    assert (bad.status_code, bad.json()) == (400, {"error": "invalid digest format"})
    (blobs / digest.replace(":", "-")).unlink()


@pytest.mark.e2e
def test_cli_create_show_round_trip(corral_server: Any, client: ollama.Client,
                                    cleanup: list[str], tmp_path: Path) -> None:
    cleanup += ["corral-cli-a", "corral-cli-b"]
    (tmp_path / "Modelfile").write_text(
        'FROM gemma3:270m\nSYSTEM """You answer in one word."""\nPARAMETER num_predict 2\n'
        "PARAMETER temperature 0\nMESSAGE user Hi\nMESSAGE assistant Hello\n")
    done = cli(corral_server, "create", "corral-cli-a", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "success" in done.stderr and "writing manifest" in done.stderr
    reply = client.chat("corral-cli-a", messages=[{"role": "user", "content": "Colour?"}])
    assert reply.eval_count <= 2

    shown = cli(corral_server, "show", "corral-cli-a", "--modelfile")
    assert shown.returncode == 0, shown.stderr
    (tmp_path / "Shown").write_text(shown.stdout)
    again = cli(corral_server, "create", "corral-cli-b", "-f", str(tmp_path / "Shown"))
    assert again.returncode == 0, again.stderr
    store = server_store(corral_server)
    a, b = store.get("corral-cli-a"), store.get("corral-cli-b")
    assert [(x.media_type, x.digest) for x in a.manifest.all_layers()] == \
        [(x.media_type, x.digest) for x in b.manifest.all_layers()]

    bad = tmp_path / "Bad"
    bad.write_text("FROM gemma3:270m\nPARAMETER num_predict lots\n")
    failed = cli(corral_server, "create", "corral-cli-c", "-f", str(bad))
    assert failed.returncode == 1
    assert failed.stderr.strip() == ("Error: (line 2): invalid int value [lots] for parameter "
                                     "'num_predict', expected an integer")
    missing = cli(corral_server, "create", "corral-cli-c", "-f", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "no such file" in missing.stderr


@pytest.mark.e2e
def test_cli_create_from_local_gguf_quantized_with_template_and_adapter(
        corral_server: Any, client: ollama.Client, cleanup: list[str], tmp_path: Path) -> None:
    cleanup += ["corral-tiny", "corral-tiny-plain"]
    write_tiny_gguf(tmp_path / "tiny.gguf", seed=5)
    (tmp_path / "adapters").mkdir()
    write_lora(tmp_path / "adapters" / "lora.gguf")
    body = f'TEMPLATE """{CHATML}"""\nPARAMETER num_predict 4\nPARAMETER temperature 0\n'
    (tmp_path / "Modelfile").write_text(
        "FROM ./tiny.gguf\nADAPTER adapters/lora.gguf\n" + body)
    done = cli(corral_server, "create", "corral-tiny", "-f", str(tmp_path / "Modelfile"),
               "--quantize", "q4_K_M")
    assert done.returncode == 0, done.stderr
    for step in ("copying file sha256:", "parsing GGUF", "quantizing F16 model to Q4_K_M",
                 "verifying conversion", "success"):
        assert step in done.stderr
    shown = client.show("corral-tiny")
    assert shown.details.quantization_level == "Q4_K_M"
    assert shown.template == CHATML

    ask = [{"role": "user", "content": "the cat"}]
    reply = client.chat("corral-tiny", messages=ask)
    assert reply.done and 0 < reply.eval_count <= 4
    # The TEMPLATE was used: ChatML around "the cat" in a byte-level vocabulary.
    rendered = "<|im_start|>user\nthe cat<|im_end|>\n<|im_start|>assistant\n"
    assert reply.prompt_eval_count >= len(rendered) - 8

    (tmp_path / "Plain").write_text("FROM ./tiny.gguf\n" + body)
    done = cli(corral_server, "create", "corral-tiny-plain", "-f", str(tmp_path / "Plain"),
               "-q", "q4_K_M")
    assert done.returncode == 0, done.stderr
    plain = client.chat("corral-tiny-plain", messages=ask)
    assert plain.message.content != reply.message.content  # the LoRA changes the output
    assert client.generate("corral-tiny-plain", "the cat").eval_count <= 4


@pytest.mark.e2e
def test_copy_and_delete_share_blobs(client: ollama.Client, corral_server: Any,
                                     cleanup: list[str]) -> None:
    cleanup += ["corral-share-a", "corral-share-b"]
    client.create("corral-share-a", from_="gemma3:270m", system="A shared system prompt.",
                  parameters={"num_predict": 1})
    store = server_store(corral_server)
    system_digest = store.get("corral-share-a").manifest.find(MEDIA_SYSTEM)[0].digest
    weights = store.get("gemma3:270m").manifest.find(MEDIA_MODEL)[0].digest
    client.copy("corral-share-a", "corral-share-b")
    assert client.chat("corral-share-a", messages=[{"role": "user", "content": "x"}]).done
    assert "corral-share-a:latest" in [m.model for m in client.ps().models]
    client.delete("corral-share-a")  # loaded: unloaded first
    assert "corral-share-a:latest" not in [m.model for m in client.ps().models]
    assert store.has_blob(system_digest)  # the copy still uses it
    assert client.chat("corral-share-b", messages=[{"role": "user", "content": "x"}]).done
    client.delete("corral-share-b")
    assert not store.has_blob(system_digest)
    assert store.has_blob(weights)  # gemma3:270m still uses the weights
    assert client.show("gemma3:270m").details.family == "gemma3"


@pytest.mark.e2e
def test_concurrent_create_and_delete_over_http(client: ollama.Client, corral_server: Any,
                                                cleanup: list[str]) -> None:
    names = [f"corral-conc-{n}" for n in range(4)]
    cleanup += names
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        own = ollama.Client(host=corral_server.url)
        try:
            for round_ in range(3):
                own.create(name, from_="gemma3:270m", system=f"{name} {round_}",
                           parameters={"seed": round_})
                if round_ < 2:
                    own.delete(name)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(name,)) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    store = server_store(corral_server)
    consistent(store)
    for name in names:
        assert store.get(name).system == f"{name} 2"


@pytest.mark.e2e
def test_startup_prunes_unused_blobs_unless_noprune(models_dir: Path, tmp_path: Path) -> None:
    from tests.conftest import start_server

    blobs = models_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    old = blobs / ("sha256-" + "e" * 64)  # referenced by no manifest, two hours old
    partial = blobs / ".tmp-sha256-leftover"  # an upload a crash interrupted
    fresh = blobs / ("sha256-" + "f" * 64)  # unreferenced but new: maybe an upload in flight
    for path in (old, partial, fresh):
        path.write_bytes(b"x")
    for path in (old, partial):
        os.utime(path, (time.time() - 7200, time.time() - 7200))

    server = start_server(models_dir, tmp_path / "noprune.log", OLLAMA_NOPRUNE="1")
    server.stop()
    assert old.exists() and partial.exists() and fresh.exists()
    server = start_server(models_dir, tmp_path / "prune.log")
    server.stop()
    assert not old.exists() and not partial.exists() and fresh.exists()
    assert Store(models_dir).find("gemma3:270m") is not None
    consistent(Store(models_dir))
    fresh.unlink()
