"""The gateway/runner wire format round-trips every message type."""

from __future__ import annotations

import pytest

from shared import protocol as p

MESSAGES = [
    p.Load("/m.gguf", 4096, 512, -1, 0, True, 0, 2, None, "q8_0"),
    p.Generate(7, None, [{"role": "user", "content": "hi"}], {"temperature": 0.0}, False, [1, 2]),
    p.Generate(11, "x", None, {}, True, None, "json", False, tools=[{"type": "function"}],
               grammar='root ::= "a"', logprobs=3),
    p.Cancel(7),
    p.Embed(8, ["a", "b"], True, False),
    p.Tokenize(9, "text", False),
    p.Health(10),
    p.Shutdown(),
    p.SetThreads(2),
    p.Ready(123, 4096, 32768, 1, 10, 20, "cpu"),
    p.Chunk(7, "héllo"),
    p.Chunk(11, "a", [{"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": []}]),
    p.Done(7, "stop", 5, 100, 3, 200, [1, 2, 3], 2),
    p.Error(7, "boom", 400),
    p.Embeddings(8, [b"\x00\x00\x80?"], 3),
    p.Tokens(9, [1, 2]),
    p.HealthReply(10, 1, 0),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: p.Message) -> None:
    assert p.decode(p.encode(message)) == message


def test_tags_are_unique() -> None:
    tags = {type(m): type(m).TAG for m in MESSAGES}  # one per class
    assert len(set(tags.values())) == len(tags)


def test_request_id() -> None:
    assert p.request_id(p.Chunk(5, "x")) == 5
    assert p.request_id(p.Shutdown()) == 0


def test_unknown_tag_is_rejected() -> None:
    with pytest.raises(ValueError):
        p.decode(b"\x92\x7f\x00")  # [127, 0]


def test_token_chunks_stay_small() -> None:
    assert len(p.encode(p.Chunk(123456, " the"))) < 16


def test_a_step_goes_as_one_frame_and_comes_back_in_order() -> None:
    entry = {"token": " a", "logprob": -1.0, "bytes": [32, 97], "top_logprobs": []}
    step = [p.Chunk(1, " the"), p.Chunk(2, " a", [entry]),
            p.Done(3, "length", 4, 10, 2, 20, [1, 2], token_gaps=[900, 1100]), p.Error(4, "x")]
    frame = p.encode_many(step)
    assert p.decode_many(frame) == step
    with pytest.raises(ValueError):
        p.decode(frame)  # a batch is opened only by decode_many
    # A step with one message sends it as itself, which the plain decoder reads too.
    assert p.decode_many(p.encode_many([p.Chunk(1, "x")])) == [p.Chunk(1, "x")]
    assert p.decode(p.encode_many([p.Chunk(1, "x")])) == p.Chunk(1, "x")


def test_an_unknown_tag_inside_a_batch_is_rejected() -> None:
    with pytest.raises(ValueError):
        p.decode_many(b"\x92\x1b\x91\x91\x7f")  # [27, [[127]]]
