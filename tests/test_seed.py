"""The layout a seeded prompt is read in (runner/process/engine.py): chunks aligned to positions,
the last token alone, and reuse of a cache only as far as it was read that way. The e2e check that a
seed reproduces its text is
`test_api_openai.py::test_a_seed_reproduces_its_text_streamed_or_not`."""

from __future__ import annotations

from runner.process.engine import SEEDED_CHUNK, seeded_chunk, seeded_keep

C = SEEDED_CHUNK


def chunks(n_prompt: int, keep: int = 0) -> list[tuple[int, int]]:
    out, past = [], keep
    while past < n_prompt:
        take = seeded_chunk(past, n_prompt - past)
        out.append((past, past + take))
        past += take
    return out


def test_a_cold_prompt_is_read_in_aligned_chunks_then_its_last_token_alone() -> None:
    n = 2 * C + 10
    assert chunks(n) == [(0, C), (C, 2 * C), (2 * C, n - 1), (n - 1, n)]
    assert chunks(C + 1) == [(0, C), (C, C + 1)]
    assert chunks(5) == [(0, 4), (4, 5)]
    assert chunks(1) == [(0, 1)]


def test_reuse_is_cut_back_to_what_was_read_in_the_seeded_layout() -> None:
    n = 2 * C + 10
    # The same prompt read in the seeded layout: all but the last token, which is read again.
    assert seeded_keep(n - 1, n - 1, n) == n - 1
    # A cache written in another layout (canonical 0) is read again from the start.
    assert seeded_keep(n - 1, 0, n) == 0
    # Another prompt sharing a start: whole chunks only, since the partial chunk at the end of
    # that prompt was a batch of another size.
    assert seeded_keep(2 * C + 3, 2 * C + 7, n) == 2 * C
    assert seeded_keep(C - 1, n - 1, n) == 0
    # Reading on from a kept boundary continues the cold run's chunks exactly.
    assert chunks(n, keep=seeded_keep(2 * C + 3, 2 * C + 7, n)) == chunks(n)[2:]
