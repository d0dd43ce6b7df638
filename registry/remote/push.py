"""Push a model: every blob the registry lacks, then the manifest.

For each layer (then the config): `HEAD` the blob; present means done. Otherwise `POST
.../blobs/uploads/` opens an upload (with `?mount=<digest>&from=<repo>` when the layer came from
another model: a `201` means the registry linked the blob from there and nothing is sent). The
data goes in parts as consecutive `PATCH <location>` requests with `Content-Range: <start>-<end>`
(a `307` answer, Ollama's registry handing the part to object storage, means `PUT` the part to the
redirect instead), and `PUT <location>?digest=<digest>` closes the upload. Finally the manifest
bytes from the store are `PUT` under the tag.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

from registry.manifest import MEDIA_MANIFEST, Layer, Manifest
from registry.names import ModelName
from registry.remote import progress
from registry.remote.client import (
    Endpoint,
    RegistryClient,
    RegistryError,
    Unauthorized,
    describe,
    part_size,
    part_size_override,
    registry_message,
)
from registry.store import Store
from shared.errors import BadRequest, CorralError

READ_BLOCK = 1024 * 1024
MAX_TRIES = 3  # whole-blob upload attempts


def _error(resp: httpx.Response, what: str) -> CorralError:
    if resp.status_code == 401:
        return Unauthorized(f"{what}: unauthorized: {registry_message(resp)}")
    status = resp.status_code if 400 <= resp.status_code < 500 else 500
    return RegistryError(f"{what}: {registry_message(resp)}", status)


def _location(resp: httpx.Response, base: str) -> str | None:
    loc = resp.headers.get("Docker-Upload-Location") or resp.headers.get("Location")
    return urljoin(base, loc) if loc else None


def _with_params(url: str, **params: str) -> str:
    return str(httpx.URL(url).copy_merge_params(params))


def _mount_source(layer: Layer, endpoint: Endpoint) -> str | None:
    """The `namespace/model` a layer came from, when that is another repository."""
    if not layer.from_:
        return None
    try:
        source = ModelName.parse(layer.from_)
    except BadRequest:
        return None
    repo = f"{source.namespace}/{source.model}"
    return repo if repo != endpoint.repo else None


class BlobUpload:
    """One blob from the store to the registry; `completed` is what the registry has."""

    def __init__(self, store: Store, layer: Layer, endpoint: Endpoint, client: RegistryClient,
                 override: int | None) -> None:
        self.path: Path = store.blob_path(layer.digest)
        self.layer = layer
        self.digest = layer.digest
        self.size = layer.size
        self.endpoint = endpoint
        self.client = client
        self.override = override
        self.completed = 0
        self.sent_bytes = 0  # bytes of data this upload actually sent (0 when present/mounted)

    async def exists(self) -> bool:
        """HEAD the blob: is it in the repository already?"""
        if not self.path.is_file():
            raise RegistryError(f"push blob {progress.short(self.digest)}: missing from the store")
        resp = await self.client.send("HEAD", self.endpoint.blob_url(self.digest),
                                      repo=self.endpoint.repo)
        if resp.status_code == 200:
            self.completed = self.size
            return True
        if resp.status_code != 404:
            raise _error(resp, f"push blob {progress.short(self.digest)}")
        return False

    async def run(self) -> None:
        """Upload (or mount) the blob, retrying the whole upload on transient failures."""
        for attempt in range(MAX_TRIES):
            try:
                await self._upload()
                return
            except (httpx.TransportError, _Retry) as exc:
                if attempt + 1 == MAX_TRIES:
                    raise RegistryError(
                        f"push blob {progress.short(self.digest)}: {exc}") from None
                self.completed = 0
                await asyncio.sleep(2**attempt)

    async def _upload(self) -> None:
        what = f"push blob {progress.short(self.digest)}"
        repo = self.endpoint.repo
        start_url = self.endpoint.url("blobs/uploads/")
        source = _mount_source(self.layer, self.endpoint)
        if source:
            start_url = _with_params(start_url, mount=self.digest, **{"from": source})
        resp = await self.client.send("POST", start_url, repo=repo,
                                      headers={"Content-Length": "0"})
        if resp.status_code == 201:  # mounted from `source`
            self.completed = self.size
            return
        if resp.status_code >= 500:
            raise _Retry(f"{resp.status_code} {resp.reason_phrase}")
        location = _location(resp, start_url) if resp.status_code == 202 else None
        if location is None:
            raise _error(resp, what) if resp.status_code >= 400 else RegistryError(
                f"{what}: the registry opened no upload (status {resp.status_code})")

        step = part_size(self.size, self.override)
        md5s: list[bytes] = []
        redirected = False
        for offset in range(0, self.size, step):
            length = min(step, self.size - offset)
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(length),
                "Content-Range": f"{offset}-{offset + length - 1}",
                "X-Redirect-Uploads": "1",
            }
            md5 = hashlib.md5(usedforsecurity=False)
            resp = await self.client.send("PATCH", location, repo=repo, headers=headers,
                                          content=self._reader(offset, length, md5))
            if resp.status_code == 307 and "Location" in resp.headers:
                # The part goes to object storage; its URL is signed, so no credentials.
                md5 = hashlib.md5(usedforsecurity=False)
                target = urljoin(location, resp.headers["Location"])
                put = await self.client.send(
                    "PUT", target, content=self._reader(offset, length, md5),
                    headers={"Content-Type": "application/octet-stream",
                             "Content-Length": str(length)})
                if put.status_code >= 300:
                    raise _Retry(f"part upload: {put.status_code} {put.reason_phrase}")
                redirected = True
                location = _location(resp, location) if "Docker-Upload-Location" in \
                    resp.headers else location
            elif resp.status_code in (202, 204):
                location = _location(resp, location) or location
            elif resp.status_code >= 500:
                raise _Retry(f"{resp.status_code} {resp.reason_phrase}")
            else:
                raise _error(resp, what)
            md5s.append(md5.digest())
            self.completed = offset + length

        params = {"digest": self.digest}
        if redirected:
            joined = hashlib.md5(b"".join(md5s), usedforsecurity=False).hexdigest()
            params["etag"] = f"{joined}-{len(md5s)}"
        final_url = _with_params(location, **params)
        resp = await self.client.send("PUT", final_url, repo=repo,
                                      headers={"Content-Length": "0"})
        if resp.status_code >= 500:
            raise _Retry(f"{resp.status_code} {resp.reason_phrase}")
        if resp.status_code not in (201, 202, 204):
            raise _error(resp, what)
        self.completed = self.size

    def _reader(self, offset: int, length: int, md5: Any) -> Callable[[], AsyncIterator[bytes]]:
        """A fresh body for each send (a 401 retry sends it again); counts `completed`."""
        async def body() -> AsyncIterator[bytes]:
            self.completed = offset
            with open(self.path, "rb") as f:
                f.seek(offset)
                left = length
                while left > 0:
                    block = f.read(min(READ_BLOCK, left))
                    if not block:
                        raise RegistryError(f"{self.path.name} is shorter than its manifest says")
                    md5.update(block)
                    left -= len(block)
                    self.completed += len(block)
                    self.sent_bytes += len(block)
                    yield block
                    await asyncio.sleep(0)
        return body


class _Retry(Exception):
    pass


def _manifest_media_type(raw: bytes) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        media = json.loads(raw).get("mediaType")
        if isinstance(media, str) and media:
            return media
    return MEDIA_MANIFEST


async def push_model(
    store: Store,
    name: ModelName,
    *,
    insecure: bool = False,
    client: RegistryClient | None = None,
    part_bytes: int | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Push `name` from `store`, yielding Ollama's progress objects; errors raise CorralError."""
    endpoint = Endpoint.for_name(name, insecure=insecure)
    override = part_bytes or part_size_override()
    own = client is None
    client = client or RegistryClient()
    try:
        yield progress.status("retrieving manifest")
        model = store.get(name)
        raw = (store.manifests_dir / model.name.manifest_path()).read_bytes()
        manifest = Manifest.from_bytes(raw)
        seen: set[str] = set()
        for layer in [*manifest.layers, manifest.config]:
            if layer.digest in seen:
                continue
            seen.add(layer.digest)
            upload = BlobUpload(store, layer, endpoint, client, override)
            if await upload.exists():
                yield progress.layer("pushing", upload.digest, upload.size, upload.size)
                continue
            async for update in progress.watch(
                upload.run(),
                lambda u=upload: progress.layer("pushing", u.digest, u.size, u.completed),
            ):
                yield update
        yield progress.status("pushing manifest")
        resp = await client.send(
            "PUT", endpoint.manifest_url(), repo=endpoint.repo, content=raw,
            headers={"Content-Type": _manifest_media_type(raw)})
        if resp.status_code not in (200, 201, 202):
            raise _error(resp, "push manifest")
        yield progress.status("success")
    except httpx.HTTPError as exc:
        raise RegistryError(f"push model: {describe(exc)}") from None
    except OSError as exc:
        raise RegistryError(f"push model: {exc}") from None
    finally:
        if own:
            await client.aclose()


__all__ = ["BlobUpload", "push_model"]
