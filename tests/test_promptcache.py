"""The prompt cache beyond the slots: the store itself (runner/process/promptcache.py), and the
engine restoring a saved conversation into a slot with the same text as if its slot had kept it."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.process import promptdisk
from runner.process.promptcache import PromptCache, State
from shared import protocol as p


def state(n: int, size: int = 100, canonical: int = 0, partial: bool = False,
          floor: int = 0) -> State:
    return State(n, b"x" * size, canonical, partial, floor)


def test_best_entry_is_the_longest_shared_start() -> None:
    cache = PromptCache(10_000)
    cache.put([1, 2, 3, 4], [state(4)])
    cache.put([1, 2, 9], [state(3)])
    entry, shared = cache.best([1, 2, 3, 7])
    assert entry is not None and entry.tokens == [1, 2, 3, 4] and shared == 3
    assert cache.best([5, 6]) == (None, 0)


def test_an_entry_replaces_its_prefixes_and_inherits_their_uses() -> None:
    cache = PromptCache(10_000)
    cache.put([1, 2], [state(2)], uses=2)
    cache.put([1, 2, 3], [state(3)])
    assert [e.tokens for e in cache.entries] == [[1, 2, 3]]
    assert cache.entries[0].uses == 3 and cache.bytes == 100
    assert cache.holds([1, 2], 0) and not cache.holds([1, 3], 0)
    # A prefix read in more of the seeded layout is worth keeping apart.
    cache.put([1, 2, 3, 4], [state(4, canonical=0)])
    cache.put([1, 2, 3, 4, 5], [state(5, canonical=0)])
    seeded = PromptCache(10_000)
    seeded.put([1, 2], [state(2, canonical=2)])
    seeded.put([1, 2, 3], [state(3, canonical=0)])
    assert len(seeded.entries) == 2
    # So is one that a sliding-window state cannot be cut back to.
    windowed = PromptCache(10_000)
    windowed.put([1, 2], [state(2)])
    windowed.put([1, 2, 3, 4], [state(4, floor=3)])
    assert len(windowed.entries) == 2
    windowed.put([1, 2, 3, 4, 5], [state(5, floor=3), state(2, partial=True)])
    assert [e.tokens for e in windowed.entries] == [[1, 2, 3, 4, 5]]


def test_eviction_is_lru_but_keeps_a_start_many_share() -> None:
    common = list(range(100, 140))  # a system prompt longer than MIN_SHARED_START
    cache = PromptCache(350)
    cache.put([1, 2, 3], [state(3)])  # oldest, shares nothing
    cache.put(common + [1], [state(41)])
    cache.put(common + [2], [state(41)])
    cache.put(common + [3], [state(41)])  # 400 bytes > 350: one must go
    assert cache.bytes <= 350
    assert [e.tokens[-1] for e in cache.entries] == [1, 2, 3]
    cache.put([7, 8, 9], [state(3)])  # now the oldest sharing entry goes, not the newest
    assert [e.tokens[-1] for e in cache.entries] == [2, 3, 9]
    assert cache.put([5], [state(1, size=1000)]) is None  # larger than the whole budget


def test_a_cut_takes_the_whole_state_where_it_holds_the_window_else_a_checkpoint() -> None:
    cache = PromptCache(10_000)
    # An attention cache: any cut.
    entry = cache.put(list(range(50)), [state(50)])
    assert entry is not None and entry.serve(40) == (entry.states[0], 40)
    # A sliding-window cache that holds the window only for cuts at 35 or later, with
    # checkpoints at 10 (window from 0) and 30 (window for cuts at 20 or later).
    entry = cache.put(list(range(60)), [state(60, floor=35), state(10, partial=True),
                                        state(30, partial=True, floor=20)])
    assert entry is not None
    whole = entry.states[0]
    assert entry.serve(40) == (whole, 40)  # the whole state cut back
    assert entry.serve(32) == (whole, 30)  # the checkpoint at 30
    assert entry.serve(25) == (whole, 25)  # ... cut back within its window
    assert entry.serve(15) == (whole, 10)  # the one at 10 reaches back to the start
    assert [c.n_tokens for c in entry.checkpoints(20)] == [10]
    entry.states = [whole]
    assert entry.serve(30) is None  # nothing reaches: read again from the start


def test_off_keeps_nothing() -> None:
    cache = PromptCache(0)
    assert not cache.enabled and cache.put([1], [state(1)]) is None


def test_disk_keeps_entries_used_twice_within_budget_and_refuses_a_damaged_file(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = PromptCache(10_000)
    cache.put([1, 2, 3], [state(3, canonical=3)], uses=2)
    cache.put([4, 5, 6], [state(3)], uses=1)  # served one request: not worth the disk
    cache.put([7, 8, 9], [state(3, size=300, floor=2), state(1, partial=True)],
              uses=5)  # beyond the disk budget with the other
    settings = {"model": "sha256-abc", "n_ctx": 1024}
    path = promptdisk.cache_file(str(tmp_path), "/store/blobs/sha256-abc", settings)
    assert path.parent == tmp_path / "sha256-abc"
    assert promptdisk.save(cache, path, settings, budget=450) == 1

    again = PromptCache(10_000)
    assert promptdisk.load(again, path, settings) == 1
    [entry] = again.entries
    assert entry.tokens == [7, 8, 9] and entry.uses == 5
    assert entry.states[0].data == b"x" * 300
    assert [(s.n_tokens, s.partial, s.floor) for s in entry.states] == [(3, False, 2),
                                                                         (1, True, 0)]
    assert promptdisk.load(PromptCache(10_000), path, {**settings, "n_ctx": 2048}) == 0
    assert "other load settings" in caplog.text
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    assert promptdisk.load(PromptCache(10_000), path, settings) == 0
    assert "checksum" in caplog.text
    # A file from another version of the format says so, not that it is damaged.
    caplog.clear()
    path.write_bytes(b"corral-prompt-cache 1\n" + bytes(raw[len(promptdisk.MAGIC):]))
    with caplog.at_level("INFO", logger="corral.runner"):
        assert promptdisk.load(PromptCache(10_000), path, settings) == 0
    assert "another format (corral-prompt-cache 1)" in caplog.text
    assert "checksum" not in caplog.text


# --- the engine ------------------------------------------------------------------------------

GREEDY = {"temperature": 0, "num_predict": 24}
_ids = iter(range(1, 10**9))


@pytest.fixture(scope="module")
def engine(model_path: str):  # noqa: ANN201 - runner.process.engine.Engine
    from runner.process.engine import Engine

    engine = Engine(p.Load(model_path, num_ctx=1024, parallel=2, prompt_cache=64 * 2**20))
    yield engine
    engine.close()


def run(engine, *requests: p.Generate) -> dict[int, tuple[str, p.Message | None]]:  # noqa: ANN001
    texts = {r.id: "" for r in requests}
    finals: dict[int, p.Message | None] = {r.id: None for r in requests}
    for request in requests:
        engine.submit(request)
    while engine.busy:
        for message in engine.step():
            if isinstance(message, p.Chunk):
                texts[message.id] += message.text
            else:
                finals[message.id] = message
    return {rid: (texts[rid], finals[rid]) for rid in texts}


def chat(messages: list[dict[str, str]], options: dict | None = None) -> p.Generate:
    return p.Generate(next(_ids), messages=messages, options=options or GREEDY)


def forget(engine) -> None:  # noqa: ANN001
    import llama_cpp

    for slot in engine.slots:
        slot.tokens, slot.canonical = [], 0
    llama_cpp.llama_memory_clear(engine.memory, True)
    engine.prompt_cache.clear()


HISTORY = [{"role": "user", "content": "Describe the old harbour town and its fishing boats. " * 8}]
OTHERS = ["List five mountains in Europe and their heights. " * 6,
          "Explain how a steam engine works, step by step. " * 6]


def second_turn(engine, options: dict | None = None, *, evict: bool) -> tuple[str, p.Done]:  # noqa: ANN001
    """Turn one of a conversation, then (evict: two others take both slots) its turn two."""
    [(reply, first)] = run(engine, chat(HISTORY, options)).values()
    assert isinstance(first, p.Done)
    if evict:
        run(engine, *(chat([{"role": "user", "content": c}]) for c in OTHERS))
    turn = HISTORY + [{"role": "assistant", "content": reply},
                      {"role": "user", "content": "Which boat is the oldest?"}]
    [(text, done)] = run(engine, chat(turn, options)).values()
    return text, done


@pytest.mark.parametrize("options", [GREEDY, {"temperature": 0.7, "seed": 42, "num_predict": 24}],
                         ids=["greedy", "seeded"])
def test_a_restored_conversation_writes_what_its_kept_slot_would(engine, options) -> None:  # noqa: ANN001
    forget(engine)
    kept, kept_done = second_turn(engine, options, evict=False)
    forget(engine)
    hits = engine.prompt_cache.hits
    restored, done = second_turn(engine, options, evict=True)
    assert isinstance(done, p.Done) and isinstance(kept_done, p.Done)
    assert engine.prompt_cache.hits == hits + 1
    assert engine.prompt_cache.stats().entries >= 1
    assert done.cached_tokens == kept_done.cached_tokens >= 64  # seeded: whole chunks
    assert done.prompt_eval_count == kept_done.prompt_eval_count
    assert restored == kept


def test_a_broken_restore_is_caught(engine, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """The check above fails when the restore is broken on purpose (the state never reaches the
    slot, whose cache still holds another conversation)."""
    import runner.process.engine as engine_module

    forget(engine)
    kept, _ = second_turn(engine, evict=False)
    forget(engine)
    monkeypatch.setattr(engine_module.llama_cpp, "llama_state_seq_set_data",
                        lambda ctx, src, size, seq: size)
    broken, done = second_turn(engine, evict=True)
    # The slot's cache no longer matches its positions: llama.cpp refuses the batch, or the text
    # comes out different.
    assert not isinstance(done, p.Done) or (done.cached_tokens > 100 and broken != kept)


def test_without_the_cache_the_turn_is_read_again(engine) -> None:  # noqa: ANN001
    forget(engine)
    budget, engine.prompt_cache.budget = engine.prompt_cache.budget, 0
    try:
        _, done = second_turn(engine, evict=True)
    finally:
        engine.prompt_cache.budget = budget
    assert isinstance(done, p.Done) and done.cached_tokens < 10


def test_a_reload_restores_the_conversations_saved_at_unload(model_path: str,
                                                             tmp_path: Path) -> None:
    from runner.process.engine import Engine

    load = p.Load(model_path, num_ctx=1024, parallel=2, prompt_cache=64 * 2**20,
                  prompt_cache_dir=str(tmp_path), prompt_cache_disk=2**30)
    engine = Engine(load)
    try:
        [(reply, _)] = run(engine, chat(HISTORY)).values()
        turn = HISTORY + [{"role": "assistant", "content": reply},
                          {"role": "user", "content": "Which boat is the oldest?"}]
        run(engine, chat(turn))
        [(kept, kept_done)] = run(engine, chat(turn)).values()  # again, from its kept slot
    finally:
        engine.close()  # writes the entries used more than once
    assert isinstance(kept_done, p.Done) and kept_done.cached_tokens > 100
    assert list(tmp_path.glob("*/*.prompts"))
    engine = Engine(load)
    try:
        assert engine.prompt_cache.stats().entries >= 1
        [(again, done)] = run(engine, chat(turn)).values()
        assert engine.prompt_cache.hits == 1
        assert isinstance(done, p.Done) and done.cached_tokens == kept_done.cached_tokens
        assert again == kept
    finally:
        engine.close()
    # Other load settings never share the file.
    other = Engine(p.Load(model_path, num_ctx=512, parallel=2, prompt_cache=64 * 2**20,
                          prompt_cache_dir=str(tmp_path), prompt_cache_disk=2**30))
    try:
        assert other.prompt_cache.stats().entries == 0
    finally:
        other.close()
