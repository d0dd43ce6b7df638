"""Replies read whole: their chunks are held back and sent as one Chunk just before Done."""

from __future__ import annotations

from runner.process.wholereply import WholeReplies
from shared import protocol as p


def _done(rid: int) -> p.Done:
    return p.Done(rid, "stop", 3, 10, 2, 20)


def test_a_whole_reply_comes_as_one_chunk_before_done_and_others_pass_through() -> None:
    whole = WholeReplies()
    whole.start(1)
    lp = [{"token": "a", "logprob": -0.1, "bytes": [97], "top_logprobs": []}]
    assert whole.route([p.Chunk(1, "He", lp), p.Chunk(2, "x")]) == [p.Chunk(2, "x")]
    assert whole.route([p.Chunk(1, "llo", lp), p.Chunk(1, "", lp)]) == []
    out = whole.route([p.Chunk(2, "y"), _done(1)])
    assert out[0] == p.Chunk(2, "y")
    assert out[1] == p.Chunk(1, "Hello", lp * 3)  # every token's logprobs, in order
    assert isinstance(out[2], p.Done) and out[2].id == 1
    assert len(out[2].token_gaps) == 1 and out[2].token_gaps[0] >= 0  # two pieces of text
    assert whole.route([p.Chunk(1, "late")]) == [p.Chunk(1, "late")]  # no longer held


def test_an_error_or_a_cancel_drops_what_was_held() -> None:
    whole = WholeReplies()
    whole.start(1)
    whole.start(2)
    whole.route([p.Chunk(1, "a"), p.Chunk(2, "b")])
    assert whole.route([p.Error(1, "boom")]) == [p.Error(1, "boom")]
    whole.drop(2)
    assert whole.route([_done(2)]) == [_done(2)]  # nothing held for it any more


def test_a_reply_without_text_has_no_chunk() -> None:
    whole = WholeReplies()
    whole.start(5)
    assert whole.route([_done(5)]) == [_done(5)]
