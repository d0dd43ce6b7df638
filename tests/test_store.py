"""The on-disk store, GGUF metadata and the /api/show body, on real files under tmp_path."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from registry import gguf_info
from registry.gguf_header import read_header
from registry.gofmt import go_float, go_quote
from registry.names import ModelName
from registry.show import parameters_text, show_response
from registry.store import (
    MEDIA_CONFIG,
    MEDIA_LICENSE,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    Layer,
    Manifest,
    Store,
    tags_entry,
)
from registry.timefmt import rfc3339_nano
from shared.errors import BadRequest, NotFound

RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def write_tiny_gguf(
    path: Path,
    *,
    arch: str = "llama",
    file_type: int | None = 15,
    chat_template: str | None = None,
    pooling: bool = False,
) -> Path:
    """A real (tiny) GGUF: a few KVs of every kind, two tensors."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_context_length(2048)
    w.add_embedding_length(64)
    w.add_block_count(2)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32(f"{arch}.rope.freq_base", 10000.0)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_array("tokenizer.ggml.tokens", ["<pad>", "a", "b", "c", "d", "e", "ü"])
    w.add_array("tokenizer.ggml.scores", [0.5, -1.0, 0.1, 0.0, 0.0, 0.0, 0.0])
    w.add_array("general.tags", ["x", "y"])
    if file_type is not None:
        w.add_file_type(file_type)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    if pooling:
        w.add_pooling_type(gguf.PoolingType.MEAN)
    w.add_tensor("token_embd.weight", np.zeros((7, 64), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(64, dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models")


def make_model(
    store: Store,
    name: str,
    *,
    weights: bytes | None = None,
    gguf_path: Path | None = None,
    extra: Sequence[tuple[str, bytes]] = (),
    config: dict[str, Any] | None = None,
) -> Manifest:
    """Write blobs and a manifest the way `create` would; returns the manifest."""
    if gguf_path is not None:
        model_blob = store.write_blob([gguf_path.read_bytes()])
    else:
        data = weights if weights is not None else b"weights " + name.encode()
        model_blob = store.write_blob_bytes(data)
    layers = [model_blob.layer(MEDIA_MODEL)]
    layers += [store.write_blob_bytes(data).layer(media) for media, data in extra]
    cfg = config or {
        "model_format": "gguf",
        "model_family": "llama",
        "model_families": ["llama"],
        "model_type": "1.2M",
        "file_type": "Q4_K_M",
    }
    config_blob = store.write_json_blob(cfg)
    manifest = Manifest(config=config_blob.layer(MEDIA_CONFIG), layers=layers)
    store.write_manifest(ModelName.parse(name), manifest)
    return manifest


# ----- blobs -----


def test_write_blob_streams_hashes_and_renames(store: Store) -> None:
    chunks = [b"hello ", b"", b"world"]
    blob = store.write_blob(iter(chunks))
    assert blob.digest == sha(b"hello world")
    assert blob.size == 11
    path = store.blob_path(blob.digest)
    assert path.name == "sha256-" + hashlib.sha256(b"hello world").hexdigest()
    assert path.read_bytes() == b"hello world"
    assert files_under(store.blobs_dir) == [path.name]  # no temp file left behind
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_write_blob_verifies_expected_digest(store: Store) -> None:
    blob = store.write_blob([b"abc"], expected_digest=sha(b"abc"))
    assert store.has_blob(blob.digest)
    # the dash form is accepted too
    assert store.write_blob([b"xyz"], expected_digest=sha(b"xyz").replace(":", "-")).size == 3


def test_digest_mismatch_leaves_nothing(store: Store) -> None:
    wrong = "sha256:" + "0" * 64
    with pytest.raises(BadRequest) as info:
        store.write_blob([b"data"], expected_digest=wrong)
    assert info.value.message == f'digest mismatch, expected "{wrong}", got "{sha(b"data")}"'
    assert files_under(store.blobs_dir) == []


def test_failure_mid_stream_leaves_nothing(store: Store) -> None:
    def broken() -> Iterator[bytes]:
        yield b"part one"
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        store.write_blob(broken())
    assert files_under(store.blobs_dir) == []


def test_existing_blob_is_not_read_again(store: Store) -> None:
    blob = store.write_blob_bytes(b"payload")

    def must_not_run() -> Iterator[bytes]:
        raise AssertionError("the body was read although the blob exists")
        yield b""  # pragma: no cover

    again = store.write_blob(must_not_run(), expected_digest=blob.digest)
    assert again == blob


def test_same_content_without_expected_digest_keeps_one_file(store: Store) -> None:
    first = store.write_blob([b"same"])
    second = store.write_blob([b"sa", b"me"])
    assert first == second
    assert len(files_under(store.blobs_dir)) == 1


@pytest.mark.parametrize(
    "digest",
    ["", "sha256:abc", "md5:" + "0" * 64, "sha256:" + "g" * 64, "0" * 64, "sha256:" + "0" * 65],
)
def test_bad_digest_format(store: Store, digest: str) -> None:
    with pytest.raises(BadRequest, match="^invalid digest format$"):
        store.blob_path(digest)


def test_blob_writer_for_incremental_bodies(store: Store) -> None:
    with store.blob_writer() as writer:
        writer.write(b"a")
        writer.write(b"b")
        blob = writer.commit(sha(b"ab"))
    assert store.blob_path(blob.digest).read_bytes() == b"ab"
    with store.blob_writer() as writer:
        writer.write(b"abandoned")  # leaving without commit discards it
    assert files_under(store.blobs_dir) == [store.blob_path(blob.digest).name]


# ----- manifests -----


def test_manifest_json_round_trip() -> None:
    manifest = Manifest(
        config=Layer(MEDIA_CONFIG, "sha256:" + "1" * 64, 10),
        layers=[
            Layer(MEDIA_MODEL, "sha256:" + "2" * 64, 20, from_="library/base"),
            Layer(MEDIA_PARAMS, "sha256:" + "3" * 64, 30),
        ],
    )
    data = json.loads(manifest.to_bytes())
    assert data == {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": "sha256:" + "1" * 64,
            "size": 10,
        },
        "layers": [
            {
                "mediaType": "application/vnd.ollama.image.model",
                "digest": "sha256:" + "2" * 64,
                "size": 20,
                "from": "library/base",
            },
            {
                "mediaType": "application/vnd.ollama.image.params",
                "digest": "sha256:" + "3" * 64,
                "size": 30,
            },
        ],
    }
    assert b" " not in manifest.to_bytes()  # compact, as Go writes it
    assert Manifest.from_json(data) == manifest
    assert Manifest.from_bytes(manifest.to_bytes()) == manifest
    assert manifest.size == 60


def test_write_and_get_model(store: Store) -> None:
    params = {"stop": ["<end>", "</s>"], "temperature": 0.7}
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    manifest = make_model(
        store,
        "user/m:v1",
        extra=[
            (MEDIA_TEMPLATE, b"{{ .Prompt }}"),
            (MEDIA_SYSTEM, b"be brief"),
            (MEDIA_PARAMS, json.dumps(params).encode()),
            (MEDIA_LICENSE, b"MIT"),
            (MEDIA_LICENSE, b"Apache"),
            (MEDIA_MESSAGES, json.dumps(messages).encode()),
        ],
    )
    path = store.root / "manifests/registry.ollama.ai/user/m/v1"
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["v1"]  # no temp file left
    model = store.get("user/m:v1")
    assert model.name == ModelName.parse("user/m:v1")
    assert model.manifest == manifest
    assert model.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.size == manifest.size
    assert model.modified_at.tzinfo == UTC
    assert model.modified_ns == path.stat().st_mtime_ns
    assert model.model_path == store.blob_path(manifest.layers[0].digest)
    assert model.params == params
    assert model.template == "{{ .Prompt }}"
    assert model.system == "be brief"
    assert model.license == ["MIT", "Apache"]
    assert model.messages == messages
    assert model.config["model_family"] == "llama"


def test_layerless_views_are_empty(store: Store) -> None:
    make_model(store, "bare")
    model = store.get("bare")
    assert model.params == {}
    assert model.template is None
    assert model.system is None
    assert model.license == []
    assert model.messages == []


def test_lookup_is_case_insensitive_per_part(store: Store) -> None:
    make_model(store, "User/Model:Tag")
    model = store.get("user/MODEL:tag")
    assert model.name.display() == "User/Model:Tag"  # the stored spelling wins
    assert store.find("registry.ollama.ai/USER/model:TAG") is not None
    # writing a case-variant updates the existing manifest instead of adding a second one
    make_model(store, "user/model:tag", weights=b"new")
    assert files_under(store.manifests_dir) == ["registry.ollama.ai/User/Model/Tag"]


def test_get_missing_and_invalid(store: Store) -> None:
    with pytest.raises(NotFound) as info:
        store.get("no-such-model")
    assert info.value.message == "model 'no-such-model' not found"
    assert info.value.status == 404
    with pytest.raises(NotFound, match="^model 'no-such-model:latest' not found$"):
        store.get("no-such-model", error_name="no-such-model:latest")
    assert store.find("nothing") is None
    with pytest.raises(BadRequest, match="^invalid model name$"):
        store.get("bad name")


def test_list_sorted_most_recent_first(store: Store) -> None:
    for name in ("a", "b", "c"):
        make_model(store, name)
    base = 1_700_000_000 * 10**9
    for offset, name in ((3, "b"), (2, "c"), (1, "a")):
        path = store.root / "manifests/registry.ollama.ai/library" / name / "latest"
        os.utime(path, ns=(base + offset, base + offset))
    assert [m.name.display() for m in store.list()] == ["b:latest", "c:latest", "a:latest"]


def test_list_skips_junk(store: Store) -> None:
    make_model(store, "good")
    junk = store.manifests_dir / "registry.ollama.ai/library/bad name/latest"
    junk.parent.mkdir(parents=True)
    junk.write_text("{}")
    broken = store.manifests_dir / "registry.ollama.ai/library/broken/latest"
    broken.parent.mkdir(parents=True)
    broken.write_text("not json")
    assert [m.name.display() for m in store.list()] == ["good:latest"]
    assert Store(store.root / "nowhere").list() == []


def test_copy_shares_blobs(store: Store) -> None:
    make_model(store, "src")
    blobs_before = files_under(store.blobs_dir)
    copied = store.copy("src", "me/dst:v2")
    assert copied.name.display() == "me/dst:v2"
    src_file = store.manifests_dir / "registry.ollama.ai/library/src/latest"
    dst_file = store.manifests_dir / "registry.ollama.ai/me/dst/v2"
    assert dst_file.read_bytes() == src_file.read_bytes()
    assert files_under(store.blobs_dir) == blobs_before
    assert store.get("me/dst:v2").digest == store.get("src").digest


def test_copy_errors(store: Store) -> None:
    with pytest.raises(NotFound) as info:
        store.copy("ghost", "other")
    assert info.value.message == 'model "ghost" not found'
    make_model(store, "src")
    with pytest.raises(BadRequest, match="^invalid model name$"):
        store.copy("src", "bad/name/with/too/many")


def test_delete_prunes_unreferenced_blobs_and_empty_dirs(store: Store) -> None:
    shared = b"shared weights"
    first = make_model(store, "alice/one", weights=shared, extra=[(MEDIA_SYSTEM, b"only one")])
    second = make_model(store, "bob/two", weights=shared, extra=[(MEDIA_SYSTEM, b"only two")])
    unrelated = store.write_blob_bytes(b"uploaded, not yet in a manifest")

    store.delete("alice/one")

    assert not (store.manifests_dir / "registry.ollama.ai/alice").exists()
    assert (store.manifests_dir / "registry.ollama.ai/bob/two/latest").is_file()
    assert store.has_blob(first.layers[0].digest)  # still used by bob/two
    assert not store.has_blob(first.layers[1].digest)  # "only one" system prompt
    assert store.has_blob(second.layers[1].digest)
    assert store.has_blob(unrelated.digest)  # delete only prunes the deleted model's blobs
    assert store.has_blob(second.config.digest)  # identical config blob, still referenced

    store.delete("BOB/two:LATEST")
    assert files_under(store.manifests_dir) == []
    assert store.manifests_dir.is_dir()  # the root itself stays
    assert files_under(store.blobs_dir) == [store.blob_path(unrelated.digest).name]


def test_remove_unused_blobs_keeps_what_a_manifest_names(store: Store) -> None:
    model = make_model(store, "keeper", weights=b"kept weights")
    loose = store.write_blob_bytes(b"nobody names this")
    asked = {model.layers[0].digest, loose.digest, "sha256:" + "0" * 64}  # one never existed
    assert store.remove_unused_blobs(asked) == [loose.digest]
    assert store.has_blob(model.layers[0].digest) and not store.has_blob(loose.digest)


def test_delete_missing(store: Store) -> None:
    with pytest.raises(NotFound) as info:
        store.delete("ghost:1")
    assert info.value.message == "model 'ghost:1' not found"


def test_prune_removes_old_orphans_only(store: Store) -> None:
    manifest = make_model(store, "kept")
    orphan = store.write_blob_bytes(b"orphan")
    fresh = store.write_blob_bytes(b"fresh orphan")
    leftover = store.blobs_dir / ".tmp-sha256-abandoned"
    leftover.write_bytes(b"partial")
    old = 1_600_000_000
    for path in (
        store.blob_path(orphan.digest),
        leftover,
        *[store.blob_path(d) for d in manifest.digests()],
    ):
        os.utime(path, (old, old))
    removed = store.prune()
    assert sorted(p.name for p in removed) == sorted(
        [store.blob_path(orphan.digest).name, leftover.name]
    )
    assert store.has_blob(fresh.digest)
    assert all(store.has_blob(d) for d in manifest.digests())


# ----- tags / timestamps -----


def test_rfc3339_nano_like_go() -> None:
    assert rfc3339_nano(1_795_554_955_870_613_328) == "2026-11-24T21:15:55.870613328Z"
    assert rfc3339_nano(1_795_554_955_500_000_000) == "2026-11-24T21:15:55.5Z"
    assert rfc3339_nano(1_795_554_955_000_000_000) == "2026-11-24T21:15:55Z"
    assert RFC3339_NANO.match(rfc3339_nano())


def test_tags_entry_shape(store: Store, tmp_path: Path) -> None:
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf")
    make_model(store, "tiny", gguf_path=tiny)
    model = store.get("tiny")
    entry = tags_entry(model)
    assert list(entry) == [
        "name",
        "model",
        "modified_at",
        "size",
        "digest",
        "details",
        "capabilities",
    ]
    assert entry["name"] == entry["model"] == "tiny:latest"
    assert RFC3339_NANO.match(entry["modified_at"])
    assert entry["size"] == model.size
    assert re.fullmatch(r"[0-9a-f]{64}", entry["digest"])
    assert entry["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "1.2M",
        "quantization_level": "Q4_K_M",
        "context_length": 2048,  # not in this config: read from the GGUF header
        "embedding_length": 64,
    }
    assert entry["capabilities"] == ["completion"]


# ----- GGUF metadata -----


def test_gguf_info_reads_header(tmp_path: Path) -> None:
    info = gguf_info.read_gguf(write_tiny_gguf(tmp_path / "t.gguf"))
    assert info.architecture == "llama"
    assert info.parameter_count == 7 * 64 + 64
    assert info.file_type == "Q4_K_M"
    assert (info.context_length, info.embedding_length, info.block_count) == (2048, 64, 2)
    assert (info.head_count, info.head_count_kv) == (4, 2)
    assert info.chat_template is None
    assert not info.has_pooling_type
    assert info.kv["general.name"] == "tiny"
    assert info.kv["llama.attention.layer_norm_rms_epsilon"] == 1e-06  # float32, shortest form
    assert info.kv["tokenizer.ggml.tokens"][-1] == "ü"
    assert info.kv["tokenizer.ggml.add_bos_token"] is True
    assert info.tensors == [
        {"name": "token_embd.weight", "type": "F32", "shape": [64, 7]},
        {"name": "output_norm.weight", "type": "F16", "shape": [64]},
    ]
    json.dumps(info.kv)  # everything is JSON-able


def test_header_matches_gguf_reader(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "t.gguf", chat_template="{{ messages }}")
    ours = read_header(path)
    reader = gguf.GGUFReader(path)
    assert set(ours.kv) == {k for k in reader.fields if not k.startswith("GGUF.")}
    assert ours.kv["tokenizer.chat_template"] == reader.fields["tokenizer.chat_template"].contents()
    assert ours.kv["tokenizer.ggml.tokens"] == reader.fields["tokenizer.ggml.tokens"].contents()
    assert [t.name for t in ours.tensors] == [t.name for t in reader.tensors]
    assert [t.shape for t in ours.tensors] == [[int(d) for d in t.shape] for t in reader.tensors]


def test_gguf_cache_and_invalidation(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "t.gguf")
    first = gguf_info.read_gguf(path)
    assert gguf_info.read_gguf(path) is first
    write_tiny_gguf(path, arch="qwen2")
    os.utime(path, ns=(1, 1))  # a rewrite always changes mtime; force it on coarse clocks
    assert gguf_info.read_gguf(path).architecture == "qwen2"


def test_gguf_file_type_fallback_and_errors(tmp_path: Path) -> None:
    info = gguf_info.read_gguf(write_tiny_gguf(tmp_path / "t.gguf", file_type=None))
    assert info.file_type == "F32"  # from the tensors: the 2-D weight is F32
    f16 = gguf_info.read_gguf(write_tiny_gguf(tmp_path / "f16.gguf", file_type=1))
    assert f16.file_type == "F16"
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    assert gguf_info.read_gguf_safe(junk) is None
    assert gguf_info.read_gguf_safe(tmp_path / "missing.gguf") is None
    with pytest.raises(ValueError):
        gguf_info.read_gguf(junk)


def test_model_info_hides_arrays_unless_verbose(tmp_path: Path) -> None:
    info = gguf_info.read_gguf(write_tiny_gguf(tmp_path / "t.gguf", chat_template="x"))
    brief = gguf_info.model_info(info, verbose=False)
    assert "general.name" not in brief and "tokenizer.chat_template" not in brief
    assert list(brief) == sorted(brief)
    assert brief["tokenizer.ggml.tokens"] is None
    assert brief["general.tags"] is None  # even short arrays, as Ollama sends them
    assert brief["general.parameter_count"] == info.parameter_count
    assert brief["llama.rope.freq_base"] == 10000 and isinstance(brief["llama.rope.freq_base"], int)
    full = gguf_info.model_info(info, verbose=True)
    assert full["tokenizer.ggml.tokens"] == ["<pad>", "a", "b", "c", "d", "e", "ü"]
    assert full["general.tags"] == ["x", "y"]


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (268_098_176, "268.10M"),
        (8_030_261_248, "8.0B"),
        (7_000_000_000, "7B"),
        (1_000_000, "1M"),
        (1_500, "2K"),
        (999, "999"),
    ],
)
def test_human_parameter_size(n: int, text: str) -> None:
    assert gguf_info.human_parameter_size(n) == text


