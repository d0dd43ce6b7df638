"""POST /api/create: build a model's layers and manifest from a base, uploaded files and settings.

`spec_from_request` reads either request shape (the current JSON fields, or a legacy `modelfile`
text) and checks everything that can be checked cheaply: names, digests, parameters, messages,
the template, the quantization type. `create_model` then does the work, reporting progress as
Ollama's status objects, and writes the manifest last: until then the old model (if any) stays
as it was, and a crash leaves at most unreferenced blobs, which the startup prune removes.

Sources: an existing model (its layers are inherited, each marked with `from`), GGUF blobs
uploaded through /api/blobs (`files`), a blob reference `@sha256:<hex>` in a legacy Modelfile, or
(legacy Modelfile only) a GGUF path on the server's own disk. Safetensors imports are refused
with a clear message. A GGUF import never gets a template layer: the runner renders with the
GGUF's own chat template, or the family's turn format when it has none.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from registry import gotemplate, modelfile, renderers
from registry.blobs import TEMP_PREFIX, Blob, fsync_dir, normalize_digest
from registry.draftvocab import resolve_draft
from registry.gguf_info import GGUFInfo, config_fields, read_gguf
from registry.manifest import (
    MEDIA_ADAPTER,
    MEDIA_CONFIG,
    MEDIA_LICENSE,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_PROJECTOR,
    MEDIA_PROMPT,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    Layer,
    Manifest,
    compact_json,
)
from registry.names import ModelName
from registry.store import LocalModel, Store
from shared.errors import BadRequest, CorralError, NotFound

Progress = Callable[[dict[str, Any]], None]

SAFETENSORS_NOT_SUPPORTED = modelfile.SAFETENSORS_NOT_SUPPORTED
QUANTIZE_SOURCES = ("F16", "BF16", "F32")
MESSAGE_ROLES = ("system", "user", "assistant", "tool")
# Files of a safetensors/PyTorch import. Other names are GGUFs when their content says so.
_NOT_GGUF_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".json", ".model", ".jinja",
                      ".txt")

# Quantization types llama.cpp's quantizer writes, by their lower-case name.
QUANT_TYPES: dict[str, tuple[str, int]] = {
    name.lower(): (name, int(gguf.LlamaFileType[member]))
    for name, member in (
        ("F32", "ALL_F32"), ("F16", "MOSTLY_F16"), ("BF16", "MOSTLY_BF16"),
        ("Q8_0", "MOSTLY_Q8_0"), ("Q4_0", "MOSTLY_Q4_0"), ("Q4_1", "MOSTLY_Q4_1"),
        ("Q5_0", "MOSTLY_Q5_0"), ("Q5_1", "MOSTLY_Q5_1"), ("Q2_K", "MOSTLY_Q2_K"),
        ("Q3_K_S", "MOSTLY_Q3_K_S"), ("Q3_K_M", "MOSTLY_Q3_K_M"), ("Q3_K_L", "MOSTLY_Q3_K_L"),
        ("Q4_K_S", "MOSTLY_Q4_K_S"), ("Q4_K_M", "MOSTLY_Q4_K_M"), ("Q5_K_S", "MOSTLY_Q5_K_S"),
        ("Q5_K_M", "MOSTLY_Q5_K_M"), ("Q6_K", "MOSTLY_Q6_K"),
    )
}


class CreateCancelled(CorralError):
    status = 499


def quant_type(name: str) -> tuple[str, int]:
    """("Q4_K_M", llama_ftype) for a case-insensitive type name; 400 for an unknown one."""
    try:
        return QUANT_TYPES[name.strip().lower()]
    except KeyError:
        raise BadRequest(f"unsupported quantization type {name}") from None


@dataclass
class CreateSpec:
    """What to build, checked. `files`/`adapters` map a file name to an uploaded blob digest."""

    name: ModelName
    from_: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    adapters: dict[str, str] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    licenses: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    quantize: str | None = None  # canonical name, e.g. "Q4_K_M"
    requires: str | None = None
    renderer: str | None = None
    parser: str | None = None
    # Legacy Modelfile requests only: FROM/ADAPTER may name files on the server's own disk.
    server_paths: list[str] = field(default_factory=list)
    server_adapters: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# ----- reading the request ---------------------------------------------------------------------


def _str_field(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"invalid value for field {key!r}: expected string")
    return value


def _digest_map(data: dict[str, Any], key: str) -> dict[str, str]:
    raw = data.get(key)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequest(f"{key} must be an object mapping file names to digests")
    out: dict[str, str] = {}
    for name, digest in raw.items():
        if not isinstance(digest, str) or not digest:
            raise BadRequest("invalid digest format")
        path = Path(name)
        if (not name or path.is_absolute() or name.startswith(("/", "\\"))
                or ".." in path.parts or re.match(r"^[A-Za-z]:", name)):
            raise BadRequest("file path must be relative")
        out[name] = normalize_digest(digest)
    return out


def check_messages(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadRequest("messages must be an array")
    out: list[dict[str, Any]] = []
    for item in raw:
        if not isinstance(item, dict):
            raise BadRequest("each message must be an object")
        role = item.get("role")
        content = item.get("content") or ""
        if not isinstance(role, str) or role.lower() not in MESSAGE_ROLES:
            raise BadRequest('message role must be one of "system", "user", "assistant" or '
                             '"tool"')
        if not isinstance(content, str):
            raise BadRequest("message content must be a string")
        message: dict[str, Any] = {"role": role.lower(), "content": content}
        for key in ("thinking", "images", "tool_calls", "tool_name"):
            if item.get(key):
                message[key] = item[key]
        out.append(message)
    return out


def check_template(text: str) -> None:
    """400 `template error: ...` for a template corral cannot render."""
    if gotemplate.is_passthrough(text):
        return
    try:
        gotemplate.check(text)
    except gotemplate.TemplateError as exc:
        raise BadRequest(f"template error: {exc}") from None


def spec_from_request(data: dict[str, Any]) -> CreateSpec:
    """Validate a create request body (either shape) into a CreateSpec; raises 400s."""
    name = data.get("model") or data.get("name")
    if not name or not isinstance(name, str):
        raise BadRequest("model is required")
    spec = CreateSpec(ModelName.parse(name))
    quantize = data.get("quantize") or data.get("quantization")
    if quantize is not None:
        if not isinstance(quantize, str):
            raise BadRequest("invalid value for field 'quantize': expected string")
        spec.quantize = quant_type(quantize)[0] if quantize else None

    text = data.get("modelfile")
    if text:
        if not isinstance(text, str):
            raise BadRequest("invalid value for field 'modelfile': expected string")
        _legacy_spec(spec, modelfile.parse(text))
    else:
        spec.from_ = _str_field(data, "from") or None
        spec.files = _digest_map(data, "files")
        spec.adapters = _digest_map(data, "adapters")
        spec.template = _str_field(data, "template")
        spec.system = _str_field(data, "system")
        license_ = data.get("license")
        if isinstance(license_, str):
            spec.licenses = [license_] if license_ else []
        elif isinstance(license_, list) and all(isinstance(x, str) for x in license_):
            spec.licenses = [x for x in license_ if x]
        elif license_ is not None:
            raise BadRequest("license must be a string or an array of strings")
        spec.parameters, spec.warnings = modelfile.parameters_from_json(data.get("parameters"))
        spec.messages = check_messages(data.get("messages"))
        spec.requires = _str_field(data, "requires") or None
        spec.renderer = _str_field(data, "renderer") or None
        spec.parser = _str_field(data, "parser") or None
        if not spec.from_ and not spec.files:
            raise BadRequest("neither 'from' or 'files' was specified")
    if spec.template:
        check_template(spec.template)
    renderers.check_names(spec.renderer, spec.parser)
    if len(spec.adapters) + len(spec.server_adapters) > 1:
        raise BadRequest("only one adapter is supported")
    for file_name in spec.files:
        if file_name.lower().endswith(_NOT_GGUF_SUFFIXES):
            raise BadRequest(SAFETENSORS_NOT_SUPPORTED)
    return spec


def _legacy_spec(spec: CreateSpec, mf: modelfile.Modelfile) -> None:
    """A Modelfile sent as text: blob references `@sha256:...` or server-side paths."""
    for n, arg in enumerate([mf.from_, *mf.extra_from]):
        digest = modelfile.blob_reference(arg)
        if digest:
            spec.files[f"model-{n}.gguf"] = digest
        elif n == 0 and not modelfile.looks_like_path(arg):
            spec.from_ = arg
        else:
            spec.server_paths.append(arg)
    for n, arg in enumerate(mf.adapters):
        digest = modelfile.blob_reference(arg)
        if digest:
            spec.adapters[f"adapter-{n}.gguf"] = digest
        else:
            spec.server_adapters.append(arg)
    spec.template = mf.template
    spec.system = mf.system
    spec.licenses = list(mf.licenses)
    spec.parameters = dict(mf.parameters)
    spec.messages = list(mf.messages)
    spec.requires, spec.renderer, spec.parser = mf.requires, mf.renderer, mf.parser
    spec.warnings = list(mf.warnings)


# ----- quantization ----------------------------------------------------------------------------


def _quantize_child() -> None:
    """Entry point of the quantizer subprocess: argv = src dst ftype nthread.

    llama.cpp aborts the whole process on some errors, so this never runs inside the server.
    Progress ("[  3/ 20] tensor ...") is read from llama.cpp's log and printed as `P i n` lines.
    """
    import ctypes

    import llama_cpp

    src, dst, ftype, nthread = sys.argv[1:5]
    pattern = re.compile(rb"\[\s*(\d+)/\s*(\d+)\]")

    @llama_cpp.llama_log_callback
    def on_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        m = pattern.search(text or b"")
        if m:
            sys.stdout.write(f"P {int(m.group(1))} {int(m.group(2))}\n")
            sys.stdout.flush()
        elif level in (2, 3):  # GGML_LOG_LEVEL_WARN / ERROR
            sys.stderr.write((text or b"").decode("utf-8", "replace"))
            sys.stderr.flush()

    llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(ftype)
    params.nthread = int(nthread)
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    sys.exit(0 if rc == 0 else 1)


def quantize_gguf(src: Path, dst: Path, ftype: int,
                  on_progress: Callable[[int, int], None] | None = None,
                  cancel: threading.Event | None = None) -> None:
    """Quantize `src` into `dst` with llama.cpp's quantizer, in a subprocess."""
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-c", "from registry.create import _quantize_child; _quantize_child()",
           str(src), str(dst), str(ftype), str(os.cpu_count() or 1)]
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors,
                                stdin=subprocess.DEVNULL, env=env, cwd=root)
        assert proc.stdout is not None
        watcher: threading.Thread | None = None
        if cancel is not None:
            def watch() -> None:
                while proc.poll() is None:
                    if cancel.wait(0.2):
                        proc.kill()
                        return
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
        for raw in proc.stdout:
            parts = raw.split()
            if len(parts) == 3 and parts[0] == b"P" and on_progress is not None:
                on_progress(int(parts[1]), int(parts[2]))
        rc = proc.wait()
        if watcher is not None:
            watcher.join()
        if cancel is not None and cancel.is_set():
            raise CreateCancelled("request canceled")
        if rc != 0:
            errors.seek(0)
            tail = errors.read().decode("utf-8", "replace").strip().splitlines()[-3:]
            detail = "; ".join(line.strip() for line in tail if line.strip())
            raise CorralError(f"quantization failed{': ' + detail if detail else ''}")


