"""`corral create MODEL [-f Modelfile] [-q TYPE]`: build a model on the server from a Modelfile.

Like `ollama create`: the Modelfile is parsed here (errors name the line), every local file it
references (FROM, a second FROM for a projector, ADAPTER) is hashed, `HEAD /api/blobs/<digest>`
asks whether the server has it, only missing ones are uploaded with `POST`, and then the JSON
create request (`from` or `files`, `adapters`, `template`, `system`, `parameters`, `messages`,
`license`, `quantize`) is sent and its status stream shown. Relative paths are taken from the
Modelfile's folder; `~` is expanded. Progress goes to stderr: bars on a terminal, the final state
printed once elsewhere.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import httpx

from gateway.cli.client import APIError, Client, CLIError, error_message
from gateway.cli.progress import ProgressView
from registry import modelfile
from registry.modelfile import SAFETENSORS_NOT_SUPPORTED, Modelfile, ModelfileError

_CHUNK = 1024 * 1024
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


class CreateView(ProgressView):
    """Status lines and progress bars (uploads in bytes, quantization in tensors)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream, wide_when_piped=True)

    def update(self, event: dict[str, Any]) -> None:
        text = str(event.get("status", ""))
        if event.get("total"):
            self.bar("server:" + text, text, int(event["total"]), int(event.get("completed") or 0),
                     kind="count")
        else:
            self.step(text)


# ----- local files -----------------------------------------------------------------------------


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _gguf_file(path: Path, what: str) -> Path:
    """The GGUF that a FROM/ADAPTER path names (a file, or a folder holding exactly one)."""
    if path.is_dir():
        ggufs = sorted(p for p in path.iterdir() if p.suffix.lower() == ".gguf")
        if len(ggufs) == 1:
            return ggufs[0]
        if ggufs:
            raise CLIError(f"{what} {path}: the folder holds several .gguf files; name one")
        if any(p.suffix.lower() in _WEIGHT_SUFFIXES or p.name == "config.json"
               for p in path.iterdir()):
            raise CLIError(SAFETENSORS_NOT_SUPPORTED)
        raise CLIError(f"{what} {path}: no .gguf file in this folder")
    if not _is_gguf(path):
        if path.suffix.lower() in _WEIGHT_SUFFIXES:
            raise CLIError(SAFETENSORS_NOT_SUPPORTED)
        raise CLIError(f"{what} {path}: not a GGUF file")
    return path


def _read_chunks(path: Path, on_bytes: Any) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            on_bytes(len(block))
            yield block


def upload(client: Client, path: Path, view: CreateView) -> str:
    """The file's digest, after making sure the server holds the blob (uploading if not)."""
    size = path.stat().st_size
    key = f"hash:{path}"
    done = 0

    def hashed(n: int) -> None:
        nonlocal done
        done += n
        view.bar(key, f"hashing {path.name}", size, done)

    h = hashlib.sha256()
    for block in _read_chunks(path, hashed):
        h.update(block)
    digest = "sha256:" + h.hexdigest()
    label = f"copying file {digest}"
    http = client._http  # the CLI's connection to the server (raw bodies need httpx itself)
    try:
        head = http.head(f"/api/blobs/{digest}")
        if head.status_code == 200:
            view.bar(f"copy:{digest}", label, size, size)
            return digest
        if head.status_code != 404:
            raise APIError(error_message(head.content, head.status_code, head.reason_phrase),
                           head.status_code)
        sent = 0

        def copied(n: int) -> None:
            nonlocal sent
            sent += n
            view.bar(f"copy:{digest}", label, size, sent)

        view.bar(f"copy:{digest}", label, size, 0)
        resp = http.post(f"/api/blobs/{digest}", content=_read_chunks(path, copied),
                         headers={"Content-Length": str(size)})
    except httpx.ConnectError:
        raise CLIError(f"could not connect to corral server at {client.base_url}; is it "
                       "running? (start it with: corral serve)") from None
    except httpx.TransportError as exc:
        raise CLIError(f"uploading {path} failed: {exc}") from None
    if resp.status_code >= 400:
        raise APIError(error_message(resp.content, resp.status_code, resp.reason_phrase),
                       resp.status_code)
    return digest


def _unique(files: dict[str, str], name: str) -> str:
    stem, suffix = os.path.splitext(name)
    candidate, n = name, 1
    while candidate in files:
        candidate, n = f"{stem}-{n}{suffix}", n + 1
    return candidate


def build_request(name: str, mf: Modelfile, base_dir: Path, client: Client,
                  view: CreateView) -> dict[str, Any]:
    """The /api/create body for a parsed Modelfile, uploading the local files it names."""
    body: dict[str, Any] = {"model": name}
    files: dict[str, str] = {}
    adapters: dict[str, str] = {}

    for n, arg in enumerate([mf.from_, *mf.extra_from]):
        path = modelfile.resolve_path(arg, base_dir)
        if path is not None:
            gguf = _gguf_file(path, "FROM")
            files[_unique(files, gguf.name)] = upload(client, gguf, view)
        elif digest := modelfile.blob_reference(arg):
            files[_unique(files, "model.gguf")] = digest
        elif n == 0 and not modelfile.looks_like_path(arg):
            body["from"] = arg
        else:
            raise CLIError(f"FROM {arg}: no such file or directory")
    for arg in mf.adapters:
        path = modelfile.resolve_path(arg, base_dir)
        if path is not None:
            gguf = _gguf_file(path, "ADAPTER")
            adapters[_unique(adapters, gguf.name)] = upload(client, gguf, view)
        elif digest := modelfile.blob_reference(arg):
            adapters[_unique(adapters, "adapter.gguf")] = digest
        else:
            raise CLIError(f"ADAPTER {arg}: no such file or directory")
    if files:
        body["files"] = files
    if adapters:
        body["adapters"] = adapters
    if mf.template is not None:
        body["template"] = mf.template
    if mf.system is not None:
        body["system"] = mf.system
    if mf.parameters:
        body["parameters"] = mf.parameters
    if mf.messages:
        body["messages"] = mf.messages
    if mf.licenses:
        body["license"] = mf.licenses
    for key in ("requires", "renderer", "parser"):
        if value := getattr(mf, key):
            body[key] = value
    return body


def cmd_create(args: argparse.Namespace, client: Client) -> int:
    path = Path(os.path.expanduser(args.file or "Modelfile"))
    if not path.is_file():
        if args.file:
            raise CLIError(f"open {args.file}: no such file or directory")
        raise CLIError("no Modelfile in the current folder; name one with -f")
    try:
        mf = modelfile.parse_file(path)
    except ModelfileError as exc:
        raise CLIError(exc.message) from None
    except OSError as exc:
        raise CLIError(f"open {path}: {exc.strerror or exc}") from None
    for warning in mf.warnings:
        sys.stderr.write(f"warning: {warning}\n")
    with CreateView() as view:
        view.step("gathering model components")
        body = build_request(args.model, mf, path.resolve().parent, client, view)
        if args.quantize:
            body["quantize"] = args.quantize
        body["stream"] = True
        for event in client.stream("/api/create", body):
            view.update(event)
    return 0
