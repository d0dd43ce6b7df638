"""The model inside a runner process: continuous batching on llama.cpp's low-level API.

`Engine.step()` is one turn of the runner's busy loop. It builds one batch holding the next token
of every generating sequence, then fills what room is left with chunks of prompts still being
read (small chunks while others are generating, so a long prompt never freezes their streams),
decodes it, and samples each sequence's next token with its own sampler chain; the heavy work is
all in C. Requests beyond the free slots wait in a queue whose free slots go round-robin
across API keys (runner/process/fairqueue.py).

Each slot remembers the tokens its KV cache holds. A new request takes the free slot sharing the
longest prefix with its prompt and evaluates only the rest; a finished or cancelled sequence frees
its slot at once and leaves its tokens cached for the next request.

Sliding-window layers (Gemma 2/3, gpt-oss, ...) get caches of the window's size, not num_ctx
(llama.cpp's `swa_full = false`): such a cache holds only the last window-plus-a-batch positions,
so it can be cut back only to where it still holds the window before the cut. For cuts further
back, each slot keeps a few checkpoints of its sliding-window state, taken when a prompt has been
read (llama-server's idea: the next turn, or the same prompt again, cuts back to about there); a
cut that no checkpoint reaches reads the prompt again from the start.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from runner.cpusafety import cpu_config, inject_fault
from runner.kvlayout import KV_BYTES_PER_ELEMENT, swa_cells, swa_layers
from runner.process import longtext, promptdisk, vision
from runner.process.draftmodel import DRAFT_MODEL_MAX, DraftError, DraftModel
from runner.process.embedding import Embedder
from runner.process.fairqueue import FairQueue
from runner.process.promptcache import (
    NO_KEYS,
    Entry,
    PromptCache,
    Scope,
    State,
    common_prefix,
    reusable,
)
from runner.process.sampling import Sampler, token_logprobs, uses_penalties
from runner.process.speculation import Speculation
from runner.process.textstream import TextStream
from shared import protocol as p
from shared.errors import BadRequest, CorralError
from shared.grammar import grammar_for
from shared.prompt import render_messages

log = logging.getLogger("corral.runner")

_KV_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}  # ggml_type ids
PREFILL_CHUNK_WHILE_DECODING = 128  # prompt tokens per step while other slots stream (at most)
# ... and fewer when the machine is slow or busy: a step that reads prompt tokens beside streams
# should take about this long, so that no stream waits long for its next token.
MIXED_STEP_S = 0.2
MIN_PREFILL_CHUNK = 16
MIN_COPY_TOKENS = 32  # a shared prefix worth copying another slot's cache for
SEEDED_CHUNK = 64  # a seeded prompt is read in chunks aligned to this many positions
# Restoring a saved prompt state (runner/process/promptcache.py) copies the whole state, reading a
# token costs a forward pass: a restore pays when it saves at least this many tokens, and its state
# spans at most RESTORE_SPAN times the positions it saves (a memcpy per position is hundreds of
# times cheaper than a forward pass per token, even for this tiny model on a fast CPU).
MIN_RESTORE_TOKENS = 16
RESTORE_SPAN = 16
# Sliding-window checkpoints a slot keeps (the newest): each is the window's share of the cache
# (about 7.5 MiB for Gemma 3 270M), held in RAM beside the slots.
SLOT_CHECKPOINTS = 2
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc)
_PARTIAL = llama_cpp.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY  # the sliding-window cache only
_USER_MARK = "\x00corral-user-text\x00"  # where a user's text would start (Engine._scope)


class LoadError(Exception):
    pass


def _c_bytes(data: bytes | bytearray) -> ctypes.Array[ctypes.c_uint8]:
    """A saved state as llama.cpp reads or writes it: a bytearray in place (states the engine
    saves are written straight into one, with no second copy), bytes (read from disk) copied."""
    array_type = ctypes.c_uint8 * len(data)
    return array_type.from_buffer(data) if isinstance(data, bytearray) \
        else array_type.from_buffer_copy(data)


def _return_large_blocks() -> None:
    """Have glibc give blocks of 1 MiB and more back to the system when they are freed.

    Checkpoints and saved prompt states are megabytes each and come and go; by default glibc
    raises its mmap threshold after the first such block is freed, so later ones come from the
    heap, whose memory the process keeps (about 20 MB more RSS with four slots)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 1 << 20)


def _trimmed(data: bytearray, n: int) -> bytearray:
    if n < len(data):
        del data[n:]
    return data


@dataclass
class Sequence:
    """One generation request, queued or owning a slot."""

    request_id: int
    prompt: list[int]
    options: dict[str, Any]
    text: TextStream
    grammar: str | None = None
    shift: bool = True
    num_predict: int = -1
    slot: int = -1
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet decoded
    n_past: int = 0  # tokens of this sequence in the KV cache
    cached: int = 0  # prompt tokens reused from the cache
    sampler: Sampler | None = None
    generated: list[int] = field(default_factory=list)
    last_token: int = -1
    started_ns: int = 0
    first_token_ns: int = 0
    logprobs: int = -1  # -1: none; else how many alternatives to report per token
    seeded: bool = False  # samples with a seed: its prompt is read in the seeded layout
    # Logprob entries of tokens whose text the stream still holds back: they go out with the
    # next chunk.
    pending_logprobs: list[dict[str, Any]] = field(default_factory=list)
    tenant: str = ""  # the API key it came from: free slots go round-robin across keys
    scope: Scope = NO_KEYS  # which caches it may reuse (runner/process/promptcache.py)
    drafter: Any = None  # its n-gram drafter (runner/process/speculation.py), made on first use
    submitted_ns: int = field(default_factory=time.perf_counter_ns)  # for the queue wait
    media: vision.Media | None = None  # its images (runner/process/vision.py)


@dataclass
class Slot:
    index: int
    tokens: list[int] = field(default_factory=list)  # what the KV cache holds for this seq id
    sequence: Sequence | None = None
    last_used: int = 0
    # Positions from 0 that were read in the seeded layout (see `seeded_keep`).
    canonical: int = 0
    uses: int = 1  # requests its cache served since it was last read from scratch
    # Sliding-window checkpoints of this cache (partial states, oldest first), for cuts further
    # back than its window reaches.
    checkpoints: list[State] = field(default_factory=list)
    # A prompt of this many tokens has just been read (-1: none): checkpoint its sliding-window
    # state at the start of the next step, before anything more is written to the slot.
    checkpoint_due: int = -1
    scope: Scope = NO_KEYS  # whose requests made its cache: who may reuse it


