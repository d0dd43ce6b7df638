"""`corral bench` (gateway/loadtest): percentile math, report shaping, stream parsing against
mock transports, workloads, arrival schedules, SLOs and the rate search, the closed and open
loops' bounds, A/B order, the CLI's exit codes, and e2e runs against live corral servers (one
server shared by the module's e2e tests, and a second one for --compare)."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.cli import main
from gateway.loadtest import BenchConfig, Unreachable, percentile, run_bench
from gateway.loadtest.arrivals import schedule
from gateway.loadtest.client import RequestResult, Target, http_client, run_request
from gateway.loadtest.htmlpage import write_html
from gateway.loadtest.levels import InFlight, Level
from gateway.loadtest.prompts import fixed_prompt, load_prompts, random_prompt
from gateway.loadtest.report import (
    BenchReport,
    columns,
    latency_ms,
    render_table,
    search_lines,
    skipped_level,
    summarize_level,
    table_rows,
    write_chart,
)
from gateway.loadtest.slo import (
    RateSearch,
    format_slo,
    meets_slo,
    parse_duration,
    parse_slo,
    request_itl,
)
from gateway.loadtest.workload import Length, Workload
from tests.conftest import ROOT, LiveServer, free_port, start_server

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- percentiles and summaries (pure) ---------------------------------------------------------


@pytest.mark.parametrize("values", [[1.0], [3.0, 1.0], [5, 1, 4, 2, 3], list(range(101)),
                                    [0.1, 0.1, 7.5, 2.25, 9.0, 0.0, 3.3]])
@pytest.mark.parametrize("q", [0, 10, 50, 90, 99, 100])
def test_percentile_matches_numpys_linear_method(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edges() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    values = [0.3, 12.0, 0.9, 4.4, 4.4, 2.0, 100.0]
    p50, p90, p99 = (percentile(values, q) for q in (50, 90, 99))
    assert p50 <= p90 <= p99 <= max(values)


def test_latency_ms_converts_seconds() -> None:
    stats = latency_ms([0.010, 0.020, 0.030])
    assert stats["p50"] == pytest.approx(20.0)
    assert stats["mean"] == pytest.approx(20.0)
    assert set(stats) == {"p50", "p90", "p99", "mean"}
    assert latency_ms([]) == {"p50": None, "p90": None, "p99": None, "mean": None}


def _result(sent: float, chunks: list[float], end: float | None, tokens: int,
            error: str | None = None, prompt: int | None = 100,
            tokens_from: str = "server") -> RequestResult:
    return RequestResult(sent=sent, chunks=chunks, end=end, output_tokens=tokens,
                         prompt_tokens=prompt, error=error, tokens_from=tokens_from)


def test_request_result_timings() -> None:
    r = _result(10.0, [10.5, 10.6, 10.8], 11.0, 3)
    assert r.ok
    assert r.ttft == pytest.approx(0.5)
    assert r.e2e == pytest.approx(1.0)
    assert r.gaps == pytest.approx([0.1, 0.2])
    failed = _result(0.0, [], None, 0, error="boom")
    assert not failed.ok and failed.ttft is None and failed.e2e is None and failed.gaps == []


def test_summarize_level_pools_and_divides_by_wall_time() -> None:
    results = [
        _result(0.0, [0.1, 0.2, 0.4], 0.5, 3),
        _result(0.0, [0.2, 0.3], 0.4, 2, prompt=200, tokens_from="chunks"),
        _result(0.5, [], None, 0, error="HTTP 500: boom"),
        _result(0.6, [], None, 0, error="HTTP 500: boom"),
    ]
    level = summarize_level(2, results, wall_s=2.0, planned=5)
    assert level.status == "ok"
    assert (level.completed, level.errors, level.incomplete, level.planned) == (2, 2, 1, 5)
    assert level.output_tokens == 5
    assert level.output_tokens_per_s == pytest.approx(2.5)
    assert level.requests_per_s == pytest.approx(1.0)
    assert level.mean_output_tokens == pytest.approx(2.5)
    assert level.mean_prompt_tokens == pytest.approx(150)
    assert level.tokens_counted_from_chunks == 1
    assert level.ttft_ms["p50"] == pytest.approx(150.0)  # of 100 ms and 200 ms
    # ITL pools the gaps of both requests: 100, 200 and 100 ms.
    assert level.itl_ms["p50"] == pytest.approx(100.0)
    assert level.itl_ms["mean"] == pytest.approx(400 / 3)
    assert level.e2e_ms["p50"] == pytest.approx(450.0)
    assert level.error_samples == ["HTTP 500: boom (x2)"]


def test_summarize_level_with_nothing_finished() -> None:
    level = summarize_level(4, [], wall_s=0.0, planned=8, truncated=True)
    assert level.status == "truncated"
    assert level.completed == 0 and level.incomplete == 8
    assert level.output_tokens_per_s == 0.0 and level.ttft_ms["p50"] is None


def _report() -> BenchReport:
    one = summarize_level(1, [_result(0.0, [0.1, 0.15, 0.2], 0.25, 3)], wall_s=0.25)
    two = summarize_level(2, [_result(0.0, [0.2, 0.3], 0.35, 2), _result(0.0, [], None, 0, "x")],
                          wall_s=0.4)
    meta = {"url": "http://x", "api": "ollama", "endpoint": "generate", "model": "m",
            "prompts": "random, ~250 tokens", "output_tokens": 3}
    return BenchReport(meta=meta, levels=[one, two, skipped_level(4, 16)])


def test_report_json_has_one_entry_per_level() -> None:
    report = _report()
    data = json.loads(report.to_json())
    assert [lv["concurrency"] for lv in data["levels"]] == [1, 2, 4]
    assert [lv["status"] for lv in data["levels"]] == ["ok", "ok", "skipped"]
    assert set(data["definitions"]) >= {"ttft", "itl", "e2e", "output_tokens_per_s"}
    assert data["levels"][0]["ttft_ms"]["p50"] == pytest.approx(100.0)
    assert report.completed == 2 and report.errors == 1
    assert report.first_errors() == ["x"]


def test_table_rows_line_up_with_columns() -> None:
    report = _report()
    rows = table_rows(report)
    cols = columns(report)
    assert cols[:6] == ["conc", "sent", "ok", "err", "req/s", "out tok/s"]
    assert "late" not in cols and "server" not in cols and "SLO met" not in cols
    assert all(len(row) == len(cols) for row in rows)
    assert rows[0][:6] == ["1", "1", "1", "0", "4.00", "12.0"]
    assert rows[0][6] == "100 / 100 / 100"  # ms, whole numbers from 100 up
    assert rows[1][3] == "1 (error)"
    assert "skipped" in rows[2][1]
    assert render_table(report).row_count == 3


def test_chart_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "chart.png"
    write_chart(_report(), path)
    assert path.read_bytes().startswith(PNG_SIGNATURE)


# --- prompts ----------------------------------------------------------------------------------


def test_random_prompts_are_seeded_distinct_and_about_the_right_length() -> None:
    assert random_prompt(250, 1, 0) == random_prompt(250, 1, 0)
    assert random_prompt(250, 1, 0) != random_prompt(250, 1, 1)
    assert random_prompt(250, 1, 0) != random_prompt(250, 2, 0)
    words = len(random_prompt(250, 0, 3).split())
    assert 200 <= words <= 250
    workload = Workload(kind="random", input_tokens=Length(40), seed=3)
    assert workload.spec(5).prompt == random_prompt(40, 3, 5)


def test_fixed_prompt_is_shared() -> None:
    workload = Workload(kind="fixed", input_tokens=Length(300))
    assert workload.spec(0).prompt == workload.spec(7).prompt == fixed_prompt(300)
    assert 250 <= len(fixed_prompt(300).split()) <= 300
    with pytest.raises(ValueError, match="unknown workload"):
        Workload(kind="nonsense").validate()


def test_prompt_files_plain_and_jsonl(tmp_path: Path) -> None:
    plain = tmp_path / "p.txt"
    plain.write_text("first prompt\n\nsecond prompt\n")
    assert load_prompts(plain) == ["first prompt", "second prompt"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a\\nb"}\n"plain string"\n{"text": "t"}\n')
    assert load_prompts(jsonl) == ["a\nb", "plain string", "t"]
    workload = Workload(kind="file", prompts=load_prompts(jsonl))
    assert [workload.spec(i).prompt for i in range(4)] == ["a\nb", "plain string", "t", "a\nb"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"other": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_prompts(bad)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no prompts"):
        load_prompts(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="cannot read"):
        load_prompts(tmp_path / "missing.txt")


# --- requests against a mock transport --------------------------------------------------------


def test_target_paths_and_bodies() -> None:
    t = Target("http://h:1/", api="ollama", model="m", output_tokens=7)
    assert t.endpoint == "generate" and t.request_url == "http://h:1/api/generate"
    body = t.body("hi")
    assert body["raw"] is True and body["prompt"] == "hi" and body["stream"] is True
    assert body["options"] == {"temperature": 0, "num_predict": 7}
    chat = Target("http://h:1", api="ollama", endpoint="chat", model="m")
    assert chat.request_url.endswith("/api/chat")
    assert chat.body("hi")["messages"] == [{"role": "user", "content": "hi"}]
    oa = Target("http://h:1/v1", api="openai", model="m", output_tokens=5, api_key="k")
    assert oa.endpoint == "chat" and oa.request_url == "http://h:1/v1/chat/completions"
    body = oa.body("hi")
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 5 and body["temperature"] == 0
    assert oa.headers()["Authorization"] == "Bearer k"
    comp = Target("http://h:1", api="openai", endpoint="completions", model="m")
    assert comp.request_url == "http://h:1/v1/completions" and comp.body("x")["prompt"] == "x"
    with pytest.raises(ValueError, match="no endpoint"):
        Target("http://h", api="openai", endpoint="generate")


def _ndjson(objs: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def _sse(objs: list[Any], done: bool = True) -> bytes:
    out = b": keep-alive comment\n\n"
    for o in objs:
        out += b"data: " + json.dumps(o).encode() + b"\n\n"
    return out + (b"data: [DONE]\n\n" if done else b"")


async def _one(target: Target, handler: Any) -> RequestResult:
    async with http_client(target, 1, httpx.MockTransport(handler)) as http:
        return await run_request(http, target, "prompt")


def test_ollama_generate_stream() -> None:
    seen: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["path"] = request.url.path
        seen["body"] = json.loads(request.content)
        return httpx.Response(200, content=_ndjson([
            {"response": "", "done": False},  # empty: not a token
            {"response": "Hello", "done": False},
            {"response": " world", "done": False},
            {"response": "", "done": True, "eval_count": 2, "prompt_eval_count": 9},
        ]))

    target = Target("http://h", api="ollama", model="m", output_tokens=2)
    result = asyncio.run(_one(target, handler))
    assert seen["path"] == "/api/generate" and seen["body"]["options"]["num_predict"] == 2
    assert result.ok, result.error
    assert len(result.chunks) == 2
    assert (result.output_tokens, result.prompt_tokens, result.tokens_from) == (2, 9, "server")
    assert result.sent <= result.chunks[0] <= result.end  # type: ignore[operator]


def test_ollama_chat_stream_counts_chunks_without_eval_count() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=_ndjson([
            {"message": {"role": "assistant", "content": "a"}, "done": False},
            {"message": {"role": "assistant", "content": "b"}, "done": False},
            {"message": {"role": "assistant", "content": "c"}, "done": False},
            {"message": {"role": "assistant", "content": ""}, "done": True},
        ]))

    result = asyncio.run(_one(Target("http://h", endpoint="chat", model="m"), handler))
    assert result.ok and result.output_tokens == 3 and result.tokens_from == "chunks"


def test_openai_chat_stream_with_usage() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions"
        assert json.loads(request.content)["stream_options"] == {"include_usage": True}
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=_sse([
            {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
            {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {"content": "!"}, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}},
        ]))

    result = asyncio.run(_one(Target("http://h", api="openai", model="m"), handler))
    assert result.ok, result.error
    assert len(result.chunks) == 2 and result.output_tokens == 2 and result.prompt_tokens == 4


def test_openai_completions_without_usage_or_done() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=_sse([
            {"choices": [{"index": 0, "text": "x", "finish_reason": None}]},
            {"choices": [{"index": 0, "text": "y", "finish_reason": None}]},
            {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]},
        ], done=False))

    target = Target("http://h", api="openai", endpoint="completions", model="m")
    result = asyncio.run(_one(target, handler))
    assert result.ok and result.output_tokens == 2 and result.tokens_from == "chunks"


@pytest.mark.parametrize(("api", "reply", "message"), [
    ("ollama", httpx.Response(404, json={"error": "model 'm' not found"}),
     "HTTP 404: model 'm' not found"),
    ("openai", httpx.Response(404, json={"error": {"message": "no such model"}}),
     "HTTP 404: no such model"),
    ("ollama", httpx.Response(200, content=_ndjson([{"response": "a", "done": False},
                                                    {"error": "runner crashed"}])),
     "runner crashed"),
    ("openai", httpx.Response(200, content=_sse([{"error": {"message": "overloaded"}}])),
     "overloaded"),
    ("ollama", httpx.Response(200, content=_ndjson([{"response": "a", "done": False}])),
     "ended before the final message"),
    ("ollama", httpx.Response(200, content=b"<html>nope</html>\n"), "unexpected response"),
])
def test_failures_become_errors(api: str, reply: httpx.Response, message: str) -> None:
    result = asyncio.run(_one(Target("http://h", api=api, model="m"), lambda _r: reply))
    assert not result.ok
    assert message in (result.error or "")


# --- the sweep --------------------------------------------------------------------------------


class FakeServer:
    """An async mock Ollama server (generate and chat) that streams `tokens` chunks `gap` seconds
    apart after `delay`, records every request body, counts how many requests are in flight,
    and answers 503 beyond `capacity` requests in flight."""

    def __init__(self, tokens: int = 3, gap: float = 0.01, fail: bool = False,
                 delay: float = 0.0, capacity: int | None = None) -> None:
        self.tokens, self.gap, self.fail = tokens, gap, fail
        self.delay, self.capacity = delay, capacity
        self.in_flight = 0
        self.max_in_flight = 0
        self.prompts: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self.replies: list[str] = []  # the reply text of each body, same order

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/":
            return httpx.Response(200, text="Ollama is running")
        if self.fail:
            return httpx.Response(404, json={"error": "model 'm' not found"})
        body = json.loads(request.content)
        self.bodies.append(body)
        if "prompt" in body:
            self.prompts.append(body["prompt"])
        pieces = [f"reply{len(self.bodies)}"] + [" t"] * (self.tokens - 1)
        self.replies.append("".join(pieces))
        if self.capacity is not None and self.in_flight >= self.capacity:
            return httpx.Response(503, json={"error": "server busy, please try again"})
        chat = request.url.path == "/api/chat"
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

        def line(text: str, done: bool = False) -> bytes:
            obj: dict[str, Any] = {"message": {"role": "assistant", "content": text}} if chat \
                else {"response": text}
            obj["done"] = done
            if done:
                obj.update(eval_count=self.tokens, prompt_eval_count=len(json.dumps(body)))
            return _ndjson([obj])

        async def stream() -> AsyncIterator[bytes]:
            if self.delay:
                await asyncio.sleep(self.delay)
            for piece in pieces:
                await asyncio.sleep(self.gap)
                yield line(piece)
            self.in_flight -= 1  # done from here on: the client may send its next request
            yield line("", done=True)

        return httpx.Response(200, content=stream())


def test_sweep_keeps_exactly_c_in_flight_and_counts_requests() -> None:
    server = FakeServer(tokens=4, gap=0.01)
    messages: list[str] = []
    config = BenchConfig(url="http://fake", model="m", concurrency=[1, 3], requests=6,
                         warmup=2, input_tokens=20, output_tokens=4)
    report = run_bench(config, transport=httpx.MockTransport(server), progress=messages.append)
    assert [lv.concurrency for lv in report.levels] == [1, 3]
    assert [lv.completed for lv in report.levels] == [6, 6]
    assert server.max_in_flight == 3
    assert len(server.prompts) == 2 * (2 + 6)
    assert len(set(server.prompts)) == len(server.prompts)  # random prompts: all distinct
    for level in report.levels:
        assert level.errors == 0 and level.output_tokens == 24
        assert level.itl_ms["p50"] >= 5  # the mock's 10 ms gaps, seen from the client
        assert level.ttft_ms["p50"] <= level.e2e_ms["p50"]
    # Three at a time finish sooner than one at a time.
    assert report.levels[1].output_tokens_per_s > report.levels[0].output_tokens_per_s
    assert report.meta["requests_per_level"] == [6, 6]
    assert any("concurrency 3" in m for m in messages)


def test_sweep_default_requests_are_four_per_slot() -> None:
    server = FakeServer(tokens=1, gap=0.0)
    config = BenchConfig(url="http://fake", model="m", concurrency=[2], warmup=0)
    report = run_bench(config, transport=httpx.MockTransport(server))
    assert report.levels[0].completed == 8 and len(server.prompts) == 8


def test_sweep_stops_at_max_seconds() -> None:
    server = FakeServer(tokens=50, gap=0.02)  # one request takes about a second
    config = BenchConfig(url="http://fake", model="m", concurrency=[1, 2], requests=3,
                         warmup=0, max_seconds=0.3)
    report = run_bench(config, transport=httpx.MockTransport(server))
    first, second = report.levels
    assert first.status == "truncated" and first.completed == 0 and first.incomplete == 3
    assert second.status == "skipped"
    assert report.meta["out_of_time"] is True


def test_unreachable_server_raises() -> None:
    config = BenchConfig(url=f"http://127.0.0.1:{free_port()}", model="m", concurrency=[1])
    with pytest.raises(Unreachable, match="could not reach"):
        run_bench(config)


# --- workloads --------------------------------------------------------------------------------


def test_lengths_parse_and_draw() -> None:
    assert Length.parse("250") == Length(250) and str(Length(250)) == "250"
    assert Length.parse("250:50") == Length(250, 50.0) and str(Length(250, 50)) == "250:50"
    for bad in ("", "x", "250:", "0", "10:-1", "10:nan"):
        with pytest.raises(ValueError):
            Length.parse(bad)
    rng = random.Random(1)
    assert {Length(7).draw(rng) for _ in range(5)} == {7}
    draws = [Length(100, 20).draw(rng) for _ in range(4000)]
    assert statistics.mean(draws) == pytest.approx(100, abs=1.5)
    assert statistics.stdev(draws) == pytest.approx(20, abs=1.5)
    assert min(Length(2, 10).draw(rng) for _ in range(500)) == 1  # clipped at one token


def test_lengths_are_drawn_per_request_and_repeatable() -> None:
    w = Workload(input_tokens=Length(40, 10), output_tokens=Length(16, 4), seed=2)
    specs = [w.spec(i) for i in range(50)]
    assert [s.input_tokens for s in specs] == [w.spec(i).input_tokens for i in range(50)]
    assert len({s.input_tokens for s in specs}) > 5 and len({s.output_tokens for s in specs}) > 3
    assert all(len(str(s.prompt).split()) <= (s.input_tokens or 0) for s in specs)
    body = Target("http://h", model="m").body(specs[3].prompt, specs[3].output_tokens)
    assert body["options"]["num_predict"] == specs[3].output_tokens


def test_shared_prefix_requests_share_k_system_prompts() -> None:
    w = Workload(kind="shared-prefix", prefixes=3, prefix_tokens=60, input_tokens=Length(10))
    specs = [w.spec(i) for i in range(9)]
    systems = [s.prompt[0]["content"] for s in specs]  # type: ignore[index]
    users = [s.prompt[1]["content"] for s in specs]  # type: ignore[index]
    assert len(set(systems)) == 3 and systems[0] == systems[3] == systems[6]
    assert len(set(users)) == 9
    assert 50 <= len(systems[0].split()) <= 60
    # Raw endpoints get the system prompt first, so the shared part is a prefix there too.
    text = Target("http://h", model="m").body(specs[4].prompt)["prompt"]
    assert text.startswith(systems[4] + "\n\n") and text.endswith(users[4])
    chat = Target("http://h", api="openai", model="m").body(specs[4].prompt)
    assert [m["role"] for m in chat["messages"]] == ["system", "user"]


def test_conversations_resend_their_history_and_wait_for_their_turn() -> None:
    w = Workload(kind="multi-turn", conversations=2, turns=3, input_tokens=Length(8))

    async def scenario() -> None:
        source = w.source(100)
        first, second = await source.take(), await source.take()
        assert (first.conversation, first.turn, second.conversation) == (100, 1, 101)
        assert not source.ready()
        with pytest.raises(TimeoutError):  # both conversations are out: the next turn waits
            await asyncio.wait_for(source.take(), 0.05)
        source.done(first, RequestResult(sent=0, end=1, text="answer one"))
        again = await asyncio.wait_for(source.take(), 1)
        assert (again.conversation, again.turn) == (100, 2)
        assert again.prompt[:2] == [first.prompt[0],  # type: ignore[index]
                                    {"role": "assistant", "content": "answer one"}]
        assert again.prompt[2]["role"] == "user"  # type: ignore[index]
        assert again.prompt[2] != first.prompt[0]  # type: ignore[index]
        source.done(again, RequestResult(sent=0, end=1, text="answer two"))
        third = await source.take()
        assert third.turn == 3 and len(third.prompt) == 5
        assert third.prompt[:4] == [*again.prompt, {"role": "assistant", "content": "answer two"}]
        source.done(third, RequestResult(sent=0, end=1, text="x"))  # the last turn
        fresh = await source.take()
        assert (fresh.conversation, fresh.turn, len(fresh.prompt)) == (102, 1, 1)
        source.done(second, RequestResult(sent=0, error="HTTP 500: boom"))  # a failed turn
        replaced = await source.take()
        assert (replaced.conversation, replaced.turn) == (103, 1)

    asyncio.run(scenario())


def test_message_lists_in_prompt_files(tmp_path: Path) -> None:
    path = tmp_path / "chats.jsonl"
    path.write_text('[{"role": "system", "content": "be brief"}, '
                    '{"role": "user", "content": "hi"}]\n'
                    '{"messages": [{"role": "user", "content": "yo"}]}\n'
                    "plain line\n")
    prompts = load_prompts(path)
    assert prompts[0] == [{"role": "system", "content": "be brief"},
                          {"role": "user", "content": "hi"}]
    assert prompts[1] == [{"role": "user", "content": "yo"}] and prompts[2] == "plain line"
    ollama_chat = Target("http://h", endpoint="chat", model="m")
    assert ollama_chat.body(prompts[0])["messages"] == prompts[0]
    assert Target("http://h", model="m").body(prompts[0])["prompt"] == "be brief\n\nhi"
    (tmp_path / "bad.jsonl").write_text('[{"role": "user"}]\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: a message needs"):
        load_prompts(tmp_path / "bad.jsonl")


# --- arrivals, SLOs, the rate search ----------------------------------------------------------


def test_constant_arrivals_are_evenly_spaced() -> None:
    due = schedule(4.0, kind="constant", duration=2.0)
    assert due == pytest.approx([i / 4 for i in range(8)])
    assert schedule(4.0, kind="constant", count=3) == pytest.approx([0, 0.25, 0.5])
    assert len(schedule(4.0, kind="constant", duration=10, count=5)) == 5


@pytest.mark.parametrize(("kind", "burstiness", "cv"), [("poisson", 1.0, 1.0),
                                                        ("gamma", 0.25, 2.0),
                                                        ("gamma", 4.0, 0.5)])
def test_random_arrivals_have_the_asked_rate_and_spread(kind: str, burstiness: float,
                                                       cv: float) -> None:
    due = schedule(10.0, kind=kind, burstiness=burstiness, count=20000, seed=5)
    gaps = [b - a for a, b in zip(due, due[1:], strict=False)]
    assert statistics.mean(gaps) == pytest.approx(0.1, rel=0.05)
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(cv, rel=0.1)
    assert due == schedule(10.0, kind=kind, burstiness=burstiness, count=20000, seed=5)
    assert due != schedule(10.0, kind=kind, burstiness=burstiness, count=20000, seed=6)


def test_schedule_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        schedule(0, duration=1)
    with pytest.raises(ValueError):
        schedule(1, kind="uniform", duration=1)
    with pytest.raises(ValueError):
        schedule(1)


def test_slo_and_duration_parsing() -> None:
    assert parse_slo("ttft=500ms,itl=100ms,e2e=10s") == {"ttft": 0.5, "itl": 0.1, "e2e": 10.0}
    assert parse_slo("E2E=1.5m") == {"e2e": 90.0}
    assert parse_duration("250ms") == pytest.approx(0.25)
    for bad in ("ttft=500", "ttft=fast", "tpot=1s", "ttft", "", "ttft=1s,ttft=2s", "e2e=0s"):
        with pytest.raises(ValueError):
            parse_slo(bad)
    assert format_slo({"e2e": 10.0, "ttft": 0.5}) == "ttft<=500ms, e2e<=10s"


def _slo_records() -> list[RequestResult]:
    """Hand-made requests, each sent at 0 unless said; see the comments for what each misses."""
    return [
        _result(0.0, [0.2, 0.25, 0.3], 0.5, 3),  # ttft 200, itl 50, e2e 500: meets all
        _result(0.0, [0.4, 0.45], 0.5, 2),  # ttft 400: too slow a first token
        _result(0.0, [0.1, 0.25, 0.4], 0.45, 3),  # itl 150 (its own mean gap): too slow
        _result(0.0, [0.1], 0.1, 1),  # a single chunk: no gaps, meets all
        _result(0.0, [], None, 0, error="HTTP 503: busy"),  # failed: never meets
        _result(0.0, [0.1, 0.15, 0.2], 1.5, 3),  # e2e 1500: too long
        # Open loop, sent 250 ms after its due time: ttft 200 + 250 waiting = 450.
        RequestResult(sent=1.25, scheduled=1.0, chunks=[1.45, 1.5], end=1.6, output_tokens=2),
    ]


def test_slo_share_and_goodput_match_a_count_by_hand() -> None:
    records = _slo_records()
    everything = {"ttft": 0.3, "itl": 0.1, "e2e": 1.0}
    assert [meets_slo(r, everything) for r in records] == [True, False, False, True, False,
                                                           False, False]
    assert [meets_slo(r, {"e2e": 1.0}) for r in records] == [True, True, True, True, False,
                                                             False, True]
    assert [meets_slo(r, {"ttft": 0.5}) for r in records] == [True, True, True, True, False,
                                                              True, True]
    assert request_itl(records[2]) == pytest.approx(0.15) and request_itl(records[3]) is None
    level = summarize_level(Level("rate", 2.0), records, wall_s=2.0, slo=everything)
    assert (level.slo_met, level.goodput_per_s) == (2, pytest.approx(1.0))
    assert level.slo_share == pytest.approx(2 / 7)
    level = summarize_level(Level("rate", 2.0), records, wall_s=2.0, slo={"e2e": 1.0})
    assert level.slo_share == pytest.approx(5 / 7) and level.goodput_per_s == pytest.approx(2.5)
    assert summarize_level(1, records, wall_s=2.0).slo_share is None  # no SLOs asked


def test_rate_search_doubles_then_bisects() -> None:
    search = RateSearch(1.0, 0.9)
    while (rate := search.next_rate()) is not None:
        search.record(rate, 1.0 if rate <= 5.3 else 0.5)
    assert [r for r, _ in search.probes] == [1, 2, 4, 8, 6, 5, 5.5]
    assert (search.passed, search.failed) == (5, 5.5)
    assert search.to_dict()["max_rate"] == 5 and search.to_dict()["finished"] is True


def test_rate_search_goes_down_from_a_failing_start_and_stops() -> None:
    search = RateSearch(4.0, 0.9)
    while (rate := search.next_rate()) is not None:
        search.record(rate, 0.95 if rate <= 0.7 else 0.2)
    assert search.passed is not None and search.failed is not None
    assert search.passed <= 0.7 < search.failed
    assert search.failed - search.passed <= 0.1 * search.failed
    never = RateSearch(1.0, 0.9, max_probes=5)
    while (rate := never.next_rate()) is not None:
        never.record(rate, 0.0)
    assert never.passed is None and len(never.probes) == 5
    cut = RateSearch(1.0, 0.9)
    cut.stopped = True
    assert cut.next_rate() is None and cut.to_dict()["finished"] is False


# --- open-loop summaries, in-flight counts, error kinds ---------------------------------------


def test_in_flight_mean_is_time_weighted() -> None:
    tracker = InFlight()
    tracker.series = [(0.0, 0), (1.0, 1), (2.0, 2), (3.0, 1), (4.0, 0)]
    assert tracker.mean(0.0, 4.0) == pytest.approx(1.0)
    assert tracker.mean(1.0, 3.0) == pytest.approx(1.5)
    assert tracker.mean(2.0, 2.0) is None


def test_open_loop_summary_counts_late_kinds_and_cut() -> None:
    results = [
        RequestResult(sent=0.0, scheduled=0.0, chunks=[0.1], end=0.2, output_tokens=1),
        RequestResult(sent=0.52, scheduled=0.5, chunks=[0.6], end=0.7, output_tokens=1),
        RequestResult(sent=1.1, scheduled=1.0, error="HTTP 429: slow down", error_kind="429"),
        RequestResult(sent=1.5, scheduled=1.5, error="HTTP 429: slow down", error_kind="429"),
        RequestResult(sent=2.0, scheduled=2.0, error="timed out after 1 s", error_kind="timeout"),
        RequestResult(sent=2.5, scheduled=2.5, error="HTTP 503: busy", error_kind="503"),
        RequestResult(sent=3.0, scheduled=3.0, error="cut", error_kind="cut"),
    ]
    level = summarize_level(Level("rate", 2.0), results, 4.0, planned=8, truncated=True)
    assert (level.rate, level.concurrency, level.status) == (2.0, None, "truncated")
    assert (level.sent, level.completed, level.errors) == (7, 2, 4)
    assert level.incomplete == 2  # one cut, one never sent
    assert level.errors_by_kind == {"429": 2, "timeout": 1, "503": 1}
    assert level.late == 2 and level.max_late_ms == pytest.approx(100)
    assert level.achieved_rate == pytest.approx(6 / 3.0)
    row = table_rows(BenchReport(meta={}, levels=[level]))[0]
    assert row[0] == "2" and row[3] == "4 (429 x2, timeout, 503) +2 cut"
    assert row[4] == "2 (max 100 ms)" and row[5] == "2.00"


@pytest.mark.parametrize(("reply", "kind"), [
    (httpx.Response(429, json={"error": "too many requests"}), "429"),
    (httpx.Response(503, json={"error": "server busy"}), "503"),
    (httpx.Response(200, content=_ndjson([{"response": "a", "done": False}])), "stream"),
])
def test_error_kinds(reply: httpx.Response, kind: str) -> None:
    result = asyncio.run(_one(Target("http://h", model="m"), lambda _r: reply))
    assert result.error_kind == kind
    assert result.status == reply.status_code


def test_timeouts_and_refused_connections_are_their_own_kinds() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(1.0)
        return httpx.Response(200, content=b"")

    async def timed() -> RequestResult:
        target = Target("http://h", model="m")
        async with http_client(target, 1, httpx.MockTransport(slow)) as http:
            return await run_request(http, target, "p", timeout=0.05)

    result = asyncio.run(timed())
    assert result.error_kind == "timeout" and "timed out after 0.05 s" in (result.error or "")
    assert result.e2e is None

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    result = asyncio.run(_one(Target("http://h", model="m"), refuse))
    assert result.error_kind == "connect"


# --- open loops, A/B, search, reports (mock servers) ------------------------------------------


def _check_rate_kept(level: Any) -> None:
    """The sent rate is the asked one, unless this process itself was held up (a loaded
    machine can stall it for a few hundred ms), in which case the delay shows as late sends."""
    get = level.get if isinstance(level, dict) else lambda k: getattr(level, k)
    assert get("max_late_ms") is not None
    if get("max_late_ms") < 50:
        assert get("achieved_rate") == pytest.approx(get("rate"), rel=0.1)
    else:
        assert get("late") >= 1


def test_open_loop_keeps_the_asked_rate() -> None:
    server = FakeServer(tokens=3, gap=0.005)
    config = BenchConfig(url="http://fake", model="m", rates=[10.0, 20.0], requests=16,
                         arrivals="constant", warmup=1, input_tokens=20, output_tokens=3)
    report = run_bench(config, transport=httpx.MockTransport(server))
    assert [lv.rate for lv in report.levels] == [10.0, 20.0]
    for level in report.levels:
        assert level.sent == level.completed == 16 and level.errors == 0
        _check_rate_kept(level)
        assert level.concurrency is None and level.in_flight_max >= 1
        assert level.in_flight and level.in_flight[-1][1] == 0
    measured = [r for r in report.requests if not r["warmup"]]
    assert len(measured) == 32 and all(r["scheduled_s"] is not None for r in measured)
    warm = [r for r in report.requests if r["warmup"]]
    assert len(warm) == 2 and all(r["scheduled_s"] is None for r in warm)
    assert report.meta["mode"] == "rate" and report.meta["arrivals"] == "constant"


def test_open_loop_does_not_wait_for_the_server() -> None:
    """Requests keep going out on schedule while earlier ones are still being answered."""
    server = FakeServer(tokens=2, gap=0.01, delay=0.5)  # each takes about 0.52 s
    config = BenchConfig(url="http://fake", model="m", rates=[10.0], requests=8,
                         arrivals="constant", warmup=0, output_tokens=2)
    level = run_bench(config, transport=httpx.MockTransport(server)).levels[0]
    assert server.max_in_flight >= 4  # ~0.52 s x 10/s requests out at once
    assert level.in_flight_max == server.max_in_flight and level.completed == 8


def test_a_capped_open_loop_counts_late_requests() -> None:
    server = FakeServer(tokens=2, gap=0.01, delay=0.1)
    config = BenchConfig(url="http://fake", model="m", rates=[50.0], requests=5,
                         arrivals="constant", warmup=0, output_tokens=2, max_in_flight=1)
    report = run_bench(config, transport=httpx.MockTransport(server))
    level = report.levels[0]
    assert server.max_in_flight == 1 and level.in_flight_max == 1
    assert level.completed == 5 and level.late >= 3
    assert level.max_late_ms is not None and level.max_late_ms > 200
    lateness = [r["sent_s"] - r["scheduled_s"] for r in report.requests]
    assert sum(x > 0.01 for x in lateness) == level.late
    with pytest.raises(ValueError, match="--max-in-flight caps --rate"):
        BenchConfig(url="http://x", model="m", concurrency=[2], max_in_flight=1).validate()


def test_closed_loop_for_a_duration() -> None:
    server = FakeServer(tokens=2, gap=0.01)
    config = BenchConfig(url="http://fake", model="m", concurrency=[2], duration=0.3, warmup=0)
    report = run_bench(config, transport=httpx.MockTransport(server))
    level = report.levels[0]
    assert level.planned is None and level.sent >= 4 and level.completed == level.sent
    start = min(r["sent_s"] for r in report.requests)
    assert max(r["sent_s"] for r in report.requests) <= start + 0.3 + 0.05
    assert report.meta["requests_per_level"] == [None]


def test_multi_turn_bodies_carry_the_servers_replies() -> None:
    server = FakeServer(tokens=3, gap=0.002)
    config = BenchConfig(url="http://fake", model="m", endpoint="chat", concurrency=[2],
                         requests=8, warmup=0, workload="multi-turn", conversations=2, turns=3,
                         input_tokens=6, output_tokens=3)
    report = run_bench(config, transport=httpx.MockTransport(server))
    assert report.levels[0].completed == 8
    by_history = {json.dumps(b["messages"]): reply
                  for b, reply in zip(server.bodies, server.replies, strict=True)}
    for body in server.bodies:
        messages = body["messages"]
        assert messages[-1]["role"] == "user" and len(messages) % 2 == 1
        if len(messages) > 1:  # the previous turn's prompt, then its reply, sent back
            earlier = json.dumps(messages[:-2])
            assert earlier in by_history
            assert messages[-2] == {"role": "assistant", "content": by_history[earlier]}
    records = report.requests
    assert [(r["conversation"] - records[0]["conversation"], r["turn"], r["messages"])
            for r in sorted(records, key=lambda r: r["index"])][:6] == [
        (0, 1, 1), (1, 1, 1), (0, 2, 3), (1, 2, 3), (0, 3, 5), (1, 3, 5)]
    assert sum(len(b["messages"]) == 1 for b in server.bodies) == 4  # two conversations started


def test_compare_runs_levels_in_abba_order_with_the_same_requests() -> None:
    a, b = FakeServer(tokens=4, gap=0.005), FakeServer(tokens=4, gap=0.01)
    messages: list[str] = []
    config = BenchConfig(url="http://a", model="m", compare="http://b", model2="m2",
                         concurrency=[1, 2], requests=4, warmup=1, input_tokens=12,
                         output_tokens=4, slo={"e2e": 10.0})
    report = run_bench(config, transport=httpx.MockTransport(a),
                       transport_b=httpx.MockTransport(b), progress=messages.append)
    assert [(lv.server, lv.concurrency) for lv in report.levels] == [
        ("A", 1), ("B", 1), ("B", 2), ("A", 2)]
    assert [m.split(":")[0] for m in messages if "ok" in m] == [
        "A concurrency 1", "B concurrency 1", "B concurrency 2", "A concurrency 2"]
    assert sorted(a.prompts) == sorted(b.prompts)  # both asked the same things
    assert {body["model"] for body in b.bodies} == {"m2"}
    assert report.meta["servers"]["B"]["url"] == "http://b" and report.meta["order"] == "ABBA"
    rows = table_rows(report)
    cols = columns(report)
    assert cols[1] == "server"
    assert [row[1] for row in rows] == ["A", "B", "B/A", "A", "B", "B/A"]
    itl = cols.index("ITL ms p50/90/99")
    p50_ratio = float(rows[2][itl].split(" / ")[0])
    assert 1.4 < p50_ratio < 2.6  # B's chunks come twice as far apart
    assert rows[2][cols.index("goodput/s")] != "-"


def test_find_max_finds_where_the_server_starts_refusing() -> None:
    server = FakeServer(tokens=2, gap=0.025, capacity=2)  # ~0.05 s each, 503 beyond 2 at once
    config = BenchConfig(url="http://fake", model="m", find_max=True, rates=[10.0],
                         duration=0.6, arrivals="constant", warmup=0, output_tokens=2,
                         slo={"e2e": 1.0}, slo_share=0.9)
    report = run_bench(config, transport=httpx.MockTransport(server))
    search = report.searches["A"]
    best, failing = search["max_rate"], search["lowest_failing_rate"]
    assert best is not None and failing is not None and best < failing
    assert 10 <= best <= 80  # two slots of ~50 ms: about 40 req/s at most
    assert search["probes"][0]["rate"] == 10.0 and search["finished"]
    shares = {lv.rate: lv.slo_share for lv in report.levels}
    assert shares[best] >= 0.9 > shares[failing]
    assert report.levels[-1].errors_by_kind.get("503", 0) >= 0
    assert any(lv.errors_by_kind.get("503") for lv in report.levels)
    lines = search_lines(report)
    assert lines and f"{best:g} req/s" in lines[0] and "e2e<=1s" in lines[0]


def _mock_compare_report() -> BenchReport:
    a, b = FakeServer(tokens=3, gap=0.004), FakeServer(tokens=3, gap=0.008)
    config = BenchConfig(url="http://a", model="m", compare="http://b", rates=[10.0, 20.0],
                         requests=6, arrivals="constant", warmup=0, output_tokens=3,
                         slo={"ttft": 0.5, "itl": 0.1})
    return run_bench(config, transport=httpx.MockTransport(a), transport_b=httpx.MockTransport(b))


def test_json_records_recompute_the_table() -> None:
    report = _mock_compare_report()
    data = json.loads(report.to_json())
    assert len(data["requests"]) == 4 * 6
    for number, level in enumerate(data["levels"]):
        mine = [r for r in data["requests"] if r["level"] == number and not r["warmup"]]
        assert {r["server"] for r in mine} == {level["server"]} and len(mine) == level["sent"]
        ok = [r for r in mine if r["error"] is None]
        ttft = [r["chunks_s"][0] - r["sent_s"] for r in ok]
        e2e = [r["end_s"] - r["sent_s"] for r in ok]
        gaps = [b - a for r in ok for a, b in zip(r["chunks_s"], r["chunks_s"][1:], strict=False)]
        for name, values in (("ttft_ms", ttft), ("e2e_ms", e2e), ("itl_ms", gaps)):
            for q in (50, 90, 99):
                assert percentile(values, q) * 1000 == pytest.approx(level[name][f"p{q}"],
                                                                      abs=0.01)
        assert sum(r["slo_met"] for r in mine) == level["slo_met"]
        assert len(ok) == level["completed"]


def test_chart_and_html_page(tmp_path: Path) -> None:
    report = _mock_compare_report()
    write_chart(report, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes().startswith(PNG_SIGNATURE)
    write_html(report, tmp_path / "page.html")
    page = _parse_page((tmp_path / "page.html").read_text())
    assert page.tables["results"]["head"] == columns(report)
    assert page.tables["results"]["rows"] == table_rows(report)
    assert page.svg_in_figure and page.svg_paths > 50
    assert page.title.startswith("corral bench: m vs m")
    assert page.external == []  # self-contained: nothing to fetch
    write_html(_report(), tmp_path / "skipped.html")  # a closed loop, a level out of time
    rows = _parse_page((tmp_path / "skipped.html").read_text()).tables["results"]["rows"]
    assert rows[0] == table_rows(_report())[0]
    assert rows[2] == ["4", "skipped (out of time)"]  # one cell across the row


class _Page(HTMLParser):
    """What the tests look for in the --html page: tables by id, the chart, outside links."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, Any]] = {}
        self.current: dict[str, Any] | None = None
        self.cell: list[str] | None = None
        self.row: list[str] | None = None
        self.in_head = False
        self.in_figure = self.svg_in_figure = False
        self.svg_paths = 0
        self.external: list[str] = []
        self.title = ""
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for name, value in attrs:
            if name in ("src", "href", "xlink:href") and value and not value.startswith("#"):
                self.external.append(value)
        if tag in ("script", "link", "iframe", "img"):
            self.external.append(tag)
        if tag == "title":
            self.in_title = True
        if tag == "table" and found.get("id"):
            self.current = self.tables.setdefault(str(found["id"]), {"head": [], "rows": []})
        if tag == "thead":
            self.in_head = True
        if tag == "tr" and self.current is not None:
            self.row = []
        if tag in ("td", "th") and self.row is not None:
            self.cell = []
        if tag == "figure":
            self.in_figure = True
        if tag == "svg" and self.in_figure:
            self.svg_in_figure = True
        if tag == "path" and self.in_figure:
            self.svg_paths += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        if tag in ("td", "th") and self.cell is not None and self.row is not None:
            self.row.append("".join(self.cell))
            self.cell = None
        if tag == "tr" and self.row is not None and self.current is not None:
            if self.in_head:
                self.current["head"] = self.row
            else:
                self.current["rows"].append(self.row)
            self.row = None
        if tag == "thead":
            self.in_head = False
        if tag == "table":
            self.current = None
        if tag == "figure":
            self.in_figure = False

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)
        if self.in_title:
            self.title += data


