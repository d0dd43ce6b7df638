"""What corral needs to know about a GGUF model, from its header, cached per file.

The header is parsed by registry.gguf_header (memory-mapped, header bytes only). Results are
cached by (path, mtime, size): blobs never change in place, and a rewritten file gets a new mtime.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from registry.gguf_header import read_header

_HIDDEN_KEYS = ("general.name", "tokenizer.chat_template")


@dataclass(frozen=True)
class GGUFInfo:
    architecture: str
    parameter_count: int
    file_type: str  # "Q4_K_M", "F16", ...
    context_length: int
    embedding_length: int
    block_count: int
    head_count: int
    head_count_kv: int
    chat_template: str | None
    has_pooling_type: bool  # embedding models declare <arch>.pooling_type
    kv: dict[str, Any] = field(repr=False)
    tensors: list[dict[str, Any]] = field(repr=False)

    def get(self, key: str, default: Any = None) -> Any:
        """A KV value; keys without a "general."/"tokenizer." prefix get the architecture's."""
        if key in self.kv:
            return self.kv[key]
        return self.kv.get(f"{self.architecture}.{key}", default)


# llama.cpp's file types by code (gguf.LlamaFileType less its ALL_/MOSTLY_ prefixes; checked
# against it by tests/test_gguf_header.py), so that reading a header needs no gguf package.
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
    38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0",
}


def _file_type_name(code: int) -> str:
    return FILE_TYPES.get(code & ~1024, "unknown")  # 1024 = "guessed" flag


def _dominant_tensor_type(tensors: list[dict[str, Any]]) -> str:
    """Fallback when general.file_type is missing: the type holding most 2-D weights."""
    counts: Counter[str] = Counter()
    for t in tensors:
        if len(t["shape"]) >= 2:
            counts[t["type"]] += math.prod(t["shape"])
    return counts.most_common(1)[0][0] if counts else "unknown"


def _int(value: Any) -> int:
    if isinstance(value, list):  # per-layer values (e.g. head_count_kv): take the first
        value = value[0] if value else 0
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, mtime_ns: int, size: int) -> GGUFInfo:
    header = read_header(path)
    kv = header.kv
    tensors = [{"name": t.name, "type": t.type, "shape": list(t.shape)} for t in header.tensors]
    arch = str(kv.get("general.architecture", "") or "")

    def arch_kv(name: str) -> Any:
        return kv.get(f"{arch}.{name}")

    # Like Ollama, count the tensors' elements; fall back to the KV for a tensor-less header.
    param_count = sum(math.prod(t["shape"]) for t in tensors)
    if not param_count:
        param_count = _int(kv.get("general.parameter_count"))
    file_type_code = kv.get("general.file_type")
    file_type = (
        _file_type_name(file_type_code)
        if isinstance(file_type_code, int)
        else _dominant_tensor_type(tensors)
    )
    template = kv.get("tokenizer.chat_template")
    return GGUFInfo(
        architecture=arch,
        parameter_count=int(param_count),
        file_type=file_type,
        context_length=_int(arch_kv("context_length")),
        embedding_length=_int(arch_kv("embedding_length")),
        block_count=_int(arch_kv("block_count")),
        head_count=_int(arch_kv("attention.head_count")),
        head_count_kv=_int(arch_kv("attention.head_count_kv")),
        chat_template=template if isinstance(template, str) else None,
        has_pooling_type=f"{arch}.pooling_type" in kv,
        kv=kv,
        tensors=tensors,
    )


def read_gguf(path: str | os.PathLike[str]) -> GGUFInfo:
    """Parse (or fetch from cache) a GGUF file's metadata. Raises OSError/ValueError if bad."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return _read_cached(real, st.st_mtime_ns, st.st_size)


def read_gguf_safe(path: str | os.PathLike[str] | None) -> GGUFInfo | None:
    """read_gguf, or None for a missing/unreadable/non-GGUF file."""
    if path is None:
        return None
    try:
        return read_gguf(path)
    except (OSError, ValueError, KeyError, IndexError):
        return None


def human_parameter_size(n: int) -> str:
    """Ollama's format.HumanNumber: 268098176 -> "268.10M", 8030261248 -> "8.0B", 7e9 -> "7B"."""
    if n >= 1_000_000_000:
        value = n / 1_000_000_000
        return f"{value:.0f}B" if value.is_integer() else f"{value:.1f}B"
    if n >= 1_000_000:
        value = n / 1_000_000
        return f"{value:.0f}M" if value.is_integer() else f"{value:.2f}M"
    if n >= 1_000:
        return f"{n / 1_000:.0f}K"
    return str(n)


