"""Pull a model: manifest, then every missing blob in parallel byte ranges, verified, manifest last.

A blob downloads into `blobs/sha256-<hex>-partial` (pre-sized, sparse), split into parts of
size/16 clamped to [100 MB, 1000 MB]; each part's progress is kept in `sha256-<hex>-partial-<n>`
(JSON), written after the bytes it counts, so a pull that stops (client gone, server killed)
resumes from the bytes already on disk. Up to 16 parts download at once; a failed part is retried
with exponential backoff (6 tries), a stalled one (no byte for 30 s) is retried at once.

When all of a blob's bytes are there its sha256 is checked: a match is renamed into the store, a
mismatch deletes the partial files and fails the pull. Only when every blob is in the store is
the manifest written, with the bytes the registry sent, atomically; blobs that only the previous
version of the tag used are removed after it.

Two pulls that need the same blob share one download; when every pull waiting for a download has
gone, the download stops (its partial files stay for the next pull).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

from registry.blobs import fsync_dir, parse_digest
from registry.manifest import MEDIA_MANIFEST, Layer, Manifest
from registry.names import ModelName
from registry.remote import progress
from registry.remote.client import (
    MAX_PARTS,
    Endpoint,
    RegistryClient,
    RegistryError,
    Unauthorized,
    _host_of,
    describe,
    part_size,
    part_size_override,
    registry_message,
)
from registry.store import Store
from shared.errors import BadRequest, CorralError, NotFound

log = logging.getLogger("corral.pull")

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = f"{MEDIA_MANIFEST}, {MEDIA_OCI_MANIFEST}"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024

MAX_TRIES = 6  # consecutive failed tries of one part without a byte of progress
MAX_STALLS = 20
BACKOFF_S = 1.0  # 1, 2, 4, 8, 16 s
PERSIST_EVERY_S = 0.5
HASH_BLOCK = 8 * 1024 * 1024


class _Retry(Exception):
    """A failure worth another try (5xx, 408, 429, a short body)."""


class _Stall(Exception):
    """No byte arrived within the read timeout."""


@dataclass
class Part:
    n: int
    offset: int
    size: int
    completed: int = 0

    @property
    def done(self) -> bool:
        return self.completed >= self.size


def _partial_path(store: Store, hex_digest: str) -> Path:
    return store.blobs_dir / f"sha256-{hex_digest}-partial"


class BlobDownload:
    """One blob on its way into the store; shared by every pull that needs it."""

    def __init__(self, store: Store, layer: Layer, endpoint: Endpoint, client: RegistryClient,
                 override: int | None) -> None:
        self.store = store
        self.digest = "sha256:" + parse_digest(layer.digest)
        self.hex = parse_digest(layer.digest)
        self.size = layer.size
        self.endpoint = endpoint
        self.client = client
        self.override = override
        self.final = store.blob_path(self.digest)
        self.partial = _partial_path(store, self.hex)
        self.parts: list[Part] = []
        self.resumed = 0  # bytes already on disk when this download started
        self.waiters = 0
        loop = asyncio.get_running_loop()
        self.data_ready: asyncio.Future[None] = loop.create_future()
        self.data_ready.add_done_callback(_consume)
        self._fd = -1
        self._url: str | None = None
        self._url_auth = True
        self.task: asyncio.Task[None] = loop.create_task(self._run())
        self.task.add_done_callback(_consume)

    @property
    def completed(self) -> int:
        return sum(min(p.completed, p.size) for p in self.parts)

    # ----- the task -----

    async def _run(self) -> None:
        try:
            if self.final.exists():  # another pull finished it a moment ago
                self.parts = [Part(0, 0, self.size, self.size)]
                self.data_ready.set_result(None)
                return
            try:
                self._prepare()
                pending = [p for p in self.parts if not p.done]
                if pending:
                    await self._fetch(pending)
                os.fsync(self._fd)
            finally:
                if self._fd >= 0:
                    os.close(self._fd)
                    self._fd = -1
            if not self.data_ready.done():
                self.data_ready.set_result(None)
            await asyncio.to_thread(self._verify_and_commit)
        except asyncio.CancelledError:
            if not self.data_ready.done():
                self.data_ready.cancel()
            raise
        except BaseException as exc:
            if not self.data_ready.done():
                self.data_ready.set_exception(exc)
            raise
        finally:
            await self.client.aclose()

    def _state_path(self, n: int) -> Path:
        return self.partial.with_name(f"{self.partial.name}-{n}")

    def _state_files(self) -> list[Path]:
        prefix = self.partial.name + "-"
        return [p for p in self.partial.parent.glob(prefix + "*")
                if p.name[len(prefix):].isdigit()]

    def _load_parts(self) -> list[Part] | None:
        """The parts on disk, when they describe this blob exactly; else None."""
        try:
            if self.partial.stat().st_size != self.size:
                return None
            parts = []
            for path in self._state_files():
                data = json.loads(path.read_text())
                parts.append(Part(int(data["n"]), int(data["offset"]), int(data["size"]),
                                  int(data["completed"])))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        parts.sort(key=lambda p: p.offset)
        offset = 0
        for i, part in enumerate(parts):
            if part.n != i or part.offset != offset or part.size <= 0 or not (
                    0 <= part.completed <= part.size):
                return None
            offset += part.size
        return parts if offset == self.size and parts else None

    def _prepare(self) -> None:
        self.store.blobs_dir.mkdir(parents=True, exist_ok=True)
        parts = self._load_parts() if self.size > 0 else None
        if parts is None:
            self._discard()
            step = part_size(self.size, self.override)
            parts = [Part(i, off, min(step, self.size - off))
                     for i, off in enumerate(range(0, self.size, step))]
            self._fd = os.open(self.partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            os.ftruncate(self._fd, self.size)
            for part in parts:
                self._persist(part)
        else:
            self._fd = os.open(self.partial, os.O_RDWR)
        self.parts = parts
        self.resumed = self.completed
        if self.resumed:
            log.info("resuming %s at %d of %d bytes", self.digest, self.resumed, self.size)

    def _persist(self, part: Part) -> None:
        path = self._state_path(part.n)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(part)))
        os.replace(tmp, path)

    def _discard(self) -> None:
        for path in [self.partial, *self._state_files()]:
            with contextlib.suppress(OSError):
                path.unlink()
        for path in self.partial.parent.glob(self.partial.name + "-*.tmp"):
            with contextlib.suppress(OSError):
                path.unlink()

    async def _fetch(self, pending: list[Part]) -> None:
        if self._url is None:
            await self._resolve()
        limit = asyncio.Semaphore(MAX_PARTS)
        try:
            async with asyncio.TaskGroup() as group:
                for part in pending:
                    group.create_task(self._fetch_part(part, limit))
        except BaseExceptionGroup as failed:  # report the first part's error, not the group
            raise failed.exceptions[0] from None

    async def _resolve(self) -> None:
        """Follow redirects while they stay on the registry's host; the first redirect to
        another host (a CDN) is where the data comes from, fetched without our credentials."""
        url = self.endpoint.blob_url(self.digest)
        registry_host = _host_of(url)
        for _ in range(10):
            resp = await self.client.send("GET", url, repo=self.endpoint.repo,
                                          headers={"Range": "bytes=0-0"}, stream=True)
            await resp.aclose()
            if resp.is_redirect and "Location" in resp.headers:
                target = urljoin(url, resp.headers["Location"])
                if _host_of(target) == registry_host:
                    url = target
                    continue
                self._url, self._url_auth = target, False
                return
            if resp.status_code in (200, 206):
                self._url, self._url_auth = url, True
                return
            raise _status_error(resp, f"pull blob {progress.short(self.digest)}")
        raise RegistryError(f"pull blob {progress.short(self.digest)}: too many redirects")

    async def _fetch_part(self, part: Part, limit: asyncio.Semaphore) -> None:
        async with limit:
            tries = stalls = 0
            while not part.done:
                before = part.completed
                try:
                    if self._url is None:
                        await self._resolve()
                    await self._fetch_range(part)
                    if not part.done:
                        raise _Retry("the response ended early")
                except _Stall:
                    stalls += 1
                    if stalls > MAX_STALLS:
                        raise RegistryError(
                            f"pull blob {progress.short(self.digest)}: download stalled") from None
                    log.info("part %d of %s stalled; retrying", part.n, self.digest)
                except (_Retry, httpx.TransportError) as exc:
                    tries = 0 if part.completed > before else tries + 1
                    if tries >= MAX_TRIES:
                        raise RegistryError(
                            f"pull blob {progress.short(self.digest)}: {exc}") from None
                    if not self._url_auth:
                        self._url = None  # a CDN URL may have expired: resolve again
                    delay = BACKOFF_S * 2 ** max(tries - 1, 0)
                    log.info("part %d of %s failed (%s); retrying in %.0fs",
                             part.n, self.digest, exc, delay)
                    await asyncio.sleep(delay)

    async def _fetch_range(self, part: Part) -> None:
        start = part.offset + part.completed
        end = part.offset + part.size - 1
        url = self._url
        assert url is not None
        try:
            resp = await self.client.send(
                "GET", url, repo=self.endpoint.repo if self._url_auth else None,
                headers={"Range": f"bytes={start}-{end}"}, stream=True)
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ReadTimeout):
                raise _Stall() from None
            raise
        last_persist = time.monotonic()
        try:
            if resp.status_code == 206:
                skip = 0
            elif resp.status_code == 200:
                skip = start  # the server ignored the range: read past what we have
            elif resp.status_code in (408, 429) or resp.status_code >= 500 or (
                    not self._url_auth and resp.status_code in (401, 403, 404, 410)):
                raise _Retry(f"{resp.status_code} {resp.reason_phrase}")
            else:
                await resp.aread()
                raise _status_error(resp, f"pull blob {progress.short(self.digest)}")
            async for chunk in resp.aiter_bytes():
                if skip:
                    dropped = min(skip, len(chunk))
                    chunk, skip = chunk[dropped:], skip - dropped
                chunk = chunk[: part.size - part.completed]
                if chunk:
                    os.pwrite(self._fd, chunk, part.offset + part.completed)
                    part.completed += len(chunk)
                if part.done:
                    break
                now = time.monotonic()
                if now - last_persist >= PERSIST_EVERY_S:
                    self._persist(part)
                    last_persist = now
        except httpx.ReadTimeout:
            raise _Stall() from None
        finally:
            await resp.aclose()
            self._persist(part)

    def _verify_and_commit(self) -> None:
        """sha256 of the whole partial file; a match becomes the blob, a mismatch is deleted."""
        sha = hashlib.sha256()
        with open(self.partial, "rb") as f:
            while block := f.read(HASH_BLOCK):
                sha.update(block)
        got = "sha256:" + sha.hexdigest()
        if got != self.digest:
            self._discard()
            raise RegistryError(
                f"digest mismatch, file must be downloaded again: want {self.digest}, got {got}")
        if self.final.exists():
            self.partial.unlink(missing_ok=True)
        else:
            os.replace(self.partial, self.final)
        self._discard()
        fsync_dir(self.store.blobs_dir)


def _consume(future: asyncio.Future[Any]) -> None:
    """Mark a future's exception as seen (its waiters report it); no 'never retrieved' noise."""
    if not future.cancelled():
        future.exception()


