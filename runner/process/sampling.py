"""Per-sequence sampling: a llama.cpp sampler chain built from Ollama options, plus a grammar.

Without a grammar, one `llama_sampler_sample` call does everything in C. With a grammar (format
"json" or a schema) checking the grammar against every token of a 262k vocabulary would cost more
than the decode itself, so we do what llama.cpp's own server does: sample without the grammar,
test just that token against it, and only when it is rejected apply the grammar to the full
vocabulary and sample again.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import llama_cpp
import numpy as np

from shared.errors import BadRequest
from shared.protocol import MAX_TOP_LOGPROBS

LLAMA_DEFAULT_SEED = 0xFFFFFFFF
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


def uses_penalties(options: dict[str, Any]) -> bool:
    return bool(options.get("repeat_last_n", 64)) and (
        float(options.get("repeat_penalty", 1.0)) != 1.0
        or bool(options.get("frequency_penalty", 0.0))
        or bool(options.get("presence_penalty", 0.0))
    )


def build_chain(options: dict[str, Any], *, n_vocab: int, num_ctx: int) -> Any:
    """A chain in llama.cpp's usual order: penalties, top-k, typical, top-p, min-p, temperature,
    then the final pick (greedy at temperature 0)."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    add = llama_cpp.llama_sampler_chain_add

    last_n = int(options.get("repeat_last_n", 64))
    if last_n < 0:
        last_n = num_ctx
    if uses_penalties(options):
        add(chain, _penalties(n_vocab, last_n, float(options.get("repeat_penalty", 1.0)),
                              float(options.get("frequency_penalty", 0.0)),
                              float(options.get("presence_penalty", 0.0))))

    temperature = float(options.get("temperature", 0.8))
    if temperature <= 0:
        add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    top_k = int(options.get("top_k", 40))
    if top_k > 0:
        add(chain, llama_cpp.llama_sampler_init_top_k(top_k))
    typical_p = float(options.get("typical_p", 1.0))
    if 0 < typical_p < 1:
        add(chain, llama_cpp.llama_sampler_init_typical(typical_p, 1))
    top_p = float(options.get("top_p", 0.9))
    if 0 < top_p < 1:
        add(chain, llama_cpp.llama_sampler_init_top_p(top_p, 1))
    min_p = float(options.get("min_p", 0.0))
    if min_p > 0:
        add(chain, llama_cpp.llama_sampler_init_min_p(min_p, 1))
    add(chain, llama_cpp.llama_sampler_init_temp(temperature))
    seed = int(options.get("seed", -1))
    add(chain, llama_cpp.llama_sampler_init_dist(seed if seed >= 0 else LLAMA_DEFAULT_SEED))
    return chain


def _penalties(n_vocab: int, last_n: int, repeat: float, frequency: float, presence: float) -> Any:
    # Some builds of the binding take n_vocab first, others not; ask it.
    init = llama_cpp.llama_sampler_init_penalties
    if len(init.argtypes or ()) == 5:
        return init(n_vocab, last_n, repeat, frequency, presence)
    return init(last_n, repeat, frequency, presence)


class Sampler:
    """The sampling state of one sequence. Call `free()` when the sequence ends."""

    def __init__(self, options: dict[str, Any], *, vocab: Any, n_vocab: int, num_ctx: int,
                 grammar: str | None = None) -> None:
        self.n_vocab = n_vocab
        self.grammar: Any = None
        if grammar:
            self.grammar = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
            if not self.grammar:
                raise BadRequest("the format's grammar could not be parsed")
        self.chain = build_chain(options, n_vocab=n_vocab, num_ctx=num_ctx)
        if self.grammar is not None:
            self._candidates = np.zeros(n_vocab, dtype=_TOKEN_DATA)
            self._ids = np.arange(n_vocab, dtype="<i4")
            self._array = llama_cpp.llama_token_data_array(
                self._candidates.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)),
                n_vocab, -1, False)
            self._one = np.zeros(1, dtype=_TOKEN_DATA)
            self._one_array = llama_cpp.llama_token_data_array(
                self._one.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)), 1, -1, False)

    def accept_prompt(self, tokens: list[int]) -> None:
        """Feed prompt tokens to the penalty window (the grammar only sees generated text)."""
        for token in tokens:
            llama_cpp.llama_sampler_accept(self.chain, token)

    def sample(self, ctx: Any, index: int) -> int:
        if self.grammar is None:
            return llama_cpp.llama_sampler_sample(self.chain, ctx, index)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index),
                                       shape=(self.n_vocab,))
        token = self._pick(logits, with_grammar=False)
        if not self._grammar_allows(token):
            token = self._pick(logits, with_grammar=True)
        llama_cpp.llama_sampler_accept(self.chain, token)
        llama_cpp.llama_sampler_accept(self.grammar, token)
        return token

    def _pick(self, logits: np.ndarray, *, with_grammar: bool) -> int:
        candidates = self._candidates
        candidates["id"] = self._ids  # samplers sort and shrink the array in place
        candidates["logit"] = logits
        candidates["p"] = 0.0
        array = self._array
        array.size, array.selected, array.sorted = self.n_vocab, -1, False
        ref = ctypes.byref(array)
        if with_grammar:
            llama_cpp.llama_sampler_apply(self.grammar, ref)
        llama_cpp.llama_sampler_apply(self.chain, ref)
        return int(candidates["id"][array.selected])

    def _grammar_allows(self, token: int) -> bool:
        self._one["id"], self._one["logit"], self._one["p"] = token, 1.0, 0.0
        one = self._one_array
        one.size, one.selected, one.sorted = 1, -1, False
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(one))
        return not math.isinf(float(self._one["logit"][0]))

    def free(self) -> None:
        llama_cpp.llama_sampler_free(self.chain)
        if self.grammar is not None:
            llama_cpp.llama_sampler_free(self.grammar)


def token_logprobs(logits: np.ndarray, token: int, k: int) -> tuple[float, list[tuple[int, float]]]:
    """The log-probability of `token` under softmax(logits), and the k most likely tokens with
    theirs, most likely first (equal logits: lower id first, as greedy picks).

    Computed from the raw logits, before penalties, temperature or truncation: what the model
    itself thought, as OpenAI and Ollama report it.
    """
    top = float(logits.max())
    # log-sum-exp with the max taken out, so nothing overflows; summed in float64.
    log_total = top + math.log(float(np.exp(logits - top).sum(dtype=np.float64)))
    chosen = min(float(logits[token]) - log_total, 0.0)
    k = min(k, MAX_TOP_LOGPROBS, logits.shape[0])
    if k <= 0:
        return chosen, []
    ids = np.argpartition(logits, -k)[-k:]
    ids = ids[np.lexsort((ids, -logits[ids]))]  # by logit descending, then id
    return chosen, [(int(i), min(float(logits[i]) - log_total, 0.0)) for i in ids]
