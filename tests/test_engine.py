"""The batching engine in-process on the bundled model: concurrency, cache, limits, formats."""

from __future__ import annotations

import json
import math
from array import array
from pathlib import Path

import jsonschema
import pytest

from shared import protocol as p
from shared.errors import BadRequest

pytestmark = pytest.mark.e2e

GREEDY = {"temperature": 0, "num_predict": 16}


@pytest.fixture(scope="module")
def engine(model_path: str):  # noqa: ANN201 - runner.process.engine.Engine
    from runner.process.engine import Engine

    engine = Engine(p.Load(model_path, num_ctx=1024, parallel=4))
    yield engine
    engine.close()


_ids = iter(range(1, 10**9))


def generate(engine, **kwargs) -> p.Generate:  # noqa: ANN001
    kwargs.setdefault("options", GREEDY)
    return p.Generate(next(_ids), **kwargs)


def run(engine, *requests: p.Generate, cancel_after: dict[int, int] | None = None
        ) -> dict[int, tuple[str, p.Done | p.Error | None]]:  # noqa: ANN001
    """Drive the engine until every request finished; texts and final messages by id."""
    texts: dict[int, list[str]] = {r.id: [] for r in requests}
    finals: dict[int, p.Done | p.Error | None] = {r.id: None for r in requests}
    for request in requests:
        engine.submit(request)
    cancel_after = dict(cancel_after or {})
    while engine.busy:
        for message in engine.step():
            if isinstance(message, p.Chunk):
                texts[message.id].append(message.text)
                if len(texts[message.id]) == cancel_after.get(message.id):
                    engine.cancel(message.id)
            else:
                finals[message.id] = message
    return {rid: ("".join(texts[rid]), finals[rid]) for rid in texts}


PROMPTS = ["The capital of France is", "1, 2, 3,", "Once upon a time", "The sky is",
           "def main():", "Monday, Tuesday,", "Water boils at", "My favourite food is"]


def test_eight_concurrent_requests_match_their_solo_runs(engine) -> None:  # noqa: ANN001
    solo = {}
    for prompt in PROMPTS:
        [(text, done)] = run(engine, generate(engine, prompt=prompt)).values()
        solo[prompt] = text
    requests = [generate(engine, prompt=prompt) for prompt in PROMPTS]
    together = run(engine, *requests)
    for request in requests:
        text, done = together[request.id]
        assert isinstance(done, p.Done) and done.eval_count == 16
        alone = solo[request.prompt]
        # Batched arithmetic may change the last bits of the logits (greedy near-ties then
        # diverge); the opening words agree.
        assert text[:12] == alone[:12], (request.prompt, text, alone)
    by_prompt = {r.prompt: together[r.id][0] for r in requests}
    assert by_prompt["1, 2, 3,"].startswith(" 4, 5, 6")  # no slot shows another slot's text
    assert by_prompt["Monday, Tuesday,"].startswith(" Wednesday")


def test_queue_beyond_slots_is_served_in_arrival_order(engine) -> None:  # noqa: ANN001
    requests = [generate(engine, prompt=f"Item {i}:", options={**GREEDY, "num_predict": 4})
                for i in range(6)]
    finish_order: list[int] = []
    for request in requests:
        engine.submit(request)
    while engine.busy:
        finish_order += [m.id for m in engine.step() if isinstance(m, p.Done)]
    # Slots free up together; the two waiting requests must come after the first four.
    assert set(finish_order[4:]) == {requests[4].id, requests[5].id}


def test_cancel_frees_the_slot_at_once(engine) -> None:  # noqa: ANN001
    long = [generate(engine, prompt=f"Story {i}:", options={**GREEDY, "num_predict": 500})
            for i in range(4)]
    waiting = generate(engine, prompt="Hi", options={**GREEDY, "num_predict": 2})
    results = run(engine, *long, waiting, cancel_after={r.id: 3 for r in long})
    for request in long:
        assert results[request.id][1] is None  # cancelled: no final message
    assert isinstance(results[waiting.id][1], p.Done)
    assert engine.active == 0 and not engine.queue


def test_prefix_cache_serves_the_second_turn(engine) -> None:  # noqa: ANN001
    history = [{"role": "user", "content": "Tell me about rivers. " * 20}]
    [(reply, first)] = run(engine, generate(engine, messages=history)).values()
    assert isinstance(first, p.Done)
    second_turn = history + [{"role": "assistant", "content": reply},
                             {"role": "user", "content": "And lakes?"}]
    [(_, second)] = run(engine, generate(engine, messages=second_turn)).values()
    assert isinstance(second, p.Done)
    assert second.prompt_eval_count > first.prompt_eval_count
    assert second.cached_tokens >= first.prompt_eval_count - 1
    assert second.prompt_eval_count - second.cached_tokens < 40


