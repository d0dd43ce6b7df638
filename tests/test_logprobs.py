"""Token log-probabilities without a model: the numpy maths and the stop-string bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest

from runner.process.engine import _drop_swallowed
from runner.process.sampling import token_logprobs
from runner.process.textstream import TextStream
from shared.protocol import MAX_TOP_LOGPROBS


def reference(logits: np.ndarray) -> np.ndarray:
    """A plain float64 log-softmax to check against."""
    wide = logits.astype(np.float64)
    shifted = wide - wide.max()
    return shifted - np.log(np.exp(shifted).sum())


@pytest.mark.parametrize("offset", [0.0, 1e4, -1e4])  # huge logits must not overflow exp
def test_logprobs_match_a_float64_log_softmax(offset: float) -> None:
    rng = np.random.default_rng(7)
    logits = (rng.normal(0, 4, 50_000) + offset).astype(np.float32)
    expected = reference(logits)
    for token in rng.integers(0, logits.size, 5):
        chosen, top = token_logprobs(logits, int(token), 5)
        assert chosen == pytest.approx(expected[token], abs=1e-3)
        assert chosen <= 0
        ranking = np.argsort(-expected, kind="stable")[:5]
        assert [t for t, _ in top] == ranking.tolist()
        for t, logprob in top:
            assert logprob == pytest.approx(expected[t], abs=1e-3)


def test_top_list_sorted_and_capped() -> None:
    logits = np.random.default_rng(1).normal(0, 3, 1000).astype(np.float32)
    _, none = token_logprobs(logits, 0, 0)
    assert none == []
    _, top = token_logprobs(logits, 0, 100)
    assert len(top) == MAX_TOP_LOGPROBS
    values = [lp for _, lp in top]
    assert values == sorted(values, reverse=True)
    assert sum(np.exp(values)) <= 1.0 + 1e-6


def test_equal_logits_rank_lower_ids_first_like_greedy() -> None:
    logits = np.zeros(64, dtype=np.float32)
    logits[[40, 9, 23]] = 5.0
    chosen, top = token_logprobs(logits, 9, 3)
    assert [t for t, _ in top] == [9, 23, 40]
    assert chosen == pytest.approx(top[0][1])
    assert int(np.argmax(logits)) == top[0][0]


def entries(*pieces: bytes) -> list[dict]:
    return [{"token": p.decode(), "bytes": list(p)} for p in pieces]


def test_swallowed_tokens_lose_their_entries_and_straddling_ones_keep_them() -> None:
    stream = TextStream(("END",))
    pending = []
    sent = ""
    for piece in (b"ab", b"cEN", b"Dx"):
        pending += entries(piece)
        text, stopped = stream.push(piece)
        sent += text
        if stopped:
            break
    assert stopped and sent == "abc" and stream.dropped == "ENDx"
    _drop_swallowed(pending, len(stream.dropped.encode()))
    # "Dx" lies wholly in the cut; "cEN" put "c" before the stop, so it stays.
    assert [e["token"] for e in pending] == ["ab", "cEN"]


def test_dropping_stops_at_what_is_pending() -> None:
    pending = entries(b"N", b"D")  # "E" went out earlier, with a chunk
    _drop_swallowed(pending, len(b"END"))
    assert pending == []
    kept = entries(b"hello")
    _drop_swallowed(kept, 0)
    assert [e["token"] for e in kept] == ["hello"]
