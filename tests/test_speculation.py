"""Speculative decoding by prompt lookup (runner/process/speculation.py): the drafter and the
planner on their own, then the engine in-process on the bundled model, where a guessed token is
kept only when the sampled one equals it: greedy output token for token as without guesses, and
stops, num_predict, grammars, logprobs, seeds, cancellation and the sliding-window cache behave
as without them."""

from __future__ import annotations

import pytest

from runner.process.speculation import Drafter, NgramIndex, Planner, micro_batches
from shared import protocol as p

# --- the drafter and the planner ---------------------------------------------------------------


def test_the_longest_recent_match_gives_the_draft() -> None:
    index = NgramIndex()
    tokens = [1, 2, 3, 4, 5, 6, 9, 3, 4, 7, 8, 1, 2, 3, 4]
    # [2, 3, 4] last occurred followed by 5 (the 2-gram [3, 4] more recently by 7: longer wins)
    assert index.draft(tokens, 3) == [5, 6, 9]
    assert NgramIndex().draft([5, 1, 2, 9, 9, 1, 2], 2) == [9, 9]
    assert NgramIndex().draft([1, 2, 3, 4], 4) == []  # nothing occurred before


def test_a_loop_is_drafted_round_again() -> None:
    assert NgramIndex().draft([7, 1, 2, 1, 2], 5) == [1, 2, 1, 2, 1]


def test_the_index_follows_a_growing_history() -> None:
    index = NgramIndex()
    tokens = [1, 2, 3]
    assert index.draft(tokens, 2) == []
    tokens += [1, 2]
    assert index.draft(tokens, 2) == [3, 1]


def test_misses_shrink_the_draft_and_pause_it() -> None:
    drafter = Drafter.for_prompt([1, 2, 3, 1, 2], k_max=8)
    assert drafter.propose([], room=8) == [3, 1, 2, 3, 1, 2, 3, 1]
    drafter.record(8, 8)
    assert drafter.k == 8 and drafter.accept > 0.5
    drafter.record(8, 2)
    assert drafter.k == 3
    before = drafter.accept
    drafter.record(3, 0)
    assert drafter.accept < before and drafter.pause == 1
    assert drafter.propose([3], room=8) == []  # paused for a step
    drafter.record(2, 0)  # failing again: the pause doubles
    assert drafter.pause == 2
    assert drafter.drafted == 21 and drafter.accepted == 10


def test_the_draft_never_exceeds_the_room() -> None:
    drafter = Drafter.for_prompt([1, 2, 3, 1, 2], k_max=8)
    assert len(drafter.propose([], room=3)) == 3
    assert drafter.propose([], room=0) == []


def test_micro_batches_are_one_per_row_count() -> None:
    assert micro_batches([1, 1, 1]) == 1
    assert micro_batches([1, 9, 1, 9]) == 2


def _drafter(accept: float) -> Drafter:
    drafter = Drafter.for_prompt([], k_max=16)
    drafter.accept = accept
    return drafter


def test_the_planner_drafts_when_rows_are_cheap_and_guesses_hold() -> None:
    planner = Planner(c_ubatch=0.03, c_row=0.001)
    choice = planner.choose([1], 0, 0, [(7, _drafter(0.9), 16)])
    assert choice and choice[7] >= 8


def test_the_planner_steps_aside_when_guesses_fail_or_rows_cost() -> None:
    assert Planner(c_ubatch=0.03, c_row=0.001).choose([1], 0, 0, [(7, _drafter(0.02), 16)]) == {}
    # Rows as dear as the fixed cost: four streams gain nothing from a half-right guess.
    assert Planner(c_ubatch=0.01, c_row=0.01).choose([1, 1, 1, 1], 0, 0,
                                                     [(7, _drafter(0.5), 16)]) == {}


def test_the_planner_gives_drafting_sequences_one_length() -> None:
    planner = Planner(c_ubatch=0.03, c_row=0.0005)
    choice = planner.choose([1, 1, 1], 0, 0, [(1, _drafter(0.9), 16), (2, _drafter(0.9), 16),
                                              (3, _drafter(0.9), 4)])
    assert len(set(choice.values())) == 1


def test_the_planner_learns_the_step_costs() -> None:
    planner = Planner(c_ubatch=0.01, c_row=0.01)
    for _ in range(200):
        for ubatches, rows in ((1, 1), (1, 4), (2, 12), (1, 36)):
            planner.observe(ubatches, rows, 0.02 * ubatches + 0.002 * rows)
    assert planner.c_ubatch == pytest.approx(0.02, rel=0.15)
    assert planner.c_row == pytest.approx(0.002, rel=0.15)


