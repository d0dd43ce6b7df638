"""Images in a runner: llama.cpp's multimodal library (libmtmd, through llama_cpp.mtmd_cpp).

A model with a projector layer loads it here beside the language model. A request's images are
read into the same token list as its text: each image becomes the text tokens libmtmd puts
around it (Gemma 3's <start_of_image>, ...) and one placeholder per image position. A
placeholder is a negative number made of the image's content hash and the position inside the
image, so everything that compares token lists (the slots' prefix cache, copies between slots,
the RAM prompt cache and its copy on disk) keys images by their content for free: the same image
matches itself in the next turn, a different image diverges at its first position. llama.cpp
never sees a placeholder; they stand for embeddings.

When: a request's images are decoded (PNG, JPEG, ... by stb_image) and counted while it is
prepared, on the intake thread (runner/process/intake.py), and encoded there too (the CLIP
encoder is the expensive part), unless the embeddings are still in this runner's small cache of
recent images, or a slot or the prompt cache already holds the image's positions (then it is
never encoded at all). In the decode loop, a slot whose next pending piece is an image reads the
whole image in a decode call of its own (a batch holds tokens or embeddings, not both), one
image per slot per step, between the other streams' tokens like a chunk of a long prompt.

An image is kept whole or dropped whole: prompts are cut at image boundaries, a cache is reused
only up to one, and sequences with images never shift their context (positions inside an image
must stay together, as llama-server does).
"""

from __future__ import annotations

import collections
import ctypes
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import llama_cpp
import numpy as np
from llama_cpp import mtmd_cpp as mtmd

from runner.process.promptcache import common_prefix
from shared import protocol as p
from shared.errors import BadRequest

if TYPE_CHECKING:
    from runner.process.engine import Engine, Slot

log = logging.getLogger("corral.runner")

NO_IMAGES = "this model is missing data required for image input"  # Ollama's error
TAG = re.compile(r"\[img-(\d+)\]")  # where a Go template's prompt reads image N (Ollama's)
EMBD_CACHE_BYTES = 64 * 1024**2  # encoded images kept for reuse (about 24 of Gemma 3's)
_INDEX_BITS = 16  # positions inside one image: up to 65,536


def held(engine: Engine, tokens: list[int]) -> int:
    """How much of `tokens` a slot or the prompt cache holds now, as far as this thread can
    tell: the engine's loop may change it meanwhile (then an image is encoded for nothing, or
    late, in the loop: never wrongly)."""
    best = max((common_prefix(list(s.tokens), tokens) for s in engine.slots), default=0)
    try:
        _entry, shared = engine.prompt_cache.best(tokens)
    except RuntimeError:  # the loop changed the cache while we looked
        shared = 0
    return max(best, shared)


class ProjectorError(Exception):
    """The projector could not be loaded (the engine reports it as a load error)."""


def placeholders(ident: int, n: int) -> list[int]:
    return [-(1 + (ident << _INDEX_BITS) + j) for j in range(n)]


def image_of(token: int) -> tuple[int, int]:
    """(image ident, position inside the image) of a placeholder."""
    value = -token - 1
    return value >> _INDEX_BITS, value & ((1 << _INDEX_BITS) - 1)


def text_only(tokens: Iterable[int]) -> list[int]:
    """The real tokens (what a reply's `context` or a penalty's history may hold)."""
    return [t for t in tokens if t >= 0]


def whole_prefix(tokens: list[int], k: int) -> int:
    """`k`, or the start of the image that position k falls inside: a cut keeps images whole."""
    if 0 < k < len(tokens) and tokens[k] < 0:
        return k - image_of(tokens[k])[1]
    return k


def whole_suffix(tokens: list[int], start: int) -> int:
    """`start`, or the end of the image it falls inside."""
    while 0 < start < len(tokens) and tokens[start] < 0 and image_of(tokens[start])[1] > 0:
        start += 1
    return start


