"""The kept tokens of a text far longer than the context, from its two ends only.

A prompt too long for the context is cut to its first `num_keep` tokens and its newest ones
(Engine._truncate). For a text hundreds of times longer than the context, tokenizing all of it
to throw almost all of it away is what made a 10 MB prompt take a minute. Both kept parts can
be read off the text's ends: tokens only ever span a few dozen bytes (48 at most in Gemma's
vocabulary), so a cut far from the kept tokens does not change them. Each end is tokenized with
MARGIN tokens to spare, and the tokens next to the cut are dropped.
"""

from __future__ import annotations

from collections.abc import Callable

# Bytes no token of any vocabulary we know spans (Gemma's longest: 48). A text with more
# characters than this per context token cannot fit the context.
MAX_TOKEN_CHARS = 128
# Tokens tokenized past each cut and dropped: those the cut can change.
MARGIN = 64

Tokenize = Callable[..., list[int]]  # (text, add_special=...) -> token ids


def is_long(text: str, n_ctx: int) -> bool:
    """Whether `text` is surely longer than the context, by far enough to cut it from its ends."""
    return len(text) > 4 * MAX_TOKEN_CHARS * n_ctx


def kept_tokens(tokenize: Tokenize, text: str, num_keep: int, keep_tail: int) -> list[int]:
    """The first `num_keep` tokens of `text` (BOS included, as the tokenizer adds it) and its
    last `keep_tail`, as tokenizing the whole text and cutting it would give. For texts that
    `is_long`."""
    head = tokenize(text[: (num_keep + MARGIN) * MAX_TOKEN_CHARS])[:num_keep] if num_keep else []
    tail = tokenize(text[-(keep_tail + MARGIN) * MAX_TOKEN_CHARS:], add_special=False)
    return head + tail[-keep_tail:]
