"""The runner's engine with a vision projector, in-process on the tiny vision model
(tests/vision_model.py): images in prompts and messages, read between other streams' steps,
counted, cut whole, keyed by content in the slots' cache, the prompt cache and its disk copy."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import pytest
from llama_cpp import mtmd_cpp as mtmd

from runner.process import vision
from runner.process.engine import Engine, LoadError
from shared import protocol as p
from shared.errors import BadRequest
from tests import vision_model

GREEDY = {"temperature": 0, "num_predict": 4}
_ids = iter(range(1, 10**9))


def image(colour: str) -> bytes:
    return vision_model.png(vision_model.RGB[colour])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return vision_model.write_model(tmp_path_factory.mktemp("vision"))


def load(files: tuple[Path, Path], **kwargs: object) -> Engine:
    lm, proj = files
    settings = {"num_ctx": 256, "parallel": 2, "num_gpu": 0, "prompt_cache": 64 * 1024**2,
                "projector": str(proj), **kwargs}
    return Engine(p.Load(str(lm), **settings))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def engine(files: tuple[Path, Path]) -> Iterator[Engine]:
    engine = load(files)
    yield engine
    engine.close()


def chat(*turns: tuple[str, str, list[bytes]], **kwargs: object) -> p.Generate:
    messages = [{"role": role, "content": text, **({"images": imgs} if imgs else {})}
                for role, text, imgs in turns]
    return p.Generate(next(_ids), messages=messages, options=dict(GREEDY), **kwargs)  # type: ignore[arg-type]


def run(engine: Engine, *requests: p.Generate) -> dict[int, tuple[str, p.Done | p.Error]]:
    texts: dict[int, str] = {r.id: "" for r in requests}
    finals: dict[int, p.Done | p.Error] = {}
    for request in requests:
        engine.submit(request)
    while engine.busy:
        for message in engine.step():
            if isinstance(message, p.Chunk):
                texts[message.id] += message.text
            elif isinstance(message, p.Done | p.Error):
                finals[message.id] = message
    return {rid: (texts[rid], finals[rid]) for rid in texts}


def one(engine: Engine, request: p.Generate) -> tuple[str, p.Done]:
    [(text, done)] = run(engine, request).values()
    assert isinstance(done, p.Done), done
    return text, done


@pytest.mark.parametrize("colour", vision_model.COLOURS)
def test_the_image_in_a_message_decides_the_answer(engine: Engine, colour: str) -> None:
    text, done = one(engine, chat(("user", "what colour?", [image(colour)])))
    assert text == f" {colour}"
    assert done.done_reason == "stop"
    # The image's 16 positions are counted with the text's tokens, as libmtmd itself counts
    # the same rendered prompt; the reply's context holds the text's tokens only.
    rendered = f"<|user|>{engine.vision.marker}what colour?\n<|assistant|>"  # type: ignore[union-attr]
    assert done.prompt_eval_count == mtmd_count(engine, rendered, image(colour))
    assert len(done.context) == done.prompt_eval_count - 1 - 16 + done.eval_count
    assert all(t >= 0 for t in done.context)
    plain, _ = one(engine, chat(("user", "what colour?", [])))
    assert plain == " the" * 4  # no image: the model has nothing to name


def mtmd_count(engine: Engine, text: str, data: bytes) -> int:
    """Tokens libmtmd's own tokenizer gives `text` with one image (llama-server's count)."""
    ctx = engine.vision.ctx  # type: ignore[union-attr]
    buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(ctx, buf, len(data), False)
    raw = text.encode()
    inp = mtmd.mtmd_input_text(raw, len(raw), True, True)
    chunks = mtmd.mtmd_input_chunks_init()
    assert mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(inp),
                              (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap), 1) == 0
    n = mtmd.mtmd_helper_get_n_tokens(chunks)
    mtmd.mtmd_input_chunks_free(chunks)
    mtmd.mtmd_bitmap_free(bitmap)
    return n


def test_prompt_with_img_tags_reads_the_image_named(engine: Engine) -> None:
    prompt = "<|user|>[img-1]what colour?\n<|assistant|>"
    request = p.Generate(next(_ids), prompt=prompt, options=dict(GREEDY),
                         images=[image("red"), image("blue")])
    text, done = one(engine, request)
    assert text == " blue"
    marked = prompt.replace("[img-1]", engine.vision.marker)  # type: ignore[union-attr]
    assert done.prompt_eval_count == mtmd_count(engine, marked, image("blue"))


def test_image_at_the_end_of_a_prompt_samples_from_its_last_position(engine: Engine) -> None:
    request = p.Generate(next(_ids), prompt="<|user|>colour: [img-0]", options=dict(GREEDY),
                         images=[image("green")])
    text, _ = one(engine, request)
    assert text == " green"


ASK = "name the colour of this, please"  # (a question of its own: no other test's cache)


def test_history_images_are_read_again_and_reused_from_the_cache(engine: Engine) -> None:
    first = chat(("user", ASK, [image("green")]))
    text, done = one(engine, first)
    assert text == " green"
    encoded = engine.vision.encoded  # type: ignore[union-attr]
    # The next turn carries the same image in its history: read from the slot's cache, never
    # encoded again, and the question about it still sees it.
    second = chat(("user", ASK, [image("green")]), ("assistant", text, []),
                  ("user", "and now?", []))
    text2, done2 = one(engine, second)
    assert text2 == " green"
    assert done2.cached_tokens >= done.prompt_eval_count - 1
    assert engine.vision.encoded == encoded  # type: ignore[union-attr]

    # The same conversation with a different image in its history shares only what comes
    # before the image: the blue image is read, and answered.
    other = chat(("user", ASK, [image("blue")]), ("assistant", text, []),
                 ("user", "and now?", []))
    text3, done3 = one(engine, other)
    assert text3 == " blue"
    assert done3.cached_tokens < done.prompt_eval_count - vision_model.N_IMAGE_TOKENS


def test_a_slot_copies_another_slots_image_instead_of_reading_it(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two requests sharing a long start and an image, sent together: the second waits for the
    first slot to read it, then copies that slot's cache (image positions included)."""
    copies: list[tuple[int, int]] = []
    real_copy = llama_cpp.llama_memory_seq_cp

    def copy(memory: object, src: int, dst: int, p0: int, p1: int) -> None:
        copies.append((src, dst))
        real_copy(memory, src, dst, p0, p1)

    monkeypatch.setattr(llama_cpp, "llama_memory_seq_cp", copy)
    system = ("system", "look closely at the picture and name its colour " * 2, [])
    encoded = engine.vision.encoded  # type: ignore[union-attr]
    # An image no earlier test sent (twice the size, the same colour once resized): the engine's
    # embedding cache must not already hold it.
    green = vision_model.png(vision_model.RGB["green"], size=vision_model.IMAGE_SIZE * 2)
    first = chat(system, ("user", "which colour?", [green]))
    second = chat(system, ("user", "which colour?", [green]), ("assistant", " x", []),
                  ("user", "sure?", []))
    results = run(engine, first, second)
    (text1, done1), (text2, done2) = results[first.id], results[second.id]
    assert (text1, text2) == (" green", " green")
    assert isinstance(done1, p.Done) and isinstance(done2, p.Done)
    # Everything up to the end of the image (and the question after it) came from the copy.
    assert done2.cached_tokens >= done1.prompt_eval_count - 8
    assert engine.vision.encoded == encoded + 1  # type: ignore[union-attr]
    assert len(copies) == 1 and copies[0][0] != copies[0][1]