@dataclass
class Image:
    data: bytes
    label: str  # how errors name it: "image 2" (counted over the request, from 1)
    ident: int = 0  # 40 bits of its sha256
    before: list[int] = field(default_factory=list)  # text tokens libmtmd puts around it
    after: list[int] = field(default_factory=list)
    n_tokens: int = 0
    non_causal: bool = False
    embd: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.ident = int.from_bytes(hashlib.sha256(self.data).digest()[:5], "big")


class Media:
    """One request's images: collected from its messages or its prompt, tokenized, encoded."""

    def __init__(self, vision: Vision, images: list[bytes] | None = None) -> None:
        self.vision = vision
        self.indexed = [Image(data, f"image {i + 1}") for i, data in enumerate(images or [])]
        self.ordered: list[Image] = []  # images of messages, in the order their markers come
        self.by_ident: dict[int, Image] = {}

    def mark_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The messages with each image's marker before its content (where Ollama writes its
        [img-N] tags), and without the image bytes (a template never sees them)."""
        marked: list[dict[str, Any]] = []
        self.ordered = []
        for message in messages:
            images = message.get("images")
            if not images:
                marked.append(message)
                continue
            prefix = ""
            for data in images:
                self.ordered.append(Image(data, f"image {len(self.ordered) + 1}"))
                prefix += self.vision.marker
            rest = {k: v for k, v in message.items() if k != "images"}
            rest["content"] = prefix + str(message.get("content") or "")
            marked.append(rest)
        return marked

    @property
    def any(self) -> bool:
        return bool(self.indexed or self.ordered)

    def tokenize(self, text: str, tokenize: Callable[..., list[int]]) -> list[int]:
        """The text's tokens with each image (a marker, or an [img-N] tag) read as its tokens."""
        tokens: list[int] = []
        queue = iter(self.ordered)
        pattern = re.compile(TAG.pattern + "|" + re.escape(self.vision.marker))
        at = 0
        for match in pattern.finditer(text):
            if match.group(1) is not None:
                n = int(match.group(1))
                if n >= len(self.indexed):
                    continue  # a tag with no image stays text, as in Ollama
                image = self.indexed[n]
            else:
                image = next(queue, None)
                if image is None:
                    continue
            tokens += tokenize(text[at:match.start()], add_special=not tokens)
            self.vision.measure(image)
            self.by_ident[image.ident] = image
            tokens += image.before + placeholders(image.ident, image.n_tokens) + image.after
            at = match.end()
        tokens += tokenize(text[at:], add_special=not tokens)
        return tokens

    def image(self, token: int) -> Image:
        return self.by_ident[image_of(token)[0]]

    def check(self, n_ubatch: int) -> None:
        for image in self.by_ident.values():
            if image.non_causal and image.n_tokens > n_ubatch:
                raise BadRequest(f"{image.label} takes {image.n_tokens} positions, more than "
                                 f"num_batch ({n_ubatch}): raise num_batch to read it")