# ----- creating --------------------------------------------------------------------------------


class _Builder:
    def __init__(self, store: Store, spec: CreateSpec, progress: Progress,
                 cancel: threading.Event | None) -> None:
        self.store = store
        self.spec = spec
        self.progress = progress
        self.cancel = cancel
        self.new_digests: set[str] = set()  # blobs this create wrote
        # Small blobs made from bytes here (template, system, params, config ...): if a
        # concurrent delete removes one that happened to be shared, it is simply rewritten.
        self.made: dict[str, bytes] = {}

    def status(self, text: str, **extra: Any) -> None:
        self.progress({"status": text, **extra})

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CreateCancelled("request canceled")

    def blob_bytes(self, data: bytes) -> Blob:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.store.has_blob(digest):
            self.new_digests.add(digest)
        self.made[digest] = data
        return self.store.write_blob([data], digest)

    def require_blob(self, digest: str) -> Path:
        path = self.store.blob_path(digest)
        if not path.is_file():
            raise BadRequest(f'blob "{digest}" not found; upload it first with '
                             f"POST /api/blobs/{digest}")
        return path

    def adopt_file(self, path: Path) -> Blob:
        """Move a finished temp file in blobs/ into place under its digest."""
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(8 * 1024 * 1024):
                h.update(block)
        digest = "sha256:" + h.hexdigest()
        size = path.stat().st_size
        final = self.store.blob_path(digest)
        if final.exists():
            path.unlink()
        else:
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(path, final)
            fsync_dir(final.parent)
            self.new_digests.add(digest)
        return Blob(digest, size)

    def import_server_file(self, arg: str) -> Blob:
        path = Path(os.path.expanduser(arg))
        if path.is_dir():
            raise BadRequest(SAFETENSORS_NOT_SUPPORTED if not list(path.glob("*.gguf")) else
                             f"{arg} is a folder: name the .gguf file")
        if not path.is_file():
            raise BadRequest(f"{arg}: no such file")
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise BadRequest(f"{arg} is not a GGUF file; {SAFETENSORS_NOT_SUPPORTED}")
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(8 * 1024 * 1024):
                self.check_cancel()
                h.update(block)
        digest = "sha256:" + h.hexdigest()
        if not self.store.has_blob(digest):
            self.new_digests.add(digest)

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while block := f.read(8 * 1024 * 1024):
                    self.check_cancel()
                    yield block

        return self.store.write_blob(chunks(), digest)

    def read_gguf(self, digest: str, what: str) -> GGUFInfo:
        path = self.require_blob(digest)
        try:
            return read_gguf(path)
        except (OSError, ValueError, KeyError, IndexError) as exc:
            raise BadRequest(f"{what} is not a valid GGUF file: {exc}") from None

    # --- the steps ---

    def build(self, prune_old: bool) -> LocalModel:
        spec, store = self.spec, self.store
        layers: list[Layer] = []
        base_config: dict[str, Any] = {}
        base_params: dict[str, Any] = {}

        if spec.from_:
            base = store.find(spec.from_)
            if base is None:
                raise NotFound(f'model "{spec.from_}" not found, try pulling it first')
            origin = base.name.display()
            layers = [Layer(lay.media_type, lay.digest, lay.size, lay.from_ or origin, lay.name)
                      for lay in base.manifest.layers]
            for layer in layers:
                self.require_blob(layer.digest)  # a base with missing blobs cannot be copied
            base_config = dict(base.config)
            base_params = dict(base.params)

        # Weights: uploaded GGUF blobs, blob references, server-side paths (legacy).
        models: list[Layer] = []
        projectors: list[Layer] = []
        gguf_blobs: list[tuple[str, str]] = list(spec.files.items())
        if gguf_blobs or spec.server_paths:
            self.status("parsing GGUF")
        for arg in spec.server_paths:
            blob = self.import_server_file(arg)
            gguf_blobs.append((os.path.basename(arg), blob.digest))
        for file_name, digest in gguf_blobs:
            with open(self.require_blob(digest), "rb") as f:
                if f.read(4) != b"GGUF" and not file_name.lower().endswith(".gguf"):
                    raise BadRequest(f"{file_name} is not a GGUF file; "
                                     f"{SAFETENSORS_NOT_SUPPORTED}")
            info = self.read_gguf(digest, file_name)
            layer = Layer(MEDIA_MODEL, digest, self.require_blob(digest).stat().st_size)
            kind = str(info.kv.get("general.type", "") or "")
            if kind == "adapter":
                raise BadRequest(f"{file_name} is a LoRA adapter: pass it as an adapter "
                                 "(ADAPTER in a Modelfile)")
            if info.architecture == "clip" or kind in ("mmproj", "projector"):
                projectors.append(Layer(MEDIA_PROJECTOR, layer.digest, layer.size))
            else:
                models.append(layer)
        if len(models) > 1:
            raise BadRequest("more than one model GGUF was given; split GGUF files are not "
                             "supported (merge them with llama-gguf-split first)")
        if models:
            layers = [lay for lay in layers if lay.media_type != MEDIA_MODEL]
            layers.insert(0, models[0])
        if projectors:
            layers = [lay for lay in layers if lay.media_type != MEDIA_PROJECTOR]
            at = 1 if layers and layers[0].media_type == MEDIA_MODEL else 0
            layers[at:at] = projectors
        model_layer = next((lay for lay in layers if lay.media_type == MEDIA_MODEL), None)
        if model_layer is None:
            raise BadRequest("the model has no weights: FROM must name a model or a GGUF file")
        info = self.read_gguf(model_layer.digest, "the model")

        # Adapters.
        adapter_layers: list[Layer] = []
        adapter_digests = list(spec.adapters.values())
        for arg in spec.server_adapters:
            adapter_digests.append(self.import_server_file(arg).digest)
        for digest in adapter_digests:
            ainfo = self.read_gguf(digest, "the adapter")
            if str(ainfo.kv.get("general.type", "")) != "adapter":
                raise BadRequest("the adapter is not a LoRA adapter GGUF (general.type is not "
                                 "\"adapter\")")
            if ainfo.architecture and info.architecture and ainfo.architecture != \
                    info.architecture:
                raise BadRequest(f"the adapter is for {ainfo.architecture} models, but the model "
                                 f"is {info.architecture}")
            adapter_layers.append(Layer(MEDIA_ADAPTER, digest,
                                        self.require_blob(digest).stat().st_size))
        if adapter_layers:
            layers = [lay for lay in layers if lay.media_type != MEDIA_ADAPTER]
            at = max((i + 1 for i, lay in enumerate(layers)
                      if lay.media_type in (MEDIA_MODEL, MEDIA_PROJECTOR)), default=0)
            layers[at:at] = adapter_layers

        # Quantization.
        if spec.quantize:
            model_layer, info = self.quantize(model_layer, info)
            layers = [model_layer if lay.media_type == MEDIA_MODEL else lay for lay in layers]
        self.check_cancel()

        # Text and JSON layers.
        def replace(media_types: tuple[str, ...], new: Layer | None) -> None:
            nonlocal layers
            layers = [lay for lay in layers if lay.media_type not in media_types]
            if new is not None:
                layers.append(new)

        if spec.template is not None:
            if gotemplate.is_passthrough(spec.template):
                replace((MEDIA_TEMPLATE, MEDIA_PROMPT), None)
            else:
                blob = self.blob_bytes(spec.template.encode())
                replace((MEDIA_TEMPLATE, MEDIA_PROMPT), blob.layer(MEDIA_TEMPLATE))
        if spec.system is not None:
            new = self.blob_bytes(spec.system.encode()).layer(MEDIA_SYSTEM) if spec.system \
                else None
            replace((MEDIA_SYSTEM,), new)
        if spec.parameters:
            merged = dict(sorted({**base_params, **spec.parameters}.items()))  # as Go sorts
            if merged.get("draft_model"):  # named in the store, of the same vocabulary
                resolve_draft(store, self.require_blob(model_layer.digest),
                              merged["draft_model"], spec.name.display())
            replace((MEDIA_PARAMS,), self.blob_bytes(compact_json(merged)).layer(MEDIA_PARAMS))
        if spec.messages:
            blob = self.blob_bytes(compact_json(spec.messages))
            replace((MEDIA_MESSAGES,), blob.layer(MEDIA_MESSAGES))
        for text in spec.licenses:
            blob = self.blob_bytes(text.encode())
            if not any(lay.digest == blob.digest and lay.media_type == MEDIA_LICENSE
                       for lay in layers):
                layers.append(blob.layer(MEDIA_LICENSE))

        # Config.
        dropped = {"rootfs", "architecture", "os"} | ({"capabilities"} if models else set())
        config: dict[str, Any] = {k: v for k, v in base_config.items() if k not in dropped}
        config.update(config_fields(info))
        for key in ("renderer", "parser", "requires"):
            if value := getattr(spec, key):
                config[key] = value
        config["architecture"] = "amd64"
        config["os"] = "linux"
        config["rootfs"] = {"type": "layers", "diff_ids": [lay.digest for lay in layers]}
        config_blob = self.blob_bytes(compact_json(config))

        for layer in layers:
            verb = "creating new" if layer.digest in self.new_digests else "using existing"
            self.status(f"{verb} layer {layer.digest}")
        self.check_cancel()
        self.status("writing manifest")
        manifest = Manifest(config=config_blob.layer(MEDIA_CONFIG), layers=layers)
        old = store.find(spec.name)
        removed = self.commit(manifest, old, prune_old)
        if removed:
            self.status("removing unused layers")
        self.status("success")
        return store.get(spec.name)

    def quantize(self, layer: Layer, info: GGUFInfo) -> tuple[Layer, GGUFInfo]:
        spec = self.spec
        assert spec.quantize is not None
        target, ftype = quant_type(spec.quantize)
        if info.file_type not in QUANTIZE_SOURCES:
            raise BadRequest("quantization is only supported for F16, BF16 and F32 models")
        src = self.require_blob(layer.digest)
        fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=self.store.blobs_dir)
        os.close(fd)
        tmp = Path(tmp_name)
        status = f"quantizing {info.file_type} model to {target}"
        self.status(status, digest="0", total=len(info.tensors) or 1, completed=0)
        try:
            quantize_gguf(src, tmp, ftype,
                          lambda done, total: self.status(status, digest="0", total=total,
                                                          completed=done),
                          self.cancel)
            self.status("verifying conversion")
            try:
                new_info = read_gguf(tmp)
            except (OSError, ValueError, KeyError, IndexError) as exc:
                raise CorralError(f"quantization wrote an unreadable file: {exc}") from None
            if new_info.file_type != target or not new_info.tensors:
                raise CorralError(f"quantization produced {new_info.file_type}, not {target}")
            blob = self.adopt_file(tmp)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        return Layer(MEDIA_MODEL, blob.digest, blob.size), read_gguf(
            self.store.blob_path(blob.digest))

    def commit(self, manifest: Manifest, old: LocalModel | None, prune_old: bool) -> bool:
        """Write the manifest once every blob it names is on disk (checked under the store lock,
        so a concurrent delete cannot remove one in between); then drop the old version's blobs
        that nothing uses any more. Returns whether any were removed."""
        store = self.store
        with store.locked():
            for layer in manifest.all_layers():
                if store.has_blob(layer.digest):
                    continue
                if layer.digest in self.made:
                    store.write_blob([self.made[layer.digest]], layer.digest)
                else:
                    raise CorralError(f"layer {layer.digest} disappeared while the model was "
                                      "being created (was its source model deleted?)")
            store.write_manifest(self.spec.name, manifest)
            if old is None or not prune_old:
                return False
            return bool(store.remove_unused_blobs(old.manifest.digests() - manifest.digests()))


def create_model(store: Store, spec: CreateSpec, progress: Progress, *, prune_old: bool = True,
                 cancel: threading.Event | None = None) -> LocalModel:
    """Build and write the model; `progress` receives Ollama's status objects. Blocking: the
    server runs it in a worker thread."""
    return _Builder(store, spec, progress, cancel).build(prune_old)