def test_capabilities(tmp_path: Path) -> None:
    plain = gguf_info.read_gguf(write_tiny_gguf(tmp_path / "plain.gguf"))
    assert gguf_info.capabilities(plain, None) == ["completion"]
    assert gguf_info.capabilities(plain, "{{ .Prompt }}") == ["completion"]
    assert gguf_info.capabilities(plain, "{{ if .Tools }}{{ .Tools }}{{ end }}{{ .Suffix }}") == [
        "completion",
        "tools",
        "insert",
    ]
    jinja = gguf_info.read_gguf(
        write_tiny_gguf(tmp_path / "jinja.gguf", chat_template="{% if tools %}{% endif %}")
    )
    assert gguf_info.capabilities(jinja, None) == ["completion", "tools"]
    embed = gguf_info.read_gguf(write_tiny_gguf(tmp_path / "embed.gguf", pooling=True))
    assert embed.has_pooling_type
    assert gguf_info.capabilities(embed, None) == ["embedding"]


def test_details_from_gguf(tmp_path: Path) -> None:
    info = gguf_info.read_gguf(write_tiny_gguf(tmp_path / "t.gguf"))
    assert gguf_info.details(info) == {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "512",
        "quantization_level": "Q4_K_M",
    }


# ----- /api/show -----


