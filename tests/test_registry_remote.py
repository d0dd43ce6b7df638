"""Unit tests of registry/remote and the OCI read side, against in-process fakes.

The fake registry is an httpx.MockTransport handler: blobs and manifests in dicts, with switches
for bearer auth, a CDN redirect, ignored ranges, transient failures and stalls.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from starlette.applications import Starlette
from starlette.testclient import TestClient

from gateway.cli.pull import TransferView
from gateway.routes import oci
from registry.manifest import MEDIA_CONFIG, MEDIA_MANIFEST, MEDIA_MODEL, MEDIA_PARAMS, Manifest
from registry.names import ModelName
from registry.remote import progress, pull
from registry.remote.client import (
    Endpoint,
    RegistryClient,
    RegistryError,
    parse_challenge,
    part_size,
)
from registry.remote.keys import IdentityKey
from registry.remote.pull import pull_model
from registry.remote.push import push_model
from registry.store import Store
from shared.config import Settings
from shared.errors import BadRequest, CorralError, NotFound

HOST = "reg.test"
CDN = "cdn.test"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class FakeRegistry:
    """Just enough of the distribution API for pull and push."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[tuple[str, str], bytes] = field(default_factory=dict)
    token: str | None = None  # when set, requests need "Bearer <token>"
    realm: str = f"https://{HOST}/token"
    cdn: bool = False  # blob GETs redirect to another host
    ignore_range: bool = False
    fail_first: int = 0  # this many ranged GETs answer 503
    stall_first: int = 0  # this many ranged GETs raise ReadTimeout
    log: list[httpx.Request] = field(default_factory=list)
    uploads: dict[str, bytearray] = field(default_factory=dict)
    linked: set[tuple[str, str]] = field(default_factory=set)  # (repo, digest) present
    redirect_parts: bool = False  # PATCH answers 307 to object storage

    def add_model(self, repo: str, tag: str, files: dict[str, bytes]) -> tuple[bytes, Manifest]:
        layers = []
        config = None
        for media, data in files.items():
            self.blobs[sha(data)] = data
            self.linked.add((repo, sha(data)))
            entry = {"mediaType": media, "digest": sha(data), "size": len(data)}
            if media == MEDIA_CONFIG:
                config = entry
            else:
                layers.append(entry)
        raw = json.dumps({"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": config,
                          "layers": layers}, indent=1).encode()  # not compact: bytes must survive
        self.manifests[(repo, tag)] = raw
        return raw, Manifest.from_bytes(raw)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def _denied(self, request: httpx.Request, scope: str) -> httpx.Response | None:
        if self.token is None or request.url.host != HOST:
            return None
        if request.headers.get("Authorization") == f"Bearer {self.token}":
            return None
        challenge = f'Bearer realm="{self.realm}",service="fake",scope="{scope}"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge},
                              json={"errors": [{"code": "UNAUTHORIZED", "message": "no"}]})

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.log.append(request)
        url = request.url
        if url.path == "/token":
            return httpx.Response(200, json={"token": self.token})
        if url.host == CDN:
            return self._data(request, url.path.rsplit("/", 1)[-1])
        m = re.fullmatch(r"/v2/(.+)/blobs/uploads/([a-z0-9]+)", url.path)
        if m:
            repo, upload = m.groups()
            if (denied := self._denied(request, f"repository:{repo}:pull,push")) is not None:
                return denied
            return self._upload(request, repo, upload)
        m = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/(.+)", url.path)
        if m:
            repo, kind, ref = m.groups()
            action = "pull" if request.method in ("GET", "HEAD") else "pull,push"
            if (denied := self._denied(request, f"repository:{repo}:{action}")) is not None:
                return denied
            if kind == "manifests":
                if request.method == "PUT":
                    self.manifests[(repo, ref)] = request.content
                    return httpx.Response(201)
                raw = self.manifests.get((repo, ref))
                if raw is None:
                    return httpx.Response(404, json={"errors": [
                        {"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})
                return httpx.Response(200, content=raw,
                                      headers={"Content-Type": MEDIA_MANIFEST})
            if ref == "uploads/":
                return self._start_upload(request, repo)
            if ref not in self.blobs or (repo, ref) not in self.linked:
                return httpx.Response(404, json={"errors": [{"code": "BLOB_UNKNOWN"}]})
            if request.method == "HEAD":
                return httpx.Response(200, headers={"Content-Length": str(len(self.blobs[ref]))})
            if self.cdn:
                return httpx.Response(307, headers={"Location": f"https://{CDN}/data/{ref}"})
            return self._data(request, ref)
        if url.host == "storage.test":
            self.uploads["storage:" + url.path] = bytearray(request.content)
            return httpx.Response(200, headers={"ETag": '"x"'})
        return httpx.Response(404)

    def _data(self, request: httpx.Request, digest: str) -> httpx.Response:
        data = self.blobs[digest]
        rng = request.headers.get("Range")
        if rng and rng != "bytes=0-0":
            if self.stall_first:
                self.stall_first -= 1
                raise httpx.ReadTimeout("stalled", request=request)
            if self.fail_first:
                self.fail_first -= 1
                return httpx.Response(503)
        if rng and not self.ignore_range:
            start, end = (int(x) for x in rng.removeprefix("bytes=").split("-"))
            return httpx.Response(206, content=data[start:end + 1],
                                  headers={"Content-Range": f"bytes {start}-{end}/{len(data)}"})
        return httpx.Response(200, content=data)

    def _start_upload(self, request: httpx.Request, repo: str) -> httpx.Response:
        mount, source = request.url.params.get("mount"), request.url.params.get("from")
        if mount and source and (source, mount) in self.linked:
            self.linked.add((repo, mount))
            return httpx.Response(201)
        upload = f"u{len(self.uploads)}"
        self.uploads[upload] = bytearray()
        return httpx.Response(202, headers={"Location": f"/v2/{repo}/blobs/uploads/{upload}"})

    def _upload(self, request: httpx.Request, repo: str, upload: str) -> httpx.Response:
        here = f"/v2/{repo}/blobs/uploads/{upload}"
        if request.method == "PATCH":
            start, end = (int(x) for x in request.headers["Content-Range"].split("-"))
            if self.redirect_parts:
                return httpx.Response(307, headers={
                    "Location": f"https://storage.test/{upload}/{start}"})
            assert start == len(self.uploads[upload]), "chunks out of order"
            self.uploads[upload] += request.content
            assert end == len(self.uploads[upload]) - 1
            return httpx.Response(202, headers={"Location": here})
        if request.method == "PUT":
            digest = request.url.params["digest"]
            if self.redirect_parts:
                parts = sorted((k for k in self.uploads if k.startswith(f"storage:/{upload}/")),
                               key=lambda k: int(k.rsplit("/", 1)[1]))
                data = b"".join(bytes(self.uploads[k]) for k in parts)
            else:
                data = bytes(self.uploads[upload])
            if sha(data) != digest:
                return httpx.Response(400, json={"errors": [{"code": "DIGEST_INVALID"}]})
            self.blobs[digest] = data
            self.linked.add((repo, digest))
            return httpx.Response(201)
        return httpx.Response(405)


async def drain(events: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event async for event in events]


def run_pull(store: Store, fake: FakeRegistry, name: str, **kwargs: Any) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        async with RegistryClient(transport=fake.transport(), key_path=kwargs.pop(
                "key_path", None)) as client:
            return await drain(pull_model(store, ModelName.parse(name), client=client, **kwargs))
    return asyncio.run(go())


def run_push(store: Store, fake: FakeRegistry, name: str, **kwargs: Any) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        async with RegistryClient(transport=fake.transport()) as client:
            return await drain(push_model(store, ModelName.parse(name), client=client, **kwargs))
    return asyncio.run(go())


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pull, "BACKOFF_S", 0.0)
    monkeypatch.delenv("CORRAL_PULL_PART_SIZE", raising=False)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models")


def model_files(size: int = 1000) -> dict[str, bytes]:
    return {MEDIA_MODEL: bytes(range(256)) * (size // 256) + b"x" * (size % 256),
            MEDIA_PARAMS: b'{"temperature":0.5}',
            MEDIA_CONFIG: b'{"model_format":"gguf"}'}


def ranged_gets(fake: FakeRegistry, digest: str) -> list[str]:
    return [r.headers["Range"] for r in fake.log
            if r.method == "GET" and r.url.path.endswith(digest)
            and r.headers.get("Range") not in (None, "bytes=0-0")]


# ----- names, challenges, sizes, progress -----------------------------------------------------


def test_endpoint_defaults_and_insecure() -> None:
    e = Endpoint.for_name(ModelName.parse("llama3.2"))
    assert e.base == "https://registry.ollama.ai" and e.repo == "library/llama3.2"
    assert e.manifest_url() == "https://registry.ollama.ai/v2/library/llama3.2/manifests/latest"
    hf = Endpoint.for_name(ModelName.parse("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"))
    assert hf.manifest_url() == (
        "https://hf.co/v2/bartowski/Llama-3.2-1B-Instruct-GGUF/manifests/Q4_K_M")
    assert Endpoint.for_name(ModelName.parse("h:5000/a/b:c"), insecure=True).base == "http://h:5000"
    with pytest.raises(BadRequest, match="insecure protocol http"):
        Endpoint.for_name(ModelName.parse("http://h:5000/a/b"))
    assert Endpoint.for_name(ModelName.parse("http://h/a/b"), insecure=True).base == "http://h"


def test_parse_challenge() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.example/token", "service": "registry.example",
                      "scope": "repository:a/b:pull,push"}
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})


def test_part_size_follows_ollama() -> None:
    assert part_size(10_000) == 100_000_000
    assert part_size(4_000_000_000) == 250_000_000
    assert part_size(40_000_000_000) == 1_000_000_000
    assert part_size(10_000, 4096) == 4096


def test_progress_shapes() -> None:
    d = "sha256:" + "ab" * 32
    assert progress.layer("pulling", d, 10, 0) == {"status": "pulling ababababab" + "ab",
                                                   "digest": d, "total": 10}
    assert progress.layer("pushing", d, 10, 4)["completed"] == 4
    assert progress.status("success") == {"status": "success"}


def test_proxy_from_environment_except_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    async def go() -> tuple[bool, bool]:
        client = RegistryClient()
        try:
            remote = client._client("https://registry.ollama.ai/v2/")
            local = client._client("http://127.0.0.1:5000/v2/")
            return bool(remote._mounts), bool(local._mounts)
        finally:
            await client.aclose()

    assert asyncio.run(go()) == (True, False)


# ----- keys and token auth --------------------------------------------------------------------


def test_identity_key_created_like_ollamas(tmp_path: Path) -> None:
    path = tmp_path / ".ollama" / "id_ed25519"
    assert IdentityKey.load(path, create=False) is None
    key = IdentityKey.load(path)
    assert key is not None
    assert path.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert path.stat().st_mode & 0o777 == 0o600
    pub = (tmp_path / ".ollama" / "id_ed25519.pub").read_text().split()
    assert pub[0] == "ssh-ed25519" and pub[1] == key.public_blob
    again = IdentityKey.load(path)
    assert again is not None and again.public_blob == key.public_blob  # loaded, not replaced
    header = key.sign(b"data")
    blob, sig = header.split(":")
    Ed25519PublicKey.from_public_bytes(base64.b64decode(blob)[-32:]).verify(
        base64.b64decode(sig), b"data")


def test_token_flow_signed_on_same_host(store: Store, tmp_path: Path) -> None:
    fake = FakeRegistry(token="t0k")
    fake.add_model("library/m", "latest", model_files())
    key_path = tmp_path / "id_ed25519"
    events = run_pull(store, fake, f"{HOST}/library/m", key_path=key_path)
    assert events[-1] == {"status": "success"}
    token_requests = [r for r in fake.log if r.url.path == "/token"]
    assert token_requests
    first = token_requests[0]
    assert set(first.url.params) == {"nonce", "scope", "service", "ts"}
    assert list(first.url.params) == sorted(first.url.params)  # Go's url.Values order
    assert first.url.params["scope"] == "repository:library/m:pull"
    blob, sig = first.headers["Authorization"].split(":")
    empty = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()
    Ed25519PublicKey.from_public_bytes(base64.b64decode(blob)[-32:]).verify(
        base64.b64decode(sig), f"GET,{first.url},{empty}".encode())
    # Registry requests carry the token after the first challenge.
    after = [r for r in fake.log if r.url.path.startswith("/v2/")][1:]
    assert all(r.headers.get("Authorization") == "Bearer t0k" for r in after)


def test_token_flow_anonymous_for_another_host(store: Store, tmp_path: Path) -> None:
    fake = FakeRegistry(token="t0k", realm="https://auth.elsewhere.test/token")
    fake.add_model("library/m", "latest", model_files())
    events = run_pull(store, fake, f"{HOST}/library/m", key_path=tmp_path / "k")
    assert events[-1] == {"status": "success"}
    token_request = next(r for r in fake.log if r.url.path == "/token")
    assert token_request.url.host == "auth.elsewhere.test"
    assert "Authorization" not in token_request.headers
    assert "ts" not in token_request.url.params
    assert not (tmp_path / "k").exists()  # no key needed, none made


def test_unauthorized_after_token_is_an_error(store: Store, tmp_path: Path) -> None:
    fake = FakeRegistry(token="right")
    fake.add_model("library/m", "latest", model_files())

    async def wrong_token(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return httpx.Response(200, json={"access_token": "wrong"})
        return await fake.handle(request)

    async def go() -> list[dict[str, Any]]:
        transport = httpx.MockTransport(wrong_token)
        async with RegistryClient(transport=transport, key_path=tmp_path / "k") as client:
            return await drain(pull_model(store, ModelName.parse(f"{HOST}/library/m"),
                                          client=client))

    with pytest.raises(CorralError, match="pull model manifest: unauthorized") as info:
        asyncio.run(go())
    assert info.value.status == 401


# ----- pull -----------------------------------------------------------------------------------


def test_pull_writes_blobs_then_exact_manifest(store: Store) -> None:
    fake = FakeRegistry()
    raw, manifest = fake.add_model("library/m", "7b", model_files(10_000))
    events = run_pull(store, fake, f"{HOST}/library/m:7b", part_bytes=1024)
    statuses = [e["status"] for e in events if "digest" not in e]
    assert statuses == ["pulling manifest", "verifying sha256 digest", "writing manifest",
                        "success"]
    layer_events = [e for e in events if "digest" in e]
    order = list(dict.fromkeys(e["digest"] for e in layer_events))
    assert order == [layer.digest for layer in [*manifest.layers, manifest.config]]
    model = store.get(f"{HOST}/library/m:7b")
    assert (store.manifests_dir / model.name.manifest_path()).read_bytes() == raw
    for layer in manifest.all_layers():
        assert store.blob_path(layer.digest).read_bytes() == fake.blobs[layer.digest]
    assert not list(store.blobs_dir.glob("*partial*"))
    ranges = ranged_gets(fake, manifest.layers[0].digest)
    assert len(ranges) == 10  # 10,000 bytes in 1 KiB parts

    # Pulled again: everything is there, reported complete at once, nothing downloaded.
    fake.log.clear()
    again = run_pull(store, fake, f"{HOST}/library/m:7b")
    assert all(e["completed"] == e["total"] for e in again if "digest" in e)
    assert [r.url.path for r in fake.log] == ["/v2/library/m/manifests/7b"]


def test_pull_missing_tag_and_blob(store: Store) -> None:
    fake = FakeRegistry()
    with pytest.raises(NotFound, match="^pull model manifest: file does not exist$"):
        run_pull(store, fake, f"{HOST}/library/m:nope")
    raw, manifest = fake.add_model("library/m", "latest", model_files())
    del fake.blobs[manifest.layers[0].digest]
    with pytest.raises(NotFound, match="file does not exist"):
        run_pull(store, fake, f"{HOST}/library/m")
    assert store.find(f"{HOST}/library/m") is None


def test_pull_refuses_a_manifest_with_bad_digests(store: Store) -> None:
    fake = FakeRegistry()
    fake.manifests[("library/m", "latest")] = json.dumps({
        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": "sha256:../../etc/passwd", "size": 1},
        "layers": []}).encode()
    with pytest.raises(RegistryError, match="invalid manifest"):
        run_pull(store, fake, f"{HOST}/library/m")
    fake.manifests[("library/m", "latest")] = b'{"manifests": []}'
    with pytest.raises(RegistryError, match="invalid manifest"):
        run_pull(store, fake, f"{HOST}/library/m")


def test_digest_mismatch_leaves_nothing(store: Store) -> None:
    fake = FakeRegistry()
    raw, manifest = fake.add_model("library/m", "latest", model_files(5000))
    digest = manifest.layers[0].digest
    fake.blobs[digest] = b"y" + fake.blobs[digest][1:]
    with pytest.raises(RegistryError, match=f"^digest mismatch, file must be downloaded again: "
                                            f"want {digest}, got sha256:"):
        run_pull(store, fake, f"{HOST}/library/m", part_bytes=1024)
    names = [p.name for p in store.blobs_dir.iterdir()]
    assert not [n for n in names if digest.split(":")[1] in n]
    assert store.find(f"{HOST}/library/m") is None


def test_cdn_redirect_gets_no_credentials(store: Store, tmp_path: Path) -> None:
    fake = FakeRegistry(token="t", cdn=True)
    raw, manifest = fake.add_model("library/m", "latest", model_files(4000))
    assert run_pull(store, fake, f"{HOST}/library/m", part_bytes=1000,
                    key_path=tmp_path / "k")[-1] == {"status": "success"}
    cdn = [r for r in fake.log if r.url.host == CDN]
    assert len(cdn) >= 4 and all("Authorization" not in r.headers for r in cdn)
    registry_gets = [r for r in fake.log if r.url.host == HOST
                     and r.url.path.endswith(manifest.layers[0].digest)]
    assert len(registry_gets) <= 2  # one resolve (plus its 401), not one per part


def test_server_ignoring_ranges_still_works(store: Store) -> None:
    fake = FakeRegistry(ignore_range=True)
    raw, manifest = fake.add_model("library/m", "latest", model_files(3000))
    assert run_pull(store, fake, f"{HOST}/library/m", part_bytes=1000)[-1]["status"] == "success"
    assert store.has_blob(manifest.layers[0].digest)


def test_transient_failures_and_stalls_are_retried(store: Store) -> None:
    fake = FakeRegistry(fail_first=3, stall_first=2)
    raw, manifest = fake.add_model("library/m", "latest", model_files(3000))
    assert run_pull(store, fake, f"{HOST}/library/m", part_bytes=1000)[-1]["status"] == "success"
    assert store.blob_path(manifest.layers[0].digest).read_bytes() == \
        fake.blobs[manifest.layers[0].digest]


def test_persistent_failure_gives_up(store: Store) -> None:
    fake = FakeRegistry(fail_first=100)
    fake.add_model("library/m", "latest", model_files(3000))
    with pytest.raises(RegistryError, match="503"):
        run_pull(store, fake, f"{HOST}/library/m", part_bytes=1000)
    # The partial download stays for the next try.
    assert list(store.blobs_dir.glob("*-partial"))


def test_resume_uses_part_state_on_disk(store: Store) -> None:
    fake = FakeRegistry()
    raw, manifest = fake.add_model("library/m", "latest", model_files(4000))
    layer = manifest.layers[0]
    data = fake.blobs[layer.digest]
    hex_ = layer.digest.split(":")[1]
    store.blobs_dir.mkdir(parents=True)
    partial = store.blobs_dir / f"sha256-{hex_}-partial"
    # Four parts of 1000: part 0 done, part 1 half done, parts 2-3 untouched.
    partial.write_bytes(data[:1500] + b"\0" * 2500)
    for n, completed in enumerate([1000, 500, 0, 0]):
        (store.blobs_dir / f"sha256-{hex_}-partial-{n}").write_text(json.dumps(
            {"n": n, "offset": n * 1000, "size": 1000, "completed": completed}))
    events = run_pull(store, fake, f"{HOST}/library/m", part_bytes=64)  # geometry from disk
    first = next(e for e in events if e.get("digest") == layer.digest)
    assert first["completed"] >= 1500  # never below what was on disk
    assert sorted(ranged_gets(fake, layer.digest)) == [
        "bytes=1500-1999", "bytes=2000-2999", "bytes=3000-3999"]
    assert store.blob_path(layer.digest).read_bytes() == data


def test_inconsistent_part_state_starts_over(store: Store) -> None:
    fake = FakeRegistry()
    raw, manifest = fake.add_model("library/m", "latest", model_files(2000))
    hex_ = manifest.layers[0].digest.split(":")[1]
    store.blobs_dir.mkdir(parents=True)
    (store.blobs_dir / f"sha256-{hex_}-partial").write_bytes(b"\0" * 123)  # wrong size
    (store.blobs_dir / f"sha256-{hex_}-partial-0").write_text("{not json")
    assert run_pull(store, fake, f"{HOST}/library/m", part_bytes=1000)[-1]["status"] == "success"
    assert len(ranged_gets(fake, manifest.layers[0].digest)) == 2


def test_repull_removes_layers_only_the_old_version_used(store: Store) -> None:
    fake = FakeRegistry()
    _, old = fake.add_model("library/m", "latest", model_files(1000))
    run_pull(store, fake, f"{HOST}/library/m")
    # Another model shares the old params blob: it must survive.
    _, other = fake.add_model("library/other", "latest", {
        MEDIA_MODEL: b"other weights", MEDIA_PARAMS: b'{"temperature":0.5}',
        MEDIA_CONFIG: b'{"model_format":"gguf","x":1}'})
    run_pull(store, fake, f"{HOST}/library/other")
    files = model_files(1000)
    files[MEDIA_MODEL] = b"new weights"
    _, new = fake.add_model("library/m", "latest", files)
    events = run_pull(store, fake, f"{HOST}/library/m")
    assert {"status": "removing unused layers"} in events
    assert not store.has_blob(old.layers[0].digest)  # old weights: gone
    assert store.has_blob(new.layers[0].digest)
    assert store.has_blob(sha(b'{"temperature":0.5}'))  # still used


def test_concurrent_pulls_share_one_download(store: Store) -> None:
    fake = FakeRegistry()
    raw, manifest = fake.add_model("library/m", "latest", model_files(8000))
    fake.manifests[("library/n", "latest")] = raw

    async def go() -> list[list[dict[str, Any]]]:
        async with RegistryClient(transport=fake.transport()) as client:
            return list(await asyncio.gather(
                drain(pull_model(store, ModelName.parse(f"{HOST}/library/m"), client=client,
                                 part_bytes=1000)),
                drain(pull_model(store, ModelName.parse(f"{HOST}/library/n"), client=client,
                                 part_bytes=1000))))

    a, b = asyncio.run(go())
    assert a[-1] == b[-1] == {"status": "success"}
    assert len(ranged_gets(fake, manifest.layers[0].digest)) == 8  # once, not twice


def test_cancelled_pull_stops_its_download_and_keeps_the_partial(store: Store) -> None:
    fake = FakeRegistry()
    raw, manifest = fake.add_model("library/m", "latest", model_files(50_000))

    async def slow(request: httpx.Request) -> httpx.Response:
        rng = request.headers.get("Range")
        if rng and rng != "bytes=0-0" and not rng.startswith("bytes=0-"):
            await asyncio.sleep(30)  # every part but the first hangs
        return await fake.handle(request)

    async def go() -> None:
        async with RegistryClient(transport=httpx.MockTransport(slow)) as client:
            events = pull_model(store, ModelName.parse(f"{HOST}/library/m"), client=client,
                                part_bytes=10_000)
            async for event in events:
                if event.get("completed") == 10_000:
                    break
            await events.aclose()
            await asyncio.sleep(0.05)
            assert not pull._active  # nobody waits: the download was stopped

    asyncio.run(go())
    hex_ = manifest.layers[0].digest.split(":")[1]
    states = [json.loads(p.read_text())
              for p in store.blobs_dir.glob(f"sha256-{hex_}-partial-*")]
    assert sorted(s["completed"] for s in states) == [0, 0, 0, 0, 10_000]


# ----- push -----------------------------------------------------------------------------------


def local_model(store: Store, name: str, weights: bytes, from_: str | None = None) -> Manifest:
    blob = store.write_blob_bytes(weights)
    config = store.write_json_blob({"model_format": "gguf"})
    manifest = Manifest(config.layer(MEDIA_CONFIG), [blob.layer(MEDIA_MODEL, from_=from_)])
    store.write_manifest(name, manifest)
    return manifest


def test_push_uploads_in_chunks_then_manifest(store: Store) -> None:
    fake = FakeRegistry()
    name = f"{HOST}/me/m:1"
    manifest = local_model(store, name, b"w" * 2500)
    events = run_push(store, fake, name, part_bytes=1000)
    assert [e["status"] for e in events if "digest" not in e] == [
        "retrieving manifest", "pushing manifest", "success"]
    assert all(e["status"].startswith("pushing ") for e in events if "digest" in e)
    assert fake.blobs[manifest.layers[0].digest] == b"w" * 2500
    patches = [r.headers["Content-Range"] for r in fake.log if r.method == "PATCH"]
    assert patches[:3] == ["0-999", "1000-1999", "2000-2499"]  # the weights, then the config
    assert patches[3:] == [f"0-{manifest.config.size - 1}"]
    model = store.get(name)
    assert fake.manifests[("me/m", "1")] == (
        store.manifests_dir / model.name.manifest_path()).read_bytes()

    # Pushed again: HEAD finds everything, nothing is uploaded.
    fake.log.clear()
    again = run_push(store, fake, name)
    assert [r.method for r in fake.log] == ["HEAD", "HEAD", "PUT"]
    assert all(e["completed"] == e["total"] for e in again if "digest" in e)


def test_push_mounts_a_layer_from_another_repository(store: Store) -> None:
    fake = FakeRegistry()
    base = local_model(store, f"{HOST}/me/base:1", b"shared weights")
    run_push(store, fake, f"{HOST}/me/base:1")
    fake.log.clear()
    # Same weights, but a new repository: its layer says where it came from.
    local_model(store, f"{HOST}/me/derived:1", b"shared weights", from_=f"{HOST}/me/base:1")
    run_push(store, fake, f"{HOST}/me/derived:1")
    posts = [r for r in fake.log if r.method == "POST"]
    mounted = [r for r in posts if r.url.params.get("mount") == base.layers[0].digest]
    assert mounted and mounted[0].url.params["from"] == "me/base"
    # Only the config (which has no "from") was uploaded; the weights were not sent again.
    finals = [r.url.params["digest"] for r in fake.log
              if r.method == "PUT" and "digest" in r.url.params]
    assert base.layers[0].digest not in finals and len(finals) == 1


def test_push_part_redirects_to_object_storage(store: Store) -> None:
    fake = FakeRegistry(redirect_parts=True)
    name = f"{HOST}/me/m:1"
    manifest = local_model(store, name, b"z" * 2500)
    assert run_push(store, fake, name, part_bytes=1000)[-1] == {"status": "success"}
    assert fake.blobs[manifest.layers[0].digest] == b"z" * 2500
    final = next(r for r in fake.log if r.method == "PUT" and "digest" in r.url.params
                 and r.url.params["digest"] == manifest.layers[0].digest)
    assert final.url.params["etag"].endswith("-3")
    storage_puts = [r for r in fake.log if r.url.host == "storage.test"]
    assert all("Authorization" not in r.headers for r in storage_puts)


def test_push_unknown_model_is_404(store: Store) -> None:
    with pytest.raises(NotFound):
        run_push(store, FakeRegistry(), f"{HOST}/me/nothing:1")


# ----- the OCI read side ----------------------------------------------------------------------


def oci_client(store: Store, enabled: bool = True) -> TestClient:
    app = Starlette(routes=oci.routes)
    app.state.inference = SimpleNamespace(settings=Settings(serve_registry=enabled), store=store)
    return TestClient(app)


def test_oci_off_by_default(store: Store) -> None:
    client = oci_client(store, enabled=False)
    assert client.get("/v2/").status_code == 404
    assert client.get("/v2/library/m/manifests/latest").status_code == 404
    assert Settings.from_env({}).serve_registry is False
    assert Settings.from_env({"CORRAL_SERVE_REGISTRY": "1"}).serve_registry is True


def test_oci_manifests_and_blobs_with_ranges(store: Store) -> None:
    weights = bytes(range(256)) * 40
    manifest = local_model(store, "m:7b", weights)
    local_model(store, "hf.co/someone/m:7b", b"other")
    client = oci_client(store)
    check = client.get("/v2/")
    assert check.status_code == 200
    assert check.headers["Docker-Distribution-API-Version"] == "registry/2.0"

    resp = client.get("/v2/library/m/manifests/7b")
    raw = (store.manifests_dir / "registry.ollama.ai/library/m/7b").read_bytes()
    assert resp.status_code == 200 and resp.content == raw
    assert resp.headers["content-type"] == MEDIA_MANIFEST
    assert resp.headers["Docker-Content-Digest"] == sha(raw)
    by_digest = client.get(f"/v2/library/m/manifests/{sha(raw)}")
    assert by_digest.content == raw
    head = client.head("/v2/library/m/manifests/7b")
    assert head.status_code == 200 and head.headers["content-length"] == str(len(raw))
    other = client.get("/v2/hf.co/someone/m/manifests/7b")
    assert other.status_code == 200 and other.content != raw
    missing = client.get("/v2/library/m/manifests/nope")
    assert missing.status_code == 404
    assert missing.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"

    digest = manifest.layers[0].digest
    whole = client.get(f"/v2/library/m/blobs/{digest}")
    assert whole.status_code == 200 and whole.content == weights
    assert whole.headers["Docker-Content-Digest"] == digest
    part = client.get(f"/v2/library/m/blobs/{digest}", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == weights[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(weights)}"
    tail = client.get(f"/v2/library/m/blobs/{digest}", headers={"Range": "bytes=10000-"})
    assert tail.status_code == 206 and tail.content == weights[10000:]
    beyond = client.get(f"/v2/library/m/blobs/{digest}", headers={"Range": "bytes=99999-"})
    assert beyond.status_code == 416


def test_oci_serves_nothing_outside_the_store(store: Store, tmp_path: Path) -> None:
    local_model(store, "m", b"weights")
    other = local_model(store, "secret", b"secret weights")
    client = oci_client(store)
    # A blob of another repository is not this repository's to give.
    assert client.get(f"/v2/library/m/blobs/{other.layers[0].digest}").status_code == 404
    # Stray files in blobs/ (partials, temp files) and paths out of the store: never.
    (store.blobs_dir / ("sha256-" + "0" * 64 + "-partial")).write_bytes(b"x")
    (tmp_path / "outside").write_bytes(b"x")
    for path in ["/v2/library/m/blobs/sha256-" + "0" * 64 + "-partial",
                 "/v2/library/m/blobs/..%2F..%2Foutside",
                 "/v2/library/m/blobs/sha256:../../outside",
                 "/v2/../../outside/blobs/sha256:" + "0" * 64]:
        assert client.get(path).status_code in (400, 404), path
    upload = client.post("/v2/library/m/blobs/uploads/")
    assert upload.status_code == 405 and upload.json()["errors"][0]["code"] == "UNSUPPORTED"
    assert client.put("/v2/library/m/manifests/latest", content=b"{}").status_code == 405


# ----- the CLI view ---------------------------------------------------------------------------


def test_transfer_view_draws_steps_and_one_bar_per_layer() -> None:
    out = io.StringIO()
    d1, d2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    with TransferView(out) as view:
        for event in [{"status": "pulling manifest"},
                      {"status": "pulling 111111111111", "digest": d1, "total": 2000},
                      {"status": "pulling 111111111111", "digest": d1, "total": 2000,
                       "completed": 2000},
                      {"status": "pulling 222222222222", "digest": d2, "total": 10,
                       "completed": 10},
                      {"status": "verifying sha256 digest"}, {"status": "writing manifest"},
                      {"status": "success"}]:
            view.update(event)
    text = out.getvalue()
    for expected in ["pulling manifest", "pulling 111111111111", "pulling 222222222222",
                     "verifying sha256 digest", "writing manifest", "success", "100%"]:
        assert expected in text
    assert len(view.progress.tasks) == 6
