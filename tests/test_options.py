"""Options: Ollama's defaults, precedence, type errors, and the load-time subset."""

from __future__ import annotations

import pytest

from gateway.options import check_options, load_request, merge_options, sampling_options
from shared.config import Settings
from shared.errors import BadRequest


def test_defaults_then_model_then_request() -> None:
    merged = merge_options({"temperature": 1.0, "top_k": 64, "stop": ["<end_of_turn>"]},
                           check_options({"temperature": 0, "seed": 3}))
    assert merged["temperature"] == 0.0 and merged["top_k"] == 64 and merged["seed"] == 3
    assert merged["top_p"] == 0.9 and merged["repeat_penalty"] == 1.0
    assert merged["stop"] == ["<end_of_turn>"]


def test_types_are_checked_and_numbers_coerced() -> None:
    assert check_options({"num_predict": 5.7, "top_p": 1, "stop": "x"}) == {
        "num_predict": 5, "top_p": 1.0, "stop": ["x"]}
    for bad in ({"top_k": "5"}, {"temperature": True}, {"stop": [1]}, {"use_mmap": 1}):
        with pytest.raises(BadRequest, match="must be of type"):
            check_options(bad)
    with pytest.raises(BadRequest):
        check_options(["not", "an", "object"])


def test_numbers_beyond_what_the_types_hold_are_400s() -> None:
    # Found by schemathesis: an integer past int64 got through and failed as a 500 in msgpack.
    assert check_options({"seed": 2**63 - 1, "num_keep": -(2**63)}) == {
        "seed": 2**63 - 1, "num_keep": -(2**63)}
    for bad in ({"repeat_last_n": 505260418152503495884800}, {"seed": 2**63},
                {"top_k": 1e300}, {"temperature": 10**400}):
        with pytest.raises(BadRequest, match="must be of type"):
            check_options(bad)


def test_unknown_options_are_ignored() -> None:
    assert check_options({"mirostat": 2, "temperature": 0.1}) == {"temperature": 0.1}


def test_load_request_context_length() -> None:
    options = merge_options({}, {})
    assert load_request("/m", options, Settings.from_env({}), 32768).num_ctx == 4096
    env = Settings.from_env({"OLLAMA_CONTEXT_LENGTH": "65536", "OLLAMA_NUM_PARALLEL": "2"})
    load = load_request("/m", options, env, 32768)
    assert load.num_ctx == 32768  # clamped to the trained context
    assert load.parallel == 0  # the supervisor decides (OLLAMA_NUM_PARALLEL is its input)
    assert load_request("/m", merge_options({}, {"num_parallel": 2}), env, 0).parallel == 2
    load = load_request("/m", merge_options({}, {"num_ctx": 1024}), env, 32768)
    assert load.num_ctx == 1024
    cpu = load_request("/m", options, Settings.from_env({"OLLAMA_LLM_LIBRARY": "cpu"}), 0)
    assert cpu.num_gpu == 0


def test_sampling_options_leave_out_load_options() -> None:
    sampling = sampling_options(merge_options({}, {"num_ctx": 100, "top_k": 3}))
    assert "num_ctx" not in sampling and "num_batch" not in sampling and sampling["top_k"] == 3
