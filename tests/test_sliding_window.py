"""Sliding-window caches (`swa_full = false`) with prefix reuse kept: a cut further back than the
window a slot's cache still holds takes a checkpoint of its sliding-window state
(runner/process/engine.py), from the slot or from the prompt cache, and writes what a cold read
writes (greedy); where no checkpoint reaches, the prompt is read again from the start."""

from __future__ import annotations

import llama_cpp
import pytest

from shared import protocol as p

GREEDY = {"temperature": 0, "num_predict": 12}
_ids = iter(range(1, 10**9))

# Gemma 3's window is 512 tokens; with micro-batches of 256 each slot's sliding-window cache
# holds 768 positions, so a slot that has read A + X (over 800 tokens) no longer holds the window
# before the end of A.
A = " ".join(f"Ledger line {i}: the mill paid {i * 7 % 13} coins." for i in range(36))
X = "\n\nNotes: " + " ".join(f"note {i} says the river stood at {i % 5}." for i in range(30))
Y = "\n\nQuestion: what did the mill pay on line 12?"


@pytest.fixture(scope="module")
def engine(model_path: str):  # noqa: ANN201 - runner.process.engine.Engine
    from runner.process.engine import Engine

    engine = Engine(p.Load(model_path, num_ctx=2048, parallel=2, num_batch=256,
                           prompt_cache=256 * 2**20))
    yield engine
    engine.close()


def run(engine, prompt: str) -> tuple[str, p.Done]:  # noqa: ANN001
    engine.submit(p.Generate(next(_ids), prompt=prompt, options=GREEDY))
    text, done = "", None
    while engine.busy:
        for message in engine.step():
            if isinstance(message, p.Chunk):
                text += message.text
            elif isinstance(message, p.Done):
                done = message
            else:
                raise AssertionError(message)
    assert done is not None
    return text, done


def forget(engine) -> None:  # noqa: ANN001
    for slot in engine.slots:
        slot.tokens, slot.canonical, slot.checkpoints = [], 0, []
    llama_cpp.llama_memory_clear(engine.memory, True)
    engine.prompt_cache.clear()


def holding(engine, prompt: str):  # noqa: ANN001, ANN201 - the slot whose cache holds `prompt`
    tokens = engine.tokenize(prompt)
    return next(s for s in engine.slots if s.tokens[:len(tokens)] == tokens)


def window_start(engine, prompt: str) -> int:  # noqa: ANN001
    """The first position the sliding-window cache of the slot holding `prompt` holds."""
    return llama_cpp.llama_memory_seq_pos_min(engine.memory, holding(engine, prompt).index)


def test_sliding_window_layers_get_window_sized_caches(engine) -> None:  # noqa: ANN001
    assert engine.n_swa == 512
    # 3 full-attention layers of 2048 cells and 15 sliding-window ones of 768, per slot.
    assert engine.kv_bytes() == 2 * 1024 * (3 * 2048 + 15 * 768)


def test_a_cut_beyond_the_window_takes_a_checkpoint_and_writes_what_a_cold_read_does(
        engine) -> None:  # noqa: ANN001
    forget(engine)
    cold, cold_done = run(engine, A + Y)
    assert cold_done.cached_tokens == 0
    n_a = len(engine.tokenize(A))

    # The slot reads A (a checkpoint there), then A + X: its window has moved past A's end.
    forget(engine)
    run(engine, A)
    run(engine, A + X)
    slot = holding(engine, A + X)
    assert len(slot.tokens) > 800 and engine._floor(slot) > n_a and window_start(engine, A) > 0
    assert [c.n_tokens for c in slot.checkpoints][0] == n_a
    text, done = run(engine, A + Y)
    assert done.cached_tokens >= n_a - 2  # the checkpoint at A's end, not a read from scratch
    assert text == cold
    # Its sliding-window cache holds every position again, as after a cold read (the slot's
    # own state had lost the first ones: the text alone may not show it).
    assert window_start(engine, A + Y) == 0

    # The same through the prompt cache: A + X (read again from A's checkpoint) is pushed out
    # of the slots by two other prompts, then restored with its checkpoints for A + Y.
    run(engine, A + X)
    run(engine, "The quick brown fox jumps over the lazy dog. " * 6)
    run(engine, "Rain fell on the hills all night long. " * 6)
    with pytest.raises(StopIteration):
        holding(engine, A + X)
    [entry] = [e for e in engine.prompt_cache.entries if len(e.tokens) > 800]
    assert any(s.partial for s in entry.states) and entry.states[0].floor > n_a
    hits = engine.prompt_cache.hits
    text, done = run(engine, A + Y)
    assert engine.prompt_cache.hits == hits + 1
    assert done.cached_tokens >= n_a - 2
    assert text == cold and window_start(engine, A + Y) == 0

    # Without its checkpoints the saved state cannot serve the cut: A + Y is read again.
    forget(engine)
    engine.prompt_cache.put(entry.tokens, [s for s in entry.states if not s.partial])
    misses = engine.prompt_cache.misses
    text, done = run(engine, A + Y)
    assert done.cached_tokens == 0 and engine.prompt_cache.misses == misses + 1
    assert text == cold


def test_checkpoints_per_slot_are_bounded(engine) -> None:  # noqa: ANN001
    from runner.process.engine import SLOT_CHECKPOINTS

    forget(engine)
    prompt = A
    for i in range(SLOT_CHECKPOINTS + 2):
        prompt += f" Entry {i} was checked."
        run(engine, prompt)
    slot = holding(engine, prompt)
    assert len(slot.checkpoints) == SLOT_CHECKPOINTS
    ends = [c.n_tokens for c in slot.checkpoints]
    assert ends == sorted(ends) and ends[-1] == len(engine.tokenize(prompt))


def test_the_checkpoint_waits_until_the_first_token_has_gone_out(engine) -> None:  # noqa: ANN001
    """Copying the window's share of the cache takes milliseconds: it is taken at the start of
    the step after the prompt is read, before anything more is written to the slot, not in the
    step whose output carries the first token."""
    forget(engine)
    engine.submit(p.Generate(next(_ids), prompt=A, options=GREEDY))
    first: list[p.Message] = []
    while engine.busy and not any(isinstance(m, p.Chunk) for m in first):
        first = engine.step()
    slot = holding(engine, A)
    n_prompt = len(engine.tokenize(A))
    assert slot.checkpoints == [] and slot.checkpoint_due == n_prompt
    engine.step()  # writes the first token: the checkpoint is taken before it
    assert [c.n_tokens for c in slot.checkpoints] == [n_prompt] and slot.checkpoint_due == -1
    while engine.busy:
        engine.step()