def test_requests_sharing_a_prompt_read_it_once(engine) -> None:  # noqa: ANN001
    """Three requests with one long prompt (like `n` choices): one slot reads it, the other two
    wait for that and copy its cache, and all three write what a request alone writes."""
    import llama_cpp

    prompt = "The lighthouse keeper counted ships along the northern coast. " * 12
    [(alone, solo)] = run(engine, generate(engine, prompt=prompt)).values()
    assert isinstance(solo, p.Done) and solo.prompt_eval_count > 100
    for slot in engine.slots:  # forget every cached copy of it
        slot.tokens = []
    llama_cpp.llama_memory_clear(engine.memory, True)

    requests = [generate(engine, prompt=prompt) for _ in range(3)]
    results = run(engine, *requests)
    dones = [results[r.id][1] for r in requests]
    assert all(isinstance(d, p.Done) for d in dones)
    assert [results[r.id][0] for r in requests] == [alone] * 3
    assert sorted(d.cached_tokens for d in dones) == [0, solo.prompt_eval_count - 1,
                                                      solo.prompt_eval_count - 1]

    # A request that shares only the start (a common system prompt) copies that start too,
    # while the other one is still generating.
    first = generate(engine, prompt=prompt + "The first ship", options={**GREEDY,
                                                                         "num_predict": 40})
    other = generate(engine, prompt=prompt + "A storm came")
    for slot in engine.slots:
        slot.tokens = []
    llama_cpp.llama_memory_clear(engine.memory, True)
    engine.submit(first)
    while not any(s.sequence and s.sequence.generated for s in engine.slots):
        engine.step()  # the first one has read its prompt and is generating
    engine.submit(other)
    texts: dict[int, str] = {first.id: "", other.id: ""}
    finals: dict[int, p.Message] = {}
    while engine.busy:
        for message in engine.step():
            if isinstance(message, p.Chunk):
                texts[message.id] += message.text
            else:
                finals[message.id] = message
    done = finals[other.id]
    assert isinstance(done, p.Done) and done.cached_tokens >= solo.prompt_eval_count - 2
    [(text_alone, _)] = run(engine, generate(engine, prompt=prompt + "A storm came")).values()
    assert texts[other.id] == text_alone


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                      "age": {"type": "integer"}},
     "required": ["name", "age"]},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]},
                                      "ok": {"type": "boolean"}},
     "required": ["color", "ok"], "additionalProperties": False},
    {"type": "array", "items": {"type": "string", "maxLength": 8}, "minItems": 1,
     "maxItems": 3},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b"]},
                                               "maxItems": 2},
                                      "score": {"type": "number"}},
     "required": ["tags", "score"]},
])
def test_json_schema_output_validates(engine, schema: dict) -> None:  # noqa: ANN001
    request = generate(engine, messages=[{"role": "user", "content": "Answer in JSON."}],
                       format=schema, options={**GREEDY, "num_predict": 120})
    [(text, done)] = run(engine, request).values()
    assert isinstance(done, p.Done) and done.done_reason == "stop", text
    jsonschema.validate(json.loads(text), schema)


def test_format_json_gives_an_object(engine) -> None:  # noqa: ANN001
    # An example keeps the tiny model's object short (asked cold, it rambles inside a string
    # until num_predict). Unconstrained, it would go on to write "Another person as JSON:" and
    # more; the grammar ends the reply where the object (and a little whitespace) ends.
    request = generate(engine, prompt='A person as JSON: {"name": "Ann", "age": 31}\n'
                                      "Another person as JSON:", format="json",
                       options={"temperature": 0, "num_predict": 64})
    [(text, done)] = run(engine, request).values()
    assert done.done_reason == "stop", text
    assert text.startswith("{") and isinstance(json.loads(text), dict)


def test_bad_schema_is_a_bad_request(engine) -> None:  # noqa: ANN001
    with pytest.raises(BadRequest):
        engine.submit(generate(engine, prompt="x", format={"type": "no-such-type"}))
    with pytest.raises(BadRequest):
        engine.submit(generate(engine, prompt="x", format="yaml"))


def test_long_prompt_is_truncated_or_rejected(engine) -> None:  # noqa: ANN001
    long = "word " * 2000
    with pytest.raises(BadRequest, match="exceeds the context length"):
        engine.submit(generate(engine, prompt=long, truncate=False))
    [(text, done)] = run(engine, generate(engine, prompt=long)).values()
    assert isinstance(done, p.Done) and done.prompt_eval_count < engine.n_ctx


