"""Model options: Ollama's defaults, type checks, and the split into load vs. sampling options.

Precedence, as in Ollama: defaults <- server default num_ctx <- the model's params layer <- the
request's `options`. Unknown names are ignored on the API (Ollama logs and drops them); a value of
the wrong JSON type is a 400 naming the option.
"""

from __future__ import annotations

import contextlib
from typing import Any

from shared import protocol as p
from shared.config import Settings
from shared.errors import BadRequest
from shared.options import OPTION_TYPES

DEFAULT_NUM_CTX = 4096  # Ollama's tier for machines with under 23 GiB of VRAM, CPU included

_TYPE_NAMES = {int: "int", float: "float", bool: "bool", list: "[]string", str: "string"}
_INT64 = 2**63


def _coerce(name: str, value: Any) -> Any:
    kind = OPTION_TYPES[name][0]
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int | float) and not isinstance(value, bool) \
                and -_INT64 <= value < _INT64:  # what Go's int holds (and msgpack carries)
            return int(value)  # JSON numbers are truncated, as in Go
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            with contextlib.suppress(OverflowError):  # an integer beyond any float
                return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    elif kind is list:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    raise BadRequest(f'option "{name}" must be of type {_TYPE_NAMES[kind]}')


def check_options(raw: Any) -> dict[str, Any]:
    """Validate a request's `options` object; returns only the known, typed entries."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequest("options must be an object")
    return {k: _coerce(k, v) for k, v in raw.items() if k in OPTION_TYPES and v is not None}


def merge_options(model_params: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """Defaults, then the model's params layer, then the request's options."""
    merged = {k: default for k, (_, default) in OPTION_TYPES.items() if default is not None}
    for source in (model_params, request):
        for key, value in source.items():
            if key in OPTION_TYPES and value is not None:
                merged[key] = _coerce(key, value)
    return merged


def load_request(path: str, options: dict[str, Any], settings: Settings, n_ctx_train: int
                 ) -> p.Load:
    """The options that need a (re)load, as the runner's `Load` message."""
    num_ctx = options.get("num_ctx") or settings.context_length or DEFAULT_NUM_CTX
    if n_ctx_train:
        num_ctx = min(num_ctx, n_ctx_train)
    return p.Load(
        model_path=path,
        num_ctx=max(num_ctx, 4),
        num_batch=options["num_batch"],
        num_gpu=0 if settings.cpu_only else options["num_gpu"],
        main_gpu=options["main_gpu"],
        use_mmap=options["use_mmap"],
        num_thread=options["num_thread"],
        parallel=options["num_parallel"],
        flash_attention=settings.flash_attention,
        kv_cache_type=settings.kv_cache_type,
        prompt_cache=settings.prompt_cache,
        prompt_cache_dir=str(settings.prompt_cache_root) if settings.prompt_cache_disk else "",
        prompt_cache_disk=settings.prompt_cache_disk,
        draft_max=settings.draft_max,
    )


LOAD_OPTION_NAMES = frozenset({"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap",
                               "num_thread", "num_parallel", "draft_model"})


def sampling_options(options: dict[str, Any]) -> dict[str, Any]:
    """What the runner needs per request (everything except load-time options)."""
    return {k: v for k, v in options.items() if k not in LOAD_OPTION_NAMES}