def seeded_keep(common: int, canonical: int, n_prompt: int) -> int:
    """How much of a slot's cache a seeded prompt may reuse.

    llama.cpp's CPU kernels round a row differently with the number of rows in its batch (groups
    of 4 or 8 rows, and batches of 64 or more, take other kernels), so a seed reproduces its text
    only if its prompt is read in the same batches every time. A seeded prompt is read alone, in
    chunks that end at multiples of SEEDED_CHUNK positions, its last token in a batch of its own.
    Its cache is reused only as far as it was read that way: whole chunks, or everything but the
    last token when the cache holds the same prompt read so."""
    if canonical == n_prompt - 1 and common >= n_prompt - 1:
        return n_prompt - 1
    return min(common, canonical) // SEEDED_CHUNK * SEEDED_CHUNK


def seeded_chunk(n_past: int, n_pending: int) -> int:
    """The next chunk of a seeded prompt: up to the next aligned position, the last token
    alone."""
    if n_pending <= 1:
        return n_pending
    return min(SEEDED_CHUNK - n_past % SEEDED_CHUNK, n_pending - 1)


def _drop_swallowed(entries: list[dict[str, Any]], n_bytes: int) -> None:
    """Drop the newest entries whose bytes lie wholly in the `n_bytes` a stop string cut off; a
    token with some text before the stop keeps its entry."""
    while entries and n_bytes > 0 and len(entries[-1]["bytes"]) <= n_bytes:
        n_bytes -= len(entries.pop()["bytes"])


