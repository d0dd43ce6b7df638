"""A tiny vision model built with the `gguf` library: a 1-layer llama LM plus a LLaVA "mlp"
projector (CLIP GGUF) that llama.cpp's libmtmd loads, with a few weights set by hand so that the
image decides the answer.

How the image reaches the answer:
- the projector's patch embedding averages each 14x14 patch per colour channel (weights 1/196),
  so vision dims 0..2 hold the patch's mean R, G, B (image_mean 0, image_std 1: pixels / 255);
  with block_count 1 llava's graph runs no encoder layer (it stops before the last one), so the
  means go straight into the projector: mm.0 scales them (and a bias sets a constant "image"
  flag), GELU, mm.2 writes them to LM dims 0..2 and the flag to LM dim 3;
- in the LM, every text token has dim 4 set (a "query" flag); attention head 0 matches query
  (dim 4, through Q) with the image flag (dim 3, through K) on the head's last, slowest-rotating
  RoPE pair, so the last position reads the image positions; V/O copy dims 0..2 into the
  residual; the output head turns dim 0/1/2 into the logits of " red"/" green"/" blue";
- the colour tokens carry dim 8 ("answered"), which the output head turns into end-of-sequence,
  and with no image the small weight of " the" on dim 4 wins: a text-only prompt answers
  " the the the ..." until num_predict (a stream that runs as long as a test needs).
So a red image answers " red", a green one " green", a blue one " blue", on any API.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import gguf
import numpy as np

IMAGE_SIZE = 56
PATCH = 14
N_IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2  # 16
LM_EMBD = 64
V_EMBD = 32
COLOURS = ("red", "green", "blue")
# A ChatML-like Jinja template: the gateway renders it and puts llama.cpp's media marker where
# each image goes (corral writes markers before the message text, as Ollama does).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def vocab() -> list[str]:
    return ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256)),
            *(f"▁{c}" for c in COLOURS), "▁the", "▁colour", "▁is"]


def write_lm(path: Path) -> Path:
    """The language model: llama, 1 layer, n_embd 64, 4 heads of 16."""
    n_embd, n_head, n_ff = LM_EMBD, 4, 64
    head_dim = n_embd // n_head
    tokens = vocab()
    colour_ids = [tokens.index(f"▁{c}") for c in COLOURS]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-vision")
    w.add_context_length(4096)
    w.add_embedding_length(n_embd)
    w.add_block_count(1)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types([2, 3, 3, *([6] * 256), *([1] * (len(tokens) - 259))])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_chat_template(CHAT_TEMPLATE)

    embd = np.zeros((len(tokens), n_embd), np.float32)
    embd[:, 4] = 1.0                  # every text token queries the image
    embd[colour_ids, 8] = 1.0         # a colour token means "answered"
    w.add_tensor("token_embd.weight", embd)
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    out = np.zeros((len(tokens), n_embd), np.float32)
    for channel, tid in enumerate(colour_ids):
        out[tid, channel] = 10.0
    out[tokens.index("▁the"), 4] = 0.5  # " the", weakly, when nothing else speaks
    out[2, 8] = 200.0                 # EOS, strongly, after a colour word
    w.add_tensor("output.weight", out)

    w.add_tensor("blk.0.attn_norm.weight", np.ones(n_embd, np.float32))
    last = head_dim - 1               # head 0's slowest RoPE pair: position barely rotates it
    wq = np.zeros((n_embd, n_embd), np.float32)
    wk = np.zeros((n_embd, n_embd), np.float32)
    wv = np.zeros((n_embd, n_embd), np.float32)
    wo = np.zeros((n_embd, n_embd), np.float32)
    wq[last, 4] = 2.0
    wk[last, 3] = 2.0
    for channel in range(3):
        wv[channel, channel] = 1.0    # head 0's value dims 0..2 <- colour
        wo[channel, channel] = 1.0    # back into residual dims 0..2
    # llama.cpp's converter permutes Q/K rows for its RoPE layout; these hand-set rows are
    # already written in the GGUF layout, where pair (last-1, last) is the slowest.
    w.add_tensor("blk.0.attn_q.weight", wq)
    w.add_tensor("blk.0.attn_k.weight", wk)
    w.add_tensor("blk.0.attn_v.weight", wv)
    w.add_tensor("blk.0.attn_output.weight", wo)
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("blk.0.ffn_gate.weight", np.zeros((n_ff, n_embd), np.float32))
    w.add_tensor("blk.0.ffn_up.weight", np.zeros((n_ff, n_embd), np.float32))
    w.add_tensor("blk.0.ffn_down.weight", np.zeros((n_embd, n_ff), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_projector(path: Path, *, image_size: int = IMAGE_SIZE, n_embd: int = V_EMBD,
                    n_block: int = 1, n_ff: int = 64) -> Path:
    """The projector: CLIP vision encoder + LLaVA mlp projector. With one block (the default)
    llava's graph runs no encoder layer; a benchmark asks for more blocks and a larger image
    (their weights are zeros: the image still decides, and the encoder does real work)."""
    n_head, hidden = 4, 64
    n_pos = (image_size // PATCH) ** 2
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_name("tiny-vision-projector")
    w.add_string("general.type", "mmproj")
    w.add_bool("clip.has_text_encoder", False)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_llava_projector", True)
    w.add_string("clip.projector_type", "mlp")
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.image_size", image_size)
    w.add_uint32("clip.vision.patch_size", PATCH)
    w.add_uint32("clip.vision.embedding_length", n_embd)
    w.add_uint32("clip.vision.feed_forward_length", n_ff)
    w.add_uint32("clip.vision.projection_dim", LM_EMBD)
    w.add_uint32("clip.vision.block_count", n_block)
    w.add_uint32("clip.vision.attention.head_count", n_head)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_array("clip.vision.image_mean", [0.0, 0.0, 0.0])
    w.add_array("clip.vision.image_std", [1.0, 1.0, 1.0])
    w.add_file_type(0)

    patch = np.zeros((n_embd, 3, PATCH, PATCH), np.float32)  # ggml ne [14, 14, 3, n_embd]
    for channel in range(3):
        patch[channel, channel] = 1.0 / (PATCH * PATCH)
    w.add_tensor("v.patch_embd.weight", patch)
    w.add_tensor("v.position_embd.weight", np.zeros((n_pos, n_embd), np.float32))
    zeros_sq = np.zeros((n_embd, n_embd), np.float32)
    for i in range(n_block):
        for part in ("attn_q", "attn_k", "attn_v", "attn_out"):
            w.add_tensor(f"v.blk.{i}.{part}.weight", zeros_sq)
            w.add_tensor(f"v.blk.{i}.{part}.bias", np.zeros(n_embd, np.float32))
        for part in ("ln1", "ln2"):
            w.add_tensor(f"v.blk.{i}.{part}.weight", np.ones(n_embd, np.float32))
            w.add_tensor(f"v.blk.{i}.{part}.bias", np.zeros(n_embd, np.float32))
        w.add_tensor(f"v.blk.{i}.ffn_up.weight", np.zeros((n_ff, n_embd), np.float32))
        w.add_tensor(f"v.blk.{i}.ffn_up.bias", np.zeros(n_ff, np.float32))
        w.add_tensor(f"v.blk.{i}.ffn_down.weight", np.zeros((n_embd, n_ff), np.float32))
        w.add_tensor(f"v.blk.{i}.ffn_down.bias", np.zeros(n_embd, np.float32))

    mm0 = np.zeros((hidden, n_embd), np.float32)
    mm0_b = np.zeros(hidden, np.float32)
    for channel in range(3):
        mm0[channel, channel] = 4.0   # GELU(4x) ~ 4x for bright channels, 0 for dark ones
    mm0_b[3] = 4.0                    # the image flag
    mm2 = np.zeros((LM_EMBD, hidden), np.float32)
    for dim in range(4):
        mm2[dim, dim] = 0.25
    w.add_tensor("mm.0.weight", mm0)
    w.add_tensor("mm.0.bias", mm0_b)
    w.add_tensor("mm.2.weight", mm2)
    w.add_tensor("mm.2.bias", np.zeros(LM_EMBD, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def png(rgb: tuple[int, int, int], size: int = IMAGE_SIZE) -> bytes:
    """A solid-colour PNG, written by hand (zlib + CRCs) so tests need no imaging library."""
    row = b"\x00" + bytes(rgb) * size
    raw = row * size

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    out = io.BytesIO()
    out.write(b"\x89PNG\r\n\x1a\n")
    out.write(chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)))
    out.write(chunk(b"IDAT", zlib.compress(raw)))
    out.write(chunk(b"IEND", b""))
    return out.getvalue()


RGB = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}


def write_model(folder: Path) -> tuple[Path, Path]:
    """(LM GGUF, projector GGUF) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_lm(folder / "tiny-vision.gguf"), write_projector(folder / "mmproj.gguf")