# --- the engine ----------------------------------------------------------------------------------

pytestmark_e2e = pytest.mark.e2e

GREEDY = {"temperature": 0, "num_predict": 40}
OFF = {"draft_max": 0}
_ids = iter(range(1, 10**9))

# Text that the model continues by copying it (shown twice, then a third time begun).
PASSAGE = ("def merge(left, right):\n    result = []\n    i = j = 0\n"
           "    while i < len(left) and j < len(right):\n        if left[i] <= right[j]:\n"
           "            result.append(left[i])\n            i += 1\n        else:\n"
           "            result.append(right[j])\n            j += 1\n"
           "    result.extend(left[i:])\n    result.extend(right[j:])\n    return result\n")
COPY = f"{PASSAGE}\n# The same function again:\n{PASSAGE}\n# And once more:\n{PASSAGE[:40]}"
ROSTER = ("Roster: Alice Brown (Leeds), Bob Stone (York), Carol Diaz (Hull), Dan Ode (Bath), "
          "Eve Lund (Kent).\nCopy: Alice Brown (Leeds), Bob Stone (York), Carol Diaz (Hull), ")
PROMPTS = [COPY, ROSTER, "The capital of France is", "1, 2, 3, 4,", "Once upon a time there was"]


class FixedCosts(Planner):
    """The planner with costs fixed where guessing pays: the tests check what verification
    does with every guess, so it must not depend on how busy the machine is."""

    def __init__(self) -> None:
        super().__init__(c_ubatch=1.0, c_row=0.001)

    def observe(self, ubatches: int, rows: int, seconds: float) -> None:
        pass


@pytest.fixture(scope="module")
def engine(model_path: str):  # noqa: ANN201 - runner.process.engine.Engine
    from runner.process.engine import Engine

    engine = Engine(p.Load(model_path, num_ctx=2048, parallel=4, num_batch=256, draft_max=16))
    engine.speculation.planner = FixedCosts()
    yield engine
    engine.close()


def run(engine, *requests: p.Generate, cancel_after: dict[int, int] | None = None
        ) -> dict[int, tuple[str, p.Done | p.Error | None, list]]:  # noqa: ANN001
    """Drive the engine until every request finished: text, final message, logprob entries."""
    texts: dict[int, list[str]] = {r.id: [] for r in requests}
    logprobs: dict[int, list] = {r.id: [] for r in requests}
    finals: dict[int, p.Done | p.Error | None] = {r.id: None for r in requests}
    for request in requests:
        engine.submit(request)
    cancel_after = dict(cancel_after or {})
    while engine.busy:
        for message in engine.step():
            if isinstance(message, p.Chunk):
                texts[message.id].append(message.text)
                logprobs[message.id].extend(message.logprobs or ())
                if len(texts[message.id]) == cancel_after.get(message.id):
                    engine.cancel(message.id)
            else:
                finals[message.id] = message
    return {rid: ("".join(texts[rid]), finals[rid], logprobs[rid]) for rid in texts}


def one(engine, prompt: str, options: dict, **kwargs) -> tuple[str, p.Done, list]:  # noqa: ANN001
    [(text, done, logprobs)] = run(engine, p.Generate(next(_ids), prompt=prompt, options=options,
                                                      **kwargs)).values()
    assert isinstance(done, p.Done), done
    return text, done, logprobs


def counts(engine) -> tuple[int, int]:  # noqa: ANN001
    return engine.speculation.drafted, engine.speculation.accepted


@pytest.mark.e2e
def test_greedy_output_is_token_for_token_the_same(engine) -> None:  # noqa: ANN001
    for prompt in PROMPTS:
        _, plain, _ = one(engine, prompt, {**GREEDY, **OFF})
        before = counts(engine)
        _, guessed, _ = one(engine, prompt, GREEDY)
        assert guessed.context == plain.context, prompt
        assert guessed.eval_count == plain.eval_count == 40
        if prompt in (COPY, ROSTER):
            drafted, accepted = (a - b for a, b in zip(counts(engine), before, strict=True))
            assert accepted >= 20, (prompt, drafted, accepted)  # the copies were guessed


