"""The model inside a runner process: llama.cpp through llama-cpp-python's low-level API.

`Engine.step()` is one turn of the runner's busy loop: it builds one batch holding the next token
of every generating sequence (and the next chunk of any prompt still being read), decodes it, and
samples each sequence's next token, all heavy work in C. Requests beyond the free slots wait in a
first-come-first-served queue. A finished or cancelled sequence frees its slot at once and leaves
its tokens in the KV cache, so a later prompt with the same prefix only evaluates the rest.
"""

from __future__ import annotations

import codecs
import ctypes
import math
import os
import time
from array import array
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from runner.prompt import render_messages
from runner.sampling import build_sampler, uses_penalties
from shared import protocol as p
from shared.errors import BadRequest, CorralError

_KV_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}  # ggml_type ids
_KV_BYTES_PER_ELEMENT = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


class LoadError(Exception):
    pass


@dataclass
class Sequence:
    """One generation request while it owns a slot."""

    request_id: int
    prompt: list[int]
    options: dict[str, Any]
    stops: tuple[str, ...]
    slot: int = -1
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet decoded
    n_past: int = 0  # tokens of this sequence in the KV cache
    cached: int = 0  # prompt tokens reused from the cache
    sampler: Any = None
    generated: list[int] = field(default_factory=list)
    last_token: int = -1
    held: str = ""  # text held back: it could be the start of a stop string
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    started_ns: int = 0
    first_token_ns: int = 0
    num_predict: int = -1