def test_images_stream_beside_other_requests(engine: Engine) -> None:
    requests = [chat(("user", "what colour?", [image(c)])) for c in vision_model.COLOURS]
    results = run(engine, *requests)
    assert [results[r.id][0] for r in requests] == [f" {c}" for c in vision_model.COLOURS]


def test_an_image_is_read_between_another_streams_tokens(engine: Engine) -> None:
    """A stream that is generating gets a token in every step while another request's image is
    decoded, encoded (on the intake thread) and read (one decode call of its own)."""
    from runner.process.intake import Intake

    intake = Intake(engine)
    try:
        stream = p.Generate(next(_ids), prompt="the", options={"temperature": 0,
                                                               "num_predict": 60})
        looker = chat(("user", "a long look at this " * 3, [image("blue")]))
        intake.submit(stream)
        for _ in range(3):  # the stream is generating
            intake.step()
            engine.step()
        intake.submit(looker)
        answer, steps_without_stream = "", 0
        while engine.busy or intake.pending:
            generating = any(s.sequence is not None and s.sequence.request_id == stream.id
                             and not s.sequence.pending for s in engine.slots)
            out = intake.step() + engine.step()
            if generating and not any(m.id == stream.id for m in out
                                      if isinstance(m, p.Chunk | p.Done)):
                steps_without_stream += 1
            answer += "".join(m.text for m in out if isinstance(m, p.Chunk) and m.id == looker.id)
        assert answer == " blue"
        assert steps_without_stream == 0
    finally:
        intake.close()


