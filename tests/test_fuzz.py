"""A short schemathesis run against a live server (the long one is in `make soak`), and the
hooks that keep its requests small."""

from __future__ import annotations

import pytest

from tests.fuzz import hooks
from tests.fuzz.__main__ import run


def test_bound_keeps_requests_small_and_shaped() -> None:
    bodies = [{"model": f"m{i}", "prompt": "x" * 10_000, "keep_alive": 0,
               "options": {"num_ctx": 10**9, "num_predict": 10**6, "temperature": "hot"}}
              for i in range(40)]
    bounded = [hooks.bound("/api/generate", body) for body in bodies]
    assert all(len(b["prompt"]) == hooks.MAX_TEXT and "keep_alive" not in b for b in bounded)
    assert all(b["options"] == {"num_predict": hooks.MAX_TOKENS, "temperature": "hot"}
               for b in bounded)  # a wrong type stays: the server must refuse it
    named = sum(b["model"] == hooks.MODEL for b in bounded)
    assert 20 <= named < 40  # most name the real model, some keep their own
    chat = hooks.bound("/v1/chat/completions", {"model": "x", "messages": [], "n": 7,
                                                "max_tokens": 500, "num_gpu": 3})
    assert chat["n"] == 2 and chat["max_tokens"] == hooks.MAX_TOKENS and "num_gpu" not in chat


@pytest.mark.e2e
def test_short_fuzz_run_finds_no_failure(tmp_path) -> None:  # noqa: ANN001
    """No 5xx, and every status, content type and body as /openapi.json documents it."""
    assert run(max_examples=4, max_time=60, seed=1, log=tmp_path / "serve.log") == 0, \
        (tmp_path / "serve.log").read_text()[-5000:]
