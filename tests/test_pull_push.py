"""Pull and push against real registries on loopback: Debian's docker-registry (the CNCF
distribution registry) and a corral serving its store, through live corral servers.

The registry runs from a temporary storage folder and config file on a free 127.0.0.1 port and is
stopped by PID. A small threaded proxy sits in front of it where a test needs to count or slow
the bytes, or to answer the token endpoint on the registry's own host.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from registry.manifest import MEDIA_CONFIG, MEDIA_MODEL, Layer, Manifest
from registry.names import ModelName
from registry.remote.client import RegistryClient
from registry.remote.pull import pull_model
from registry.remote.push import push_model
from registry.store import Store
from tests.conftest import ROOT, LiveServer, free_port, start_server

pytestmark = pytest.mark.e2e

BUNDLED = "gemma3:270m"
BUNDLED_MANIFEST = Path("manifests/registry.ollama.ai/library/gemma3/270m")
LAYER_KEYS = {"status", "digest", "total", "completed"}
REGISTRY_BIN = shutil.which("docker-registry")


# ----- the registry ---------------------------------------------------------------------------


@dataclass
class Registry:
    host: str  # 127.0.0.1:port
    storage: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def blob_data(self, digest: str) -> Path:
        hex_ = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_registry(folder: Path, auth: str = "") -> Registry:
    if REGISTRY_BIN is None:
        pytest.skip("docker-registry is not installed (make test installs it)")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    storage = folder / "storage"
    config = folder / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: corral-tests\n"
        + auth
    )
    log = folder / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    registry = Registry(f"127.0.0.1:{port}", storage, proc, log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited:\n{log.read_text()}")
        try:
            if httpx.get(f"http://{registry.host}/v2/", timeout=1).status_code in (200, 401):
                return registry
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    registry.stop()
    raise RuntimeError(f"docker-registry did not start:\n{log.read_text()}")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield reg
    finally:
        reg.stop()


# ----- a forwarding proxy that counts, throttles, and can answer /token -----------------------


@dataclass
class Hit:
    method: str
    path: str
    range: str | None
    sent: int = 0


@dataclass
class Proxy:
    upstream: str
    rate: float | None = None  # bytes per second, all connections together
    token_handler: Any = None  # callable(handler) answering GET /token
    port: int = 0
    hits: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_free: float = 0.0
    server: ThreadingHTTPServer | None = None

    @property
    def host(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.server_address[1]}"

    def throttle(self, n: int) -> None:
        if not self.rate:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_free)
            self.next_free = start + n / self.rate
        time.sleep(max(0.0, start - now))

    def start(self) -> Proxy:
        proxy = self
        upstream = httpx.Client(base_url=f"http://{self.upstream}", trust_env=False,
                                timeout=60)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                if self.path.startswith("/token") and proxy.token_handler is not None:
                    proxy.token_handler(self)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = [(k, v) for k, v in self.headers.items()
                           if k.lower() not in ("connection", "keep-alive", "content-length")]
                hit = Hit(self.command, self.path, self.headers.get("Range"))
                with proxy.lock:
                    proxy.hits.append(hit)
                request = upstream.build_request(self.command, self.path, headers=headers,
                                                 content=body)
                resp = upstream.send(request, stream=True)
                try:
                    data_len = resp.headers.get("Content-Length")
                    payload = None if data_len is not None else resp.read()
                    self.send_response(resp.status_code)
                    for k, v in resp.headers.multi_items():
                        if k.lower() not in ("connection", "transfer-encoding", "keep-alive",
                                             "content-length"):
                            self.send_header(k, v)
                    size = int(data_len) if data_len is not None else len(payload or b"")
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    if self.command == "HEAD":
                        return
                    chunks = [payload] if payload is not None else resp.iter_raw(64 * 1024)
                    for chunk in chunks:
                        proxy.throttle(len(chunk))
                        self.wfile.write(chunk)
                        hit.sent += len(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                finally:
                    resp.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def blob_hits(self, digest: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.method == "GET" and h.path.endswith(digest)]


# ----- helpers --------------------------------------------------------------------------------


def clone_bundled(src: Path, dst: Path) -> Path:
    """A store holding only the bundled model, its blobs hard-linked (no 250 MB copy, and the
    server's bundled import finds the model already there)."""
    raw = (src / BUNDLED_MANIFEST).read_bytes()
    target = dst / BUNDLED_MANIFEST
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(raw)
    (dst / "blobs").mkdir(parents=True, exist_ok=True)
    for digest in Manifest.from_bytes(raw).digests():
        name = digest.replace(":", "-")
        os.link(src / "blobs" / name, dst / "blobs" / name)
    return dst


def stream(server: LiveServer, path: str, body: dict[str, Any], timeout: float = 300
           ) -> list[dict[str, Any]]:
    with httpx.stream("POST", server.url + path, json=body, timeout=timeout) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"] == "application/x-ndjson"
        return [json.loads(line) for line in resp.iter_lines() if line.strip()]


def check_layer_lines(lines: list[dict[str, Any]], verb: str) -> None:
    """Every layer line has Ollama's shape: status "<verb> <12 hex>", digest, total, completed."""
    for line in lines:
        if "digest" not in line:
            continue
        assert set(line) <= LAYER_KEYS, line
        hex_ = line["digest"].removeprefix("sha256:")
        assert line["status"] == f"{verb} {hex_[:12]}"
        assert isinstance(line["total"], int) and 0 <= line.get("completed", 0) <= line["total"]


def steps(lines: list[dict[str, Any]]) -> list[str]:
    return [line.get("status") or "error: " + line["error"] for line in lines
            if "digest" not in line]


def tags(server: LiveServer) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in httpx.get(server.url + "/api/tags").json()["models"]}


