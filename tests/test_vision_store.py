"""Vision projectors in the store: a CLIP/mmproj GGUF is a model layer of type
`application/vnd.ollama.image.projector` (as Ollama), created from a second FROM or the `files`
of /api/create, shown (`projector_info`, the CLI's Projector table), copied, deleted, verified,
pushed and pulled with its model, and counted in the memory estimate and placement.

The GGUFs are the tiny vision model of tests/vision_model.py (a llama LM + a LLaVA mlp projector
that llama.cpp's mtmd loads)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry.create import create_model, spec_from_request
from registry.gguf_info import read_gguf
from registry.manifest import MEDIA_MODEL, MEDIA_PROJECTOR
from registry.show import show_response
from registry.store import Store
from registry.verify import verify
from runner.supervisor.estimate import (
    Estimate,
    estimate,
    projector_shape,
    shape_from_gguf,
    tensor_bytes,
)
from runner.supervisor.inventory import GPU, Inventory
from runner.supervisor.placement import GPU_RESERVE, place
from tests import vision_model
from tests.conftest import ROOT, LiveServer

MiB = 1024**2


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return vision_model.write_model(tmp_path_factory.mktemp("vision"))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models")


def upload(store: Store, path: Path) -> str:
    return store.write_blob([path.read_bytes()]).digest


def create(store: Store, body: dict[str, Any]) -> Any:
    return create_model(store, spec_from_request(body), lambda e: None)


def vision(store: Store, ggufs: tuple[Path, Path], name: str = "tv") -> Any:
    lm, proj = ggufs
    return create(store, {"model": name, "files": {"tiny-vision.gguf": upload(store, lm),
                                                   "mmproj.gguf": upload(store, proj)}})


def test_files_make_a_model_and_a_projector_layer(store: Store, ggufs: tuple[Path, Path]
                                                  ) -> None:
    lm, proj = ggufs
    # The order of `files` does not matter: the architecture (`clip`) decides.
    model = create(store, {"model": "tv", "files": {"mmproj.gguf": upload(store, proj),
                                                    "tiny-vision.gguf": upload(store, lm)}})
    assert [lay.media_type for lay in model.manifest.layers] == [MEDIA_MODEL, MEDIA_PROJECTOR]
    assert model.projector_paths == [store.blob_path(model.manifest.layers[1].digest)]
    assert model.projector_gguf is not None and model.projector_gguf.architecture == "clip"
    assert "vision" in model.capabilities and "completion" in model.capabilities

    text_only = create(store, {"model": "t", "files": {"tiny-vision.gguf": upload(store, lm)}})
    assert "vision" not in text_only.capabilities and text_only.projector_gguf is None

    # A model made FROM it keeps the projector; a new projector file replaces it.
    child = create(store, {"model": "child", "from": "tv", "system": "Name the colour."})
    assert [lay.digest for lay in child.manifest.find(MEDIA_PROJECTOR)] == \
        [lay.digest for lay in model.manifest.find(MEDIA_PROJECTOR)]


def test_show_has_projector_info(store: Store, ggufs: tuple[Path, Path]) -> None:
    model = vision(store, ggufs)
    shown = show_response(store, model)
    info = shown["projector_info"]
    assert info["general.architecture"] == "clip"
    assert info["clip.projector_type"] == "mlp"
    assert info["clip.vision.image_size"] == vision_model.IMAGE_SIZE
    assert info["clip.vision.patch_size"] == vision_model.PATCH
    assert info["clip.vision.projection_dim"] == vision_model.LM_EMBD
    assert info["clip.vision.image_mean"] is None  # arrays are null unless verbose, as model_info
    assert show_response(store, model, verbose=True)["projector_info"][
        "clip.vision.image_mean"] == [0, 0, 0]
    assert "vision" in shown["capabilities"]
    # The projector is its own FROM line in the Modelfile, as `ollama show --modelfile` writes.
    from_lines = [ln for ln in shown["modelfile"].splitlines() if ln.startswith("FROM ")]
    assert from_lines == [f"FROM {model.model_path}", f"FROM {model.projector_paths[0]}"]
    assert "projector_info" not in show_response(
        store, create(store, {"model": "t", "files": {"a.gguf": upload(store, ggufs[0])}}))


def test_copy_delete_and_verify_keep_the_projector(store: Store, ggufs: tuple[Path, Path]
                                                   ) -> None:
    model = vision(store, ggufs)
    proj_digest = model.manifest.find(MEDIA_PROJECTOR)[0].digest
    copy = store.copy("tv", "tv-copy")
    assert copy.manifest.find(MEDIA_PROJECTOR)[0].digest == proj_digest
    report = verify(store.root)
    assert report.sound and report.manifests == 2

    # A damaged projector blob is damage, named by its path.
    path = store.blob_path(proj_digest)
    good = path.read_bytes()
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    report = verify(store.root)
    assert not report.sound and [f.path for f in report.damage] == [path]
    path.write_bytes(good)

    store.delete("tv")
    assert store.has_blob(proj_digest)  # the copy still uses it
    store.delete("tv-copy")
    assert not store.has_blob(proj_digest)
    assert verify(store.root).sound


def test_estimate_counts_the_projector(ggufs: tuple[Path, Path]) -> None:
    lm, proj = map(read_gguf, ggufs)
    weights, compute = projector_shape(proj)
    assert weights == sum(tensor_bytes(t["type"], t["shape"]) for t in proj.tensors)
    assert weights > 0 and compute > 0
    plain = estimate(shape_from_gguf(lm), num_ctx=512, parallel=1)
    with_proj = estimate(shape_from_gguf(lm, proj), num_ctx=512, parallel=1)
    assert with_proj.projector == weights + compute
    assert with_proj.total == plain.total + weights + compute
    assert with_proj.host_total == plain.host_total + weights + compute

    # A GPU that holds the model alone but not with its projector: no longer a full fit, and
    # the projector's bytes stay reserved on the GPU beside the layers that do fit.
    def gpu(usable: int) -> Inventory:
        free = usable + GPU_RESERVE
        return Inventory(gpus=(GPU(index=0, uuid="GPU-sim", name="sim", total=free, free=free),),
                         ram_total=8 * 1024**3, ram_free=8 * 1024**3)

    room = gpu(plain.total + weights // 2)
    whole = place(plain, room)
    assert whole.vram == {0: plain.total} and whole.gpu_layers == whole.total_layers
    assert place(with_proj, room).gpu_layers < whole.total_layers

    # Four layers of 100 MiB, a 50 MiB compute buffer, a 150 MiB projector, 400 MiB usable:
    # the projector and compute buffer are reserved first, two layers fit beside them.
    big = Estimate(weights=400 * MiB, kv=0, compute=50 * MiB, layer_bytes=(100 * MiB,) * 4,
                   other_bytes=0, projector=150 * MiB)
    split = place(big, gpu(400 * MiB))
    assert (split.gpu_layers, split.total_layers) == (2, 4)
    assert split.vram == {0: 400 * MiB} and split.ram == 200 * MiB
    assert place(dataclasses.replace(big, projector=0), gpu(400 * MiB)).gpu_layers == 3


# --- end to end: the CLI and a live server ----------------------------------------------------


def cli(server: LiveServer, *args: str, cwd: Path | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=server.env,
                          cwd=cwd or ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture
def created(corral_server: LiveServer, ggufs: tuple[Path, Path], tmp_path: Path
            ) -> Iterator[str]:
    lm, proj = ggufs
    (tmp_path / "tiny-vision.gguf").write_bytes(lm.read_bytes())
    (tmp_path / "mmproj.gguf").write_bytes(proj.read_bytes())
    (tmp_path / "Modelfile").write_text("FROM ./tiny-vision.gguf\nFROM ./mmproj.gguf\n")
    done = cli(corral_server, "create", "tiny-vision-store", "-f", str(tmp_path / "Modelfile"))
    assert done.returncode == 0, done.stderr
    yield "tiny-vision-store"
    httpx.request("DELETE", corral_server.url + "/api/delete",
                  json={"model": "tiny-vision-store"})


@pytest.mark.e2e
def test_cli_create_show_plan_and_pull_from_a_store(
        corral_server: LiveServer, created: str, tmp_path: Path) -> None:
    shown = httpx.post(corral_server.url + "/api/show", json={"model": created}).json()
    assert shown["projector_info"]["general.architecture"] == "clip"
    store = Store(corral_server.models)
    model = store.get(created)
    assert [lay.media_type for lay in model.manifest.layers] == [MEDIA_MODEL, MEDIA_PROJECTOR]

    out = cli(corral_server, "show", created)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.strip() == "Projector")
    projector = " ".join(" ".join(ln.split()) for ln in lines[at + 1:at + 5])
    assert "architecture clip" in projector
    assert f"embedding length {vision_model.V_EMBD}" in projector
    assert f"dimensions {vision_model.LM_EMBD}" in projector

    plan = cli(corral_server, "plan", created, "--json", "--ctx", "512")
    assert plan.returncode == 0, plan.stderr
    need = json.loads(plan.stdout)["estimate"]
    weights, compute = projector_shape(model.projector_gguf)
    assert need["projector"] == weights + compute
    assert "vision projector (estimate)" in cli(corral_server, "plan", created).stdout

    # Copy over HTTP keeps the layer; delete of the copy keeps the shared blob.
    proj_digest = model.manifest.find(MEDIA_PROJECTOR)[0].digest
    assert httpx.post(corral_server.url + "/api/copy",
                      json={"source": created, "destination": "tv-copy"}).status_code == 200
    assert Store(corral_server.models).get("tv-copy").manifest.find(MEDIA_PROJECTOR)[0].digest \
        == proj_digest
    assert httpx.request("DELETE", corral_server.url + "/api/delete",
                         json={"model": "tv-copy"}).status_code == 200
    assert store.has_blob(proj_digest)


@pytest.mark.e2e
def test_push_and_pull_carry_the_projector(ggufs: tuple[Path, Path], tmp_path: Path) -> None:
    from tests.test_pull_push import pull_in_process, push_in_process, start_registry

    registry = start_registry(tmp_path / "registry")
    try:
        src = Store(tmp_path / "src")
        vision(src, ggufs)
        name = f"{registry.host}/library/tiny-vision:latest"
        src.copy("tv", name)
        events = push_in_process(src, name)
        assert events[-1]["status"] == "success"
        proj_digest = src.get(name).manifest.find(MEDIA_PROJECTOR)[0].digest
        assert registry.blob_data(proj_digest).read_bytes() == \
            src.blob_path(proj_digest).read_bytes()

        dst = Store(tmp_path / "dst")
        events = pull_in_process(dst, name)
        assert events[-1]["status"] == "success"
        pulled = dst.get(name)
        assert pulled.manifest.to_bytes() == src.get(name).manifest.to_bytes()
        assert pulled.projector_gguf is not None and "vision" in pulled.capabilities
        assert verify(dst.root).sound
    finally:
        registry.stop()