def _status_error(resp: httpx.Response, what: str) -> CorralError:
    if resp.status_code == 404:
        return NotFound(f"{what}: file does not exist")
    if resp.status_code == 401:
        return Unauthorized(f"{what}: unauthorized: {registry_message(resp)}")
    status = resp.status_code if 400 <= resp.status_code < 500 else 500
    return RegistryError(f"{what}: {registry_message(resp)}", status)


# One download per blob file, across every pull in this process (one event loop).
_active: dict[Path, BlobDownload] = {}


def _acquire(store: Store, layer: Layer, endpoint: Endpoint, client: RegistryClient,
             override: int | None) -> BlobDownload:
    path = store.blob_path(layer.digest)
    download = _active.get(path)
    if download is None or download.task.done():
        download = BlobDownload(store, layer, endpoint, client.fork(), override)
        _active[path] = download
        download.task.add_done_callback(lambda _t, p=path, d=download: _forget(p, d))
    download.waiters += 1
    return download


def _forget(path: Path, download: BlobDownload) -> None:
    if _active.get(path) is download:
        del _active[path]


def _release(download: BlobDownload) -> None:
    download.waiters -= 1
    if download.waiters <= 0 and not download.task.done():
        download.task.cancel()


async def fetch_manifest(client: RegistryClient, endpoint: Endpoint) -> tuple[bytes, Manifest]:
    """The manifest's bytes (as sent) and its parsed form; 404 -> "file does not exist"."""
    what = "pull model manifest"
    url = endpoint.manifest_url()
    try:
        resp = await client.send("GET", url, repo=endpoint.repo, headers={"Accept": ACCEPT})
    except httpx.HTTPError as exc:
        raise RegistryError(f"{what}: {describe(exc)}") from None
    if resp.status_code >= 400:
        raise _status_error(resp, what)
    if resp.status_code != 200:
        raise RegistryError(f"{what}: unexpected status {resp.status_code}")
    raw = resp.content
    if len(raw) > MAX_MANIFEST_BYTES:
        raise RegistryError(f"{what}: manifest too large")
    try:
        data = json.loads(raw)
        media = data.get("mediaType") if isinstance(data, dict) else None
        if media not in (None, MEDIA_MANIFEST, MEDIA_OCI_MANIFEST):
            raise ValueError(f"unsupported manifest type {media}")
        manifest = Manifest.from_json(data)
        for layer in manifest.all_layers():
            parse_digest(layer.digest)
            if layer.size < 0:
                raise ValueError("negative layer size")
    except (ValueError, TypeError, AttributeError, BadRequest) as exc:
        detail = exc.message if isinstance(exc, BadRequest) else str(exc)
        raise RegistryError(f"{what}: invalid manifest: {detail}") from None
    return raw, manifest


