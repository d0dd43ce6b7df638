"""Word wrapping for streamed model output.

Text arrives in small pieces, so the wrapper keeps the word being typed until it sees where the
word ends; only then can it tell whether the word still fits on the current line.
"""

from __future__ import annotations


class StreamWrapper:
    """Feed text pieces in, get text out with line breaks placed between words."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.col = 0  # characters already written on the current line
        self.word = ""  # the unfinished word, held back

    def _emit_word(self) -> str:
        out = ""
        if self.word:
            if self.col > 0 and self.col + len(self.word) > self.width:
                out = "\n"
                self.col = 0
            out += self.word
            self.col += len(self.word)
            self.word = ""
        return out

    def feed(self, text: str) -> str:
        out: list[str] = []
        for ch in text:
            if ch == "\n":
                out.append(self._emit_word() + "\n")
                self.col = 0
            elif ch in " \t":
                out.append(self._emit_word())
                if self.col + 1 > self.width:
                    # The break replaces the space, so no line starts with a blank.
                    out.append("\n")
                    self.col = 0
                else:
                    out.append(ch)
                    self.col += 1
            else:
                self.word += ch
                if len(self.word) >= self.width:  # a word longer than the line: break it hard
                    out.append(self._emit_word())
        return "".join(out)

    def flush(self) -> str:
        return self._emit_word()


class PassThrough:
    """Same interface as StreamWrapper for when word wrap is off."""

    def feed(self, text: str) -> str:
        return text

    def flush(self) -> str:
        return ""


def make_wrapper(enabled: bool, columns: int) -> StreamWrapper | PassThrough:
    # Leave a small right margin like Ollama; tiny or unknown terminals get no wrapping.
    if enabled and columns >= 10:
        return StreamWrapper(columns - 5)
    return PassThrough()