def _parse_page(text: str) -> _Page:
    assert text.startswith("<!DOCTYPE html>")
    page = _Page()
    page.feed(text)
    page.close()
    return page


# --- the CLI without a model ------------------------------------------------------------------


@pytest.fixture
def not_found_server() -> Iterator[str]:
    """A tiny HTTP server that answers every generate with Ollama's model-not-found 404."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self._reply(200, b"Ollama is running")

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._reply(404, b'{"error":"model \'nope\' not found"}')

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_cli_every_request_failing_exits_1(not_found_server: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--url", not_found_server, "--model", "nope", "--concurrency", "1,2",
                 "--requests", "2"])
    err = capsys.readouterr().err
    assert code == 1
    assert "every request failed" in err and "model 'nope' not found" in err


def test_cli_unreachable_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--url", f"127.0.0.1:{free_port()}", "--model", "m"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("Error: could not reach a server at http://127.0.0.1:")


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--model", "m", "--concurrency", "1,0"]) == 1
    assert main(["bench", "--model", "m", "--api", "openai", "--endpoint", "generate",
                 "--url", "http://127.0.0.1:9"]) == 1
    assert "has no endpoint 'generate'" in capsys.readouterr().err
    assert main(["bench", "--help"]) == 0
    assert "TTFT" in capsys.readouterr().out
    url = ["--url", "http://127.0.0.1:9", "--model", "m"]
    for args, message in (
        (["--concurrency", "2", "--rate", "1"], "not both"),
        (["--find-max"], "--find-max needs --slo"),
        (["--rate", "1,2", "--find-max", "--slo", "e2e=1s"], "single --rate"),
        (["--model2", "x"], "go with --compare"),
        (["--workload", "file"], "needs --prompts"),
        (["--workload", "multi-turn", "--turns", "0"], "expected a positive number"),
        (["--slo", "ttft=500"], "expected a duration"),
        (["--input-tokens", "250:x"], "MEAN:STDDEV"),
        (["--rate", "0"], "must be positive"),
        (["--slo-share", "1.5"], "(0, 1]"),
    ):
        assert main(["bench", *url, *args]) == 1, args
        assert message in capsys.readouterr().err, args


# --- end to end against corral ----------------------------------------------------------------


def _check_level(level: dict[str, Any] | Any) -> None:
    get = level.get if isinstance(level, dict) else lambda k: getattr(level, k)
    assert get("status") == "ok"
    assert get("errors") == 0 and get("completed") == get("planned")
    assert get("output_tokens_per_s") > 0 and get("requests_per_s") > 0
    ttft, itl, e2e = get("ttft_ms"), get("itl_ms"), get("e2e_ms")
    for stats in (ttft, itl, e2e):
        assert 0 <= stats["p50"] <= stats["p90"] <= stats["p99"]
    assert ttft["p99"] <= e2e["p99"] and ttft["p50"] <= e2e["p50"]
    assert 0 < get("mean_output_tokens") <= 8


@pytest.mark.e2e
def test_bench_against_corral(corral_server: LiveServer, tmp_path: Path) -> None:
    config = BenchConfig(url=corral_server.url, model="gemma3:270m", concurrency=[1, 2],
                         requests=2, warmup=1, input_tokens=24, output_tokens=8, max_seconds=120)
    report = run_bench(config)
    assert [lv.concurrency for lv in report.levels] == [1, 2]
    for level in report.levels:
        _check_level(level)
        assert level.tokens_counted_from_chunks == 0  # corral reports eval_count

    out_json, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "bench", "--url", corral_server.url,
         "--api", "openai", "--model", "gemma3:270m", "--concurrency", "1,2", "--requests", "2",
         "--input-tokens", "24", "--output-tokens", "8", "--max-seconds", "120",
         "--warmup", "0",  # the in-process run above loaded the model
         "--json", str(out_json), "--chart", str(chart)],
        cwd=ROOT, env=corral_server.env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "TTFT" in proc.stdout
    data = json.loads(out_json.read_text())
    assert data["meta"]["api"] == "openai" and data["meta"]["endpoint"] == "chat"
    assert [lv["concurrency"] for lv in data["levels"]] == [1, 2]
    for level in data["levels"]:
        _check_level(level)
    assert chart.read_bytes().startswith(PNG_SIGNATURE)


@pytest.fixture(scope="module")
def second_corral(corral_server: LiveServer, models_dir: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Server B for --compare: another corral on its own port, sharing the model store (the
    first server has imported the bundled model into it already)."""
    log = tmp_path_factory.mktemp("second") / "serve.log"
    server = start_server(models_dir, log, OLLAMA_KEEP_ALIVE="10m")
    try:
        yield server
    finally:
        server.stop()


