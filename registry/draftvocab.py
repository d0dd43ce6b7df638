"""Whether a draft model can guess tokens for a target model: the same vocabulary.

A draft model (runner/process/draftmodel.py) proposes token ids that the target verifies as its
own, so an id must mean the same text in both. The rule is llama.cpp's for its draft models
(common/speculative.cpp): the same tokenizer type, the same BOS/EOS ids and whether they are
added, vocabulary sizes within a little padding of each other, and the same text for every id
they share (from id 5 on: the first few are control tokens some conversions rename). Read from the
GGUF headers, so a mismatch is a 400 at create and at load, before any runner starts.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.gguf_header import LazyArray
from registry.gguf_info import GGUFInfo, read_gguf_safe
from shared.errors import BadRequest

if TYPE_CHECKING:
    from registry.store import Store

MAX_SIZE_DIFFERENCE = 128  # padded vocabularies (as llama.cpp allows)
FIRST_COMPARED_ID = 5

_SAME_KEYS = (("tokenizer.ggml.model", "tokenizer type"),
              ("tokenizer.ggml.bos_token_id", "BOS token"),
              ("tokenizer.ggml.eos_token_id", "EOS token"),
              ("tokenizer.ggml.add_bos_token", "whether BOS is added"),
              ("tokenizer.ggml.add_eos_token", "whether EOS is added"))


def _tokens(info: GGUFInfo) -> list[Any]:
    tokens = info.kv.get("tokenizer.ggml.tokens")
    if isinstance(tokens, LazyArray):  # read from the file once, not per item
        return tokens.items()
    return list(tokens) if isinstance(tokens, list) else []


def vocab_mismatch(target: GGUFInfo, draft: GGUFInfo) -> str | None:
    """Why `draft` cannot draft for `target` (a phrase for an error message), None if it can."""
    if draft.has_pooling_type or draft.architecture == "clip":
        return "it is not a text generation model"
    for key, what in _SAME_KEYS:
        mine, theirs = target.kv.get(key), draft.kv.get(key)
        if mine != theirs:
            return f"its {what} differs ({theirs!r}, the model's is {mine!r})"
    mine, theirs = _tokens(target), _tokens(draft)
    if not mine or not theirs:
        return "a vocabulary is missing from the GGUF"
    if abs(len(mine) - len(theirs)) > MAX_SIZE_DIFFERENCE:
        return f"its vocabulary has {len(theirs)} tokens, the model's {len(mine)}"
    shared = min(len(mine), len(theirs))
    if mine[FIRST_COMPARED_ID:shared] != theirs[FIRST_COMPARED_ID:shared]:
        first = next(i for i in range(FIRST_COMPARED_ID, shared) if mine[i] != theirs[i])
        return f"token {first} is {theirs[first]!r} in it, {mine[first]!r} in the model"
    return None


@functools.lru_cache(maxsize=32)
def _mismatch(target: str, draft: str) -> str | None:
    """vocab_mismatch of two GGUF files (blobs never change: checked once per pair)."""
    mine, theirs = read_gguf_safe(target), read_gguf_safe(draft)
    if mine is None or theirs is None:
        return "a GGUF header cannot be read"
    return vocab_mismatch(mine, theirs)


def resolve_draft(store: Store, target: Path | None, name: str, model: str) -> Path:
    """The GGUF of the draft model `name` (a model in the store) for the model called `model`
    whose GGUF is `target`: a 400 when it is missing, has no weights or another vocabulary."""
    draft = store.find(name)  # (an invalid name is a 400 already)
    if draft is None:
        raise BadRequest(f'draft model "{name}" not found, try pulling it first')
    if draft.model_path is None or target is None:
        raise BadRequest(f'draft model "{name}" or {model} has no GGUF weights')
    reason = _mismatch(str(target), str(draft.model_path))
    if reason is not None:
        raise BadRequest(f'draft model "{name}" cannot draft for {model}: its vocabulary must '
                         f"be the model's ({reason})")
    return draft.model_path
