"""Incremental detokenisation: stop strings across tokens, UTF-8 split across tokens."""

from __future__ import annotations

from runner.process.textstream import TextStream


def feed(stream: TextStream, pieces: list[bytes]) -> tuple[str, bool]:
    out, stopped = [], False
    for piece in pieces:
        text, stopped = stream.push(piece)
        out.append(text)
        if stopped:
            break
    else:
        out.append(stream.flush())
    return "".join(out), stopped


def test_no_stops_passes_text_through() -> None:
    assert feed(TextStream(()), [b"Hello", b" world"]) == ("Hello world", False)


def test_stop_string_split_across_tokens_is_never_sent() -> None:
    stream = TextStream(("<end_of_turn>",))
    sent = []
    for piece in [b"Hi", b" there<end", b"_of", b"_turn>", b"more"]:
        text, stopped = stream.push(piece)
        sent.append(text)
        if stopped:
            break
    assert "".join(sent) == "Hi there"
    assert all("<" not in s for s in sent)
    assert stopped


def test_held_text_that_was_not_a_stop_is_released() -> None:
    stream = TextStream(("STOP",))
    first, _ = stream.push(b"a ST")
    assert first == "a "  # "ST" might begin "STOP"
    second, stopped = stream.push(b"ORM")
    assert second == "STORM" and not stopped


def test_flush_releases_a_held_prefix_at_the_end() -> None:
    assert feed(TextStream(("STOP",)), [b"ends with ST"]) == ("ends with ST", False)


def test_multibyte_character_split_across_tokens() -> None:
    snowman = "☃".encode()
    stream = TextStream(())
    assert stream.push(snowman[:1]) == ("", False)
    assert stream.push(snowman[1:] + b"!") == ("☃!", False)


def test_earliest_of_several_stops_wins() -> None:
    assert feed(TextStream(("\n\n", "END")), [b"one END two\n\nthree"]) == ("one ", True)


# --- special tokens: matched by stop strings, never sent (issue 26) ---------------------------


def test_stop_naming_a_special_token_fires_on_it() -> None:
    stream = TextStream(("<|start_header_id|>",))
    assert stream.push(b"Hi") == ("Hi", False)
    text, stopped = stream.push(b"", hidden="<|start_header_id|>")
    assert (text, stopped) == ("", True)


def test_special_tokens_are_never_sent() -> None:
    stream = TextStream(("STOP",))
    sent = [stream.push(b"a"), stream.push(b"", hidden="<|eom|>"), stream.push(b"b")]
    assert "".join(t for t, _ in sent) + stream.flush() == "ab"
    assert TextStream(()).push(b"", hidden="<|im_start|>") == ("", False)


def test_stop_spanning_a_special_token_and_text() -> None:
    # a stop string made of a special token and the plain text after it
    stream = TextStream(("<|im_start|>user",))
    first = stream.push(b"ok")
    second = stream.push(b"", hidden="<|im_start|>")  # held: could start the stop
    assert first == ("ok", False) and second == ("", False)
    assert stream.push(b"user") == ("", True)


def test_held_special_token_that_was_not_a_stop_stays_hidden() -> None:
    stream = TextStream(("<|im_start|>user",))
    out = [stream.push(b"x")[0], stream.push(b"", hidden="<|im_start|>")[0],
           stream.push(b"assistant")[0], stream.flush()]
    assert "".join(out) == "xassistant"


def test_text_after_a_special_token_is_not_dropped_with_it() -> None:
    stream = TextStream(("[INST]",))
    assert stream.push(b"", hidden="<s>") == ("", False)
    assert stream.push(b"Hello [IN") == ("Hello ", False)
    # the held "[IN" was plain text, not the stop: it goes out when the special token stops
    assert stream.push(b"", hidden="[INST]") == ("[IN", True)
    assert stream.dropped == ""
