"""How much memory a model will need, from its GGUF metadata, before loading anything.

Weights per repeating layer (`blk.N.*` tensors) and for the rest (token embedding, output head,
norms); a KV cache of `num_ctx` cells per slot on full-attention layers and of the window (plus
one micro-batch, rounded up to 256) per slot on sliding-window layers, as llama.cpp sizes them
with `swa_full = false`; and llama.cpp's compute buffer, which it sizes by the worst graph: the
logits of a whole micro-batch (vocabulary x ubatch x 4 bytes) for large vocabularies, else the
feed-forward activations. Fitted to the "buffer size" lines llama.cpp 0.3.36 logs at load
(runner/process/devicemem.py) over num_ctx, slots and ubatch (tests/test_estimate.py).

What a GPU holds is those buffers as allocated (`total`). A runner computing on the CPU holds
less than it allocates: llama.cpp reserves its compute buffer for a micro-batch of logits but
fills only the rows it outputs, and pages never written take no RAM. So the CPU figure
(`host_total`) counts the compute buffer's activations of one micro-batch instead, the logits
output buffer (slots x vocabulary), and the runner process itself: Python and its libraries, and
llama.cpp's vocabulary tables (about 350 bytes per token: 88 MiB for Gemma 3's 262k tokens).

A draft model (the option draft_model) adds what it would take alone, in the same process: its
weights, its KV cache of as many slots of `num_ctx`, its compute buffer, on the main GPU with the
model.

A vision model's projector (its CLIP/mmproj GGUF, loaded by libmtmd on the runner's device) adds
its weights and its own compute buffer: the encoder's worst graph, one image at the projector's
image size, whose largest terms are the attention scores (heads x patches^2) and the feed-forward
activations of every patch (`projector_shape`). Both sit on the main GPU with the model, or in
RAM on the CPU.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runner.kvlayout import KV_BYTES_PER_ELEMENT, swa_cells, swa_layers

if TYPE_CHECKING:  # the runner imports this module for kv_bytes: no GGUF parser there
    from registry.gguf_info import GGUFInfo

_LAYER = re.compile(r"^blk\.(\d+)\.")
RUNNER_BASE = 55 * 1024**2  # a runner process before it loads a model (Python, llama.cpp, numpy,
# zmq): measured as a live runner's RSS with a tiny model (tests/test_families.py)
VOCAB_BYTES = 352  # llama.cpp's vocabulary tables per token (measured: Gemma 3, 262k tokens)
EMBED_CTX_MAX = 8192  # an embedding context's size cap (runner/process/embedding.py)
EMBED_SEQUENCES = 64  # inputs per embedding decode (runner/process/embedding.py)


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
    n_ff: int = 0  # feed-forward width (the largest, where layers differ)
    gated_ffn: bool = False  # a gate beside the up projection (SwiGLU, GeGLU): more activations
    n_swa: int = 0  # sliding window in tokens; 0 = none
    swa_layers: tuple[bool, ...] = ()  # per layer: uses the sliding window
    projector: int = 0  # a vision projector's weights (0: none)
    projector_compute: int = 0  # its encoder's compute buffer
    draft: ModelShape | None = None  # a draft model loaded beside it (the option draft_model)

    @property
    def weights(self) -> int:
        return sum(self.layer_bytes) + self.other_bytes


@dataclass(frozen=True)
class Estimate:
    weights: int
    kv: int
    compute: int  # llama.cpp's compute buffer as allocated (all of it held on a GPU)
    layer_bytes: tuple[int, ...]  # weights + KV of each layer
    other_bytes: int
    output: int = 0  # the logits output buffer (host memory)
    host_compute: int | None = None  # what RAM holds of the compute buffer on the CPU
    runtime: int = 0  # the runner process itself: Python, libraries, vocabulary tables
    projector: int = 0  # a vision projector's weights plus its compute buffer (same device)
    # A draft model's buffers (weights, KV of as many slots, compute) on the main GPU with the
    # model, and what it holds in RAM on the CPU (its vocabulary tables too).
    draft: int = 0
    host_draft: int = 0

    @property
    def total(self) -> int:
        """llama.cpp's buffers as allocated: what the model takes on a GPU."""
        return self.weights + self.kv + self.compute + self.projector + self.draft

    @property
    def host_total(self) -> int:
        """What a runner computing on the CPU holds in RAM (its RSS)."""
        compute = self.compute if self.host_compute is None else self.host_compute
        return (self.weights + self.kv + compute + self.output + self.runtime + self.projector
                + self.host_draft)


