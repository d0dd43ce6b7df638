"""The server SIGKILLed at random points of a pull and of a create (upload, then create), then
restarted: `corral verify` finds the store consistent every time, the pull resumes from the
bytes it kept, and the create goes through."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from registry.store import Store
from registry.verify import Report, verify
from tests.conftest import LiveServer
from tests.soak.common import Row, Scale, kill_server, restart, soak_server
from tests.test_pull_push import read_states, tiny_model

BIG = "soak/big:1"
BIG_SIZE = 96 * 1024 * 1024
PART = 8 * 1024 * 1024  # CORRAL_PULL_PART_SIZE: a dozen parts, resumed one by one
MADE = "soak-made:1"
CHUNK = 1024 * 1024


def variant_gguf(source: Path, folder: Path) -> tuple[Path, str]:
    """The bundled GGUF with a few bytes appended: still a GGUF (create reads its header), but
    a blob the store does not have. Its path and digest."""
    model = Store(source).get("gemma3:270m").model_path
    assert model is not None
    path = folder / "variant.gguf"
    digest = hashlib.sha256()
    with open(model, "rb") as src, open(path, "wb") as dst:
        while block := src.read(8 * CHUNK):
            dst.write(block)
            digest.update(block)
        tail = secrets.token_bytes(64)
        dst.write(tail)
        digest.update(tail)
    return path, "sha256:" + digest.hexdigest()


def upload_and_create(server: LiveServer, path: Path, digest: str,
                      on_bytes: Callable[[int], None] = lambda n: None) -> httpx.Response:
    """What `corral create` does for a GGUF: upload the blob, then create from it."""

    def chunks() -> Iterator[bytes]:
        sent = 0
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                yield block
                sent += len(block)
                on_bytes(sent)

    reply = httpx.post(f"{server.url}/api/blobs/{digest}", content=chunks(), timeout=300)
    if reply.status_code not in (200, 201):
        return reply
    return httpx.post(server.url + "/api/create", timeout=300, json={
        "model": MADE, "files": {"model.gguf": digest}, "stream": False})


def pull(server: LiveServer, name: str) -> list[dict]:
    lines: list[dict] = []
    with httpx.stream("POST", server.url + "/api/pull", timeout=300,
                      json={"model": name, "insecure": True}) as reply:
        for line in reply.iter_lines():
            if line.strip():
                lines.append(json.loads(line))
    return lines


def _check(report: Report, what: str, problems: list[str]) -> None:
    if not report.sound:
        problems.append(f"{what}: corral verify found damage: {report.damage[:2]}")


class Crashes:
    """The kill-and-restart loop, with what it has seen."""

    def __init__(self, name: str, big_digest: str, gguf: Path, gguf_digest: str) -> None:
        self.name, self.big = name, big_digest
        self.gguf, self.gguf_digest = gguf, gguf_digest
        self.rng = random.Random(29)
        self.problems: list[str] = []
        self.resumed: list[float] = []  # share of the blob a resumed pull kept

    def kill_somewhere(self, server: LiveServer, i: int, kind: str, fraction: float) -> None:
        """Start a pull or a create, and SIGKILL the server when `fraction` of it is done."""
        if kind == "pull":
            hex_ = self.big.split(":")[1]
            worker = threading.Thread(target=_quietly, args=(pull, server, self.name))
            worker.start()
            deadline = time.monotonic() + 60
            while worker.is_alive() and time.monotonic() < deadline and sum(
                    s["completed"] for s in read_states(server.models / "blobs",
                                                        hex_).values()) < fraction * BIG_SIZE:
                time.sleep(0.002)
        else:
            enough = threading.Event()
            size = self.gguf.stat().st_size

            def watch(n: int) -> None:
                if n >= fraction * size:
                    enough.set()

            worker = threading.Thread(target=_quietly, args=(
                upload_and_create, server, self.gguf, self.gguf_digest, watch))
            worker.start()
            enough.wait(60)
            if fraction > 0.9:  # some kills land in /api/create itself
                time.sleep(self.rng.uniform(0, 0.05))
        kill_server(server)
        worker.join(60)

    def finish(self, server: LiveServer, i: int, kind: str, kept: int) -> None:
        """After the restart: the pull resumes and the create goes through."""
        if kind == "pull":
            lines = pull(server, self.name)
            if lines[-1:] != [{"status": "success"}]:
                self.problems.append(f"pull {i}: the resumed pull ended {lines[-1:]}")
            first = next((x for x in lines if x.get("digest") == self.big), {})
            if first.get("completed", 0) < kept:
                self.problems.append(f"pull {i}: resumed at {first.get('completed')}, "
                                     f"kept {kept}")
            if kept:
                self.resumed.append(kept / BIG_SIZE)
        else:
            reply = upload_and_create(server, self.gguf, self.gguf_digest)
            if reply.status_code != 200:
                self.problems.append(f"create {i}: after the restart: {reply.status_code} "
                                     f"{reply.text[:200]}")
        report = verify(server.models)
        _check(report, f"{kind} {i} after the restart", self.problems)
        if report.partials:
            self.problems.append(f"{kind} {i}: partial downloads left after it finished")
        httpx.request("DELETE", server.url + "/api/delete", timeout=60,
                      json={"model": self.name if kind == "pull" else MADE})

    def loop(self, server: LiveServer, rounds: int) -> LiveServer:
        """Kill, verify, restart, finish; the server running at the end."""
        for i in range(rounds):
            kind = "pull" if i % 2 == 0 else "create"
            fraction = self.rng.uniform(0.0, 1.0)
            self.kill_somewhere(server, i, kind, fraction)
            report = verify(server.models)
            _check(report, f"{kind} kill {i} at {fraction:.0%}", self.problems)
            kept = sum(p.completed for p in report.partials if p.digest == self.big)
            server = restart(server, f"serve-{i}.log")
            self.finish(server, i, kind, kept)
        return server


def run(scale: Scale, source: Path, folder: Path) -> Row:
    with soak_server(folder / "registry", source, CORRAL_SERVE_REGISTRY="1") as registry:
        big = tiny_model(Store(registry.models), BIG, BIG_SIZE).layers[0]
        gguf, gguf_digest = variant_gguf(source, folder)
        crashes = Crashes(f"{registry.host}/{BIG}", big.digest, gguf, gguf_digest)
        with soak_server(folder / "puller", source,
                         CORRAL_PULL_PART_SIZE=str(PART)) as first:
            server = first
            try:
                server = crashes.loop(first, scale.crashes)
            finally:
                server.stop()
    shares = ", ".join(f"{share:.0%}" for share in crashes.resumed) or "none"
    figures = (f"kills at random points of a {BIG_SIZE >> 20} MB pull ({PART >> 20} MB parts) "
               f"and of a blob upload + create; verify sound after each kill and each restart; "
               f"{len(crashes.resumed)} pulls resumed from kept bytes ({shares})")
    return Row("server SIGKILL during pull and create", f"{scale.crashes} kills + restarts",
               not crashes.problems, figures, crashes.problems)


def _quietly(fn: Callable[..., object], *args: object) -> None:
    """Run a client call whose server is about to be killed; its failure is the point."""
    with contextlib.suppress(httpx.HTTPError, ValueError):
        fn(*args)
