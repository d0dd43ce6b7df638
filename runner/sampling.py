"""Per-sequence llama.cpp sampler chains built from Ollama options.

The whole chain runs in C (`llama_sampler_sample`); Python only builds it once per request.
"""

from __future__ import annotations

from typing import Any

import llama_cpp

from shared.errors import BadRequest

LLAMA_DEFAULT_SEED = 0xFFFFFFFF


def build_sampler(options: dict[str, Any], *, n_vocab: int, num_ctx: int, vocab: Any = None,
                  grammar: str | None = None) -> Any:
    """A sampler chain in llama.cpp's usual order: penalties, grammar, top-k, typical, top-p,
    min-p, temperature, then the final pick. The caller frees it with `llama_sampler_free`."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    add = llama_cpp.llama_sampler_chain_add

    last_n = int(options.get("repeat_last_n", 64))
    if last_n < 0:
        last_n = num_ctx
    repeat = float(options.get("repeat_penalty", 1.0))
    frequency = float(options.get("frequency_penalty", 0.0))
    presence = float(options.get("presence_penalty", 0.0))
    if last_n and (repeat != 1.0 or frequency or presence):
        add(chain, _penalties(n_vocab, last_n, repeat, frequency, presence))
    if grammar:
        constraint = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        if not constraint:
            llama_cpp.llama_sampler_free(chain)
            raise BadRequest("the format's grammar could not be parsed")
        add(chain, constraint)

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
    # 0.3.36's binding may or may not take n_vocab first, depending on the build; ask it.
    init = llama_cpp.llama_sampler_init_penalties
    if len(init.argtypes or ()) == 5:
        return init(n_vocab, last_n, repeat, frequency, presence)
    return init(last_n, repeat, frequency, presence)


def uses_penalties(options: dict[str, Any]) -> bool:
    return bool(options.get("repeat_last_n", 64)) and (
        float(options.get("repeat_penalty", 1.0)) != 1.0
        or bool(options.get("frequency_penalty", 0.0))
        or bool(options.get("presence_penalty", 0.0))
    )
