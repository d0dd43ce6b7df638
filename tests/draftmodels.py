"""A tiny Gemma 3 draft model for the bundled gemma3:270m: the real architecture with one or two
small random layers, and the bundled model's own tokenizer (every tokenizer.* key copied), so
its vocabulary is the bundled model's. Its guesses are random: few hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from registry.gguf_header import LazyArray
from registry.gguf_info import read_gguf

N_EMBD, N_HEAD, N_HEAD_KV, HEAD_DIM, N_FF = 64, 2, 1, 32, 128


def _add(writer: Any, key: str, value: Any) -> None:
    if isinstance(value, LazyArray):
        value = value.items()
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, list):  # tokens, scores, token types, merges: typed by the first
        writer.add_array(key, list(value))


def write_draft(source: str | Path, path: Path, *, n_layer: int = 1, seed: int = 0,
                rename: int | None = None) -> Path:
    """The tiny draft at `path`, its tokenizer from the GGUF `source`; `rename`: a token id
    whose text is changed (a vocabulary that differs in one token)."""
    import gguf

    info = read_gguf(source)
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_name("tiny gemma3 draft")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for key, value in (("context_length", 32768), ("embedding_length", N_EMBD),
                       ("block_count", n_layer), ("feed_forward_length", N_FF),
                       ("attention.head_count", N_HEAD), ("attention.head_count_kv", N_HEAD_KV),
                       ("attention.key_length", HEAD_DIM), ("attention.value_length", HEAD_DIM),
                       ("attention.sliding_window", 512)):
        writer.add_uint32(f"gemma3.{key}", value)
    writer.add_float32("gemma3.attention.layer_norm_rms_epsilon", 1e-6)
    writer.add_float32("gemma3.rope.freq_base", 1e6)
    n_vocab = 0
    for key, value in info.kv.items():
        if key.startswith("tokenizer."):
            if key == "tokenizer.ggml.tokens":
                value = list(value.items() if isinstance(value, LazyArray) else value)
                n_vocab = len(value)
                if rename is not None:
                    value[rename] = value[rename] + "\u2063"
            _add(writer, key, value)
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float16)

    writer.add_tensor("token_embd.weight", w(n_vocab, N_EMBD))
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, np.float32))
    for i in range(n_layer):
        b = f"blk.{i}."
        for name in ("attn_norm", "ffn_norm", "post_attention_norm", "post_ffw_norm"):
            writer.add_tensor(b + name + ".weight", np.ones(N_EMBD, np.float32))
        for name in ("attn_q_norm", "attn_k_norm"):
            writer.add_tensor(b + name + ".weight", np.ones(HEAD_DIM, np.float32))
        writer.add_tensor(b + "attn_q.weight", w(N_HEAD * HEAD_DIM, N_EMBD))
        writer.add_tensor(b + "attn_k.weight", w(N_HEAD_KV * HEAD_DIM, N_EMBD))
        writer.add_tensor(b + "attn_v.weight", w(N_HEAD_KV * HEAD_DIM, N_EMBD))
        writer.add_tensor(b + "attn_output.weight", w(N_EMBD, N_HEAD * HEAD_DIM))
        writer.add_tensor(b + "ffn_gate.weight", w(N_FF, N_EMBD))
        writer.add_tensor(b + "ffn_up.weight", w(N_FF, N_EMBD))
        writer.add_tensor(b + "ffn_down.weight", w(N_EMBD, N_FF))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