def _blobs(manifest: Manifest) -> list[Layer]:
    """Layers then config, as Ollama orders them, each digest once."""
    seen: set[str] = set()
    out = []
    for layer in [*manifest.layers, manifest.config]:
        if layer.digest not in seen:
            seen.add(layer.digest)
            out.append(layer)
    return out


async def pull_model(
    store: Store,
    name: ModelName,
    *,
    insecure: bool = False,
    client: RegistryClient | None = None,
    part_bytes: int | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Pull `name` into `store`, yielding Ollama's progress objects; errors raise CorralError."""
    endpoint = Endpoint.for_name(name, insecure=insecure)
    override = part_bytes or part_size_override()
    own = client is None
    client = client or RegistryClient()
    downloads: list[BlobDownload] = []
    try:
        yield progress.status("pulling manifest")
        raw, manifest = await fetch_manifest(client, endpoint)
        layers = _blobs(manifest)
        todo: dict[str, BlobDownload] = {}
        for layer in layers:
            if not store.has_blob(layer.digest):
                download = _acquire(store, layer, endpoint, client, override)
                downloads.append(download)
                todo[layer.digest] = download
        for layer in layers:
            download = todo.get(layer.digest)
            if download is None:
                yield progress.layer("pulling", layer.digest, layer.size, layer.size)
                continue
            async for update in progress.watch(
                asyncio.shield(download.data_ready),
                lambda d=download, la=layer: progress.layer(
                    "pulling", la.digest, la.size, d.completed),
            ):
                yield update
        yield progress.status("verifying sha256 digest")
        for download in downloads:
            await asyncio.shield(download.task)
        yield progress.status("writing manifest")
        with store.locked():  # one step: a concurrent delete cannot see it half done
            old = store.find(name)
            # The registry's bytes, unchanged, so the manifest digest (the model ID) stays.
            store.write_manifest_bytes(name, raw)
            removed = old is not None and store.remove_unused_blobs(
                old.manifest.digests() - manifest.digests())
        if removed:
            yield progress.status("removing unused layers")
        yield progress.status("success")
    except httpx.HTTPError as exc:
        raise RegistryError(f"pull model: {describe(exc)}") from None
    finally:
        for download in downloads:
            _release(download)
        if own:
            await client.aclose()