def test_go_formatting() -> None:
    cases = {
        1.0: "1",
        64: "64",
        0.95: "0.95",
        1e6: "1e+06",
        123456.0: "123456",
        1e-5: "1e-05",
        0.0001: "0.0001",
        -2.5: "-2.5",
        0: "0",
    }
    assert {k: go_float(k) for k in cases} == cases
    assert go_quote('a "b"\n\t\\ é') == '"a \\"b\\"\\n\\t\\\\ é"'


def test_parameters_text() -> None:
    text = parameters_text(
        {"temperature": 1.0, "stop": ["<end_of_turn>", "x y"], "top_k": 64, "use_mmap": False}
    )
    assert text.split("\n") == [
        'stop                           "<end_of_turn>"',
        'stop                           "x y"',
        "temperature                    1",
        "top_k                          64",
        "use_mmap                       false",
    ]
    assert parameters_text({}) == ""


def test_show_response_full(store: Store, tmp_path: Path) -> None:
    tiny = write_tiny_gguf(tmp_path / "t.gguf")
    params = {"stop": ["<end>", " spaced "], "temperature": 0.7}
    make_model(
        store,
        "user/tiny:1",
        gguf_path=tiny,
        extra=[
            (MEDIA_TEMPLATE, b"{{ .System }}\n{{ .Prompt }}"),
            (MEDIA_SYSTEM, b'say "hi"\nthen stop'),
            (MEDIA_PARAMS, json.dumps(params).encode()),
            (MEDIA_LICENSE, b"MIT"),
            (MEDIA_MESSAGES, json.dumps([{"role": "user", "content": "hello"}]).encode()),
        ],
    )
    model = store.get("user/tiny:1")
    body = show_response(store, model, verbose=False)
    assert list(body) == [
        "license",
        "modelfile",
        "parameters",
        "template",
        "system",
        "details",
        "messages",
        "model_info",
        "tensors",
        "capabilities",
        "modified_at",
    ]
    blob = model.model_path
    assert body["modelfile"] == (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        "# FROM user/tiny:1\n"
        "\n"
        f"FROM {blob}\n"
        'TEMPLATE "{{ .System }}\n{{ .Prompt }}"\n'
        'SYSTEM """say "hi"\nthen stop"""\n'
        "PARAMETER stop <end>\n"
        'PARAMETER stop " spaced "\n'
        "PARAMETER temperature 0.7\n"
        "LICENSE MIT\n"
        "MESSAGE user hello\n"
    )
    assert body["parameters"] == (
        'stop                           "<end>"\n'
        'stop                           " spaced "\n'
        "temperature                    0.7"
    )
    assert body["license"] == "MIT"
    assert body["template"] == "{{ .System }}\n{{ .Prompt }}"
    assert body["system"] == 'say "hi"\nthen stop'
    assert body["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "1.2M",
        "quantization_level": "Q4_K_M",
    }
    assert body["messages"] == [{"role": "user", "content": "hello"}]
    assert body["model_info"]["tokenizer.ggml.tokens"] is None
    assert body["tensors"][0] == {"name": "token_embd.weight", "type": "F32", "shape": [64, 7]}
    assert body["capabilities"] == ["completion"]
    assert body["modified_at"] == rfc3339_nano(model.modified_ns)
    json.dumps(body)

    verbose = show_response(store, model, verbose=True)
    assert verbose["model_info"]["tokenizer.ggml.tokens"][0] == "<pad>"
    overridden = show_response(store, model, system="other", options={"temperature": 0.1})
    assert overridden["system"] == "other"
    assert "PARAMETER temperature 0.1" in overridden["modelfile"]
    assert overridden["parameters"] == body["parameters"]  # options only touch the Modelfile


def test_show_response_minimal_matches_reference_shape(store: Store, tmp_path: Path) -> None:
    make_model(store, "tiny", gguf_path=write_tiny_gguf(tmp_path / "t.gguf"))
    model = store.get("tiny")
    body = show_response(store, model, verbose=False)
    # same keys, in the same order, as ollama-responses/api_show.json
    assert list(body) == [
        "modelfile",
        "template",
        "details",
        "model_info",
        "tensors",
        "capabilities",
        "modified_at",
    ]
    assert body["template"] == "{{ .Prompt }}"
    assert body["modelfile"].endswith(f"\n\nFROM {model.model_path}\nTEMPLATE {{{{ .Prompt }}}}\n")


def test_show_model_info_is_object_without_gguf(store: Store) -> None:
    make_model(store, "nogguf", weights=b"not a gguf")
    body = show_response(store, store.get("nogguf"), verbose=False)
    assert body["model_info"] == {}
    assert "tensors" not in body
