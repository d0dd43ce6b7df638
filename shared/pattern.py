"""GBNF for a JSON schema's `pattern`: the strings the grammar lets the model write all match
the regular expression (they are a subset of its matches: only characters JSON writes without
an escape, so `\\s` is a space). A construct the grammar cannot hold raises PatternError, which
the caller answers with a 400 naming the keyword.

Supported: literals, `.`, classes (`[a-z0-9_]`, negated `[^,]`), `\\d \\w \\s \\D \\W \\S`,
escaped punctuation, groups (`(...)`, `(?:...)`), `|`, the quantifiers `? * + {m} {m,} {m,n}`,
and `^`/`$` at the ends (without them the match may sit anywhere in the string, as JSON Schema
reads a pattern). Not: lookarounds, backreferences, word boundaries, lazy quantifiers, flags.
"""

from __future__ import annotations

# Characters JSON writes inside a string without an escape (what the model may write here).
_ANY = r'[^"\\\x00-\x1F\x7F]'
_CLASSES = {"d": "0-9", "w": "a-zA-Z0-9_", "s": " "}
_SPECIAL = set("\\^$.|?*+()[]{}")


class PatternError(ValueError):
    pass


def pattern_rule(pattern: str) -> str:
    """The GBNF of a JSON string (quotes included) whose content matches `pattern`."""
    parser = _Parser(pattern)
    start = parser.take("^")
    body = parser.alternatives()
    end = parser.take("$")
    if not parser.done():
        raise PatternError(f"unsupported syntax at {parser.at()}")
    parts = ['"\\""', "" if start else _ANY + "*", body, "" if end else _ANY + "*", '"\\""']
    return " ".join(part for part in parts if part)


class _Parser:
    def __init__(self, pattern: str) -> None:
        self.text = pattern
        self.i = 0

    def done(self) -> bool:
        return self.i == len(self.text)

    def at(self) -> str:
        return f"position {self.i} ({self.text[self.i:self.i + 8]!r})"

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def take(self, char: str) -> bool:
        if self.peek() == char:
            self.i += 1
            return True
        return False

    def alternatives(self) -> str:
        options = [self.sequence()]
        while self.take("|"):
            options.append(self.sequence())
        return options[0] if len(options) == 1 else "(" + " | ".join(options) + ")"

    def sequence(self) -> str:
        items: list[str] = []
        while not self.done() and self.peek() not in "|)":
            if self.peek() == "$" and self.i == len(self.text) - 1:
                break  # the end anchor: pattern_rule takes it
            items.append(self.quantified(self.atom()))
        return " ".join(items) if items else '""'

    def atom(self) -> str:
        char = self.peek()
        if char == "(":
            self.i += 1
            if self.take("?") and not self.take(":"):
                raise PatternError(f"unsupported group (lookaround, named group or flags) at "
                                   f"{self.at()}")
            inner = self.alternatives()
            if not self.take(")"):
                raise PatternError("unbalanced parentheses")
            return f"({inner})"
        if char == "[":
            return self.char_class()
        if char == ".":
            self.i += 1
            return _ANY
        if char == "\\":
            return self.escape(in_class=False)
        if char in "^$":
            raise PatternError(f"an anchor inside the pattern at {self.at()}")
        if char in "?*+{})]":
            raise PatternError(f"a quantifier or bracket with nothing before it at {self.at()}")
        self.i += 1
        return _literal(char)

    def escape(self, *, in_class: bool) -> str:
        self.i += 1
        char = self.peek()
        if not char:
            raise PatternError("a pattern ending in a backslash")
        self.i += 1
        if char.lower() in _CLASSES:
            ranges = _CLASSES[char.lower()]
            if in_class:
                if char.isupper():
                    raise PatternError(f"\\{char} inside a character class")
                return ranges
            return f"[^{ranges}\"\\\\\\x00-\\x1F\\x7F]" if char.isupper() else f"[{ranges}]"
        if char in _SPECIAL or char in "-/ ,:;!@#%&=<>'~`":
            return _class_char(char) if in_class else _literal(char)
        raise PatternError(f"unsupported escape \\{char}")

    def char_class(self) -> str:
        self.i += 1
        negated = self.take("^")
        items: list[str] = []
        first = True
        while first or self.peek() != "]":
            first = False
            if self.done():
                raise PatternError("unbalanced square brackets")
            if self.peek() == "\\":
                items.append(self.escape(in_class=True))
                continue
            low = self.text[self.i]
            self.i += 1
            if self.peek() == "-" and self.i + 1 < len(self.text) and self.text[self.i + 1] != "]":
                self.i += 1
                high = self.text[self.i]
                self.i += 1
                if high == "\\" or ord(high) < ord(low):
                    raise PatternError(f"unsupported range {low}-{high}")
                items.append(_class_char(low) + "-" + _class_char(high))
            else:
                items.append(_class_char(low))
        self.i += 1
        body = "".join(items)
        if negated:
            return f'[^{body}"\\\\\\x00-\\x1F\\x7F]'
        return f"[{body}]"  # (_class_char let in only characters JSON writes unescaped)

    def quantified(self, atom: str) -> str:
        char = self.peek()
        if char in ("?", "*", "+"):
            self.i += 1
            suffix = char
        elif char == "{":
            end = self.text.find("}", self.i)
            counts = [c.strip() for c in self.text[self.i + 1:end].split(",")] if end > 0 else []
            valid = len(counts) == 1 and counts[0].isdigit() or len(counts) == 2 and \
                counts[0].isdigit() and (counts[1].isdigit() or not counts[1])
            if not valid:
                raise PatternError(f"unsupported quantifier at {self.at()}")
            self.i = end + 1
            suffix = "{" + ",".join(counts) + "}"
        else:
            return atom
        if self.peek() in ("?", "+"):
            raise PatternError(f"lazy or possessive quantifiers at {self.at()}")
        return f"({atom}){suffix}"


def _literal(char: str) -> str:
    if char in '"\\' or ord(char) < 0x20 or char == "\x7f":
        raise PatternError(f"a character JSON must escape ({char!r})")
    return f'"{char}"'


def _class_char(char: str) -> str:
    if char in '"\\' or ord(char) < 0x20 or char == "\x7f":
        raise PatternError(f"a character JSON must escape ({char!r}) in a character class")
    return "\\" + char if char in "]^-[" else char