def test_chat_truncation_keeps_system_and_newest(engine) -> None:  # noqa: ANN001
    messages = [{"role": "system", "content": "SYSTEM-MARK"}]
    messages += [{"role": "user", "content": f"old message {i} " + "filler " * 60}
                 for i in range(20)]
    messages += [{"role": "user", "content": "NEWEST-MARK"}]
    request = generate(engine, messages=messages)
    tokens, _ = engine.prompt_tokens(request)
    text = "".join(engine.piece(t).decode(errors="replace") for t in tokens)
    assert len(tokens) < engine.n_ctx
    assert "SYSTEM-MARK" in text and "NEWEST-MARK" in text and "old message 0 " not in text


def test_context_full_shifts_or_stops(model_path: str) -> None:
    from runner.process.engine import Engine

    small = Engine(p.Load(model_path, num_ctx=64, parallel=1))  # llama.cpp rounds up to 256
    try:
        options = {"temperature": 0, "num_predict": small.n_ctx + 100}
        [(_, shifted)] = run(small, generate(small, prompt="1, 2, 3,", options=options)).values()
        assert shifted.eval_count == small.n_ctx + 100 and shifted.done_reason == "length"
        [(_, stopped)] = run(small, generate(small, prompt="1, 2, 3,", options=options,
                                            shift=False)).values()
        assert stopped.done_reason == "length" and stopped.eval_count < small.n_ctx
    finally:
        small.close()


def _vector(raw: bytes) -> list[float]:
    values = array("f")
    values.frombytes(raw)
    return values.tolist()


def test_embeddings_batched_equal_single_and_are_normalised(engine) -> None:  # noqa: ANN001
    texts = [f"sentence number {i} about the weather" for i in range(10)]
    batched = engine.embed(p.Embed(1, texts))
    assert len(batched.vectors) == 10 and batched.prompt_eval_count > 10 * 5
    for text, raw in zip(texts, batched.vectors, strict=True):
        vector = _vector(raw)
        assert abs(math.fsum(v * v for v in vector) - 1.0) < 1e-4
        single = _vector(engine.embed(p.Embed(2, [text])).vectors[0])
        # Batched kernels round differently; the direction is the same.
        assert math.fsum(a * b for a, b in zip(vector, single, strict=True)) > 0.999
    raw = _vector(engine.embed(p.Embed(3, texts[:1], normalize=False)).vectors[0])
    assert abs(math.fsum(v * v for v in raw) - 1.0) > 1e-3


def test_embedding_too_long_without_truncate(engine) -> None:  # noqa: ANN001
    with pytest.raises(BadRequest, match="exceeds the context length"):
        engine.embed(p.Embed(4, ["word " * 3000], truncate=False))
    assert len(engine.embed(p.Embed(5, ["word " * 3000])).vectors) == 1


def test_model_path_fixture_is_real(model_path: str) -> None:
    assert Path(model_path).stat().st_size > 200_000_000


def run_with_logprobs(engine, request: p.Generate  # noqa: ANN001
                      ) -> tuple[str, list[list[dict] | None], p.Done | p.Error | None]:
    """Drive one request; its text, each chunk's logprobs field, and its final message."""
    texts: list[str] = []
    fields: list[list[dict] | None] = []
    final = None
    engine.submit(request)
    while engine.busy:
        for message in engine.step():
            if isinstance(message, p.Chunk):
                texts.append(message.text)
                fields.append(message.logprobs)
            else:
                final = message
    return "".join(texts), fields, final


def test_logprobs_describe_every_generated_token(engine) -> None:  # noqa: ANN001
    request = generate(engine, prompt="The capital of France is", logprobs=3)
    text, fields, done = run_with_logprobs(engine, request)
    assert isinstance(done, p.Done) and done.eval_count > 0
    entries = [entry for field in fields for entry in field]
    assert len(entries) == done.eval_count  # a raw prompt has no stop strings
    generated = done.context[done.prompt_eval_count - 1:]  # context has no BOS
    assert [bytes(e["bytes"]) for e in entries] == [engine.piece(t) for t in generated]
    assert b"".join(bytes(e["bytes"]) for e in entries).decode() == text
    for entry in entries:
        assert entry["token"] == bytes(entry["bytes"]).decode("utf-8", "replace")
        top = entry["top_logprobs"]
        assert len(top) == 3
        values = [alt["logprob"] for alt in top]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        assert entry["logprob"] <= 0
        # Greedy picks the most likely token.
        assert top[0]["token"] == entry["token"] and top[0]["bytes"] == entry["bytes"]
        assert top[0]["logprob"] == pytest.approx(entry["logprob"])
    # From the raw logits, not greedy's collapsed distribution (where every pick has p = 1).
    assert any(entry["logprob"] < -1e-3 for entry in entries)


