"""A full disk is a 507 with a plain message, not a 500 with an errno (issue 24). The disk is
the hardware edge: the store's blob writer fails as a full filesystem makes it fail."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from registry.store import Store
from shared.config import Settings


class FullDisk:
    def write(self, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def commit(self, digest: str) -> None:
        raise AssertionError("nothing was written")

    def abort(self) -> None:
        pass


def test_a_full_disk_is_507(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "models")
    settings = Settings(models=tmp_path / "models", keys_file=tmp_path / "keys.json",
                        access_log="off")
    app = create_app(settings, store)
    monkeypatch.setattr(Store, "blob_writer", lambda self: FullDisk())
    body = b"weights" * 1000
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    reply: Any = TestClient(app, base_url="http://127.0.0.1:11434",
                              raise_server_exceptions=False).post(
        f"/api/blobs/{digest}", content=body)
    assert reply.status_code == 507
    assert reply.json() == {"error": "the server's disk is full: no space left to write to"}
