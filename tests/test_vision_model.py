"""The tiny vision model of tests/vision_model.py, in-process through llama-cpp-python's own
bindings of libmtmd: the projector loads, an image is encoded into 16 embeddings, and the
hand-set weights make the image decide the next token (" red", " green" or " blue")."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import pytest
from llama_cpp import mtmd_cpp as mtmd

from tests import vision_model


class InProcess:
    """A llama context and an mtmd context on the tiny model (CPU)."""

    def __init__(self, lm: Path, proj: Path) -> None:
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self.model = llama_cpp.llama_model_load_from_file(str(lm).encode(), mparams)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = 512
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = False
        params.n_threads = 1
        params.print_timings = False
        self.mctx = mtmd.mtmd_init_from_file(str(proj).encode(), self.model, params)
        assert self.mctx, "mtmd could not load the projector"
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def close(self) -> None:
        mtmd.mtmd_free(self.mctx)
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)

    def chunks(self, image: bytes, text: str = "what colour?") -> Any:
        buf = (ctypes.c_uint8 * len(image)).from_buffer_copy(image)
        bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(self.mctx, buf, len(image), False)
        assert bitmap, "the image did not decode"
        prompt = (f"<|user|>{mtmd.mtmd_default_marker().decode()}{text}\n"
                  "<|assistant|>").encode()
        inp = mtmd.mtmd_input_text(prompt, len(prompt), True, True)
        chunks = mtmd.mtmd_input_chunks_init()
        bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
        assert mtmd.mtmd_tokenize(self.mctx, chunks, ctypes.byref(inp), bitmaps, 1) == 0
        mtmd.mtmd_bitmap_free(bitmap)
        return chunks

    def logits(self, image: bytes) -> tuple[np.ndarray, int]:
        """The next-token logits after a prompt holding `image`, and the prompt's length."""
        chunks = self.chunks(image)
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        n_past = llama_cpp.llama_pos(0)
        assert mtmd.mtmd_helper_eval_chunks(self.mctx, self.ctx, chunks, 0, 0, 512, True,
                                            ctypes.byref(n_past)) == 0
        mtmd.mtmd_input_chunks_free(chunks)
        row = llama_cpp.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(row, shape=(self.n_vocab,)).copy(), n_past.value

    def piece(self, token: int) -> str:
        buf = ctypes.create_string_buffer(32)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        return buf.raw[:n].decode()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    engine = InProcess(*vision_model.write_model(tmp_path_factory.mktemp("vision")))
    yield engine
    engine.close()


def test_the_projector_loads_and_an_image_is_16_tokens(tiny: InProcess) -> None:
    assert mtmd.mtmd_support_vision(tiny.mctx) and not mtmd.mtmd_support_audio(tiny.mctx)
    chunks = tiny.chunks(vision_model.png(vision_model.RGB["red"]))
    kinds = [mtmd.mtmd_input_chunk_get_type(mtmd.mtmd_input_chunks_get(chunks, i))
             for i in range(mtmd.mtmd_input_chunks_size(chunks))]
    assert kinds == [mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT, mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE,
                     mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT]
    image = mtmd.mtmd_input_chunks_get(chunks, 1)
    assert mtmd.mtmd_input_chunk_get_n_tokens(image) == vision_model.N_IMAGE_TOKENS
    assert mtmd.mtmd_encode_chunk(tiny.mctx, image) == 0
    embd = np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(tiny.mctx),
                                 shape=(vision_model.N_IMAGE_TOKENS, vision_model.LM_EMBD))
    # The projector carries the patch's mean colour into LM dims 0..2 and the image flag to 3.
    assert embd[:, 0].min() > 0.8 and embd[:, 1].max() < 0.1 and embd[:, 2].max() < 0.1
    assert np.allclose(embd[:, 3], 1.0, atol=1e-3)
    mtmd.mtmd_input_chunks_free(chunks)


@pytest.mark.parametrize("colour", vision_model.COLOURS)
def test_the_image_decides_the_answer(tiny: InProcess, colour: str) -> None:
    logits, n_past = tiny.logits(vision_model.png(vision_model.RGB[colour]))
    assert tiny.piece(int(np.argmax(logits))) == f" {colour}"
    others = np.sort(logits)[-2]
    assert logits.max() - others > 20  # by far, not by a rounding error
    # BOS + the text around the image + 16 image positions.
    assert n_past > vision_model.N_IMAGE_TOKENS


def test_same_image_same_logits_other_image_other_logits(tiny: InProcess) -> None:
    red = vision_model.png(vision_model.RGB["red"])
    first, _ = tiny.logits(red)
    again, _ = tiny.logits(red)
    other, _ = tiny.logits(vision_model.png((200, 60, 60)))  # a different red
    assert np.array_equal(first, again)
    assert not np.allclose(first, other)
    # A 56x56 image and a larger one of the same colour give the same answer (mtmd resizes).
    big, _ = tiny.logits(vision_model.png(vision_model.RGB["blue"], size=112))
    assert tiny.piece(int(np.argmax(big))) == " blue"
