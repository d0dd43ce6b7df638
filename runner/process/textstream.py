"""Incremental detokenised text for one sequence: UTF-8 safe and stop-string aware.

Each token's bytes go through an incremental UTF-8 decoder (a character split across tokens is
held until complete). Text that could still be the start of a stop string is held back, so a stop
string never reaches the client; when one completes, the text before it is the last to go out.

A special (control) token has no text of its own to send, but a stop string may name it
(`<|start_header_id|>`, `[INST]`, `<|im_start|>`, `<start_of_turn>`: what families' Modelfiles
stop on), so its text is pushed as *hidden*: it takes part in stop matching, as in Ollama's
decoding, and is never sent.
"""

from __future__ import annotations

import codecs

# Spans [start, end) of hidden text within a string.
Spans = list[tuple[int, int]]


def _visible(text: str, spans: Spans, end: int) -> str:
    """text[:end] without the hidden spans."""
    if not spans:
        return text[:end]
    out, at = [], 0
    for start, stop in spans:
        if start >= end:
            break
        out.append(text[at:start])
        at = min(stop, end)
    if at < end:
        out.append(text[at:end])
    return "".join(out)


def _tail_spans(spans: Spans, cut: int) -> Spans:
    """The spans of text[cut:], re-based to it."""
    return [(max(start, cut) - cut, stop - cut) for start, stop in spans if stop > cut]


class TextStream:
    __slots__ = ("_decoder", "_held", "_spans", "_stops", "dropped")

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._held = ""
        self._spans: Spans = []  # hidden text within _held
        self._stops = tuple(s for s in stops if s)
        # The visible text a matched stop string cut off (the stop and anything after it), so
        # that the caller can drop what belonged to it too (the swallowed tokens' logprobs).
        self.dropped = ""

    def push(self, piece: bytes, hidden: str = "") -> tuple[str, bool]:
        """Add one token: its bytes, or for a special token its `hidden` text (matched against
        the stop strings, never sent). Returns (text safe to send now, whether a stop hit)."""
        if hidden:
            if not self._stops:
                return "", False
            spans = [*self._spans, (len(self._held), len(self._held) + len(hidden))]
            text = self._held + hidden
        else:
            spans = self._spans
            text = self._held + self._decoder.decode(piece)
        if not self._stops:
            self._held = ""
            return text, False
        # `text` is only the held-back tail plus this piece: earlier text had no match.
        hits = [at for at in (text.find(stop) for stop in self._stops) if at >= 0]
        if hits:
            cut = min(hits)
            self._held, self._spans = "", []
            self.dropped = _visible(text[cut:], _tail_spans(spans, cut), len(text) - cut)
            return _visible(text, spans, cut), True
        cut = len(text) - self._held_back(text)
        self._held, self._spans = text[cut:], _tail_spans(spans, cut)
        return _visible(text, spans, cut), False

    def flush(self) -> str:
        """Whatever visible text is held back, at the end of the sequence."""
        rest = _visible(self._held, self._spans, len(self._held))
        rest += self._decoder.decode(b"", final=True)
        self._held, self._spans = "", []
        return rest

    def _held_back(self, text: str) -> int:
        """How many trailing characters could still grow into a stop string."""
        keep = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(text)), keep, -1):
                if text.endswith(stop[:k]):
                    keep = k
                    break
        return keep