@pytest.mark.e2e
def test_concurrent_streams_with_guesses_match_their_solo_runs(engine) -> None:  # noqa: ANN001
    solo = {prompt: one(engine, prompt, {**GREEDY, **OFF})[1].context for prompt in PROMPTS[:4]}
    requests = [p.Generate(next(_ids), prompt=prompt, options=GREEDY) for prompt in PROMPTS[:4]]
    before = counts(engine)
    together = run(engine, *requests)
    assert counts(engine)[1] > before[1]
    for request in requests:
        done = together[request.id][1]
        assert isinstance(done, p.Done)
        # Batched arithmetic may change the last bits of the logits (greedy near-ties could
        # then diverge); the copies agree far into them.
        assert done.context[:len(solo[request.prompt]) - 30] == \
            solo[request.prompt][:len(solo[request.prompt]) - 30], request.prompt


@pytest.mark.e2e
def test_a_stop_string_inside_a_guessed_run_ends_where_it_would(engine) -> None:  # noqa: ANN001
    options = {**GREEDY, "num_predict": 80, "stop": ["i += 1"]}  # ~50 tokens in
    text, done, _ = one(engine, COPY, options)
    plain_text, plain, _ = one(engine, COPY, {**options, **OFF})
    assert (text, done.done_reason, done.eval_count) == \
        (plain_text, plain.done_reason, plain.eval_count)
    assert done.done_reason == "stop" and "i += 1" not in text


@pytest.mark.e2e
def test_num_predict_is_exact(engine) -> None:  # noqa: ANN001
    for n in (1, 2, 7):
        text, done, _ = one(engine, COPY, {**GREEDY, "num_predict": n})
        plain_text, plain, _ = one(engine, COPY, {**GREEDY, "num_predict": n, **OFF})
        assert done.eval_count == n and done.done_reason == "length"
        assert (text, done.context) == (plain_text, plain.context)


@pytest.mark.e2e
def test_logprobs_describe_every_kept_token(engine) -> None:  # noqa: ANN001
    _, done, entries = one(engine, COPY, GREEDY, logprobs=3)
    _, plain, plain_entries = one(engine, COPY, {**GREEDY, **OFF}, logprobs=3)
    assert len(entries) == done.eval_count == plain.eval_count
    assert [e["token"] for e in entries] == [e["token"] for e in plain_entries]
    for got, want in zip(entries, plain_entries, strict=True):
        assert got["logprob"] == pytest.approx(want["logprob"], abs=0.05)
        assert len(got["top_logprobs"]) == 3


@pytest.mark.e2e
def test_a_grammar_holds_with_guesses(engine) -> None:  # noqa: ANN001
    import json

    record = '{"name": "Alice", "city": "Leeds", "tags": ["a", "b", "c"]}'
    prompt = f"{record}\n{record}\n{record}\n"
    before = counts(engine)
    text, done, _ = one(engine, prompt, {**GREEDY, "num_predict": 60}, format="json")
    plain_text, plain, _ = one(engine, prompt, {**GREEDY, "num_predict": 60, **OFF},
                               format="json")
    assert (text, done.context) == (plain_text, plain.context)
    assert counts(engine)[1] > before[1]
    if done.done_reason == "stop":
        assert isinstance(json.loads(text), dict)


@pytest.mark.e2e
def test_seeded_sampling_does_not_guess_and_repeats(engine) -> None:  # noqa: ANN001
    options = {"temperature": 0.9, "seed": 7, "num_predict": 30}
    before = counts(engine)
    first = one(engine, COPY, options)[1].context
    assert counts(engine) == before
    assert one(engine, COPY, {**options, **OFF})[1].context == first


@pytest.mark.e2e
def test_sampled_decoding_guesses_and_keeps_copying(engine) -> None:  # noqa: ANN001
    before = counts(engine)
    text, done, _ = one(engine, COPY, {"temperature": 0.3, "top_k": 20, "num_predict": 40})
    drafted, accepted = (a - b for a, b in zip(counts(engine), before, strict=True))
    assert done.eval_count == 40 and accepted > 0 and drafted >= accepted
    assert "left" in text  # the copy goes on (at a low temperature the model copies)


@pytest.mark.e2e
def test_cancel_mid_guessing_leaves_a_sound_cache(engine) -> None:  # noqa: ANN001
    request = p.Generate(next(_ids), prompt=COPY, options={**GREEDY, "num_predict": 200})
    results = run(engine, request, cancel_after={request.id: 3})
    assert results[request.id][1] is None  # cancelled: no final message
    assert all(s.sequence is None for s in engine.slots)
    # The slot's cache (with whatever the guesses left in it) serves the same prompt again.
    _, again, _ = one(engine, COPY, GREEDY)
    _, plain, _ = one(engine, COPY, {**GREEDY, **OFF})
    assert again.context == plain.context