def _bench_cli(server: LiveServer, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "bench", "--url", server.url,
         "--model", "gemma3:270m", "--input-tokens", "24", "--output-tokens", "8",
         "--max-seconds", "150", *args],
        cwd=ROOT, env=server.env, capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr
    return proc


def _recompute(data: dict[str, Any]) -> None:
    """Every level's percentiles and SLO counts, recomputed from the per-request records."""
    for number, level in enumerate(data["levels"]):
        mine = [r for r in data["requests"] if r["level"] == number and not r["warmup"]]
        assert len(mine) == level["sent"] and {r["server"] for r in mine} == {level["server"]}
        ok = [r for r in mine if r["error"] is None and r["end_s"] is not None]
        assert len(ok) == level["completed"]
        values = {
            "ttft_ms": [r["chunks_s"][0] - r["sent_s"] for r in ok],
            "e2e_ms": [r["end_s"] - r["sent_s"] for r in ok],
            "itl_ms": [b - a for r in ok for a, b in zip(r["chunks_s"], r["chunks_s"][1:],
                                                         strict=False)],
        }
        for name, seconds in values.items():
            for q in (50, 90, 99):
                assert percentile(seconds, q) * 1000 == pytest.approx(level[name][f"p{q}"],
                                                                       abs=0.01)
        if data["meta"]["slo"]:
            assert sum(r["slo_met"] for r in mine) == level["slo_met"]