def tensor_bytes(type_name: str, shape: list[int]) -> int:
    from registry.gguf_header import GGML_SIZES  # (not the gguf package: numpy, yaml)

    block, size = GGML_SIZES[type_name]
    return math.prod(shape) * size // block


def projector_shape(info: GGUFInfo) -> tuple[int, int]:
    """(weights, compute buffer) of a CLIP/mmproj GGUF, in bytes. The compute buffer is the
    encoder's graph for one image of `clip.vision.image_size`: per patch the feed-forward and a
    few embedding-wide activations, plus every head's patch x patch attention scores (llama.cpp
    reserves it without flash attention), plus the projector's output."""
    weights = sum(tensor_bytes(t["type"], t["shape"]) for t in info.tensors)
    kv = info.kv
    image = int(kv.get("clip.vision.image_size") or 0)
    patch = int(kv.get("clip.vision.patch_size") or 0)
    n_pos = (image // patch) ** 2 + 1 if image and patch else 0
    n_embd = int(kv.get("clip.vision.embedding_length") or 0)
    n_ff = int(kv.get("clip.vision.feed_forward_length") or 0)
    n_head = int(kv.get("clip.vision.attention.head_count") or 0)
    n_out = int(kv.get("clip.vision.projection_dim") or n_embd)
    compute = 4 * n_pos * (n_ff + 6 * n_embd + 2 * n_out) + 4 * n_head * n_pos * n_pos
    return weights, compute


def shape_from_gguf(info: GGUFInfo, projector: GGUFInfo | None = None,
                    draft: GGUFInfo | None = None) -> ModelShape:
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
    n_swa, swa_layers = _sliding_window(info, n_layers)
    proj_weights, proj_compute = projector_shape(projector) if projector is not None else (0, 0)
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
        n_ff=_largest(info.get("feed_forward_length")),
        gated_ffn=any(".ffn_gate." in t["name"] for t in info.tensors),
        n_swa=n_swa,
        swa_layers=swa_layers,
        projector=proj_weights,
        projector_compute=proj_compute,
        draft=shape_from_gguf(draft) if draft is not None else None,
    )


def _largest(value: object) -> int:
    """An int KV, or the largest of a per-layer list."""
    if isinstance(value, list):
        return max((int(v) for v in value), default=0)
    return int(value) if isinstance(value, int | float) else 0


def _sliding_window(info: GGUFInfo, n_layers: int) -> tuple[int, tuple[bool, ...]]:
    """The window and which layers use it: a per-layer list or a period in the GGUF
    (`attention.sliding_window_pattern`), else llama.cpp's pattern for the architecture."""
    n_swa = _largest(info.get("attention.sliding_window"))
    if n_swa <= 0:
        return 0, ()
    layers = swa_layers(info.architecture, n_layers,
                        info.get("attention.sliding_window_pattern"))
    return (n_swa, layers) if any(layers) else (0, ())


