"""Cross-key cache isolation on a live server with API keys: a key reuses only the prompt caches
its own requests made (slots, copies between slots, the RAM prompt cache, the disk prompt cache
after a reload), plus the start of a prompt that is an admin-set SYSTEM prompt. Otherwise the
cached-token count (or the first token's time) of a guess tells one key another key's prompt."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, LiveServer, start_server

pytestmark = pytest.mark.e2e

MODEL = "gemma3:270m"
PREAMBLE = ("Notes from the quarterly review of the warehouse on the east side of the harbour, "
            "kept by the night manager, who writes down everything that happens after dark. ")
SECRET = PREAMBLE + "The safe combination is 7 3 9 1 and nobody else may know it."
RIGHT_GUESS = PREAMBLE + "The safe combination is 7 3 9"
SYSTEM = ("You are the help desk of the harbour warehouse. Answer in one short sentence, "
          "politely, and never mention prices, opening hours or the names of the staff.")
KEYS = ["root", "a", "b", "c", "d", "e", "f"]


@dataclass
class Team:
    server: LiveServer
    secrets: dict[str, str] = field(default_factory=dict)

    def headers(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[name]}"}

    def generate(self, name: str, prompt: str, model: str = MODEL) -> dict[str, Any]:
        """A raw prompt (no template): every token of it is the caller's own text."""
        reply = httpx.post(self.server.url + "/api/generate", headers=self.headers(name),
                           json={"model": model, "prompt": prompt, "raw": True, "stream": False,
                                 "options": {"num_predict": 1, "temperature": 0}}, timeout=300)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def chat(self, name: str, text: str, model: str) -> dict[str, Any]:
        reply = httpx.post(self.server.url + "/api/chat", headers=self.headers(name),
                           json={"model": model, "stream": False,
                                 "messages": [{"role": "user", "content": text}],
                                 "options": {"num_predict": 1, "temperature": 0}}, timeout=300)
        assert reply.status_code == 200, reply.text
        return reply.json()


def keys_cli(path: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "keys", "--keys-file", str(path),
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def team(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    folder = tmp_path_factory.mktemp("isolation")
    keys = folder / "keys.json"
    secrets = {name: keys_cli(keys, "create", name, *(["--admin"] if name == "root" else []))
               .strip().splitlines()[-1] for name in KEYS}
    # Two slots: a request can take a free slot another key's prompt is in, or copy its cache.
    server = start_server(models_dir, folder / "serve.log", CORRAL_KEYS_FILE=str(keys),
                          OLLAMA_NUM_PARALLEL="2", OLLAMA_KEEP_ALIVE="10m",
                          CORRAL_PROMPT_CACHE_DIR=str(folder / "prompt-cache"))
    try:
        yield Team(server, secrets)
    finally:
        server.stop()


def loaded(team: Team) -> bool:
    ps = httpx.get(team.server.url + "/api/ps", headers=team.headers("root"), timeout=30).json()
    return any(m["name"] == MODEL for m in ps["models"])


def test_a_key_never_reuses_another_keys_prompt(team: Team) -> None:
    first = team.generate("b", SECRET)
    n = first["prompt_eval_count"]
    assert n > 32
    again = team.generate("b", SECRET)  # b's own slot serves b: all but the last token
    assert again["prompt_eval_cached_count"] >= n - 1

    # Key a guesses: b's slot holds the whole guess, but a may not reuse it (before: n - 2).
    probe = team.generate("a", RIGHT_GUESS)
    assert probe["prompt_eval_cached_count"] == 0, probe
    own = team.generate("a", RIGHT_GUESS)  # what a made itself it does reuse
    assert own["prompt_eval_cached_count"] >= probe["prompt_eval_count"] - 1

    # Both slots taken by other prompts: b's secret now lives in the RAM prompt cache.
    for text in ("A short note about the weather in the hills this spring and summer. " * 3,
                 "Three lines about the history of the lighthouse and its keepers. " * 3):
        team.generate("b", text)
    ram = team.generate("c", RIGHT_GUESS)
    assert ram["prompt_eval_cached_count"] == 0, ram
    back = team.generate("b", SECRET)  # b's own state comes back from RAM
    assert back["prompt_eval_cached_count"] >= n - 1

    # Unloaded (the prompt cache goes to disk) and loaded again: still b's alone.
    unload = httpx.post(team.server.url + "/api/generate", headers=team.headers("root"),
                        json={"model": MODEL, "keep_alive": 0}, timeout=120)
    assert unload.status_code == 200
    start = time.monotonic()
    while loaded(team):
        assert time.monotonic() - start < 120, "the model did not unload"
        time.sleep(0.1)
    disk = team.generate("d", RIGHT_GUESS)
    assert disk["prompt_eval_cached_count"] == 0, disk
    from_disk = team.generate("b", SECRET)
    assert from_disk["prompt_eval_cached_count"] >= n - 1


def test_a_shared_system_prompt_is_reused_across_keys(team: Team) -> None:
    made = httpx.post(team.server.url + "/api/create", headers=team.headers("root"),
                      json={"model": "helpdesk", "from": MODEL, "system": SYSTEM,
                            "stream": False}, timeout=300)
    assert made.status_code == 200, made.text
    first = team.chat("e", "Where do I leave a parcel for the night manager of the east side?",
                      "helpdesk")
    other = team.chat("f", "Where do I leave a parcel for the night manager of the east side?",
                      "helpdesk")
    # The SYSTEM prompt (more than 30 tokens, rendered) is shared; f's own words are not,
    # though e sent the very same ones.
    assert other["prompt_eval_cached_count"] >= 30, other
    assert other["prompt_eval_cached_count"] < first["prompt_eval_count"] - 10, (first, other)
