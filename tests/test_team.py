"""Teams without a server: the keys file, the ledger's limits and usage, the fair queue, the
rate-limit headers and `corral keys`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.team.keys import ApiKey, KeyRing, KeysFile, KeysFileError, hash_secret, parse_expiry
from gateway.team.ledger import Admission, Ledger, Limits, Window, ledger_path
from gateway.team.middleware import go_duration, ratelimit_headers
from registry.names import ModelName
from runner.process.fairqueue import FairQueue

# --- the keys file ---------------------------------------------------------------------------


def test_keys_file_keeps_only_hashes_private_and_atomic(tmp_path: Path) -> None:
    keys = KeysFile(tmp_path / "team" / "keys.json")
    key, secret = keys.create("alice", models=["gemma3:270m"], rpm=5)
    raw = keys.path.read_text()
    assert secret not in raw and hash_secret(secret) in raw
    assert stat.S_IMODE(keys.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.path.parent.stat().st_mode) == 0o700
    assert [p.name for p in keys.path.parent.iterdir() if p.name.startswith(".tmp")] == []
    [read] = keys.read()
    assert read == key and read.rpm == 5 and read.tpm is None
    with pytest.raises(KeysFileError, match="already exists"):
        keys.create("alice")
    with pytest.raises(KeysFileError, match="reserved"):
        keys.create("env")
    with pytest.raises(KeysFileError, match="at least 1"):
        keys.create("bob", tpm=0)
    assert keys.revoke("alice").id == key.id and keys.read() == []
    with pytest.raises(KeysFileError, match="no key named"):
        keys.revoke("alice")


def test_model_patterns() -> None:
    key = ApiKey("k", "id", "h", models=("gemma3:270m", "qwen3:*", "team/*"))
    assert key.may_use(ModelName.parse("Gemma3:270M"))
    assert key.may_use(ModelName.parse("qwen3:8b"))
    assert key.may_use(ModelName.parse("team/coder:latest"))
    assert not key.may_use(ModelName.parse("gemma3:1b"))
    assert not key.may_use(ModelName.parse("llama3"))
    assert ApiKey("all", "id", "h").may_use(ModelName.parse("anything:at-all"))


def test_expiry() -> None:
    assert parse_expiry("30d") == 30 * 86400
    assert parse_expiry("2w") == 14 * 86400
    assert parse_expiry("1h30m") == 5400
    for bad in ("0s", "-1h", "soon", ""):
        with pytest.raises(KeysFileError):
            parse_expiry(bad)
    key = ApiKey("k", "id", "h", created=100.0, expires=200.0)
    assert not key.expired(now=199.0) and key.expired(now=200.0)


def test_keyring_reloads_on_change_and_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    ring = KeyRing(path)
    assert not ring.current().enabled  # no file: trust every caller, as Ollama
    _, secret = KeysFile(path).create("alice")
    assert ring.current().enabled and ring.current().find(secret).name == "alice"
    assert ring.current().find("corral-wrong") is None
    KeysFile(path).revoke("alice")
    # Auth has been on: no key left means nobody gets in, not everybody (issue 24).
    assert ring.current().enabled and ring.current().closed
    assert ring.current().find(secret) is None
    path.unlink()
    assert ring.current().closed
    assert KeyRing(path).current().closed  # a restart remembers it (the marker file)
    opened = KeyRing(path, open_without_keys=True).current()  # CORRAL_OPEN_WITHOUT_KEYS=1
    assert not opened.enabled
    assert not KeyRing(tmp_path / "never.json").current().enabled  # never had keys: open
    path.write_text("{not json")
    broken = ring.current()
    assert broken.enabled and "not valid JSON" in (broken.error or "")
    env = KeyRing(tmp_path / "absent.json", env_secret="s3cret")
    assert env.current().find("s3cret").admin and env.current().find("s3cret").name == "env"


# --- the ledger ------------------------------------------------------------------------------


def test_requests_bucket_refuses_then_refills(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    limits = Limits(rpm=2)
    t = 1000.0
    first = ledger.admit("k", limits, now=t)
    assert first.allowed and first.requests == Window(2, 1, 30.0) and first.tokens is None
    assert ledger.admit("k", limits, now=t).allowed
    refused = ledger.admit("k", limits, now=t + 6)
    # 6 s refilled 0.2 of a request: 0.8 of one is missing, at 2 per minute that is 24 s.
    assert not refused.allowed and refused.reason == "requests"
    assert refused.retry_after == pytest.approx(24.0)
    assert ledger.admit("k", limits, now=t + 30).allowed
    assert ledger.admit("other", limits, now=t + 30).allowed  # each key its own bucket


def test_tokens_are_charged_after_the_reply_and_may_overdraw(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    limits = Limits(tpm=600)  # 10 tokens a second
    t = 0.0
    assert ledger.admit("k", limits, now=t).allowed
    ledger.finish("k", limits, model="m", prompt_tokens=500, generated_tokens=400, counted=True,
                  now=t)
    refused = ledger.admit("k", limits, now=t + 1)  # -300 + 10: in debt
    assert not refused.allowed and refused.reason == "tokens"
    assert refused.tokens.remaining == 0
    assert refused.retry_after == pytest.approx(29.1)
    assert ledger.admit("k", limits, now=t + 31).allowed


def test_concurrency_counts_every_process_sharing_the_file(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    one, two = Ledger(path), Ledger(path)
    two.owner = one.owner + "-second"  # as another gateway process would be
    limits = Limits(concurrency=2)
    assert one.admit("k", limits).allowed
    assert two.admit("k", limits).allowed
    refused = one.admit("k", limits)
    assert not refused.allowed and refused.reason == "concurrency"
    assert one.admit("k", limits, count=False).allowed  # a peek never refuses
    two.finish("k", limits, model="", prompt_tokens=0, generated_tokens=0, counted=True)
    assert one.admit("k", limits).allowed


def test_usage_persists_and_dead_processes_stop_counting(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    ledger = Ledger(path)
    for _ in range(3):
        assert ledger.admit("k", Limits(concurrency=5)).allowed
        ledger.finish("k", Limits(), model="gemma3:270m", prompt_tokens=10, generated_tokens=4,
                      counted=True)
    ledger.admit("k", Limits(concurrency=1))  # left in flight by a process that then died
    ledger._db.execute("UPDATE inflight SET owner = ?", (ledger.owner.rsplit(":", 1)[0]
                                                          + ":999999999",))
    ledger.close()
    again = Ledger(path)
    [usage] = again.usage(["k"])
    assert (usage.model, usage.requests, usage.prompt_tokens, usage.generated_tokens) == (
        "gemma3:270m", 3, 30, 12)
    assert again.admit("k", Limits(concurrency=1)).allowed  # the dead one no longer counts
    assert time.time() - again.last_used()["k"] < 60
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_ratelimit_headers_as_openai_writes_them() -> None:
    assert [go_duration(s) for s in (0, 0.02, 1, 1.5, 61.25, 360, 3723)] == [
        "0s", "20ms", "1s", "1.5s", "1m1.25s", "6m0s", "1h2m3s"]
    headers = ratelimit_headers(Admission(True, Window(60, 59, 1.0), None))
    assert headers == {"x-ratelimit-limit-requests": "60",
                       "x-ratelimit-remaining-requests": "59",
                       "x-ratelimit-reset-requests": "1s"}
    assert ratelimit_headers(Admission(True)) == {}  # no limits: no headers


# --- fair sharing ----------------------------------------------------------------------------


def test_fair_queue_serves_a_newcomer_before_a_floods_backlog() -> None:
    queue: FairQueue[tuple[str, int]] = FairQueue(lambda item: item[0])
    for i in range(12):
        queue.append(("flood", i))
    served = [queue.popleft()]  # the flood's first request takes the free slot
    queue.append(("single", 0))
    served += [queue.popleft() for _ in range(len(queue))]
    assert served[:3] == [("flood", 0), ("single", 0), ("flood", 1)]
    assert [i for t, i in served if t == "flood"] == list(range(12))  # FIFO within a key


def test_fair_queue_rotates_and_supports_the_engines_deque_use() -> None:
    queue: FairQueue[tuple[str, int]] = FairQueue(lambda item: item[0])
    for tenant, n in (("a", 3), ("b", 2), ("c", 1)):
        for i in range(n):
            queue.append((tenant, i))
    assert len(queue) == 6 and sorted(queue) == sorted(
        [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("c", 0)])
    first = queue.popleft()
    queue.extendleft(reversed([first]))  # deferred: back at the head of its line
    queue.remove(("b", 1))
    order = [queue.popleft() for _ in range(len(queue))]
    assert order == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("a", 2)]
    assert not queue
    with pytest.raises(IndexError):
        queue.popleft()


def test_one_tenant_is_first_come_first_served() -> None:
    queue: FairQueue[tuple[str, int]] = FairQueue(lambda item: "")
    for item in [("x", 1), ("y", 2), ("x", 3)]:
        queue.append(item)
    assert [queue.popleft() for _ in range(3)] == [("x", 1), ("y", 2), ("x", 3)]


# --- corral keys -----------------------------------------------------------------------------


def test_keys_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.json"
    base = ["keys", "--keys-file", str(path)]
    assert main([*base, "create", "alice", "--models", "gemma3:270m", "--rpm", "10",
                 "--concurrency", "2", "--expires", "30d"]) == 0
    out = capsys.readouterr().out
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("corral-") and len(secret) > 40
    assert KeysFile(path).read()[0].digest == hash_secret(secret)
    assert main([*base, "list"]) == 0
    listed = capsys.readouterr().out
    assert "alice" in listed and "gemma3:270m" in listed and secret not in listed
    assert "never" in listed  # last used
    ledger = Ledger(ledger_path(path))
    key = KeysFile(path).read()[0]
    ledger.finish(key.id, Limits(), model="gemma3:270m", prompt_tokens=7, generated_tokens=3,
                  counted=False)
    ledger.close()
    assert main([*base, "usage", "alice"]) == 0
    usage = capsys.readouterr().out.splitlines()
    assert usage[1].split() == ["alice", "gemma3:270m", "1", "7", "3"]
    assert main([*base, "usage", "nobody"]) == 1
    assert main([*base, "revoke", "alice"]) == 0
    assert "refuses every caller" in capsys.readouterr().out
    assert json.loads(path.read_text())["keys"] == []


def test_keys_cli_reads_corral_keys_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "service-keys.json"
    monkeypatch.setenv("CORRAL_KEYS_FILE", str(path))
    assert main(["keys", "create", "svc", "--admin"]) == 0
    assert path.exists() and KeysFile(path).read()[0].admin
    capsys.readouterr()
    assert main(["keys", "create", "bad name"]) == 1
    assert "invalid key name" in capsys.readouterr().err
    assert os.environ["CORRAL_KEYS_FILE"] == str(path)


def test_access_log_to_a_file_or_off(tmp_path: Path) -> None:
    from gateway.accesslog import AccessLog

    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log.write({"key": "alice", "status": 200})
    log.write({"key": "bob", "status": 429})
    log.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["key"], e["status"]) for e in lines] == [("alice", 200), ("bob", 429)]
    assert all(e["time"].endswith("Z") for e in lines)
    off = AccessLog("off")
    off.write({"key": "carol"})  # nowhere, and no error
    assert not off.enabled


def test_a_reservation_is_taken_at_admission_and_settled_after(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    limits = Limits(tpm=60)  # a token a second
    assert ledger.reserve("k", limits, 40, now=0.0).allowed  # 60 -> 20
    assert ledger.reserve("k", limits, 40, now=0.0).allowed  # 20 -> -20: one overdraw
    refused = ledger.reserve("k", limits, 40, now=0.0)  # the burst's third: refused
    assert not refused.allowed and refused.reason == "tokens"
    assert refused.retry_after == pytest.approx(21.0)
    # Each used 10: the unused 30 of each reservation comes back.
    for _ in range(2):
        ledger.finish("k", limits, model="m", prompt_tokens=5, generated_tokens=5,
                      counted=False, reserved=40, now=0.0)
    assert ledger.admit("k", limits, count=False, now=0.0).tokens.remaining == 40


def test_the_keys_folder_is_made_private_even_when_it_existed(tmp_path: Path) -> None:
    folder = tmp_path / "corral"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)  # as the prompt cache (or anything else) may have made it
    KeysFile(folder / "keys.json").create("alice")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_the_prompt_cache_makes_its_folders_private(tmp_path: Path) -> None:
    from runner.process import promptdisk
    from runner.process.promptcache import PromptCache, State

    cache = PromptCache(10_000)
    cache.put([1, 2, 3], [State(3, b"x" * 10)], uses=2)
    settings = {"model": "m"}
    path = promptdisk.cache_file(str(tmp_path / "corral" / "prompt-cache"), "/b/sha256-a",
                                 settings)
    assert promptdisk.save(cache, path, settings, budget=1000) == 1
    for folder in (tmp_path / "corral", path.parent.parent, path.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_opening_the_ledger_forgets_dead_owners_only(tmp_path: Path) -> None:
    """A process that opens the ledger drops the requests in flight of processes that are gone
    (crashed HTTP workers), never those of processes still serving (issue 24: wiping every row
    on open passed the whole suite)."""
    path = tmp_path / "l.sqlite"
    limits = Limits(concurrency=5)
    live, dead = Ledger(path), Ledger(path)
    live.owner = f"{live.owner.rpartition(':')[0]}:{os.getppid()}"  # a process that is alive
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead.owner = f"{dead.owner.rpartition(':')[0]}:{gone.pid}"  # one that is not
    for ledger in (live, live, dead):
        assert ledger.admit("k", limits).allowed
    Ledger(path)  # another process starting
    assert live._inflight("k") == 2  # the live owner's two are still in flight
