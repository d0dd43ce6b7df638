"""Helpers for the family tests: a live server and the tiny models created in it through the
HTTP API, as a user would (blob upload, then /api/create with Ollama's template and stops)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import LiveServer
from tests.tinymodels import Family, write_gguf


def upload(server: LiveServer, path: Path) -> str:
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    resp = httpx.post(f"{server.url}/api/blobs/{digest}", content=path.read_bytes(), timeout=60)
    assert resp.status_code in (200, 201), resp.text
    return digest


def create(server: LiveServer, family: Family, directory: Path, *, name: str | None = None,
           script: list[str] | None = None, template: str | None = None,
           **extra: Any) -> str:
    """The family's tiny model created on the server under `name`; with `script`, a model
    that answers any chat or prompt with those pieces (tests/tinymodels.py)."""
    name = name or family.name
    path = write_gguf(family, directory / f"{name.replace(':', '_')}.gguf", script=script)
    body: dict[str, Any] = {"model": name, "files": {path.name: upload(server, path)},
                            "stream": False, **extra}
    text = family.template if template is None else template
    if text:
        body["template"] = text
    if family.stops:
        body.setdefault("parameters", {})["stop"] = family.stops
    resp = httpx.post(server.url + "/api/create", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    return name