def _pad(n: int, to: int) -> int:
    return -(-n // to) * to


def kv_cells(shape: ModelShape, *, num_ctx: int, num_batch: int = 512,
             swa_full: bool = False) -> tuple[int, int]:
    """KV cells per slot on full-attention and on sliding-window layers."""
    ubatch = min(num_batch, num_ctx)
    swa = num_ctx if swa_full or not shape.n_swa else swa_cells(num_ctx, shape.n_swa, ubatch)
    return num_ctx, swa


def _encoder_activations(shape: ModelShape, n_tokens: int) -> int:
    """The feed-forward activations of a non-causal graph over `n_tokens` (measured on tiny
    BERT and nomic-bert models, tests/test_families.py)."""
    return 4 * n_tokens * ((5 if shape.gated_ffn else 3) * shape.n_ff + shape.n_embd)


def _encoder_graph(shape: ModelShape, n_tokens: int) -> int:
    """The compute buffer of a non-causal graph over `n_tokens` that attend to each other (no
    cache): their f16 attention mask (n_tokens x n_tokens) and the activations."""
    return 2 * n_tokens * n_tokens + _encoder_activations(shape, n_tokens)


def _encoder_estimate(shape: ModelShape, *, num_ctx: int, parallel: int,
                      num_batch: int) -> Estimate:
    """An embedding-only model (BERT, nomic-bert: a pooling type, no causal head): llama.cpp
    allocates no KV cache for it. The runner holds its decode context's graph (one micro-batch)
    and the embedding context it makes at load: one micro-batch of the whole context
    (runner/process/embedding.py), so that an input is pooled within one decode. Slots add
    nothing."""
    ubatch = min(num_batch, num_ctx * parallel)
    embed_ctx = min(num_ctx, EMBED_CTX_MAX)
    compute = _encoder_graph(shape, ubatch) + _encoder_graph(shape, embed_ctx)
    return Estimate(
        # On the CPU too: an input as long as the context fills the masks (counting only the
        # activations fitted a short input and missed 34 MB at num_ctx 4096).
        weights=shape.weights, kv=0, compute=compute,
        layer_bytes=shape.layer_bytes, other_bytes=shape.other_bytes,
        # the embedding context's outputs: a row of n_vocab + n_embd floats per sequence
        output=4 * EMBED_SEQUENCES * (shape.n_vocab + shape.n_embd),
        runtime=RUNNER_BASE + VOCAB_BYTES * shape.n_vocab,
    )


def estimate(shape: ModelShape, *, num_ctx: int, parallel: int, kv_cache_type: str = "f16",
             num_batch: int = 512, swa_full: bool = False) -> Estimate:
    if shape.embedding_only:
        return _encoder_estimate(shape, num_ctx=num_ctx, parallel=parallel, num_batch=num_batch)
    per_elem = KV_BYTES_PER_ELEMENT.get(kv_cache_type, 2.0)
    full, window = kv_cells(shape, num_ctx=num_ctx, num_batch=num_batch, swa_full=swa_full)
    per_cell = shape.n_kv_heads * (shape.key_length + shape.value_length) * per_elem * parallel
    swa = shape.swa_layers or (False,) * shape.n_layers
    kv_layers = [int((window if swa[i] else full) * per_cell) for i in range(shape.n_layers)]
    ubatch = min(num_batch, num_ctx * parallel)
    # llama.cpp reserves the graph of a full micro-batch with every row an output: its logits
    # plus a norm's worth of activations (measured: 514.5 MiB for Gemma 3 at ubatch 512), or,
    # for a small vocabulary, the feed-forward activations of the micro-batch; and the f16
    # attention mask of the micro-batch against a slot's cells, one for the full-attention
    # layers and one for the sliding-window ones (measured on the tiny family models, where it
    # is most of the buffer: 2 MiB of 3 at num_ctx 2048).
    activations = 4 * ubatch * (3 * shape.n_ff + 8 * shape.n_embd)
    mask = 2 * ubatch * ((full if not all(swa) else 0) + (window if any(swa) else 0))
    compute = mask + max(ubatch * (4 * shape.n_vocab + 8 * shape.n_embd),
                         4 * ubatch * (shape.n_ff + 2 * shape.n_embd))
    draft = draft_host = 0
    if shape.draft is not None:  # its own context: num_ctx per slot, the same batch
        mine = estimate(shape.draft, num_ctx=num_ctx, parallel=parallel,
                        kv_cache_type=kv_cache_type, num_batch=num_batch, swa_full=swa_full)
        draft = mine.weights + mine.kv + mine.compute
        draft_host = mine.host_total - RUNNER_BASE  # (the same process)
    return Estimate(
        draft=draft,
        host_draft=draft_host,
        weights=shape.weights,
        kv=sum(kv_layers),
        compute=compute,
        layer_bytes=tuple(w + kv for w, kv in zip(shape.layer_bytes, kv_layers, strict=True)),
        other_bytes=shape.other_bytes,
        output=4 * parallel * shape.n_vocab,
        host_compute=min(activations, compute),
        runtime=RUNNER_BASE + VOCAB_BYTES * shape.n_vocab,
        projector=shape.projector + shape.projector_compute,
    )