def test_bad_images_and_text_only_models(engine: Engine, files: tuple[Path, Path]) -> None:
    with pytest.raises(BadRequest, match=r"^image 2 could not be decoded"):
        engine.prepare(chat(("user", "hi", [image("red"), b"not an image at all"])))
    text_only = Engine(p.Load(str(files[0]), num_ctx=128, parallel=1, num_gpu=0))
    try:
        with pytest.raises(BadRequest) as info:
            text_only.prepare(chat(("user", "hi", [image("red")])))
        assert info.value.message == "this model is missing data required for image input"
        assert info.value.status == 400
    finally:
        text_only.close()
    with pytest.raises(LoadError, match="vision projector"):
        load(files, projector=str(files[0]))  # a language model is no projector


def test_truncation_keeps_an_image_whole_or_drops_it(engine: Engine) -> None:
    tokens = [1, 5, 6, *vision.placeholders(7, 16), 8, 9]
    assert vision.whole_prefix(tokens, 10) == 3 and vision.whole_prefix(tokens, 3) == 3
    assert vision.whole_prefix(tokens, 19) == 19
    assert vision.whole_suffix(tokens, 10) == 19 and vision.whole_suffix(tokens, 3) == 3
    # A prompt longer than the context, image in the middle: what stays holds all 16 positions
    # of it or none.
    long_text = "the colour is " * 40
    request = p.Generate(next(_ids), prompt=f"{long_text}[img-0]{long_text}",
                         options=dict(GREEDY), images=[image("red")])
    tokens, _ = engine.prompt_tokens(request, vision.Media(engine.vision, request.images))  # type: ignore[arg-type]
    assert len(tokens) < engine.n_ctx
    assert sum(t < 0 for t in tokens) in (0, vision_model.N_IMAGE_TOKENS)


def test_the_prompt_cache_and_its_disk_copy_key_images_by_content(
        files: tuple[Path, Path], tmp_path: Path) -> None:
    folder = str(tmp_path / "cache")
    first = load(files, parallel=1, prompt_cache_dir=folder, prompt_cache_disk=64 * 1024**2)
    try:
        red = chat(("user", "what colour? " * 4, [image("red")]))
        assert one(first, red)[0] == " red"
        assert one(first, chat(("user", "something else entirely " * 4, [])))[0] == " the" * 4
        # The red conversation's state went to the RAM cache when the slot was taken.
        text, done = one(first, chat(("user", "what colour? " * 4, [image("red")])))
        assert text == " red" and done.cached_tokens > vision_model.N_IMAGE_TOKENS
        # A green image where the red one was: nothing after the image's start is reused.
        text, done = one(first, chat(("user", "what colour? " * 4, [image("green")])))
        # (the image comes first in its message: only "<|user|>" before it is shared)
        assert text == " green" and done.cached_tokens <= len(first.tokenize("<|user|>"))
        one(first, chat(("user", "what colour? " * 4, [image("red")])))  # used again: kept
    finally:
        first.close()  # saves the entries used more than once
    second = load(files, parallel=1, prompt_cache_dir=folder, prompt_cache_disk=64 * 1024**2)
    try:
        encoded = second.vision.encoded  # type: ignore[union-attr]
        text, done = one(second, chat(("user", "what colour? " * 4, [image("red")])))
        assert text == " red" and done.cached_tokens > vision_model.N_IMAGE_TOKENS
        assert second.vision.encoded == encoded  # read from disk: never encoded
        text, done = one(second, chat(("user", "what colour? " * 4, [image("blue")])))
        assert text == " blue" and done.cached_tokens <= len(second.tokenize("<|user|>"))
    finally:
        second.close()