def details(info: GGUFInfo) -> dict[str, Any]:
    """The `details` object (as /api/show and /api/ps send it) derived from the GGUF alone."""
    return {
        "parent_model": "",
        "format": "gguf",
        "family": info.architecture,
        "families": [info.architecture],
        "parameter_size": human_parameter_size(info.parameter_count),
        "quantization_level": info.file_type,
    }


def _json_number(value: Any) -> Any:
    # Go prints an integral float as 1000000, not 1000000.0; keep JSON output identical.
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    return value


def model_info(info: GGUFInfo, verbose: bool = False) -> dict[str, Any]:
    """/api/show `model_info`: every KV but the name and chat template, keys sorted (as Go's map
    marshalling does). Without verbose every non-empty array is null: Ollama decodes with an
    array budget of 0 (a nil slice marshals as null), which is what api_show.json shows even
    for the 4-item general.tags."""
    # Ollama patches in the parameter count it computed, whether the file had the key or not.
    kv = {**info.kv, "general.parameter_count": info.parameter_count}
    out: dict[str, Any] = {}
    for key in sorted(kv):
        if key in _HIDDEN_KEYS:
            continue
        value = kv[key]
        if isinstance(value, list):
            value = None if value and not verbose else [_json_number(v) for v in value]
        else:
            value = _json_number(value)
        out[key] = value
    return out


# Go templates say .Tools / .Suffix; Jinja templates say tools / tool_call / suffix.
_TOOLS_RE = re.compile(r"tools|tool_call", re.IGNORECASE)
_SUFFIX_RE = re.compile(r"suffix", re.IGNORECASE)


def capabilities(info: GGUFInfo, template: str | None, *, templates: bool = True) -> list[str]:
    """What the model can do, from the GGUF header and its template(s).

    `template` is the model's Go TEMPLATE if it has one; the GGUF's own Jinja chat template is
    also consulted, since the runner may render with it. `templates=False`: neither is used (a
    model whose RENDERER writes its prompts).
    """
    caps = ["embedding" if info.has_pooling_type else "completion"]
    if not templates:
        return caps
    # No "vision" or "audio" for a vision or audio block in the model's own GGUF (Ollama's
    # one-file models): corral reads images only through a projector layer (registry/store.py
    # adds "vision" for one), and a client that saw them advertised would offer uploads that
    # all fail (see served()).
    texts = [t for t in (template, info.chat_template) if t]
    if any(_TOOLS_RE.search(t) for t in texts):
        caps.append("tools")
    if any(_SUFFIX_RE.search(t) for t in texts):
        caps.append("insert")
    if any(("<think>" in t and "</think>" in t) or ".Thinking" in t for t in texts):
        caps.append("thinking")
    return caps


# What corral can serve of Ollama's capabilities from a GGUF or a stored list; "vision" comes
# from a projector layer only (registry/store.py), "audio" never.
SERVED = ("completion", "embedding", "tools", "insert", "thinking")


def served(caps: list[str]) -> list[str]:
    """`caps` less what corral cannot serve yet (a model created elsewhere may list vision)."""
    return [c for c in caps if c in SERVED]


def config_fields(info: GGUFInfo) -> dict[str, Any]:
    """The GGUF-derived part of a manifest config blob (d.4), in Ollama's field order."""
    fields: dict[str, Any] = {
        "model_format": "gguf",
        "model_family": info.architecture,
        "model_families": [info.architecture],
        "model_type": human_parameter_size(info.parameter_count),
        "file_type": info.file_type,
    }
    if info.context_length:
        fields["context_length"] = info.context_length
    if info.embedding_length:
        fields["embedding_length"] = info.embedding_length
    return fields


def clear_cache() -> None:
    _read_cached.cache_clear()
