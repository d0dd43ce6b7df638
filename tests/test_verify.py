"""`corral verify`: what it calls damage, what it lists apart, what --repair removes, exit codes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from gateway.cli import main
from registry.manifest import MEDIA_CONFIG, MEDIA_MODEL, Manifest
from registry.store import Store
from registry.verify import TEMP_GRACE_S, verify


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """A store with one model (config + weights blob), as OLLAMA_MODELS."""
    store = Store(tmp_path / "models")
    config = store.write_json_blob({"model_format": "gguf"})
    weights = store.write_blob_bytes(b"GGUF" + os.urandom(4096))
    store.write_manifest("tiny:1", Manifest(config.layer(MEDIA_CONFIG),
                                            [weights.layer(MEDIA_MODEL)]))
    monkeypatch.setenv("OLLAMA_MODELS", str(store.root))
    return store


def weights_path(store: Store) -> Path:
    model = store.get("tiny:1")
    assert model.model_path is not None
    return model.model_path


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["verify", *args])
    return code, capsys.readouterr().out


def test_sound_store(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    report = verify(store.root)
    assert report.sound and report.blobs == 2 and report.manifests == 1
    assert not (report.partials or report.unreferenced or report.temp or report.removed)
    code, out = run_cli(capsys)
    assert code == 0 and "checked 2 blobs and 1 manifests" in out and "store is sound" in out


def test_corrupt_blob_is_damage_and_repair_removes_it(store: Store,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = weights_path(store)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # one flipped byte, same size
    path.write_bytes(bytes(data))
    code, out = run_cli(capsys)
    assert code == 1 and "content has digest sha256:" in out and path.exists()
    code, out = run_cli(capsys, "--repair")
    assert code == 1 and not path.exists() and "removed 1 files" in out
    # The manifest stays (a pull fetches the blob again); the store still reports it.
    code, out = run_cli(capsys)
    assert code == 1 and f"layer sha256:{path.name[7:]} is missing" in out
    assert store.find("tiny:1") is not None


def test_missing_blob_and_wrong_size_are_damage(store: Store) -> None:
    model = store.get("tiny:1")
    weights = model.manifest.layers[0]
    bigger = Manifest(model.manifest.config,
                      [type(weights)(weights.media_type, weights.digest, weights.size + 1)])
    store.write_manifest("tiny:wrong-size", bigger)
    report = verify(store.root)
    assert [f.problem for f in report.damage] == [
        f"layer {weights.digest} is {weights.size} bytes, the manifest says {weights.size + 1}"]
    weights_path(store).unlink()
    report = verify(store.root)
    assert len(report.damage) == 2
    assert all(f.problem == f"layer {weights.digest} is missing" for f in report.damage)


def test_unreadable_manifest_and_bad_path_are_damage(store: Store) -> None:
    broken = store.manifests_dir / "registry.ollama.ai" / "library" / "broken" / "latest"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"{not json")
    stray = store.manifests_dir / "registry.ollama.ai" / "library" / "x"
    stray.write_bytes(b"{}")  # a file where a model folder belongs
    report = verify(store.root)
    problems = sorted(f.problem.split(":")[0] for f in report.damage)
    assert problems == ["manifest path is not a model name", "unreadable manifest"]


def test_partial_downloads_are_listed_apart(store: Store,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    hex_digest = "ab" * 32
    partial = store.blobs_dir / f"sha256-{hex_digest}-partial"
    partial.write_bytes(b"\0" * 300)
    for n, done in enumerate((100, 40, 0)):
        state = {"n": n, "offset": n * 100, "size": 100, "completed": done}
        (store.blobs_dir / f"sha256-{hex_digest}-partial-{n}").write_text(json.dumps(state))
    report = verify(store.root)
    assert report.sound
    [found] = report.partials
    assert found.digest == f"sha256:{hex_digest}" and (found.completed, found.size) == (140, 300)
    code, out = run_cli(capsys, "--repair")
    assert code == 0 and partial.exists() and "140 B of 300 B" in out
    code, out = run_cli(capsys, "--repair", "--partials")
    assert code == 0 and not list(store.blobs_dir.glob("*-partial*"))
    assert "removed 4 files" in out


def test_unreferenced_blobs_and_old_temp_files_go_with_repair(store: Store) -> None:
    orphan = store.write_blob_bytes(b"left behind by a delete")
    orphan_path = store.blob_path(orphan.digest)
    old_temp = store.blobs_dir / ".tmp-sha256-interrupted"
    old_temp.write_bytes(b"half")
    past = time.time() - TEMP_GRACE_S - 5
    os.utime(old_temp, (past, past))
    young_temp = store.blobs_dir / ".tmp-sha256-in-flight"
    young_temp.write_bytes(b"uploading")
    report = verify(store.root)
    assert report.sound and report.unreferenced == [orphan_path]
    assert sorted(report.temp) == sorted([old_temp, young_temp])
    report = verify(store.root, repair=True)
    assert report.sound and not orphan_path.exists() and not old_temp.exists()
    assert young_temp.exists()  # perhaps a running server's upload
    assert weights_path(store).exists()
    assert verify(store.root).unreferenced == []


def test_unknown_files_are_kept(store: Store) -> None:
    odd = store.blobs_dir / "notes.txt"
    odd.write_text("mine")
    report = verify(store.root, repair=True)
    assert report.sound and report.other == [odd] and odd.exists()


def test_usage_errors_exit_2(store: Store, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert main(["verify", "--partials"]) == 2
    assert "--partials needs --repair" in capsys.readouterr().err
    assert main(["verify", "--bogus"]) == 2
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "nowhere"))
    assert main(["verify"]) == 2
    assert "no model store" in capsys.readouterr().err


def test_json_report(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    weights_path(store).unlink()
    code, out = run_cli(capsys, "--json")
    report = json.loads(out)
    assert code == 1 and report["sound"] is False and report["blobs"] == 1
    assert report["damage"][0]["problem"].endswith("is missing")


def test_listed_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "verify" in capsys.readouterr().out