def manifest_of(models: Path, name: str) -> bytes:
    n = ModelName.parse(name)
    return (models / "manifests" / n.manifest_path()).read_bytes()


def tiny_model(store: Store, name: str, size: int, seed: bytes = b"") -> Manifest:
    data = (hashlib.sha256(seed or name.encode()).digest() * (size // 32 + 1))[:size]
    data = bytearray(data)
    data[: min(size, 64)] = secrets.token_bytes(min(size, 64))  # distinct per call
    blob = store.write_blob_bytes(bytes(data))
    config = store.write_json_blob({"model_format": "gguf", "model_family": "tiny"})
    manifest = Manifest(config.layer(MEDIA_CONFIG), [blob.layer(MEDIA_MODEL)])
    store.write_manifest(name, manifest)
    return manifest


async def _drain(events: Any) -> list[dict[str, Any]]:
    return [event async for event in events]


def push_in_process(store: Store, name: str, **kwargs: Any) -> list[dict[str, Any]]:
    return asyncio.run(_drain(push_model(store, ModelName.parse(name), insecure=True, **kwargs)))


def pull_in_process(store: Store, name: str, **kwargs: Any) -> list[dict[str, Any]]:
    return asyncio.run(_drain(pull_model(store, ModelName.parse(name), insecure=True, **kwargs)))


@pytest.fixture(scope="module")
def puller(corral_server: LiveServer, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[LiveServer]:
    """A second corral whose store starts with the bundled model (hard links), for pulling."""
    folder = tmp_path_factory.mktemp("puller")
    models = clone_bundled(corral_server.models, folder / "models")
    server = start_server(models, folder / "serve.log", OLLAMA_KEEP_ALIVE="0")
    try:
        yield server
    finally:
        server.stop()


def forget_bundled(server: LiveServer) -> None:
    """Delete every model of `server`, so a pull has to bring the 250 MB blob over."""
    for name in list(tags(server)):
        assert httpx.request("DELETE", server.url + "/api/delete",
                             json={"model": name}).status_code == 200
    assert not [p for p in (server.models / "blobs").iterdir() if p.is_file()]


# ----- the tests ------------------------------------------------------------------------------


def test_push_then_pull_back_same_digests_and_it_chats(
        corral_server: LiveServer, puller: LiveServer, registry: Registry) -> None:
    remote = f"{registry.host}/library/gemma3:270m"
    assert httpx.post(corral_server.url + "/api/copy",
                      json={"source": BUNDLED, "destination": remote}).status_code == 200
    try:
        lines = stream(corral_server, "/api/push", {"model": remote, "insecure": True})
        assert steps(lines)[0] == "retrieving manifest"
        assert steps(lines)[-2:] == ["pushing manifest", "success"]
        check_layer_lines(lines, "pushing")
        source = Manifest.from_bytes(manifest_of(corral_server.models, BUNDLED))
        pushed = {line["digest"] for line in lines if "digest" in line}
        assert pushed == source.digests()
        for digest in pushed:  # every layer ends complete
            last = [line for line in lines if line.get("digest") == digest][-1]
            assert last["completed"] == last["total"]

        # A second push finds every blob there; stream: false answers the last object.
        again = httpx.post(corral_server.url + "/api/push",
                           json={"model": remote, "insecure": True, "stream": False}, timeout=60)
        assert again.status_code == 200 and again.json() == {"status": "success"}
    finally:
        httpx.request("DELETE", corral_server.url + "/api/delete", json={"model": remote})

    forget_bundled(puller)
    lines = stream(puller, "/api/pull", {"model": remote, "insecure": True})
    assert steps(lines) == ["pulling manifest", "verifying sha256 digest", "writing manifest",
                            "success"]
    check_layer_lines(lines, "pulling")
    model_layer = max(source.all_layers(), key=lambda layer: layer.size)
    progress = [line.get("completed", 0) for line in lines
                if line.get("digest") == model_layer.digest]
    assert progress == sorted(progress) and progress[-1] == model_layer.size
    assert len(progress) >= 2  # it moved while we watched

    # Same manifest bytes, so the same ID; the same blobs.
    assert manifest_of(puller.models, remote) == manifest_of(corral_server.models, BUNDLED)
    assert tags(puller)[remote]["digest"] == tags(corral_server)[BUNDLED]["digest"]
    blob = puller.models / "blobs" / model_layer.digest.replace(":", "-")
    assert blob.stat().st_size == model_layer.size
    assert not list((puller.models / "blobs").glob("*partial*"))

    reply = httpx.post(puller.url + "/api/chat", timeout=120, json={
        "model": remote, "stream": False, "options": {"num_predict": 4, "temperature": 0},
        "messages": [{"role": "user", "content": "Say hello."}]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["done"] is True and reply.json()["eval_count"] >= 1


def test_missing_tag_is_404(corral_server: LiveServer, registry: Registry) -> None:
    name = f"{registry.host}/library/gemma3:no-such-tag"
    lines = stream(corral_server, "/api/pull", {"model": name, "insecure": True})
    assert lines == [{"status": "pulling manifest"},
                     {"error": "pull model manifest: file does not exist"}]
    resp = httpx.post(corral_server.url + "/api/pull",
                      json={"model": name, "insecure": True, "stream": False})
    assert resp.status_code == 404
    assert resp.json() == {"error": "pull model manifest: file does not exist"}
    # An http:// name without insecure is refused before anything is sent.
    resp = httpx.post(corral_server.url + "/api/pull", json={"model": f"http://{name}"})
    assert resp.status_code == 400 and resp.json() == {"error": "insecure protocol http"}


def test_corrupted_blob_fails_verification_and_leaves_no_trace(
        corral_server: LiveServer, registry: Registry, tmp_path: Path) -> None:
    name = f"{registry.host}/tests/corrupt:1"
    source = Store(tmp_path / "source")
    manifest = tiny_model(source, name, 3_000_000)
    assert push_in_process(source, name)[-1] == {"status": "success"}
    bad = manifest.layers[0]
    data = registry.blob_data(bad.digest)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, different content
    data.write_bytes(bytes(raw))

    before = sorted(p.name for p in (corral_server.models / "blobs").iterdir())
    lines = stream(corral_server, "/api/pull", {"model": name, "insecure": True})
    assert "error" in lines[-1], lines
    assert lines[-1]["error"].startswith(
        f"digest mismatch, file must be downloaded again: want {bad.digest}, got sha256:")
    assert {"status": "writing manifest"} not in lines
    after = sorted(p.name for p in (corral_server.models / "blobs").iterdir())
    hex_ = bad.digest.split(":")[1]
    assert not [n for n in after if hex_ in n]  # neither the blob nor partial files
    # The config blob may have arrived (it verified), or be partly there when the bad layer
    # stopped the pull first (parts kept for a resume); nothing else did, and no manifest.
    leftover = set(after) - set(before)
    config = manifest.config.digest.replace(":", "-")
    assert all(n == config or n.startswith(config + "-partial") for n in leftover), leftover
    assert name not in tags(corral_server)
    for blob_name in leftover:  # the shared store goes back as it was
        (corral_server.models / "blobs" / blob_name).unlink()


def test_killed_pull_resumes_without_fetching_finished_parts(
        corral_server: LiveServer, registry: Registry, tmp_path: Path) -> None:
    name = f"{registry.host}/tests/big:1"
    source = Store(tmp_path / "source")
    size = 48 * 1024 * 1024
    manifest = tiny_model(source, name, size)
    assert push_in_process(source, name)[-1] == {"status": "success"}
    big = manifest.layers[0]
    hex_ = big.digest.split(":")[1]

    part = 2 * 1024 * 1024  # 24 parts, 16 at a time: the first 16 finish before the rest
    proxy = Proxy(registry.host, rate=24e6).start()
    via_proxy = name.replace(registry.host, proxy.host)
    models = clone_bundled(corral_server.models, tmp_path / "models")
    blobs = models / "blobs"
    env = {"CORRAL_PULL_PART_SIZE": str(part)}
    server = start_server(models, tmp_path / "serve1.log", **env)
    try:
        def pull_in_background() -> None:
            with contextlib.suppress(Exception):  # the stream dies with the server it reads
                stream(server, "/api/pull", {"model": via_proxy, "insecure": True})

        thread = threading.Thread(target=pull_in_background, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        states: dict[int, dict[str, int]] = {}
        while time.monotonic() < deadline:
            states = read_states(blobs, hex_)
            if sum(s["completed"] for s in states.values()) >= 0.75 * size:
                break
            time.sleep(0.01)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        thread.join(timeout=30)
    finally:
        server.stop()

    states = read_states(blobs, hex_)  # what the killed server left on disk
    assert (blobs / f"sha256-{hex_}-partial").stat().st_size == size
    assert len(states) == size // part
    finished = [s for s in states.values() if s["completed"] == s["size"]]
    done_bytes = sum(s["completed"] for s in states.values())
    assert finished and done_bytes < size
    assert not (blobs / f"sha256-{hex_}").exists()

    proxy.rate = None
    with proxy.lock:
        proxy.hits.clear()
    server = start_server(models, tmp_path / "serve2.log", **env)
    try:
        lines = stream(server, "/api/pull", {"model": via_proxy, "insecure": True})
    finally:
        server.stop()
        proxy.stop()
    assert lines[-1] == {"status": "success"}, lines
    first = next(line for line in lines if line.get("digest") == big.digest)
    assert first.get("completed", 0) >= done_bytes  # progress starts where it stopped

    # The restarted pull asked only for the bytes the killed one had not kept.
    data_hits = [h for h in proxy.blob_hits(big.digest) if h.range != "bytes=0-0"]
    fetched = sum(h.sent for h in data_hits)
    assert fetched <= size - done_bytes
    for hit in data_hits:
        start = int(hit.range.split("=")[1].split("-")[0])
        owner = next(s for s in states.values() if s["offset"] <= start < s["offset"] + s["size"])
        assert owner["completed"] < owner["size"], f"finished part fetched again: {hit}"
        assert start == owner["offset"] + owner["completed"]
    blob = blobs / f"sha256-{hex_}"
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == hex_
    assert not list(blobs.glob("*partial*"))


def read_states(blobs: Path, hex_: str) -> dict[int, dict[str, int]]:
    states = {}
    for path in blobs.glob(f"sha256-{hex_}-partial-*"):
        if path.name.endswith(".tmp"):
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        states[data["n"]] = data
    return states


def test_pull_from_a_corral_serving_its_store(
        corral_server: LiveServer, puller: LiveServer, tmp_path: Path) -> None:
    # Off unless enabled.
    assert httpx.get(corral_server.url + "/v2/").status_code == 404

    models = clone_bundled(corral_server.models, tmp_path / "models")
    source = start_server(models, tmp_path / "serve.log", CORRAL_SERVE_REGISTRY="1")
    try:
        check = httpx.get(source.url + "/v2/")
        assert check.status_code == 200
        assert check.headers["Docker-Distribution-API-Version"] == "registry/2.0"

        forget_bundled(puller)
        name = f"{source.host}/library/gemma3:270m"
        env = {**puller.env, "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-m", "gateway.cli", "pull", "--insecure", name],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "pulling manifest" in done.stderr and "success" in done.stderr
        assert manifest_of(puller.models, name) == manifest_of(models, BUNDLED)

        # Read-only: an upload is refused.
        refused = httpx.post(source.url + "/v2/library/gemma3/blobs/uploads/")
        assert refused.status_code == 405
        assert refused.json()["errors"][0]["code"] == "UNSUPPORTED"
    finally:
        source.stop()
    failed = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "pull", "--insecure",
         f"{source.host}/library/gemma3:270m"],
        env={**puller.env, "PYTHONPATH": str(ROOT)}, cwd=ROOT, capture_output=True, text=True,
        timeout=120)
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1] == (
        f'Error: pull model manifest: GET "http://{source.host}/v2/library/gemma3/manifests/270m"'
        ": connection refused")


def test_push_mounts_a_layer_from_another_repository(registry: Registry, tmp_path: Path) -> None:
    proxy = Proxy(registry.host).start()
    try:
        store = Store(tmp_path / "models")
        base = f"{proxy.host}/tests/base:1"
        manifest = tiny_model(store, base, 200_000)
        assert push_in_process(store, base)[-1] == {"status": "success"}
        weights = manifest.layers[0]
        derived = f"{proxy.host}/tests/derived:1"
        layer = Layer(weights.media_type, weights.digest, weights.size, from_=base)
        config = store.write_json_blob({"model_format": "gguf", "derived": True})
        store.write_manifest(derived, Manifest(config.layer(MEDIA_CONFIG), [layer]))
        with proxy.lock:
            proxy.hits.clear()
        assert push_in_process(store, derived)[-1] == {"status": "success"}
        with proxy.lock:
            hits = list(proxy.hits)
    finally:
        proxy.stop()
    mounts = [h for h in hits if h.method == "POST" and "mount=" in h.path]
    assert mounts and "from=tests%2Fbase" in mounts[0].path
    sent = [h for h in hits if h.method in ("PATCH", "PUT") and weights.digest.split(":")[1]
            in h.path]
    assert not sent  # the registry linked the blob; no byte of it went again
    pulled = Store(tmp_path / "pulled")
    assert pull_in_process(pulled, derived.replace(proxy.host, registry.host))[-1] == {
        "status": "success"}
    assert pulled.has_blob(weights.digest)


# ----- token auth in front of the real registry -----------------------------------------------


class TokenIssuer:
    """Issues the JWTs docker-registry's `auth: token` accepts (ES256, x5c), and checks that a
    request from the registry's own host carries Ollama's ed25519 signature."""

    def __init__(self, folder: Path, service: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.service = service
        self.issuer = "corral-test-issuer"
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corral test tokens")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.bundle = folder / "tokens.pem"
        self.bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.requests: list[dict[str, Any]] = []

    def jwt(self, access: list[dict[str, Any]]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).decode().rstrip("=")

        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": "corral", "aud": self.service, "exp": now + 600,
                  "nbf": now - 60, "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        der = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        query = parse_qs(urlsplit(handler.path).query)
        auth = handler.headers.get("Authorization", "")
        host = handler.headers["Host"]
        record: dict[str, Any] = {"query": query, "signed": False}
        if auth:
            pub_b64, _, sig_b64 = auth.partition(":")
            blob = base64.b64decode(pub_b64)
            raw_key = blob[-32:]  # ssh wire format: string "ssh-ed25519", string key
            empty = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()
            signed = f"GET,http://{host}{handler.path},{empty}".encode()
            try:
                Ed25519PublicKey.from_public_bytes(raw_key).verify(
                    base64.b64decode(sig_b64), signed)
            except InvalidSignature:
                handler.send_response(401)
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            record.update(signed=True, key=pub_b64)
        self.requests.append(record)
        access = []
        for scope in query.get("scope", []):
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        body = json.dumps({"token": self.jwt(access)}).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


def test_token_auth_with_signed_token_requests(tmp_path: Path) -> None:
    """The registry demands tokens from a realm on the proxy's host, so corral signs them."""
    issuer = TokenIssuer(tmp_path, "corral-test-registry")
    port = free_port()
    auth = ("auth:\n  token:\n"
            f"    realm: http://127.0.0.1:{port}/token\n"
            f"    service: {issuer.service}\n"
            f"    issuer: {issuer.issuer}\n"
            f"    rootcertbundle: {issuer.bundle}\n")
    reg = start_registry(tmp_path / "registry", auth)
    proxy = Proxy(reg.host, token_handler=issuer.handle, port=port)
    try:
        proxy.start()
        assert httpx.get(f"http://{reg.host}/v2/").status_code == 401  # auth is on

        key_path = tmp_path / "home" / ".ollama" / "id_ed25519"
        name = f"{proxy.host}/tests/tiny:1"
        source = Store(tmp_path / "source")
        manifest = tiny_model(source, name, 300_000)

        async def push_and_pull() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            async with RegistryClient(key_path=key_path) as client:
                pushed = await _drain(push_model(source, ModelName.parse(name), insecure=True,
                                                 client=client))
            async with RegistryClient(key_path=key_path) as client:
                pulled = await _drain(pull_model(Store(tmp_path / "dest"), ModelName.parse(name),
                                                 insecure=True, client=client))
            return pushed, pulled

        pushed, pulled = asyncio.run(push_and_pull())
        assert pushed[-1] == {"status": "success"} and pulled[-1] == {"status": "success"}
        dest = Store(tmp_path / "dest")
        assert dest.get(name).manifest.digests() == manifest.digests()

        # The key was created like Ollama's; every token request was signed with it.
        public = (key_path.parent / "id_ed25519.pub").read_text().split()
        assert public[0] == "ssh-ed25519" and oct(key_path.stat().st_mode & 0o777) == "0o600"
        assert issuer.requests and all(r["signed"] and r["key"] == public[1]
                                       for r in issuer.requests)
        scopes = set()
        for r in issuer.requests:
            for scope in r["query"]["scope"]:
                kind, repo, actions = scope.split(":")
                scopes.add((kind, repo, frozenset(actions.split(","))))
        assert ("repository", "tests/tiny", frozenset({"pull", "push"})) in scopes
        assert ("repository", "tests/tiny", frozenset({"pull"})) in scopes
        assert all({"ts", "nonce", "service"} <= set(r["query"]) for r in issuer.requests)
    finally:
        proxy.stop()
        reg.stop()