@pytest.mark.e2e
def test_rollback_beyond_the_sliding_window(engine) -> None:  # noqa: ANN001
    # Gemma 3's window is 512 and the sliding-window cache holds 768 positions here: a ~680-token
    # prompt plus the output wraps that cache while guesses are cut back, and a second turn that
    # extends the reply reuses what the guesses left in the cache.
    long_copy = f"{PASSAGE}\n" * 6 + PASSAGE[:60]
    assert 600 < len(engine.tokenize(long_copy)) < 768
    options = {**GREEDY, "num_predict": 90}  # past the 768 cells
    text, done, _ = one(engine, long_copy, options)
    plain_text, plain, _ = one(engine, long_copy, {**options, **OFF})
    assert done.context == plain.context
    # What each slot says its cache holds is what llama.cpp's cache holds: every rejected
    # guess's position was cut off. (A second turn compared on/off diverged at its first token:
    # its last prompt token is read in batches of other sizes in the two runs, the numerics
    # README's Seeds section describes; not settled in this branch.)
    import llama_cpp

    follow = long_copy + text + "\n# Once more:\n"
    _, second, _ = one(engine, follow, {**GREEDY, "num_predict": 16})
    assert second.eval_count == 16
    for slot in engine.slots:
        if slot.tokens:
            assert llama_cpp.llama_memory_seq_pos_max(engine.memory, slot.index) == \
                len(slot.tokens) - 1


# --- settings and reporting ----------------------------------------------------------------------


def test_the_settings_reach_the_runner() -> None:
    from gateway.options import check_options, load_request, merge_options
    from registry.modelfile import parse
    from runner.process.speculation import Speculation
    from shared.config import ConfigError, Settings
    from shared.errors import BadRequest

    assert Settings.from_env({}).draft_max == 32  # on: the benchmark showed no loss
    assert Settings.from_env({"CORRAL_DRAFT_MAX": "0"}).draft_max == 0  # off
    settings = Settings.from_env({"CORRAL_DRAFT_MAX": "4"})
    assert settings.draft_max == 4
    with pytest.raises(ConfigError):
        Settings.from_env({"CORRAL_DRAFT_MAX": "-1"})
    options = merge_options({}, {})
    assert "draft_max" not in options  # unset: the runner's default decides
    assert load_request("m.gguf", options, settings, 0).draft_max == 4
    assert check_options({"draft_max": 0}) == {"draft_max": 0}
    with pytest.raises(BadRequest, match="draft_max"):
        check_options({"draft_max": "many"})
    modelfile = parse("FROM x.gguf\nPARAMETER draft_max 0\n")
    assert modelfile.parameters["draft_max"] == 0

    class Seq:
        seeded = False
        options: dict = {}

    speculation = Speculation(4)
    assert speculation.limit(Seq()) == 4
    Seq.options = {"draft_max": 0}
    assert speculation.limit(Seq()) == 0
    Seq.options, Seq.seeded = {"draft_max": 8}, True
    assert speculation.limit(Seq()) == 0


@pytest.mark.e2e
def test_ps_and_metrics_show_the_counts_and_the_option_turns_it_off(corral_server) -> None:  # noqa: ANN001
    import httpx

    def generate(options: dict) -> dict:
        reply = httpx.post(corral_server.url + "/api/generate", timeout=300, json={
            "model": "gemma3:270m", "prompt": COPY, "raw": True, "stream": False,
            "options": {"temperature": 0, "num_predict": 32, **options}})
        assert reply.status_code == 200, reply.text
        return reply.json()

    default, off = generate({"draft_max": 16}), generate({"draft_max": 0})
    assert default["response"] == off["response"]
    assert default["eval_count"] == off["eval_count"]  # (a raw prompt has no context)
    entry = corral_server.wait_ps("gemma3:270m", lambda e: e is not None)
    speculative = entry["corral"]["speculative"]
    assert set(speculative) == {"drafted", "accepted"}
    assert 0 <= speculative["accepted"] <= speculative["drafted"]
    assert entry["corral"]["runners"][0]["speculative"]["drafted"] == speculative["drafted"]
    metrics = httpx.get(corral_server.url + "/metrics", timeout=30).text
    assert "corral_speculative_drafted_tokens_total" in metrics
    assert "corral_speculative_accepted_tokens_total" in metrics
