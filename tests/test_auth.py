"""API keys on a live server, through the real `openai` and `ollama` clients: 401/403/429 and the
SDKs' exception classes, admin-only routes, filtered model lists, limits and their headers, fair
sharing of a slot, keys reloaded without a restart, and usage that survives one.

One server for the module (one slot, so that queueing is easy to provoke); the keys are made with
`corral keys create` before it starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tests.conftest import ROOT, LiveServer, start_server

pytestmark = pytest.mark.e2e

MODEL = "gemma3:270m"
SHORT = {"num_predict": 4, "temperature": 0}
KEYS = {
    "root": ["--admin"],
    "alice": ["--models", MODEL],
    "bob": ["--models", "other:1b"],
    "limited": ["--rpm", "2"],
    "thrifty": ["--tpm", "30"],
    "single": ["--concurrency", "1"],
    "flood": [],
    "solo": [],
}


def keys_cli(path: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "keys", "--keys-file", str(path),
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@dataclass
class Team:
    models: Path
    keys: Path
    log_dir: Path
    secrets: dict[str, str] = field(default_factory=dict)
    server: LiveServer | None = None
    starts: int = 0

    def start(self) -> LiveServer:
        self.starts += 1
        self.server = start_server(self.models, self.log_dir / f"serve-{self.starts}.log",
                                   CORRAL_KEYS_FILE=str(self.keys), OLLAMA_NUM_PARALLEL="1",
                                   OLLAMA_KEEP_ALIVE="10m")
        return self.server

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def headers(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[name]}"}

    def openai(self, name: str | None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", max_retries=0,
                             api_key=self.secrets[name] if name else "not-a-key")

    def ollama(self, name: str | None) -> ollama.Client:
        return ollama.Client(host=self.url, headers=self.headers(name) if name else {})


@pytest.fixture(scope="module")
def team(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    folder = tmp_path_factory.mktemp("team")
    state = Team(models_dir, folder / "keys.json", folder)
    for name, flags in KEYS.items():
        out = keys_cli(state.keys, "create", name, *flags)
        state.secrets[name] = out.strip().splitlines()[-1]
    state.start()
    try:
        yield state
    finally:
        if state.server is not None:
            state.server.stop()


def test_health_stays_open_and_everything_else_needs_a_key(team: Team) -> None:
    assert httpx.get(team.url + "/").status_code == 200
    assert httpx.head(team.url + "/").status_code == 200
    missing = httpx.get(team.url + "/api/tags")
    assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]
    assert httpx.get(team.url + "/api/version", headers={"Authorization": "Bearer x"}
                     ).status_code == 401
    with pytest.raises(ollama.ResponseError) as err:
        team.ollama(None).list()
    assert err.value.status_code == 401
    with pytest.raises(openai.AuthenticationError) as auth:
        team.openai(None).models.list()
    assert auth.value.status_code == 401 and auth.value.body["type"] == "authentication_error"


def test_model_a_key_may_not_use_is_403_and_lists_are_filtered(team: Team) -> None:
    with pytest.raises(openai.PermissionDeniedError, match=MODEL):
        team.openai("bob").chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    with pytest.raises(ollama.ResponseError) as err:
        team.ollama("bob").generate(MODEL, "hi", options=SHORT)
    assert err.value.status_code == 403 and MODEL in str(err.value.error)
    with pytest.raises(ollama.ResponseError) as shown:
        team.ollama("bob").show(MODEL)
    assert shown.value.status_code == 403
    team.ollama("alice").generate(MODEL, "The sky is", options=SHORT)  # loads it
    assert [m.model for m in team.ollama("bob").list().models] == []
    assert [m.model for m in team.ollama("bob").ps().models] == []
    assert [m.id for m in team.openai("bob").models.list()] == []
    assert MODEL in [m.model for m in team.ollama("alice").list().models]
    assert MODEL in [m.model for m in team.ollama("alice").ps().models]
    assert [m.id for m in team.openai("alice").models.list()] == [MODEL]


def test_model_management_needs_an_admin_key(team: Team) -> None:
    alice = team.ollama("alice")
    for call in (lambda c: c.copy(MODEL, "team-copy"), lambda c: c.delete("team-copy"),
                 lambda c: c.pull("nowhere.invalid/x/y:z", insecure=True),
                 lambda c: c.push("team-copy", insecure=True),
                 lambda c: c.create("team-made", from_=MODEL)):
        with pytest.raises(ollama.ResponseError) as err:
            call(alice)
        assert err.value.status_code == 403 and "admin" in str(err.value.error)
    blob = httpx.head(team.url + "/api/blobs/sha256:" + "0" * 64, headers=team.headers("alice"))
    assert blob.status_code == 403
    root = team.ollama("root")
    root.copy(MODEL, "team-copy")
    root.delete("team-copy")
    metrics = httpx.get(team.url + "/metrics", headers=team.headers("alice"))
    assert metrics.status_code == 403
    assert httpx.get(team.url + "/metrics", headers=team.headers("root")).status_code == 200


def test_keep_alive_is_the_servers_for_other_keys(team: Team) -> None:
    alice = team.ollama("alice")
    with pytest.raises(ollama.ResponseError) as err:
        alice.generate(MODEL, "", keep_alive=0)  # only unloads
    assert err.value.status_code == 403
    alice.generate(MODEL, "Hello", options=SHORT, keep_alive=0)  # runs; keep_alive ignored
    [loaded] = [m for m in team.ollama("root").ps().models if m.model == MODEL]
    assert loaded.expires_at.timestamp() - time.time() > 300  # still the server's 10 minutes


def test_limits_answer_429_with_openais_headers(team: Team) -> None:
    body = {"model": MODEL, "prompt": "Hi", "stream": False, "options": SHORT}
    alice = httpx.post(team.url + "/api/generate", json=body, headers=team.headers("alice"),
                       timeout=120)
    assert alice.status_code == 200
    assert not [h for h in alice.headers if h.startswith("x-ratelimit")]  # no limits, no headers
    replies = [httpx.post(team.url + "/api/generate", json=body, timeout=120,
                          headers=team.headers("limited")) for _ in range(2)]
    assert [r.status_code for r in replies] == [200, 200]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in replies] == ["1", "0"]
    assert replies[0].headers["x-ratelimit-limit-requests"] == "2"
    assert replies[0].headers["x-ratelimit-reset-requests"].endswith("s")
    assert "x-ratelimit-limit-tokens" not in replies[0].headers
    with pytest.raises(openai.RateLimitError) as err:
        team.openai("limited").completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    assert err.value.status_code == 429 and err.value.body["type"] == "rate_limit_error"
    assert 1 <= int(err.value.response.headers["retry-after"]) <= 30
    assert err.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_tokens_per_minute_are_charged_after_the_reply(team: Team) -> None:
    client = team.ollama("thrifty")
    # Far more than a minute's worth: the overdraw refills at half a token a second, so the
    # next request is still refused however long this reply took on a loaded machine.
    reply = client.generate(MODEL, "Count: one, two, three, four, five, six, seven,",
                            options={"num_predict": 128, "temperature": 0})
    assert reply.prompt_eval_count + reply.eval_count > 30
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(MODEL, "Again", options=SHORT)
    assert err.value.status_code == 429 and "tokens per minute" in str(err.value.error)
    info = httpx.get(team.url + "/api/tags", headers=team.headers("thrifty"))
    assert info.headers["x-ratelimit-limit-tokens"] == "30"
    assert info.headers["x-ratelimit-remaining-tokens"] == "0"


def test_concurrency_limit(team: Team) -> None:
    # A stream that runs until this test closes it (not one that may have ended already).
    with httpx.stream("POST", team.url + "/api/generate", headers=team.headers("single"),
                      json={"model": MODEL, "prompt": "Once upon a time",
                            "options": {"num_predict": 100_000}}, timeout=120) as reply:
        assert reply.status_code == 200
        lines = reply.iter_lines()
        assert json.loads(next(lines))["done"] is False  # streaming: in flight
        second = httpx.post(team.url + "/api/generate", headers=team.headers("single"),
                            timeout=60, json={"model": MODEL, "prompt": "Hi", "options": SHORT})
        assert second.status_code == 429 and "in flight" in second.json()["error"]
        assert json.loads(next(lines))["done"] is False  # and still is
    # Closed: the server cancels it and the key's slot in flight comes back.
    deadline = time.monotonic() + 60
    while True:
        again = httpx.post(team.url + "/api/generate", headers=team.headers("single"),
                           timeout=60, json={"model": MODEL, "prompt": "Hi", "options": SHORT,
                                             "stream": False})
        if again.status_code != 429 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert again.status_code == 200, again.text


def test_a_flood_does_not_hold_back_another_keys_request(team: Team) -> None:
    """One slot; `flood` queues four requests, then `solo` sends one: round-robin gives it the
    slot right after the flood's running request, not after all four."""
    order: list[str] = []
    lock = threading.Lock()

    def one(name: str) -> None:
        # The flood's requests are long, so its first still runs when solo's arrives.
        team.ollama(name).generate(MODEL, f"List of {name} items:", options={
            "num_predict": 24 if name == "flood" else 4, "temperature": 0})
        with lock:
            order.append(name)

    floods = [threading.Thread(target=one, args=("flood",)) for _ in range(4)]
    for thread in floods:
        thread.start()
    deadline = time.monotonic() + 120
    while True:  # until the flood's backlog waits in the runner
        ps = httpx.get(team.url + "/api/ps", headers=team.headers("root")).json()["models"]
        if ps and ps[0]["corral"]["queued"] >= 3:
            break
        if time.monotonic() > deadline:  # never fall through to a test of nothing
            pytest.fail(f"the flood's backlog never waited in the runner: {ps}")
        time.sleep(0.1)
    solo = threading.Thread(target=one, args=("solo",))
    solo.start()
    for thread in [*floods, solo]:
        thread.join(120)
    assert len(order) == 5
    assert order.index("solo") <= 1, order  # first-come-first-served would make it last