def test_logprobs_come_from_raw_logits_and_do_not_change_the_text(engine) -> None:  # noqa: ANN001
    prompt = "Monday, Tuesday,"
    plain_text, plain_fields, _ = run_with_logprobs(engine, generate(engine, prompt=prompt))
    assert plain_fields and all(field is None for field in plain_fields)
    greedy_text, greedy_fields, _ = run_with_logprobs(
        engine, generate(engine, prompt=prompt, logprobs=0))
    assert greedy_text == plain_text
    greedy = [entry for field in greedy_fields for entry in field]
    assert all(entry["top_logprobs"] == [] for entry in greedy)
    # top_k 1 makes a hot temperature pick greedily too; neither may bend the logprobs.
    hot = generate(engine, prompt=prompt, logprobs=0,
                   options={"temperature": 1.7, "top_k": 1, "seed": 3, "num_predict": 16})
    hot_text, hot_fields, _ = run_with_logprobs(engine, hot)
    assert hot_text == greedy_text
    hot_entries = [entry for field in hot_fields for entry in field]
    assert [e["logprob"] for e in hot_entries] == pytest.approx([e["logprob"] for e in greedy],
                                                               abs=1e-4)


def test_logprobs_of_tokens_eaten_by_a_stop_string_are_dropped(engine) -> None:  # noqa: ANN001
    prompt = "1, 2, 3,"
    full_text, fields, _ = run_with_logprobs(engine, generate(engine, prompt=prompt, logprobs=1))
    entries = [entry for field in fields for entry in field]
    texts = [bytes(e["bytes"]).decode() for e in entries]
    # A stop string made of two whole tokens from the middle of the output, first found there.
    cut = next(i for i in range(3, len(texts) - 2)
               if full_text.find(texts[i] + texts[i + 1]) == len("".join(texts[:i]))
               and (texts[i] + texts[i + 1]).strip())
    stop = texts[cut] + texts[cut + 1]
    options = {**GREEDY, "stop": [stop]}
    text, fields, done = run_with_logprobs(
        engine, generate(engine, prompt=prompt, logprobs=1, options=options))
    kept = [entry for field in fields for entry in field]
    assert text == "".join(texts[:cut])
    assert done.eval_count == cut + 2  # the stop's tokens were generated, then swallowed
    assert [e["bytes"] for e in kept] == [e["bytes"] for e in entries[:cut]]


def test_grammar_forces_the_output_and_wins_over_format(engine) -> None:  # noqa: ANN001
    grammar = 'root ::= "yes" | "no"'
    for prompt in ("Is the sky blue? Answer:", "Tell me a long story about dragons."):
        request = generate(engine, prompt=prompt, grammar=grammar, format="json",
                           options={**GREEDY, "num_predict": 32})
        [(text, done)] = run(engine, request).values()
        assert text in {"yes", "no"}, text
        assert isinstance(done, p.Done) and done.done_reason == "stop"


def test_tools_reach_the_chat_template_even_after_truncation(engine) -> None:  # noqa: ANN001
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    messages = [{"role": "user", "content": f"old {i} " + "filler " * 80} for i in range(20)]
    messages.append({"role": "user", "content": "NEWEST"})
    saved = engine.chat_template
    engine.chat_template = ("{% for t in tools or [] %}TOOL={{ t.function.name }};{% endfor %}"
                            "{% for m in messages %}{{ m.content }}{% endfor %}")
    try:
        tokens, _ = engine.prompt_tokens(generate(engine, messages=messages, tools=tools))
    finally:
        engine.chat_template = saved
    text = "".join(engine.piece(t).decode(errors="replace") for t in tokens)
    assert len(tokens) < engine.n_ctx and "old 0 " not in text  # it was re-rendered shorter
    # (special tokens print as their text, BOS included: the template's output follows it)
    assert text.removeprefix(engine.bos_text).startswith("TOOL=get_weather;")
    assert text.endswith("NEWEST")


def test_threads_change_between_steps(engine) -> None:  # noqa: ANN001
    before = engine.n_threads
    [(text, _)] = run(engine, generate(engine, prompt="The sky is")).values()
    try:
        engine.set_threads(1)  # what a SetThreads message from the supervisor does
        assert engine.n_threads == 1
        [(again, done)] = run(engine, generate(engine, prompt="The sky is")).values()
        assert isinstance(done, p.Done) and again == text
    finally:
        engine.set_threads(before)
