"""schemathesis hooks (loaded through SCHEMATHESIS_HOOKS): keep generated requests bounded, and
check NDJSON streams line by line against the document.

Bounded: inference requests ask for at most a few tokens, short texts and few embedding inputs,
and leave out the options that would restart the runner (num_ctx, num_gpu, ...) or unload the
model (keep_alive), so the run spends its time on the API, not on loading models. Three in four
requests name the model the server has, so they get past the 404 into the model's code.
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Any

import schemathesis

from tests._openapi import NDJSON, body_problems, media_type

MODEL = os.environ.get("CORRAL_FUZZ_MODEL", "gemma3:270m")
MAX_TOKENS = 4
MAX_TEXT = 2000
MAX_INPUTS = 16
RELOADING_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "use_mmap",
                     "num_parallel")
INFERENCE = ("/api/generate", "/api/chat", "/api/embed", "/api/embeddings",
             "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages",
             "/v1/messages/count_tokens", "/v1/responses")
# What the bundled model refuses with a 400 (it has no tools, thinking or vision): dropped from
# the requests that name it, so that they reach generation.
UNSUPPORTED = ("tools", "tool_choice", "think", "images", "suffix", "thinking")


def _short(value: Any) -> Any:
    if isinstance(value, str):
        return value[:MAX_TEXT]
    if isinstance(value, list):
        return [_short(v) for v in value[:MAX_INPUTS]]
    if isinstance(value, dict):
        return {k: _short(v) for k, v in value.items()}
    return value


def _bounded_options(options: Any) -> Any:
    if not isinstance(options, dict):
        return options
    options = {k: v for k, v in options.items() if k not in RELOADING_OPTIONS}
    predict = options.get("num_predict")
    if not isinstance(predict, int) or isinstance(predict, bool) or not 0 < predict <= MAX_TOKENS:
        options["num_predict"] = MAX_TOKENS
    return options


def bound(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """A request body made cheap to serve, keeping its shape (and its mistakes) otherwise."""
    body = _short(body)
    body.pop("keep_alive", None)
    if zlib.crc32(json.dumps(body, sort_keys=True, default=str).encode()) % 4:
        body["model"] = MODEL
        for key in UNSUPPORTED:
            body.pop(key, None)
    if path.startswith("/api/"):
        body["options"] = _bounded_options(body.get("options", {}))
    else:
        for key in RELOADING_OPTIONS:
            body.pop(key, None)
        body["options"] = _bounded_options(body.get("options", {}))
        caps = ("max_output_tokens",) if path == "/v1/responses" else ("max_tokens",
                                                                         "max_completion_tokens")
        for key in caps:
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
                body[key] = MAX_TOKENS
        if all(body.get(key) is None for key in caps):
            body[caps[0]] = MAX_TOKENS
        n = body.get("n")
        if isinstance(n, int) and not isinstance(n, bool) and n > 2:
            body["n"] = 2
    return body


@schemathesis.hook
def map_case(ctx: Any, case: Any) -> Any:
    if case.operation.path in INFERENCE and isinstance(case.body, dict):
        case.body = bound(case.operation.path, case.body)
    elif case.operation.path == "/api/show" and isinstance(case.body, dict):
        case.body = {**case.body, "model": MODEL}
    return case


_DOCUMENT: dict[str, Any] = {}


@schemathesis.check
def ndjson_conformance(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every line of an NDJSON reply matches the schema documented for a line (schemathesis
    itself reads no NDJSON)."""
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    if media_type(content_type) != NDJSON:
        return None
    if not _DOCUMENT:
        _DOCUMENT.update(case.operation.schema.raw_schema)
    problems = body_problems(_DOCUMENT, case.operation.path, case.method,
                             response.status_code, content_type, response.content)
    if problems:
        raise AssertionError("\n".join(problems[:5]))
    return True