def test_keys_are_reloaded_without_a_restart(team: Team) -> None:
    out = keys_cli(team.keys, "create", "late", "--models", MODEL)
    secret = out.strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {secret}"}
    deadline = time.monotonic() + 2.0
    while httpx.get(team.url + "/api/tags", headers=headers).status_code != 200:
        assert time.monotonic() < deadline, "a new key was not accepted within 2 s"
        time.sleep(0.05)
    keys_cli(team.keys, "revoke", "late")
    deadline = time.monotonic() + 2.0
    while httpx.get(team.url + "/api/tags", headers=headers).status_code != 401:
        assert time.monotonic() < deadline, "a revoked key still worked after 2 s"
        time.sleep(0.05)


ENV_SECRET = "sekrit-env-key-" + "0123456789abcdefghij"  # 34 characters: strong enough


def test_env_api_key_is_an_admin_key(models_dir: Path, tmp_path: Path) -> None:
    server = start_server(models_dir, tmp_path / "serve.log", CORRAL_API_KEY=ENV_SECRET)
    try:
        assert httpx.get(server.url + "/api/tags").status_code == 401
        ok = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {ENV_SECRET}"})
        assert ok.status_code == 200
        cli = subprocess.run([sys.executable, "-m", "gateway.cli", "list"], cwd=ROOT, timeout=60,
                             env={**server.env, "CORRAL_API_KEY": ENV_SECRET},
                             capture_output=True, text=True)
        assert cli.returncode == 0 and MODEL in cli.stdout  # the CLI sends the key
    finally:
        server.stop()
    assert ENV_SECRET not in (tmp_path / "serve.log").read_text()


def test_usage_is_counted_per_key_and_survives_a_restart(team: Team) -> None:
    def usage() -> tuple[int, int, int]:
        line = keys_cli(team.keys, "usage", "alice").splitlines()[1].split()
        assert line[:2] == ["alice", MODEL]
        return int(line[2]), int(line[3]), int(line[4])

    client = team.ollama("alice")
    client.generate(MODEL, "One more", options=SHORT)
    before = usage()
    assert before[0] >= 1 and before[1] > 0 and before[2] > 0
    assert team.server is not None
    team.server.stop()
    team.start()
    reply = team.ollama("alice").generate(MODEL, "After the restart", options=SHORT)
    after = usage()
    assert after == (before[0] + 1, before[1] + reply.prompt_eval_count,
                     before[2] + reply.eval_count)
    listed = keys_cli(team.keys, "list")
    alice = next(line for line in listed.splitlines() if line.startswith("alice"))
    assert alice.rstrip().endswith("ago")  # LAST USED (its EXPIRES says never)
