"""The read side of the OCI distribution protocol, served from the model store.

With `CORRAL_SERVE_REGISTRY=1` a corral is a registry other corrals (and Ollama) pull from:
`corral pull --insecure corral-host:11434/library/gemma3:270m`.

- `GET|HEAD /v2/`: the API version check.
- `GET|HEAD /v2/<name>/manifests/<tag or sha256:digest>`: the manifest file's bytes, unchanged.
- `GET|HEAD /v2/<name>/blobs/<digest>`: a blob, with `Range` support (206, 416).

`<name>` is `namespace/model` (a model stored under Ollama's default host is preferred, then any
other host), `host/namespace/model`, or a bare `model` (namespace `library`). Only blobs that a
manifest of that repository lists are served, and only from blobs/: digests are validated, so no
path outside the store can be named. Everything else under /v2/ is refused; pushing to a corral
is not supported. Without the setting every /v2/ path is a 404.

With API keys on, a key sees only the models its `--models` allow (others are unknown, 404), so a
blob is served only through a model the key may use; manifests and blobs count against its
requests per minute and concurrency (gateway/team/middleware.py).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from gateway.team import context as team
from registry.blobs import parse_digest
from registry.manifest import MEDIA_MANIFEST
from registry.names import DEFAULT_HOST, DEFAULT_NAMESPACE, ModelName
from registry.store import LocalModel, Store
from shared.errors import BadRequest

API_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}


def _enabled(request: Request) -> bool:
    return bool(getattr(request.app.state.inference.settings, "serve_registry", False))


def _store(request: Request) -> Store:
    return request.app.state.inference.store


def oci_error(status: int, code: str, message: str, detail: Any = None) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        body["detail"] = detail
    return Response(json.dumps({"errors": [body]}).encode(), status_code=status,
                    media_type="application/json; charset=utf-8", headers=API_HEADER)


def _bad_digest() -> Response:
    return oci_error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")


def _not_found() -> Response:
    return Response(b"404 page not found", status_code=404, media_type="text/plain")


def _split_repo(name: str) -> tuple[str | None, str, str] | None:
    """`[host/][namespace/]model` -> (host or None, namespace, model), case-folded."""
    parts = name.split("/")
    if len(parts) == 1:
        host, namespace, model = None, DEFAULT_NAMESPACE, parts[0]
    elif len(parts) == 2:
        host, (namespace, model) = None, parts
    elif len(parts) == 3:
        host, namespace, model = parts
    else:
        return None
    if not namespace or not model:
        return None
    return (host.casefold() if host else None), namespace.casefold(), model.casefold()


def _repo_models(store: Store, name: str) -> list[LocalModel]:
    """The models of one repository, every tag, that the request's API key may use; those under
    the default host first."""
    repo = _split_repo(name)
    if repo is None:
        return []
    host, namespace, model = repo
    found = []
    for local in store.list():
        h, ns, m, _tag = local.name.key()
        if ns == namespace and m == model and (host is None or h == host) \
                and team.visible(local.name):
            found.append(local)
    found.sort(key=lambda lm: (lm.name.host.casefold() != DEFAULT_HOST, lm.name.host.casefold()))
    return found


def _manifest_bytes(store: Store, model: LocalModel) -> bytes | None:
    try:
        return (store.manifests_dir / model.name.manifest_path()).read_bytes()
    except OSError:
        return None


async def version_check(request: Request) -> Response:
    if not _enabled(request):
        return _not_found()
    return Response(b"{}", media_type="application/json; charset=utf-8", headers=API_HEADER)


async def manifest(request: Request) -> Response:
    if not _enabled(request):
        return _not_found()
    store = _store(request)
    name, reference = request.path_params["name"], request.path_params["reference"]
    by_digest = reference.startswith("sha256:")
    want = None
    if by_digest:
        try:
            want = parse_digest(reference)
        except BadRequest:
            return _bad_digest()
    elif not ModelName.is_valid(f"x:{reference}"):
        return oci_error(404, "MANIFEST_UNKNOWN", "manifest unknown", {"Tag": reference})
    for model in _repo_models(store, name):
        if by_digest and model.digest != want:
            continue
        if not by_digest and model.name.tag.casefold() != reference.casefold():
            continue
        raw = _manifest_bytes(store, model)
        if raw is None:
            continue
        try:
            media = json.loads(raw).get("mediaType") or MEDIA_MANIFEST
        except (ValueError, AttributeError):
            media = MEDIA_MANIFEST
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        headers = {**API_HEADER, "Docker-Content-Digest": digest, "ETag": f'"{digest}"'}
        body = b"" if request.method == "HEAD" else raw
        response = Response(body, media_type=media, headers=headers)
        response.headers["Content-Length"] = str(len(raw))
        return response
    detail = {"Digest": reference} if by_digest else {"Tag": reference}
    return oci_error(404, "MANIFEST_UNKNOWN", "manifest unknown", detail)


async def blob(request: Request) -> Response:
    if not _enabled(request):
        return _not_found()
    store = _store(request)
    name, digest = request.path_params["name"], request.path_params["digest"]
    try:
        hex_digest = parse_digest(digest)
    except BadRequest:
        return _bad_digest()
    if not digest.startswith("sha256:"):
        return _bad_digest()
    canonical = "sha256:" + hex_digest
    listed = any(canonical in {d.lower() for d in m.manifest.digests()}
                 for m in _repo_models(store, name))
    path = store.blob_path(canonical)
    if not listed or not path.is_file():
        return oci_error(404, "BLOB_UNKNOWN", "blob unknown to registry", {"digest": canonical})
    headers = {**API_HEADER, "Docker-Content-Digest": canonical, "ETag": f'"{canonical}"',
               "Cache-Control": "max-age=31536000"}
    return FileResponse(path, media_type="application/octet-stream", headers=headers)


async def refuse(request: Request) -> Response:
    if not _enabled(request):
        return _not_found()
    if request.method in ("GET", "HEAD"):
        return oci_error(404, "NAME_UNKNOWN", "repository name not known to registry")
    return oci_error(405, "UNSUPPORTED", "this registry is read-only")


_ALL = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]

routes: list[Route] = [
    Route("/v2/", version_check, methods=["GET"]),
    Route("/v2", version_check, methods=["GET"]),
    Route("/v2/{name:path}/manifests/{reference}", manifest, methods=["GET"]),
    Route("/v2/{name:path}/blobs/{digest}", blob, methods=["GET"]),
    Route("/v2/{rest:path}", refuse, methods=_ALL),
]