@pytest.mark.e2e
def test_open_loop_with_slos_json_and_html_against_corral(corral_server: LiveServer,
                                                          tmp_path: Path) -> None:
    out_json, page, chart = tmp_path / "b.json", tmp_path / "b.html", tmp_path / "b.png"
    proc = _bench_cli(corral_server, "--rate", "2", "--arrivals", "constant", "--requests", "6",
                      "--warmup", "0", "--slo", "ttft=3s,e2e=8s", "--json", str(out_json),
                      "--html", str(page), "--chart", str(chart))
    assert "SLO met" in proc.stdout and "sent/s" in proc.stdout
    data = json.loads(out_json.read_text())
    (level,) = data["levels"]
    assert level["rate"] == 2 and level["status"] == "ok" and level["errors"] == 0
    assert level["sent"] == level["completed"] == 6
    _check_rate_kept(level)  # gemma3:270m answers 8 tokens far faster than one per 0.5 s
    assert 0 <= level["slo_share"] <= 1 and level["goodput_per_s"] is not None
    _recompute(data)
    measured = [r for r in data["requests"] if not r["warmup"]]
    assert [r["scheduled_s"] - measured[0]["scheduled_s"] for r in measured] == pytest.approx(
        [i / 2 for i in range(6)], abs=1e-5)
    html = _parse_page(page.read_text())
    assert html.tables["results"]["rows"][0][0] == "2"
    assert html.svg_in_figure and html.external == []
    assert chart.read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.e2e
