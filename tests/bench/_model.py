"""The bundled model's GGUF path for in-process benchmarks (imported into a temp store once)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from registry.bundled import import_bundled_model
from registry.store import Store

_store: Store | None = None


def bundled_model_path() -> str:
    global _store
    if _store is None:
        _store = Store(Path(tempfile.mkdtemp(prefix="corral-bench-")) / "models")
        import_bundled_model(_store)
    path = _store.get("gemma3:270m").model_path
    assert path is not None
    return str(path)