def _available_ram() -> int:
    """MemAvailable from /proc/meminfo (0 where there is none: then no default prompt cache)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _device(load: p.Load) -> str:
    """Where the layers went: "cpu", or the GPUs ("gpu:0", "gpu:0,1") when this build offloads."""
    if load.num_gpu == 0 or not llama_cpp.llama_supports_gpu_offload():
        return "cpu"
    if load.tensor_split:
        return "gpu:" + ",".join(str(i) for i, share in enumerate(load.tensor_split) if share > 0)
    return f"gpu:{max(load.main_gpu, 0)}"


class Engine:
    def __init__(self, load: p.Load) -> None:
        llama_cpp.llama_backend_init()
        _return_large_blocks()
        self._piece_cache: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)

        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = load.num_gpu if load.num_gpu >= 0 else -1
        mparams.main_gpu = max(load.main_gpu, 0)
        if load.tensor_split:  # several GPUs: layers in proportion to each one's share
            shares = (ctypes.c_float * llama_cpp.llama_max_devices())(*load.tensor_split)
            self._tensor_split = shares  # llama.cpp reads it during the load
            mparams.tensor_split = shares
            mparams.split_mode = 1  # LLAMA_SPLIT_MODE_LAYER
        else:
            mparams.split_mode = 0  # LLAMA_SPLIT_MODE_NONE: the whole model on main_gpu
        mparams.load_mode = 1 if load.use_mmap else 0  # LLAMA_LOAD_MODE_MMAP / NONE
        system_info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
        mparams.use_extra_bufts, self.cpu_config = cpu_config(load.safe_cpu, system_info)
        model = llama_cpp.llama_model_load_from_file(load.model_path.encode(), mparams)
        if not model:
            raise LoadError(f"failed to load model {load.model_path}")
        self.model = model
        self.device = _device(load)
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(model)
        self.n_embd = llama_cpp.llama_model_n_embd(model)

        self.parallel = max(1, load.parallel)
        num_ctx = max(4, min(load.num_ctx, self.n_ctx_train or load.num_ctx))
        self.num_ctx = num_ctx  # as asked (llama.cpp rounds its context up to 256 cells)
        self.n_batch = max(load.num_batch, self.parallel)
        self.n_threads = load.num_thread or os.cpu_count() or 1
        self.kv_cache_type = load.kv_cache_type
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = num_ctx * self.parallel
        cparams.n_batch = self.n_batch
        cparams.n_ubatch = min(load.num_batch, self.n_batch)
        cparams.n_seq_max = self.parallel
        cparams.n_threads = cparams.n_threads_batch = self.n_threads
        cparams.no_perf = True
        cparams.kv_unified = False  # each slot owns num_ctx of the cache
        cparams.swa_full = False  # sliding-window layers: caches of the window's size
        if load.flash_attention is not None:
            cparams.flash_attn_type = 1 if load.flash_attention else 0
        cparams.type_k = cparams.type_v = _KV_TYPES.get(load.kv_cache_type, 1)
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise LoadError("failed to create the llama.cpp context (out of memory?)")
        self.ctx = ctx
        self._apply_adapters(load.adapters)
        self.vision = self._load_projector(load)
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.can_shift = bool(self.memory) and llama_cpp.llama_memory_can_shift(self.memory)
        # Copying one slot's cache into another (shared prompt prefixes) needs an attention
        # cache; recurrent state cannot be cut back to a prefix.
        self.can_copy = (bool(self.memory) and self.parallel > 1
                         and not llama_cpp.llama_model_is_recurrent(model)
                         and not llama_cpp.llama_model_is_hybrid(model))
        self.n_ctx = llama_cpp.llama_n_ctx(ctx) // self.parallel
        # Saved prompt states are cut back to a prefix after a restore: attention caches only.
        self.can_cache = (bool(self.memory) and not llama_cpp.llama_model_is_recurrent(model)
                          and not llama_cpp.llama_model_is_hybrid(model))
        # The window of the sliding-window layers (0: none), which bounds how far back a slot's
        # cache can be cut.
        self.n_swa = max(llama_cpp.llama_model_n_swa(model), 0) if self.can_cache else 0
        self.n_ubatch = cparams.n_ubatch
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)

        self.architecture = self.meta("general.architecture") or ""
        template = llama_cpp.llama_model_chat_template(model, None)
        self.chat_template = template.decode("utf-8", "replace") if template else None
        self.bos_text = self._special_text(llama_cpp.llama_vocab_bos(self.vocab))
        self.eos_text = self._special_text(llama_cpp.llama_vocab_eos(self.vocab))
        budget = load.prompt_cache if load.prompt_cache >= 0 else self._default_cache_budget()
        self.prompt_cache = PromptCache(budget if self.can_cache else 0)
        self._disk: tuple[Path, dict[str, Any], int] | None = None
        if self.prompt_cache.enabled and load.prompt_cache_dir and load.prompt_cache_disk > 0:
            self._open_disk_cache(load, cparams.n_ubatch)

        self.slots = [Slot(i) for i in range(self.parallel)]
        self.queue: FairQueue[Sequence] = FairQueue(lambda seq: seq.tenant)
        self._clock = itertools.count(1)  # orders slot use, for least-recently-used choice
        self._embedder: Embedder | None = None
        self._public_starts: dict[tuple[bool, str], list[int]] = {}  # see _scope
        self._batch_starts: dict[int, int] = {}  # slot -> first position it adds this step
        self._token_s = 0.0  # seconds per batch token, measured (moving average)
        # A draft model's guesses cost a decode each: shorter than prompt lookup's (a request's
        # own draft_max still wins).
        self.speculation = Speculation(
            min(load.draft_max or DRAFT_MODEL_MAX, DRAFT_MODEL_MAX) if load.draft_path
            else load.draft_max)
        self._warm_up(load.safe_cpu)
        if load.draft_path:
            self._load_draft(load, cparams)
        if self.meta(f"{self.architecture}.pooling_type") is not None:
            # An embedding-only model does nothing else: its embedding context is made (and its
            # memory counted, runner/supervisor/estimate.py) at load, not by the first request.
            self.embedder()

    def _warm_up(self, safe: bool) -> None:
        """Decode one token before reporting ready, so that a build that crashes on this machine
        crashes while loading, where the pool can retry it in the safe configuration, and not
        under a user's first request."""
        inject_fault(safe)
        bos = llama_cpp.llama_vocab_bos(self.vocab)
        batch = self.batch
        batch.token[0] = bos if bos >= 0 else 0
        batch.pos[0] = 0
        batch.n_seq_id[0] = 1
        batch.seq_id[0][0] = 0
        batch.logits[0] = 1
        batch.n_tokens = 1
        rc = llama_cpp.llama_decode(self.ctx, batch)
        llama_cpp.llama_memory_seq_rm(self.memory, 0, -1, -1)
        if rc != 0:
            self.close()
            raise LoadError(f"the warm-up decode failed with code {rc}")

    def _load_draft(self, load: p.Load, cparams: Any) -> None:
        """The draft model (the option draft_model) that guesses tokens instead of prompt lookup
        (runner/process/draftmodel.py): all of it on the main GPU when the model uses one."""
        try:
            self.speculation.source = DraftModel(
                load.draft_path, self.vocab, self.slots, n_ctx=self.n_ctx, n_batch=self.n_batch,
                n_ubatch=self.n_ubatch, n_threads=self.n_threads, gpu=self.device != "cpu",
                main_gpu=load.main_gpu, use_mmap=load.use_mmap, kv_type=cparams.type_k,
                flash_attention=load.flash_attention)
        except DraftError as exc:
            self.close()
            raise LoadError(str(exc)) from None

    def _apply_adapters(self, paths: list[str]) -> None:
        """LoRA adapters (the model's ADAPTER layers), at full scale. llama.cpp frees them with
        the model."""
        if not paths:
            return
        adapters = []
        for path in paths:
            adapter = llama_cpp.llama_adapter_lora_init(self.model, path.encode())
            if not adapter:
                llama_cpp.llama_free(self.ctx)
                llama_cpp.llama_model_free(self.model)
                raise LoadError(f"failed to load adapter {path}")
            adapters.append(adapter)
        array = (llama_cpp.llama_adapter_lora_p_ctypes * len(adapters))(*adapters)
        scales = (ctypes.c_float * len(adapters))(*([1.0] * len(adapters)))
        if llama_cpp.llama_set_adapters_lora(self.ctx, array, len(adapters), scales) != 0:
            llama_cpp.llama_free(self.ctx)
            llama_cpp.llama_model_free(self.model)
            raise LoadError("failed to apply the LoRA adapters")

    def _load_projector(self, load: p.Load) -> vision.Vision | None:
        """The vision projector (the model's PROJECTOR layer), on the runner's device."""
        if not load.projector:
            return None
        gpu = self.device != "cpu"
        if gpu:
            vision.gpu_device(load.main_gpu)
        try:
            return vision.Vision(load.projector, self.model, gpu=gpu, n_threads=self.n_threads,
                                 n_batch=self.n_batch,
                                 n_embd=llama_cpp.llama_model_n_embd_inp(self.model))
        except vision.ProjectorError as exc:
            llama_cpp.llama_free(self.ctx)
            llama_cpp.llama_model_free(self.model)
            raise LoadError(str(exc)) from None

    # --- model facts --------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(512)
        n = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    @property
    def model_bytes(self) -> int:
        return int(llama_cpp.llama_model_size(self.model))

    def kv_bytes(self) -> int:
        """KV cache size from the model shape: kv heads x (k + v) per cell, num_ctx cells per
        slot on full-attention layers, the window plus a micro-batch (rounded up to 256) on
        sliding-window ones (runner/supervisor/estimate.py sizes it the same way)."""
        n_layer = llama_cpp.llama_model_n_layer(self.model)
        n_head = max(1, llama_cpp.llama_model_n_head(self.model))
        n_head_kv = llama_cpp.llama_model_n_head_kv(self.model) or n_head
        arch = self.architecture
        key_len = int(self.meta(f"{arch}.attention.key_length") or self.n_embd // n_head)
        value_len = int(self.meta(f"{arch}.attention.value_length") or key_len)
        per_cell = n_head_kv * (key_len + value_len) * KV_BYTES_PER_ELEMENT.get(
            self.kv_cache_type, 2.0)
        pattern = self.meta(f"{arch}.attention.sliding_window_pattern")
        window = [False] * n_layer
        if self.n_swa:
            window = list(swa_layers(arch, n_layer, int(pattern) if pattern and
                                     pattern.isdigit() else None))
        window_cells = swa_cells(self.n_ctx, self.n_swa, self.n_ubatch)
        cells = sum(window_cells if w else self.n_ctx for w in window)
        return int(cells * per_cell * self.parallel)

    def _open_disk_cache(self, load: p.Load, n_ubatch: int) -> None:
        """Load what an earlier runner of this model under these settings saved at its unload
        (runner/process/promptdisk.py). The settings are what a KV state depends on."""
        settings = {
            "model": Path(load.model_path).name, "adapters": [Path(a).name for a in load.adapters],
            "projector": Path(load.projector).name,  # image positions' states depend on it
            "kv_cache_type": self.kv_cache_type, "flash_attention": load.flash_attention,
            "n_ctx": self.n_ctx, "parallel": self.parallel, "n_batch": self.n_batch,
            "n_ubatch": n_ubatch, "llama_cpp": llama_cpp.__version__, "swa_full": False,
        }
        path = promptdisk.cache_file(load.prompt_cache_dir, load.model_path, settings)
        self._disk = (path, settings, load.prompt_cache_disk)
        promptdisk.load(self.prompt_cache, path, settings)

    def save_prompt_cache(self) -> None:
        """At unload: every slot's cache joins the prompt cache, and the entries used more than
        once go to disk for the next load of this model."""
        if self._disk is None:
            return
        for slot in self.slots:
            if slot.sequence is None:
                self._save(slot, [], slot.scope)
        path, settings, budget = self._disk
        try:
            promptdisk.save(self.prompt_cache, path, settings, budget)
        except OSError as exc:
            log.warning("prompt cache not saved to %s: %s", path, exc)

    def _default_cache_budget(self) -> int:
        """Room for eight full sets of slots' caches, within a quarter of the free RAM."""
        return min(_available_ram() // 4, 8 * self.kv_bytes())

    # --- tokens -------------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, True)
        if n < 0:
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special,
                                         True)
        # numpy converts millions of ids several times faster than slicing the ctypes array,
        # and this runs while the decode loop waits for the GIL (runner/process/intake.py).
        return np.frombuffer(buf, dtype=np.int32, count=n).tolist()

    def tokenize_request(self, request: p.Tokenize) -> list[int]:
        """A Tokenize request's tokens; its images (named by [img-N] tags) count as the
        positions each takes, as a Generate with them would read them."""
        if not request.images:
            return self.tokenize(request.text, add_special=request.add_special)
        if self.vision is None:
            raise BadRequest(vision.NO_IMAGES)
        return vision.Media(self.vision, request.images).tokenize(request.text, self.tokenize)

    def piece(self, token: int) -> bytes:
        """A token's bytes, looked up in C once per token id and then cached. A special token
        is its text (`<|im_start|>`, `[TOOL_CALLS]`), as Ollama decodes it: stop strings name
        such tokens, and tool-call and thinking parsers read them. (End-of-generation tokens
        end the sequence before this.)"""
        cached = self._piece_cache.get(token)
        if cached is None:
            n = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece_buf, 256, 0, True)
            cached = self._piece_buf.raw[:n] if n > 0 else b""
            self._piece_cache[token] = cached
        return cached

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, 64, 0, True)
        return buf.raw[:max(n, 0)].decode("utf-8", "replace")

    # --- requests -----------------------------------------------------------------------------

    def _render(self, messages: list[dict[str, Any]], request: p.Generate,
                media: vision.Media | None = None) -> tuple[list[int], tuple[str, ...]]:
        if media is not None:
            messages = media.mark_messages(messages)
        rendered = render_messages(messages, chat_template=self.chat_template,
                                   family=self.architecture, bos_token=self.bos_text,
                                   eos_token=self.eos_text, tools=request.tools,
                                   variables=request.template_vars)
        # Only a chat that cannot shrink by whole messages may be cut from its ends.
        whole = all(m.get("role") == "system" for m in messages[:-1])
        return self._tokens(rendered.text, request, may_cut=whole, media=media), rendered.stops

    def _tokens(self, text: str, request: p.Generate, *, may_cut: bool = True,
                media: vision.Media | None = None) -> list[int]:
        """The text's tokens; of a text far longer than the context that is cut anyway, only
        those the cut keeps, read off its two ends (runner/process/longtext.py)."""
        if media is not None and media.any:
            return media.tokenize(text, self.tokenize)
        if may_cut and request.truncate and not request.context and \
                longtext.is_long(text, self.n_ctx):
            num_keep, keep_tail = self._cut(int(request.options.get("num_keep", 4)))
            return longtext.kept_tokens(self.tokenize, text, num_keep, keep_tail)
        return self.tokenize(text)

    def prompt_tokens(self, request: p.Generate, media: vision.Media | None = None
                      ) -> tuple[list[int], tuple[str, ...]]:
        """Tokens for the request (fitted to the context), and its format's stop strings."""
        limit = self.n_ctx - 1
        stops: tuple[str, ...] = ()
        if request.messages is not None:
            messages = list(request.messages)
            tokens, stops = self._render(messages, request, media)
            # Like Ollama: drop the oldest non-system messages until the prompt fits; system
            # messages and the newest message always stay.
            while len(tokens) > limit and request.truncate:
                droppable = [i for i, m in enumerate(messages[:-1]) if m.get("role") != "system"]
                if not droppable:
                    break
                del messages[droppable[0]]
                tokens, stops = self._render(messages, request, media)
        else:
            tokens = self._tokens(request.prompt or "", request, media=media)
        if request.context:
            # /api/generate's deprecated `context` (without BOS, as Ollama sends it back): BOS,
            # the earlier tokens, then the new ones.
            bos = [llama_cpp.llama_vocab_bos(self.vocab)]
            head, new = (bos, tokens[1:]) if tokens[:1] == bos else ([], tokens)
            earlier = list(request.context)
            if not all(0 <= token < self.n_vocab for token in earlier):
                raise BadRequest(f"context holds a token id outside the vocabulary "
                                 f"(0 to {self.n_vocab - 1})")
            tokens = head + (earlier[1:] if earlier[:1] == bos else earlier) + new
        if len(tokens) > limit:
            if not request.truncate:
                raise BadRequest(
                    f"the input length ({len(tokens)} tokens) exceeds the context length "
                    f"({self.n_ctx} tokens)")
            tokens = self._truncate(tokens, int(request.options.get("num_keep", 4)))
        return tokens, stops

    def _truncate(self, tokens: list[int], num_keep: int) -> list[int]:
        """Keep the first num_keep tokens and the newest ones, leaving room to generate (an
        image whole or not at all)."""
        num_keep, keep_tail = self._cut(num_keep)
        head = vision.whole_prefix(tokens, num_keep)
        return tokens[:head] + tokens[vision.whole_suffix(tokens, len(tokens) - keep_tail):]

    def _cut(self, num_keep: int) -> tuple[int, int]:
        """How many tokens a cut prompt keeps from its start and from its end."""
        if num_keep < 0 or num_keep >= self.n_ctx:
            num_keep = self.n_ctx // 4
        keep_tail = max(1, self.n_ctx - num_keep - max((self.n_ctx - num_keep) // 2, 1))
        return num_keep, keep_tail

    def submit(self, request: p.Generate) -> None:
        """Queue a generation; raises CorralError for a request that cannot run."""
        self.enqueue(self.prepare(request))

    def enqueue(self, seq: Sequence) -> None:
        self.queue.append(seq)

    def prepare(self, request: p.Generate) -> Sequence:
        """The sequence for a request: rendered, tokenized and fitted to the context. It leaves
        the engine's state alone, so it may run on another thread while the loop decodes."""
        options = request.options
        media = self._media(request)
        tokens, format_stops = self.prompt_tokens(request, media)
        if not tokens:
            raise BadRequest("the prompt is empty after tokenization")
        if media is not None:
            media.check(self.n_ubatch)
            assert self.vision is not None
            self.vision.encode_ahead(media, tokens, vision.held(self, tokens))
        user_stops = options.get("stop") or []
        if isinstance(user_stops, str):
            user_stops = [user_stops]
        stops = tuple(dict.fromkeys([*format_stops, *user_stops]))
        num_predict = int(options.get("num_predict", -1))
        if num_predict == -2:  # fill the context
            num_predict = max(self.n_ctx - len(tokens), 1)
        elif num_predict < 0:  # "until stop": with context shift that could be forever
            num_predict = 10 * self.n_ctx  # Ollama's cap
        return Sequence(
            request.id, tokens, options, TextStream(stops),
            # A raw grammar (the gateway's, for forced tool calls) wins over `format`.
            grammar=request.grammar or grammar_for(request.format), shift=request.shift,
            num_predict=num_predict,
            logprobs=min(request.logprobs, p.MAX_TOP_LOGPROBS) if request.logprobs >= 0 else -1,
            tenant=request.tenant, scope=self._scope(request, tokens),
            seeded=int(options.get("seed", -1)) >= 0 and float(options.get("temperature", 0.8)) > 0,
            media=media,
        )

    def _scope(self, request: p.Generate, tokens: list[int]) -> Scope:
        """Which caches the request may reuse: its key's (`cache_salt`), and the start of its
        prompt that is public text (`shared_prefix`, an admin-set SYSTEM prompt). With messages
        the runner renders that start itself: the template on the shared system message alone,
        up to where a user's text would begin, so no part of the request's own text (nor its
        tools) is ever counted as public."""
        if not request.cache_salt or not request.shared_prefix:
            return Scope(request.cache_salt, 0)
        memo_key = (request.messages is not None, request.shared_prefix)
        public = self._public_starts.get(memo_key)
        if public is None:
            text = request.shared_prefix
            if request.messages is not None:
                try:
                    rendered = render_messages(
                        [{"role": "system", "content": text},
                         {"role": "user", "content": _USER_MARK}],
                        chat_template=self.chat_template, family=self.architecture,
                        bos_token=self.bos_text, eos_token=self.eos_text).text
                except Exception:  # noqa: BLE001 - a template that will not: nothing is public
                    rendered = ""
                text = rendered.split(_USER_MARK, 1)[0] if _USER_MARK in rendered else ""
            public = self.tokenize(text) if text else []
            if len(self._public_starts) >= 64:
                self._public_starts.clear()
            self._public_starts[memo_key] = public
        return Scope(request.cache_salt, common_prefix(public, tokens))

    def _media(self, request: p.Generate) -> vision.Media | None:
        """The request's images, None without any; Ollama's error for a model without a
        projector. (Positions inside an image must stay together: no context shift.)"""
        has = bool(request.images) or any(m.get("images") for m in request.messages or ())
        if not has:
            return None
        if self.vision is None:
            raise BadRequest(vision.NO_IMAGES)
        request.shift = False
        return vision.Media(self.vision, request.images)

    def cancel(self, request_id: int) -> bool:
        for seq in self.queue:
            if seq.request_id == request_id:
                self.queue.remove(seq)
                return True
        for slot in self.slots:
            if slot.sequence and slot.sequence.request_id == request_id:
                self._release(slot)
                return True
        return False

    @property
    def kv_used(self) -> int:
        """Cache positions the sequences in the slots hold (llama.cpp has no call for used
        cells): the gateway's corral_kv_cache_usage_ratio."""
        return sum(len(s.tokens) for s in self.slots if s.sequence is not None)

    @property
    def active(self) -> int:
        return sum(1 for s in self.slots if s.sequence)

    @property
    def busy(self) -> bool:
        return bool(self.queue) or any(s.sequence or s.checkpoint_due >= 0 for s in self.slots)

    # --- the decode loop ----------------------------------------------------------------------

    def _admit(self) -> list[p.Message]:
        """Give queued sequences free slots: the one sharing most, else the least recently used.

        When another slot's cache holds a longer start of the prompt (the same system prompt,
        or `n` choices of one request), that cache is copied over instead of computing the
        prefix again; a request whose prefix another slot is still reading waits for it."""
        failed: list[p.Message] = []
        deferred: list[Sequence] = []
        while self.queue:
            free = [s for s in self.slots if s.sequence is None]
            if not free:
                break
            seq = self.queue.popleft()
            if self._being_read(seq):
                deferred.append(seq)
                continue
            slot = max(free, key=lambda s: (reusable(s.tokens, s.scope, seq.prompt, seq.scope),
                                            -s.last_used))
            self._save(slot, seq.prompt, seq.scope)
            self._restore(slot, seq)
            self._copy_prefix(slot, seq)
            keep = min(reusable(slot.tokens, slot.scope, seq.prompt, seq.scope),
                       len(seq.prompt) - 1)
            keep = vision.whole_prefix(seq.prompt, keep)  # an image is read whole
            while True:  # each pass only lowers `keep`: a seeded cut may need an older checkpoint
                fitted = self._fit_window(slot, keep)
                if seq.seeded:
                    fitted = seeded_keep(fitted, slot.canonical, len(seq.prompt))
                if fitted == keep:
                    break
                keep = fitted
            if not llama_cpp.llama_memory_seq_rm(self.memory, slot.index, keep, -1):
                # Some caches (recurrent ones) cannot drop a tail: start this slot over.
                llama_cpp.llama_memory_seq_rm(self.memory, slot.index, -1, -1)
                keep = 0
            slot.checkpoints = [c for c in slot.checkpoints if c.n_tokens <= keep]
            try:
                seq.sampler = Sampler(seq.options, vocab=self.vocab, n_vocab=self.n_vocab,
                                      num_ctx=self.n_ctx, grammar=seq.grammar)
            except CorralError as exc:
                failed.append(p.Error(seq.request_id, exc.message, exc.status))
                continue
            slot.tokens = seq.prompt[:keep]
            slot.scope = seq.scope
            slot.canonical = min(slot.canonical, keep)
            slot.uses = slot.uses + 1 if keep >= MIN_RESTORE_TOKENS else 1
            slot.sequence = seq
            slot.last_used = next(self._clock)
            seq.slot = slot.index
            seq.n_past = seq.cached = keep
            seq.pending = seq.prompt[keep:]
            seq.started_ns = time.perf_counter_ns()
            if uses_penalties(seq.options):
                last_n = int(seq.options.get("repeat_last_n", 64))
                seq.sampler.accept_prompt(
                    vision.text_only(seq.prompt[-last_n if last_n > 0 else 0:]))
        self.queue.extendleft(reversed(deferred))
        return failed

    def _save(self, slot: Slot, prompt: list[int], scope: Scope) -> None:
        """Keep the state of a free slot that `prompt` (of `scope`) is about to overwrite (it
        does not extend what the slot holds) in the prompt cache, unless the cache holds it
        already."""
        cache = self.prompt_cache
        tokens = slot.tokens
        if (not cache.enabled or len(tokens) < MIN_RESTORE_TOKENS
                or reusable(tokens, slot.scope, prompt, scope) >= len(tokens)
                or cache.holds(tokens, slot.canonical, slot.scope)):
            return
        size = llama_cpp.llama_state_seq_get_size(self.ctx, slot.index)
        if size <= 0 or size > cache.budget:
            return
        data = bytearray(size)
        n = llama_cpp.llama_state_seq_get_data(self.ctx, _c_bytes(data), size, slot.index)
        if n > 0:
            whole = State(len(tokens), _trimmed(data, n), slot.canonical,
                          floor=self._saved_floor(slot))
            # Checkpoints only for the cuts the whole state cannot serve itself.
            points = [c for c in slot.checkpoints if c.n_tokens < whole.floor]
            cache.put(list(tokens), [whole, *points], uses=slot.uses, scope=slot.scope)

    def _floor(self, slot: Slot) -> int:
        """The shortest prefix the slot's cache can be cut back to as it is: where its
        sliding-window part still holds the window before the cut (0: any)."""
        if not self.n_swa:
            return 0
        pos_min = llama_cpp.llama_memory_seq_pos_min(self.memory, slot.index)
        return pos_min + self.n_swa if pos_min > 0 else 0

    def _saved_floor(self, slot: Slot) -> int:
        """The floor of a state saved from the slot now: llama.cpp writes only the positions the
        window still sees from its end, so beyond the window it serves a cut at its end only."""
        n = len(slot.tokens)
        return max(self._floor(slot), n if self.n_swa and n > self.n_swa else 0)

    def _fit_window(self, slot: Slot, keep: int) -> int:
        """The longest cut at or below `keep` that leaves the slot's sliding-window cache
        holding the window before it: `keep` itself, or as far as a checkpoint (restored here)
        reaches, else 0 with the slot emptied."""
        if not self.n_swa or keep <= 0 or keep >= len(slot.tokens) or self._floor(slot) <= keep:
            return keep
        usable = [c for c in slot.checkpoints
                  if c.n_tokens <= len(slot.tokens) and c.floor <= min(keep, c.n_tokens)]
        for point in sorted(usable, key=lambda c: min(keep, c.n_tokens), reverse=True):
            data = _c_bytes(point.data)
            cut = min(keep, point.n_tokens)
            # What was restored decides, not what was recorded.
            if llama_cpp.llama_state_seq_set_data_ext(self.ctx, data, len(point.data),
                                                      slot.index, _PARTIAL) \
                    and self._floor(slot) <= cut:
                return cut
        llama_cpp.llama_memory_seq_rm(self.memory, slot.index, -1, -1)
        slot.tokens, slot.canonical, slot.checkpoints = [], 0, []
        return 0

    def _take_due_checkpoints(self) -> None:
        """Checkpoint the slots whose prompt the last step finished reading. Done here, not in
        that step, so that the first token goes out first: a checkpoint copies the window's
        share of the cache (milliseconds), and nothing has been written to the slot since."""
        for slot in self.slots:
            if slot.checkpoint_due >= 0:
                if slot.checkpoint_due == len(slot.tokens):
                    self._checkpoint(slot)
                slot.checkpoint_due = -1

    def _checkpoint(self, slot: Slot) -> None:
        """Keep the slot's sliding-window state as it is now (a prompt has just been read), the
        newest SLOT_CHECKPOINTS of them."""
        size = llama_cpp.llama_state_seq_get_size_ext(self.ctx, slot.index, _PARTIAL)
        if size <= 0:
            return
        data = bytearray(size)
        n = llama_cpp.llama_state_seq_get_data_ext(self.ctx, _c_bytes(data), size, slot.index,
                                                   _PARTIAL)
        if n <= 0:
            return
        point = State(len(slot.tokens), _trimmed(data, n), slot.canonical, partial=True,
                      floor=self._saved_floor(slot))
        kept = [c for c in slot.checkpoints if c.n_tokens < point.n_tokens]
        slot.checkpoints = [*kept, point][-SLOT_CHECKPOINTS:]

    def _restore(self, slot: Slot, seq: Sequence) -> None:
        """Give `slot` the saved state that shares clearly more with the prompt than any slot
        does (the caller trims it to the shared start)."""
        cache = self.prompt_cache
        if not cache.enabled:
            return
        prompt = seq.prompt
        limit = len(prompt) - 1  # the last prompt token is always read, for its logits
        have = self._cached_share(seq) if self.can_copy else self._share(slot, seq)
        entry, shared = cache.best(prompt, seq.scope)
        served = entry.serve(min(shared, limit)) if entry is not None else None
        state = served[0] if served is not None else None
        gain = 0
        if served is not None:
            state, usable = served
            if seq.seeded:
                usable = seeded_keep(usable, state.canonical, len(prompt))
            gain = usable - min(have, limit)
        if (state is None or gain < MIN_RESTORE_TOKENS
                or state.n_tokens > RESTORE_SPAN * gain):
            cache.misses += 1
            return
        assert entry is not None
        data = _c_bytes(state.data)
        if not llama_cpp.llama_state_seq_set_data(self.ctx, data, len(state.data), slot.index):
            llama_cpp.llama_memory_seq_rm(self.memory, slot.index, -1, -1)
            slot.tokens, slot.canonical, slot.checkpoints = [], 0, []
            cache.misses += 1
            return
        cache.hits += 1
        cache.touch(entry)
        slot.tokens = entry.tokens[:state.n_tokens]
        slot.scope = entry.scope
        slot.canonical = state.canonical
        slot.checkpoints = entry.checkpoints(state.n_tokens)  # the caller's cut may take one
        slot.uses = 1

    def _cached_share(self, seq: Sequence) -> int:
        """The longest start of the prompt that some slot's cache serves now."""
        return max(self._share(s, seq) for s in self.slots)

    def _share(self, slot: Slot, seq: Sequence) -> int:
        """The longest start of the prompt that `slot` serves: what it may reuse of it, as far back
        as its sliding-window cache or a checkpoint of it reaches (runner/process/promptcache.py's
        rule)."""
        n = reusable(slot.tokens, slot.scope, seq.prompt, seq.scope)
        if not self.n_swa or n >= len(slot.tokens):
            return n
        held = Entry(slot.tokens, [State(len(slot.tokens), b"", floor=self._floor(slot)),
                                   *slot.checkpoints])
        served = held.serve(n)
        return served[1] if served is not None else 0

    def _being_read(self, seq: Sequence) -> bool:
        """Whether a slot is still reading a prompt that shares clearly more with this one than
        any cache holds: then it is cheaper to wait and copy that slot's cache."""
        if not self.can_copy:
            return False
        cached = self._cached_share(seq)
        return any(s.sequence is not None and s.sequence.pending
                   and reusable(s.sequence.prompt, s.sequence.scope, seq.prompt, seq.scope)
                   - cached >= MIN_COPY_TOKENS
                   for s in self.slots)

    def _copy_prefix(self, slot: Slot, seq: Sequence) -> None:
        """Give `slot` the cache of another slot that holds clearly more of `prompt`.

        With one cache stream per slot llama.cpp copies a whole stream (a memcpy of num_ctx
        positions, done before the next decode), which is far cheaper than evaluating even a
        few dozen prompt tokens; the copied tail beyond the shared part is dropped after."""
        if not self.can_copy:
            return
        own = self._share(slot, seq)
        donor = max((s for s in self.slots if s is not slot),
                    key=lambda s: self._share(s, seq), default=None)
        if donor is None or self._share(donor, seq) - own < MIN_COPY_TOKENS:
            return
        llama_cpp.llama_memory_seq_rm(self.memory, slot.index, -1, -1)
        llama_cpp.llama_memory_seq_cp(self.memory, donor.index, slot.index, -1, -1)
        slot.tokens = list(donor.tokens)
        slot.scope = donor.scope
        slot.canonical = donor.canonical
        slot.checkpoints = list(donor.checkpoints)
        slot.uses = donor.uses

    def _release(self, slot: Slot) -> None:
        seq = slot.sequence
        if seq is not None and seq.sampler is not None:
            seq.sampler.free()
            seq.sampler = None
        slot.sequence = None
        slot.last_used = next(self._clock)

    def _add(self, slot: Slot, tokens: list[int], want_logits: bool, n: int) -> int:
        batch, seq = self.batch, slot.sequence
        assert seq is not None
        self._batch_starts.setdefault(slot.index, seq.n_past)
        for j, token in enumerate(tokens):
            batch.token[n + j] = token
            batch.pos[n + j] = seq.n_past + j
            batch.n_seq_id[n + j] = 1
            batch.seq_id[n + j][0] = slot.index
            batch.logits[n + j] = 0
        n += len(tokens)
        if want_logits:
            batch.logits[n - 1] = 1
        seq.n_past += len(tokens)
        slot.tokens.extend(tokens)
        return n

    def step(self) -> list[p.Message]:
        """Decode one batch for every active sequence; return the messages to send."""
        self._take_due_checkpoints()
        out = self._admit()
        if self.vision is not None:  # a slot whose next piece is an image reads it whole
            out.extend(self.vision.read_images(self))
        self._batch_starts = {}
        wants: list[tuple[Sequence, int]] = []  # (sequence, batch index of its logits)
        n = 0
        decoding = [s for s in self.slots if s.sequence and not s.sequence.pending]
        reading = sorted((s for s in self.slots if s.sequence and s.sequence.pending),
                         key=lambda s: s.last_used)  # oldest admission first
        # Guessed next tokens (runner/process/speculation.py), verified in this same step; none
        # in a step that also reads a prompt.
        drafts = {} if reading else self.speculation.plan(
            [s.sequence for s in decoding if s.sequence is not None],
            self.n_ctx, min(self.n_batch, self.n_ubatch))
        verify: list[tuple[Sequence, int, list[int]]] = []  # (sequence, first row, its draft)
        rows: list[int] = []  # rows of each generating sequence
        for slot in decoding:  # every generating sequence advances one token per step
            seq = slot.sequence
            assert seq is not None
            draft = drafts.get(seq.request_id)
            if draft:
                verify.append((seq, n, draft))
                n = self._add(slot, [seq.last_token, *draft], True, n)
                for row in range(n - len(draft) - 1, n):
                    self.batch.logits[row] = 1
                rows.append(len(draft) + 1)
                continue
            n = self._add(slot, [seq.last_token], True, n)
            wants.append((seq, n - 1))
            rows.append(1)
        budget = self.n_batch - n
        if decoding:
            budget = min(budget, self._prefill_chunk())
        for slot in reading:
            seq = slot.sequence
            assert seq is not None
            if budget <= 0:
                break
            take = min(budget, seeded_chunk(seq.n_past, len(seq.pending))) if seq.seeded \
                else budget
            if seq.media is not None:  # text up to the next image (read by itself next step)
                take = next((i for i, t in enumerate(seq.pending[:take]) if t < 0), take)
                if take == 0:
                    continue
            chunk, seq.pending = seq.pending[:take], seq.pending[take:]
            budget -= len(chunk)
            n = self._add(slot, chunk, not seq.pending, n)
            if not seq.pending:
                wants.append((seq, n - 1))
        if n == 0:
            return out
        self._track_seeded_layout()
        self.batch.n_tokens = n
        started = time.perf_counter()
        rc = llama_cpp.llama_decode(self.ctx, self.batch)
        seconds = time.perf_counter() - started
        if not verify:  # (drafted rows are not prompt reading: they would skew its pace)
            self._time_step(n, seconds)
        if rc != 0:
            return out + self._fail_all(f"llama_decode failed with code {rc}")
        if not reading:
            self.speculation.observe(rows, seconds)
        for seq, row, draft in verify:
            out.extend(self._verify(seq, row, draft))
        for seq, index in wants:
            if self.n_swa and not seq.generated and len(seq.prompt) >= MIN_RESTORE_TOKENS:
                slot = self.slots[seq.slot]  # its prompt is read: checkpoint before any reply
                slot.checkpoint_due = len(slot.tokens)
            assert seq.sampler is not None
            token = seq.sampler.sample(self.ctx, index)
            out.extend(self._on_token(seq, token, index))
        return out

    def _verify(self, seq: Sequence, row: int, draft: list[int]) -> Iterator[p.Message]:
        """A sequence decoded with guessed tokens at batch rows `row`.. (its last token, then
        the draft): sample the rows in order with its own sampler while each sample equals the
        guess that row was fed, cut the positions of the rejected guesses off the cache, and hand
        on the sampled tokens one by one, as decoding without guesses would have made them."""
        slot = self.slots[seq.slot]
        assert seq.sampler is not None
        tokens: list[int] = []
        for j in range(len(draft) + 1):
            token = seq.sampler.sample(self.ctx, row + j)
            tokens.append(token)
            # An end-of-generation token ends it: nothing after it is sampled (a grammar has
            # nothing left to accept).
            if j == len(draft) or token != draft[j] or \
                    llama_cpp.llama_vocab_is_eog(self.vocab, token):
                break
        kept = len(tokens) - 1  # guesses that held (their rows' cache entries stay)
        if kept < len(draft):
            seq.n_past -= len(draft) - kept
            llama_cpp.llama_memory_seq_rm(self.memory, slot.index, seq.n_past, -1)
            del slot.tokens[seq.n_past:]
        self.speculation.record(seq, len(draft), kept)
        for j, token in enumerate(tokens):
            yield from self._on_token(seq, token, row + j)
            if slot.sequence is not seq:  # finished (stop string, end, num_predict)
                return

    def _prefill_chunk(self) -> int:
        """Prompt tokens to read in a step beside streams: PREFILL_CHUNK_WHILE_DECODING, or as
        many as take MIXED_STEP_S at the measured speed when that is fewer."""
        if self._token_s <= 0:
            return PREFILL_CHUNK_WHILE_DECODING
        fit = int(MIXED_STEP_S / self._token_s)
        return max(MIN_PREFILL_CHUNK, min(PREFILL_CHUNK_WHILE_DECODING, fit))

    def _time_step(self, n_tokens: int, seconds: float) -> None:
        """Learn the seconds per token from batches of 8 tokens or more (smaller ones are
        mostly fixed cost per step)."""
        if n_tokens >= 8:
            per_token = seconds / n_tokens
            self._token_s = per_token if self._token_s <= 0 else \
                0.7 * self._token_s + 0.3 * per_token

    def _track_seeded_layout(self) -> None:
        """Keep each slot's `canonical` mark: a seeded prompt chunk decoded alone and aligned
        extends it; any other row at a position before the mark cuts it back there."""
        alone = len(self._batch_starts) == 1
        for index, start in self._batch_starts.items():
            slot = self.slots[index]
            seq = slot.sequence
            if (alone and seq is not None and seq.seeded and seq.pending
                    and slot.canonical == start
                    and (seq.n_past % SEEDED_CHUNK == 0 or len(seq.pending) == 1)):
                slot.canonical = seq.n_past
            else:
                slot.canonical = min(slot.canonical, start)

    def _on_token(self, seq: Sequence, token: int, index: int) -> Iterator[p.Message]:
        now = time.perf_counter_ns()
        if not seq.first_token_ns:
            seq.first_token_ns = now
        if llama_cpp.llama_vocab_is_eog(self.vocab, token):
            yield from self._finish(seq, "stop", now)
            return
        seq.generated.append(token)
        seq.last_token = token
        if seq.logprobs >= 0:  # only sequences that asked pay for the softmax
            seq.pending_logprobs.append(self._logprob_entry(index, token, seq.logprobs))
        text, stopped = seq.text.push(self.piece(token))
        if stopped and seq.logprobs >= 0:
            _drop_swallowed(seq.pending_logprobs, len(seq.text.dropped.encode()))
        if text:
            yield p.Chunk(seq.request_id, text, self._take_logprobs(seq))
        if stopped:
            yield from self._finish(seq, "stop", now)
            return
        predicted_all = 0 <= seq.num_predict <= len(seq.generated)
        context_full = seq.n_past + 1 >= self.n_ctx and not self._shift(seq)
        if predicted_all or context_full:
            yield from self._finish(seq, "length", now)

    def _logprob_entry(self, index: int, token: int, k: int) -> dict[str, Any]:
        """The token's entry, from the raw logits of its batch position (sampling leaves them
        untouched)."""
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, index),
                                       shape=(self.n_vocab,))
        logprob, top = token_logprobs(logits, token, k)
        entry = self._token_logprob(token, logprob)
        entry["top_logprobs"] = [self._token_logprob(t, lp) for t, lp in top]
        return entry

    def _token_logprob(self, token: int, logprob: float) -> dict[str, Any]:
        piece = self.piece(token)
        return {"token": piece.decode("utf-8", "replace"), "logprob": logprob,
                "bytes": list(piece)}

    @staticmethod
    def _take_logprobs(seq: Sequence) -> list[dict[str, Any]] | None:
        if seq.logprobs < 0:
            return None
        entries, seq.pending_logprobs = seq.pending_logprobs, []
        return entries

    def _shift(self, seq: Sequence) -> bool:
        """Context full: keep num_keep tokens, drop half of the rest, slide the remainder down."""
        if not seq.shift or not self.can_shift:
            return False
        num_keep = int(seq.options.get("num_keep", 4))
        if num_keep < 0 or num_keep >= seq.n_past - 1:
            num_keep = min(len(seq.prompt), seq.n_past // 2)
        discard = max((seq.n_past - num_keep) // 2, 1)
        slot = self.slots[seq.slot]
        llama_cpp.llama_memory_seq_rm(self.memory, slot.index, num_keep, num_keep + discard)
        llama_cpp.llama_memory_seq_add(self.memory, slot.index, num_keep + discard, -1, -discard)
        del slot.tokens[num_keep:num_keep + discard]
        slot.canonical = min(slot.canonical, num_keep)
        slot.checkpoints = []  # their positions moved
        seq.n_past -= discard
        return True

    def _finish(self, seq: Sequence, reason: str, now: int) -> Iterator[p.Message]:
        rest = seq.text.flush()  # after a stop string this is empty: push() cleared it
        if rest or seq.pending_logprobs:  # entries of text-less tokens still go out
            yield p.Chunk(seq.request_id, rest, self._take_logprobs(seq))
        yield p.Done(
            id=seq.request_id,
            done_reason=reason,
            prompt_eval_count=len(seq.prompt),
            prompt_eval_duration=seq.first_token_ns - seq.started_ns,
            eval_count=len(seq.generated),
            eval_duration=max(now - seq.first_token_ns, 0),
            # Without BOS, as Ollama's; a request that sends it back gets BOS again first.
            context=vision.text_only(
                (seq.prompt[1:] if seq.prompt[:1] == [llama_cpp.llama_vocab_bos(self.vocab)]
                 else seq.prompt) + seq.generated),
            cached_tokens=seq.cached,
            queue_duration=max(seq.started_ns - seq.submitted_ns, 0),
            stop=seq.text.stop if reason == "stop" else "",
        )
        self._release(self.slots[seq.slot])

    def _fail_all(self, message: str) -> list[p.Message]:
        out: list[p.Message] = []
        for slot in self.slots:
            if slot.sequence:
                out.append(p.Error(slot.sequence.request_id, message))
                llama_cpp.llama_memory_seq_rm(self.memory, slot.index, -1, -1)
                slot.tokens = []
                slot.canonical = 0
                slot.checkpoints = []
                self._release(slot)
        return out

    # --- embeddings ---------------------------------------------------------------------------

    def embedder(self) -> Embedder:
        """The embedding context, made on first use."""
        if self._embedder is None:
            self._embedder = Embedder(self.model, min(self.n_ctx, 8192), self.n_threads,
                                      self.n_embd, limit=min(self.num_ctx, 8192))
        return self._embedder

    def embed(self, request: p.Embed) -> p.Embeddings:
        tokenized = [self.tokenize(text) for text in request.inputs]
        vectors, count = self.embedder().embed(tokenized, truncate=request.truncate,
                                               normalize=request.normalize)
        return p.Embeddings(request.id, vectors, count)

    def set_threads(self, n_threads: int) -> None:
        """Use `n_threads` from the next decode on (the supervisor shares the cores out)."""
        n = max(1, n_threads)
        llama_cpp.llama_set_n_threads(self.ctx, n, n)
        if self._embedder is not None:
            llama_cpp.llama_set_n_threads(self._embedder.ctx, n, n)
        if self.speculation.source is not None:
            self.speculation.source.set_threads(n)
        self.n_threads = n  # an embedding context made later takes the same

    def close(self) -> None:
        self.save_prompt_cache()
        for slot in self.slots:
            self._release(slot)
        if self._embedder is not None:
            self._embedder.close()
        if self.vision is not None:
            self.vision.close()
        if self.speculation.source is not None:
            self.speculation.source.close()
            self.speculation.source = None
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)