def test_multi_turn_histories_grow_against_corral(corral_server: LiveServer) -> None:
    config = BenchConfig(url=corral_server.url, model="gemma3:270m", endpoint="chat",
                         concurrency=[2], requests=6, warmup=0, workload="multi-turn",
                         conversations=2, turns=3, input_tokens=12, output_tokens=8,
                         max_seconds=120)
    report = run_bench(config)
    assert report.levels[0].completed == 6 and report.levels[0].errors == 0
    conversations: dict[int, list[dict[str, Any]]] = {}
    for record in sorted(report.requests, key=lambda r: r["index"]):
        conversations.setdefault(record["conversation"], []).append(record)
    assert len(conversations) == 2
    for turns in conversations.values():
        assert [r["turn"] for r in turns] == [1, 2, 3]
        assert [r["messages"] for r in turns] == [1, 3, 5]
        counts = [r["prompt_tokens"] for r in turns]  # the server's own count of each prompt
        assert counts[0] < counts[1] < counts[2], counts


@pytest.mark.e2e
def test_compare_two_corrals(corral_server: LiveServer, second_corral: LiveServer,
                             tmp_path: Path) -> None:
    out_json, page = tmp_path / "ab.json", tmp_path / "ab.html"
    proc = _bench_cli(corral_server, "--compare", second_corral.url, "--rate", "2,3",
                      "--requests", "3", "--arrivals", "constant", "--slo", "e2e=8s",
                      "--warmup", "0",
                      "--json", str(out_json), "--html", str(page))
    assert "B/A" in proc.stdout
    data = json.loads(out_json.read_text())
    assert [(lv["server"], lv["rate"]) for lv in data["levels"]] == [
        ("A", 2), ("B", 2), ("B", 3), ("A", 3)]
    assert data["meta"]["servers"]["B"]["url"] == second_corral.url
    for level in data["levels"]:
        assert level["completed"] == 3 and level["errors"] == 0
    _recompute(data)
    first_send = {}
    for r in data["requests"]:
        key = (data["levels"][r["level"]]["rate"], r["server"])
        first_send[key] = min(first_send.get(key, r["sent_s"]), r["sent_s"])
    assert first_send[(2, "A")] < first_send[(2, "B")]  # ABBA: A first at the first level
    assert first_send[(3, "B")] < first_send[(3, "A")]  # and B first at the second
    html = _parse_page(page.read_text())
    assert [row[1] for row in html.tables["results"]["rows"]] == ["A", "B", "B/A"] * 2
    assert html.svg_in_figure