@dataclass
class Slot:
    index: int
    tokens: list[int] = field(default_factory=list)  # what the KV cache holds for this seq id
    sequence: Sequence | None = None


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing chars of `text` could still grow into a stop string."""
    keep = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), keep, -1):
            if text.endswith(stop[:k]):
                keep = k
                break
    return keep


class Engine:
    def __init__(self, load: p.Load) -> None:
        llama_cpp.llama_backend_init()
        self._piece_cache: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)

        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = load.num_gpu if load.num_gpu >= 0 else -1
        mparams.main_gpu = load.main_gpu
        if hasattr(mparams, "load_mode"):
            mparams.load_mode = 1 if load.use_mmap else 0
        else:  # older bindings
            mparams.use_mmap = load.use_mmap
        model = llama_cpp.llama_model_load_from_file(load.model_path.encode(), mparams)
        if not model:
            raise LoadError(f"failed to load model {load.model_path}")
        self.model = model
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(model)
        self.n_embd = llama_cpp.llama_model_n_embd(model)

        self.parallel = max(1, load.parallel)
        num_ctx = max(4, min(load.num_ctx, self.n_ctx_train or load.num_ctx))
        self.n_batch = max(load.num_batch, self.parallel)
        self.n_threads = load.num_thread or os.cpu_count() or 1
        self.kv_cache_type = load.kv_cache_type
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = num_ctx * self.parallel
        cparams.n_batch = self.n_batch
        cparams.n_ubatch = min(load.num_batch, self.n_batch)
        cparams.n_seq_max = self.parallel
        cparams.n_threads = self.n_threads
        cparams.n_threads_batch = self.n_threads
        cparams.no_perf = True
        if hasattr(cparams, "kv_unified"):
            cparams.kv_unified = False  # each slot gets its own num_ctx
        if load.flash_attention is not None and hasattr(cparams, "flash_attn_type"):
            cparams.flash_attn_type = 1 if load.flash_attention else 0
        cparams.type_k = cparams.type_v = _KV_TYPES.get(load.kv_cache_type, 1)
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise LoadError("failed to create the llama.cpp context (out of memory?)")
        self.ctx = ctx
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.n_ctx = llama_cpp.llama_n_ctx(ctx) // self.parallel
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)

        self.architecture = self.meta("general.architecture") or ""
        template = llama_cpp.llama_model_chat_template(model, None)
        self.chat_template = template.decode("utf-8", "replace") if template else None
        self.bos_text = self._special_text(llama_cpp.llama_vocab_bos(self.vocab))
        self.eos_text = self._special_text(llama_cpp.llama_vocab_eos(self.vocab))

        self.slots = [Slot(i) for i in range(self.parallel)]
        self.queue: deque[Sequence] = deque()
        self._next_slot = 0  # round-robin start, so no slot starves when the batch is full
        self._embed_ctx: Any = None

    # --- model facts --------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(512)
        n = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    @property
    def model_bytes(self) -> int:
        return int(llama_cpp.llama_model_size(self.model))

    def kv_bytes(self) -> int:
        """KV cache size from the model shape (n_layer x ctx x (k + v) x kv heads)."""
        n_layer = llama_cpp.llama_model_n_layer(self.model)
        n_head = max(1, llama_cpp.llama_model_n_head(self.model))
        n_head_kv = llama_cpp.llama_model_n_head_kv(self.model) or n_head
        arch = self.architecture
        key_len = int(self.meta(f"{arch}.attention.key_length") or self.n_embd // n_head)
        value_len = int(self.meta(f"{arch}.attention.value_length") or key_len)
        per_token = n_layer * n_head_kv * (key_len + value_len)
        per_elem = _KV_BYTES_PER_ELEMENT.get(self.kv_cache_type, 2.0)
        return int(per_token * self.n_ctx * self.parallel * per_elem)

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
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        cached = self._piece_cache.get(token)
        if cached is None:
            n = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece_buf, 256, 0, False)
            cached = self._piece_buf.raw[:n] if n > 0 else b""
            self._piece_cache[token] = cached
        return cached

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, 64, 0, True)
        return buf.raw[:max(n, 0)].decode("utf-8", "replace")

    # --- requests -----------------------------------------------------------------------------

    def prompt_tokens(self, request: p.Generate) -> tuple[list[int], tuple[str, ...]]:
        """Tokens for the request, and the stop strings its prompt format implies."""
        stops: tuple[str, ...] = ()
        if request.messages is not None:
            rendered = render_messages(
                request.messages, chat_template=self.chat_template, family=self.architecture,
                bos_token=self.bos_text, eos_token=self.eos_text,
            )
            text, stops = rendered.text, rendered.stops
        else:
            text = request.prompt or ""
        tokens = self.tokenize(text)
        if request.context:
            # /api/generate's deprecated `context`: earlier tokens go first; our BOS stays at 0.
            tokens = list(request.context) + tokens[1:] if tokens[:1] == request.context[:1] \
                else list(request.context) + tokens
        return tokens, stops

    def submit(self, request: p.Generate) -> None:
        """Queue a generation; raises CorralError for a request that cannot run."""
        options = request.options
        tokens, format_stops = self.prompt_tokens(request)
        if not tokens:
            raise BadRequest("the prompt is empty after tokenization")
        limit = self.n_ctx - 1
        if len(tokens) > limit:
            if not request.truncate:
                raise BadRequest(
                    f"the input length ({len(tokens)} tokens) exceeds the context length "
                    f"({self.n_ctx} tokens)"
                )
            tokens = self._truncate(tokens, int(options.get("num_keep", 4)))
        user_stops = options.get("stop") or []
        if isinstance(user_stops, str):
            user_stops = [user_stops]
        stops = tuple(dict.fromkeys([*format_stops, *user_stops]))
        self.queue.append(
            Sequence(request.id, tokens, options, tuple(s for s in stops if s),
                     num_predict=int(options.get("num_predict", -1)))
        )

    def _truncate(self, tokens: list[int], num_keep: int) -> list[int]:
        """Keep the first num_keep tokens and the newest ones, leaving room to generate."""
        if num_keep < 0 or num_keep >= self.n_ctx:
            num_keep = self.n_ctx // 4
        keep_tail = max(1, self.n_ctx - num_keep - max((self.n_ctx - num_keep) // 2, 1))
        return tokens[:num_keep] + tokens[-keep_tail:]

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
    def active(self) -> int:
        return sum(1 for s in self.slots if s.sequence)

    @property
    def busy(self) -> bool:
        return bool(self.queue) or any(s.sequence for s in self.slots)

    # --- the decode loop ----------------------------------------------------------------------

    def _admit(self) -> None:
        """Give queued sequences free slots, preferring the slot whose cache shares most."""
        while self.queue:
            free = [s for s in self.slots if s.sequence is None]
            if not free:
                return
            seq = self.queue.popleft()
            slot = max(free, key=lambda s: _common_prefix(s.tokens, seq.prompt))
            keep = min(_common_prefix(slot.tokens, seq.prompt), len(seq.prompt) - 1)
            if not llama_cpp.llama_memory_seq_rm(self.memory, slot.index, keep, -1):
                # Some caches (sliding-window, recurrent) cannot drop a tail: start over.
                llama_cpp.llama_memory_seq_rm(self.memory, slot.index, -1, -1)
                keep = 0
            slot.tokens = seq.prompt[:keep]
            slot.sequence = seq
            seq.slot = slot.index
            seq.n_past = keep
            seq.cached = keep
            seq.pending = seq.prompt[keep:]
            seq.started_ns = time.perf_counter_ns()
            seq.sampler = build_sampler(seq.options, n_vocab=self.n_vocab, num_ctx=self.n_ctx)
            if uses_penalties(seq.options):
                for token in seq.prompt[-int(seq.options.get("repeat_last_n", 64) or 0):]:
                    llama_cpp.llama_sampler_accept(seq.sampler, token)

    def _release(self, slot: Slot) -> None:
        seq = slot.sequence
        if seq is not None and seq.sampler is not None:
            llama_cpp.llama_sampler_free(seq.sampler)
            seq.sampler = None
        slot.sequence = None

    def step(self) -> list[p.Message]:
        """Decode one batch for every active sequence; return the messages to send."""
        self._admit()
        batch = self.batch
        n = 0
        wants: list[tuple[Sequence, int]] = []  # (sequence, batch index of its logits)
        order = self.slots[self._next_slot:] + self.slots[:self._next_slot]
        self._next_slot = (self._next_slot + 1) % len(self.slots)
        for slot in order:
            seq = slot.sequence
            if seq is None or n >= self.n_batch:
                continue
            if seq.pending:
                chunk = seq.pending[: self.n_batch - n]
                seq.pending = seq.pending[len(chunk):]
                last = not seq.pending
            else:
                chunk = [seq.last_token]
                last = True
            for j, token in enumerate(chunk):
                batch.token[n] = token
                batch.pos[n] = seq.n_past + j
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = slot.index
                batch.logits[n] = 0
                n += 1
            seq.n_past += len(chunk)
            slot.tokens.extend(chunk)
            if last:
                batch.logits[n - 1] = 1
                wants.append((seq, n - 1))
        if n == 0:
            return []
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(self.ctx, batch)
        if rc != 0:
            return self._fail_all(f"llama_decode failed with code {rc}")

        out: list[p.Message] = []
        for seq, index in wants:
            token = llama_cpp.llama_sampler_sample(seq.sampler, self.ctx, index)
            out.extend(self._on_token(seq, token))
        return out

    def _on_token(self, seq: Sequence, token: int) -> Iterator[p.Message]:
        now = time.perf_counter_ns()
        if not seq.first_token_ns:
            seq.first_token_ns = now
        if llama_cpp.llama_vocab_is_eog(self.vocab, token):
            yield from self._finish(seq, "stop", now)
            return
        seq.generated.append(token)
        seq.last_token = token
        text = seq.held + seq.decoder.decode(self.piece(token))
        for stop in seq.stops:
            at = text.find(stop)
            if at >= 0:
                seq.held = ""
                if at:
                    yield p.Chunk(seq.request_id, text[:at])
                yield from self._finish(seq, "stop", now, flush=False)
                return
        keep = _held_back(text, seq.stops) if seq.stops else 0
        seq.held = text[len(text) - keep:] if keep else ""
        if len(text) > keep:
            yield p.Chunk(seq.request_id, text[: len(text) - keep])
        if seq.num_predict >= 0 and len(seq.generated) >= seq.num_predict:
            yield from self._finish(seq, "length", now)
        elif seq.n_past + 1 >= self.n_ctx:
            # Context full; shifting the context is the next engine's job.
            yield from self._finish(seq, "length", now)

    def _finish(self, seq: Sequence, reason: str, now: int, *, flush: bool = True
                ) -> Iterator[p.Message]:
        if flush:
            rest = seq.held + seq.decoder.decode(b"", final=True)
            if rest:
                yield p.Chunk(seq.request_id, rest)
        yield p.Done(
            id=seq.request_id,
            done_reason=reason,
            prompt_eval_count=len(seq.prompt),
            prompt_eval_duration=seq.first_token_ns - seq.started_ns,
            eval_count=len(seq.generated),
            eval_duration=max(now - seq.first_token_ns, 0),
            context=seq.prompt + seq.generated,
            cached_tokens=seq.cached,
        )
        self._release(self.slots[seq.slot])

    def _fail_all(self, message: str) -> list[p.Message]:
        out: list[p.Message] = []
        for slot in self.slots:
            if slot.sequence:
                out.append(p.Error(slot.sequence.request_id, message))
                llama_cpp.llama_memory_seq_rm(self.memory, slot.index, -1, -1)
                slot.tokens = []
                self._release(slot)
        return out

    # --- embeddings ---------------------------------------------------------------------------

    def embed(self, request: p.Embed) -> p.Embeddings:
        """Mean-pooled (or model-declared) embeddings, one input per decode."""
        ctx = self._embedding_context()
        n_ctx = llama_cpp.llama_n_ctx(ctx)
        mem = llama_cpp.llama_get_memory(ctx)
        vectors: list[bytes] = []
        total = 0
        batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
        try:
            for text in request.inputs:
                tokens = self.tokenize(text)
                if len(tokens) > n_ctx:
                    if not request.truncate:
                        raise BadRequest("the input length exceeds the context length")
                    tokens = tokens[:n_ctx]
                total += len(tokens)
                for j, token in enumerate(tokens):
                    batch.token[j] = token
                    batch.pos[j] = j
                    batch.n_seq_id[j] = 1
                    batch.seq_id[j][0] = 0
                    batch.logits[j] = 1
                batch.n_tokens = len(tokens)
                if mem:
                    llama_cpp.llama_memory_clear(mem, True)
                rc = llama_cpp.llama_decode(ctx, batch)
                if rc != 0:
                    raise CorralError(f"embedding failed: llama_decode returned {rc}")
                ptr = llama_cpp.llama_get_embeddings_seq(ctx, 0)
                if not ptr:
                    raise CorralError("this model does not produce embeddings")
                values = [float(ptr[i]) for i in range(self.n_embd)]
                if any(math.isnan(v) or math.isinf(v) for v in values):
                    raise CorralError("embedding contains NaN or Inf values")
                if request.normalize:
                    norm = math.sqrt(sum(v * v for v in values)) or 1.0
                    values = [v / norm for v in values]
                vectors.append(array("f", values).tobytes())
        finally:
            llama_cpp.llama_batch_free(batch)
        return p.Embeddings(request.id, vectors, total)

    def _embedding_context(self) -> Any:
        if self._embed_ctx is None:
            cparams = llama_cpp.llama_context_default_params()
            n_ctx = min(self.n_ctx, 8192)
            cparams.n_ctx = n_ctx
            cparams.n_batch = cparams.n_ubatch = n_ctx  # pooling needs the input in one ubatch
            cparams.n_seq_max = 1
            cparams.n_threads = cparams.n_threads_batch = self.n_threads
            cparams.embeddings = True
            if llama_cpp.llama_pooling_type(self.ctx) <= 0:  # none declared: mean-pool
                cparams.pooling_type = 1
            cparams.no_perf = True
            ctx = llama_cpp.llama_init_from_model(self.model, cparams)
            if not ctx:
                raise CorralError("failed to create an embedding context")
            self._embed_ctx = ctx
        return self._embed_ctx

    def close(self) -> None:
        for slot in self.slots:
            self._release(slot)
        llama_cpp.llama_batch_free(self.batch)
        if self._embed_ctx is not None:
            llama_cpp.llama_free(self._embed_ctx)
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)
