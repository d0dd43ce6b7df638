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
