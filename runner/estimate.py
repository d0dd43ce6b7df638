"""How much memory a model will need, from its GGUF metadata, before loading anything.

Weights per repeating layer (`blk.N.*` tensors) and for the rest (token embedding, output head,
norms), a KV cache for `num_ctx x parallel` tokens over every layer, and a compute-buffer
allowance that llama.cpp sizes mostly by the logits of one micro-batch (vocabulary x batch).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from registry.gguf_info import GGUFInfo

KV_BYTES_PER_ELEMENT = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
_LAYER = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class ModelShape:
    n_layers: int
    layer_bytes: tuple[int, ...]  # weights of each repeating layer
    other_bytes: int  # embeddings, output head, final norm: placed with the last layer
    n_kv_heads: int
    key_length: int
    value_length: int
    n_vocab: int
    n_embd: int
    context_length: int
    embedding_only: bool

    @property
    def weights(self) -> int:
        return sum(self.layer_bytes) + self.other_bytes


@dataclass(frozen=True)
class Estimate:
    weights: int
    kv: int
    compute: int
    layer_bytes: tuple[int, ...]  # weights + KV of each layer
    other_bytes: int

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute


def tensor_bytes(type_name: str, shape: list[int]) -> int:
    from registry.gguf_header import GGML_SIZES  # (not the gguf package: numpy, yaml)

    block, size = GGML_SIZES[type_name]
    return math.prod(shape) * size // block


def shape_from_gguf(info: GGUFInfo) -> ModelShape:
    n_layers = info.block_count or 1
    per_layer = [0] * n_layers
    other = 0
    for tensor in info.tensors:
        nbytes = tensor_bytes(tensor["type"], tensor["shape"])
        m = _LAYER.match(tensor["name"])
        if m and int(m.group(1)) < n_layers:
            per_layer[int(m.group(1))] += nbytes
        else:
            other += nbytes
    head_count = info.head_count or 1
    key_length = int(info.get("attention.key_length") or info.embedding_length // head_count)
    tokens = info.get("tokenizer.ggml.tokens")
    n_vocab = len(tokens) if isinstance(tokens, list) else int(info.get("vocab_size") or 32000)
    return ModelShape(
        n_layers=n_layers,
        layer_bytes=tuple(per_layer),
        other_bytes=other,
        n_kv_heads=info.head_count_kv or head_count,
        key_length=key_length,
        value_length=int(info.get("attention.value_length") or key_length),
        n_vocab=n_vocab,
        n_embd=info.embedding_length,
        context_length=info.context_length,
        embedding_only=info.has_pooling_type,
    )


def estimate(shape: ModelShape, *, num_ctx: int, parallel: int, kv_cache_type: str = "f16",
             num_batch: int = 512) -> Estimate:
    tokens = num_ctx * parallel
    per_elem = KV_BYTES_PER_ELEMENT.get(kv_cache_type, 2.0)
    kv_per_layer = int(tokens * shape.n_kv_heads * (shape.key_length + shape.value_length)
                       * per_elem)
    ubatch = min(num_batch, tokens)
    # Logits of one micro-batch dominate for large vocabularies; activations add a little.
    compute = 4 * ubatch * (shape.n_vocab + 8 * shape.n_embd)
    return Estimate(
        weights=shape.weights,
        kv=kv_per_layer * shape.n_layers,
        compute=compute,
        layer_bytes=tuple(w + kv_per_layer for w in shape.layer_bytes),
        other_bytes=shape.other_bytes,
    )