class Vision:
    """The projector of a loaded model, and the runner's cache of encoded images."""

    def __init__(self, path: str, model: Any, *, gpu: bool, n_threads: int, n_batch: int,
                 n_embd: int) -> None:
        quiet_logs()
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = gpu
        params.n_threads = n_threads
        params.print_timings = False
        self.ctx = mtmd.mtmd_init_from_file(path.encode(), model, params)
        if not self.ctx:
            raise ProjectorError(f"failed to load the vision projector {path}")
        if not mtmd.mtmd_support_vision(self.ctx):
            self.close()
            raise ProjectorError(f"{path} has no vision encoder")
        if mtmd.mtmd_decode_use_mrope(self.ctx):
            # Its positions are 2-D (Qwen2-VL and its family): not read by this engine yet.
            self.close()
            raise ProjectorError("vision models with M-RoPE positions (Qwen2-VL, Qwen2.5-VL) "
                                 "are not supported yet")
        self.marker = mtmd.mtmd_default_marker().decode()
        self.n_embd = n_embd
        self.n_batch = n_batch
        self.batch = llama_cpp.llama_batch_init(n_batch, n_embd, 1)
        self.lock = threading.Lock()  # encoding runs on the intake thread and, late, the loop's
        self._measured: collections.OrderedDict[int, tuple[list[int], int, list[int], bool]] = \
            collections.OrderedDict()
        self._embd: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._embd_bytes = 0
        self.encoded = 0  # images encoded (the tests and benchmarks count re-encodes)
        self.encode_ns = 0

    def close(self) -> None:
        if getattr(self, "batch", None) is not None:
            llama_cpp.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            mtmd.mtmd_free(self.ctx)
            self.ctx = None

    # --- preparing (either thread) -------------------------------------------------------------

    def _chunks(self, image: Image) -> Any:
        """libmtmd's chunks for the image alone (its marker): text around it, then the image."""
        buf = (ctypes.c_uint8 * len(image.data)).from_buffer_copy(image.data)
        bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(self.ctx, buf, len(image.data), False)
        if not bitmap:
            raise BadRequest(f"{image.label} could not be decoded: not a JPEG, PNG, BMP, GIF, "
                             "TGA, PSD, HDR or PNM image")
        text = self.marker.encode()
        inp = mtmd.mtmd_input_text(text, len(text), False, True)
        chunks = mtmd.mtmd_input_chunks_init()
        bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
        rc = mtmd.mtmd_tokenize(self.ctx, chunks, ctypes.byref(inp), bitmaps, 1)
        mtmd.mtmd_bitmap_free(bitmap)
        if rc != 0:
            mtmd.mtmd_input_chunks_free(chunks)
            raise BadRequest(f"{image.label} could not be read by the projector (code {rc})")
        return chunks

    def measure(self, image: Image) -> None:
        """The image's tokens: the text libmtmd puts around it and its number of positions."""
        known = self._measured.get(image.ident)
        if known is None:
            with self.lock:
                chunks = self._chunks(image)
                try:
                    known = self._shape(chunks)
                finally:
                    mtmd.mtmd_input_chunks_free(chunks)
            self._measured[image.ident] = known
            while len(self._measured) > 1024:
                self._measured.popitem(last=False)
        image.before, image.n_tokens, image.after, image.non_causal = known

    def _shape(self, chunks: Any) -> tuple[list[int], int, list[int], bool]:
        before: list[int] = []
        after: list[int] = []
        n_image, non_causal = 0, False
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t(0)
                ids = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                (after if n_image else before).extend(ids[j] for j in range(n.value))
            else:
                n_image = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
                non_causal = mtmd.mtmd_decode_use_non_causal(self.ctx, chunk)
        return before, n_image, after, non_causal

    def embeddings(self, image: Image) -> np.ndarray:
        """The image's embeddings (n_tokens x n_embd): from the cache, else encoded now."""
        if image.embd is not None:
            return image.embd
        cached = self._embd.get(image.ident)
        if cached is not None:
            self._embd.move_to_end(image.ident)
            image.embd = cached
            return cached
        with self.lock:
            chunks = self._chunks(image)
            try:
                chunk = _image_chunk(chunks)
                started = time.perf_counter_ns()
                if chunk is None or mtmd.mtmd_encode_chunk(self.ctx, chunk) != 0:
                    raise BadRequest(f"{image.label} could not be encoded")
                self.encode_ns += time.perf_counter_ns() - started
                self.encoded += 1
                out = mtmd.mtmd_get_output_embd(self.ctx)
                embd = np.ctypeslib.as_array(out, shape=(image.n_tokens, self.n_embd)).copy()
            finally:
                mtmd.mtmd_input_chunks_free(chunks)
        image.embd = embd
        self._embd[image.ident] = embd
        self._embd_bytes += embd.nbytes
        while self._embd_bytes > EMBD_CACHE_BYTES and len(self._embd) > 1:
            _, old = self._embd.popitem(last=False)
            self._embd_bytes -= old.nbytes
        return embd

    def encode_ahead(self, media: Media, tokens: list[int], held: int) -> None:
        """Encode the images of `tokens` beyond the first `held` positions (what a cache already
        holds), so that the decode loop only decodes them."""
        for at, token in enumerate(tokens):
            if token < 0 and at >= held and image_of(token)[1] == 0:
                self.embeddings(media.image(token))

    # --- reading (the loop's thread) -------------------------------------------------------------

    def read_images(self, engine: Engine) -> list[p.Message]:
        """Each slot whose next pending piece is an image reads that whole image now; one whose
        prompt ends with it samples its first token from the image's last position."""
        out: list[p.Message] = []
        for slot in engine.slots:
            seq = slot.sequence
            if seq is None or seq.media is None or not seq.pending or seq.pending[0] >= 0:
                continue
            image = seq.media.image(seq.pending[0])
            try:
                embd = self.embeddings(image)
            except BadRequest as exc:
                out.append(p.Error(seq.request_id, exc.message, exc.status))
                self._drop(engine, slot)
                continue
            last = len(seq.pending) == image.n_tokens
            row = self._decode(engine, slot.index, seq.n_past, embd, image.non_causal, last)
            if row < 0:
                out.append(p.Error(seq.request_id, "llama_decode failed on an image"))
                self._drop(engine, slot)
                continue
            slot.tokens.extend(seq.pending[:image.n_tokens])
            slot.canonical = min(slot.canonical, seq.n_past)
            seq.n_past += image.n_tokens
            seq.pending = seq.pending[image.n_tokens:]
            if last:
                assert seq.sampler is not None
                token = seq.sampler.sample(engine.ctx, row)
                out.extend(engine._on_token(seq, token, row))
        return out

    @staticmethod
    def _drop(engine: Engine, slot: Slot) -> None:
        llama_cpp.llama_memory_seq_rm(engine.memory, slot.index, -1, -1)
        slot.tokens, slot.canonical, slot.checkpoints = [], 0, []
        engine._release(slot)

    def _decode(self, engine: Engine, seq_id: int, pos: int, embd: np.ndarray,
                non_causal: bool, logits_last: bool) -> int:
        """Decode the embeddings at positions from `pos`; the batch row of the last one's
        logits (when asked), 0 otherwise, -1 on failure."""
        batch = self.batch
        n_total = len(embd)
        if non_causal:  # the image's positions see each other (Gemma 3)
            llama_cpp.llama_set_causal_attn(engine.ctx, False)
        try:
            for start in range(0, n_total, self.n_batch):
                part = np.ascontiguousarray(embd[start:start + self.n_batch], dtype=np.float32)
                n = len(part)
                ctypes.memmove(batch.embd, part.ctypes.data, part.nbytes)
                for j in range(n):
                    batch.pos[j] = pos + start + j
                    batch.n_seq_id[j] = 1
                    batch.seq_id[j][0] = seq_id
                    batch.logits[j] = 0
                final = start + n == n_total
                if final and logits_last:
                    batch.logits[n - 1] = 1
                batch.n_tokens = n
                if llama_cpp.llama_decode(engine.ctx, batch) != 0:
                    return -1
                if final:
                    return n - 1 if logits_last else 0
        finally:
            if non_causal:
                llama_cpp.llama_set_causal_attn(engine.ctx, True)
        return 0


def _image_chunk(chunks: Any) -> Any:
    for i in range(mtmd.mtmd_input_chunks_size(chunks)):
        chunk = mtmd.mtmd_input_chunks_get(chunks, i)
        if mtmd.mtmd_input_chunk_get_type(chunk) != mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
            return chunk
    return None


def quiet_logs() -> None:
    """libmtmd logs several lines per image to stderr by default: send them where llama.cpp's
    own lines go (llama-cpp-python's logger, shown at OLLAMA_DEBUG only)."""
    from llama_cpp import _logger

    mtmd.mtmd_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    mtmd.mtmd_helper_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def gpu_device(main_gpu: int) -> None:
    """Have libmtmd's CLIP run on the runner's GPU (it takes the first one otherwise)."""
    os.environ.setdefault("MTMD_BACKEND_DEVICE", f"CUDA{max(main_gpu, 0)}")
