"""Embeddings: many inputs packed into one batch, one sequence id each, pooled in llama.cpp.

A separate llama context with `embeddings=True` serves them, created on first use so that models
only used for chat pay nothing. Pooling is what the model declares, or mean pooling for a model
that declares none (a generative model asked for embeddings, as Ollama allows).
"""

from __future__ import annotations

import math
from array import array
from typing import Any

import llama_cpp

from shared.errors import BadRequest, CorralError

MAX_SEQUENCES = 64  # inputs per decode
LLAMA_POOLING_MEAN = 1


class Embedder:
    def __init__(self, model: Any, n_ctx: int, n_threads: int, n_embd: int, *,
                 limit: int | None = None) -> None:
        n_seq = min(MAX_SEQUENCES, llama_cpp.llama_max_parallel_sequences())
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = cparams.n_ubatch = n_ctx  # a pooled sequence must fit one ubatch
        cparams.n_seq_max = n_seq
        cparams.kv_unified = True  # any one input may use the whole context
        cparams.n_threads = cparams.n_threads_batch = n_threads
        cparams.embeddings = True
        cparams.no_perf = True
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            raise CorralError("failed to create an embedding context")
        if llama_cpp.llama_pooling_type(ctx) <= 0:  # none declared: mean-pool instead
            llama_cpp.llama_free(ctx)
            cparams.pooling_type = LLAMA_POOLING_MEAN
            ctx = llama_cpp.llama_init_from_model(model, cparams)
            if not ctx:
                raise CorralError("failed to create an embedding context")
        self.ctx = ctx
        self.n_ctx = llama_cpp.llama_n_ctx(ctx)
        # Tokens an input may have: the context as asked (num_ctx), as Ollama counts it, not
        # as llama.cpp rounded it up.
        self.limit = min(limit or self.n_ctx, self.n_ctx)
        vocab = llama_cpp.llama_model_get_vocab(model)
        # A tokenizer that ends each input with a token of its own ([SEP], </s>) keeps it
        # when an input is cut, as Ollama's truncation (of the text, re-tokenized) does.
        self.keeps_end = bool(llama_cpp.llama_vocab_get_add_eos(vocab)
                              or llama_cpp.llama_vocab_get_add_sep(vocab))
        self.n_seq = n_seq
        self.n_embd = n_embd
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.batch = llama_cpp.llama_batch_init(self.n_ctx, 0, 1)

    def embed(self, inputs: list[list[int]], *, truncate: bool, normalize: bool
              ) -> tuple[list[bytes], int]:
        """Float32 vectors (as bytes) for tokenised inputs, and the tokens evaluated."""
        prepared = self.fit(inputs, truncate=truncate)
        vectors: list[bytes] = []
        start = 0
        while start < len(prepared):
            end = self.next_group(prepared, start)
            vectors.extend(self.decode(prepared[start:end], normalize))
            start = end
        return vectors, sum(len(t) for t in prepared)

    def fit(self, inputs: list[list[int]], *, truncate: bool) -> list[list[int]]:
        """Inputs cut to the context (or a 400 without `truncate`)."""
        limit = self.limit
        prepared: list[list[int]] = []
        for tokens in inputs:
            if len(tokens) > limit:
                if not truncate:
                    raise BadRequest("the input length exceeds the context length")
                tokens = tokens[:limit - 1] + tokens[-1:] if self.keeps_end and limit > 1 \
                    else tokens[:limit]
            prepared.append(tokens)
        return prepared

    def next_group(self, prepared: list[list[int]], start: int, max_tokens: int | None = None
                   ) -> int:
        """Where the group of inputs from `start` ends: packed until the batch, the sequence
        ids or `max_tokens` run out, but always at least one input (an input cannot be split:
        it is pooled within one batch)."""
        limit = self.n_ctx if max_tokens is None else min(max_tokens, self.n_ctx)
        end, used = start, 0
        while end < len(prepared) and end - start < self.n_seq and \
                (end == start or used + len(prepared[end]) <= limit):
            used += len(prepared[end])
            end += 1
        return end

    def decode(self, group: list[list[int]], normalize: bool) -> list[bytes]:
        batch, n = self.batch, 0
        for seq_id, tokens in enumerate(group):
            for pos, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = pos
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq_id
                batch.logits[n] = 1
                n += 1
        batch.n_tokens = n
        if self.memory:
            llama_cpp.llama_memory_clear(self.memory, True)
        rc = llama_cpp.llama_decode(self.ctx, batch)
        if rc != 0:
            raise CorralError(f"embedding failed: llama_decode returned {rc}")
        out: list[bytes] = []
        for seq_id in range(len(group)):
            ptr = llama_cpp.llama_get_embeddings_seq(self.ctx, seq_id)
            if not ptr:
                raise CorralError("this model does not produce embeddings")
            values = array("f", ptr[: self.n_embd])
            if any(math.isnan(v) or math.isinf(v) for v in values):
                raise CorralError("embedding contains NaN or Inf values")
            if normalize:
                norm = math.sqrt(math.fsum(v * v for v in values)) or 1.0
                values = array("f", (v / norm for v in values))
            out.append(values.tobytes())
        return out

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
