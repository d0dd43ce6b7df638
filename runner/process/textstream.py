"""Incremental detokenised text for one sequence: UTF-8 safe and stop-string aware.

Each token's bytes go through an incremental UTF-8 decoder (a character split across tokens is
held until complete). Text that could still be the start of a stop string is held back, so a stop
string never reaches the client; when one completes, the text before it is the last to go out.
"""

from __future__ import annotations

import codecs


class TextStream:
    __slots__ = ("_decoder", "_held", "_stops", "dropped", "stop")

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._held = ""
        self._stops = tuple(s for s in stops if s)
        # The text a matched stop string cut off (the stop and anything after it), so that the
        # caller can drop what belonged to it too (the swallowed tokens' logprobs).
        self.dropped = ""
        self.stop = ""  # the stop string that matched, once one has

    def push(self, piece: bytes) -> tuple[str, bool]:
        """Add one token's bytes; returns (text safe to send now, whether a stop string hit)."""
        text = self._held + self._decoder.decode(piece)
        if not self._stops:
            self._held = ""
            return text, False
        # `text` is only the held-back tail plus this piece: earlier text had no match.
        hits = [(at, stop) for stop in self._stops if (at := text.find(stop)) >= 0]
        if hits:
            at, self.stop = min(hits, key=lambda hit: hit[0])
            self._held = ""
            self.dropped = text[at:]
            return text[:at], True
        keep = self._held_back(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """Whatever is held back, at the end of the sequence."""
        rest = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
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
