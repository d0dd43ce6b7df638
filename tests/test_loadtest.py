"""`corral bench` (gateway/loadtest): percentile math, report shaping, stream parsing against
mock transports, the sweep's concurrency and time bounds, the CLI's exit codes, and an e2e run
against a live corral server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.cli import main
from gateway.loadtest import BenchConfig, Unreachable, percentile, run_bench
from gateway.loadtest.client import RequestResult, Target, http_client, run_request
from gateway.loadtest.prompts import PromptSet, fixed_prompt, load_prompts, random_prompt
from gateway.loadtest.report import (
    COLUMNS,
    BenchReport,
    latency_ms,
    render_table,
    skipped_level,
    summarize_level,
    table_rows,
    write_chart,
)
from tests.conftest import ROOT, LiveServer, free_port

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
    rows = table_rows(_report())
    assert all(len(row) == len(COLUMNS) for row in rows)
    assert rows[0][:5] == ["1", "1", "0", "4.00", "12.0"]
    assert rows[0][5] == "100 / 100 / 100"  # ms, whole numbers from 100 up
    assert rows[1][2] == "1"
    assert "skipped" in rows[2][1]
    assert render_table(_report()).row_count == 3


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
    prompts = PromptSet(tokens=40, kind="random", seed=3)
    assert prompts[5] == random_prompt(40, 3, 5)


def test_fixed_prompt_is_shared() -> None:
    prompts = PromptSet(tokens=300, kind="fixed")
    assert prompts[0] == prompts[7] == fixed_prompt(300)
    assert 250 <= len(prompts[0].split()) <= 300
    with pytest.raises(ValueError):
        PromptSet(kind="nonsense")


def test_prompt_files_plain_and_jsonl(tmp_path: Path) -> None:
    plain = tmp_path / "p.txt"
    plain.write_text("first prompt\n\nsecond prompt\n")
    assert load_prompts(plain) == ["first prompt", "second prompt"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a\\nb"}\n"plain string"\n{"text": "t"}\n')
    assert load_prompts(jsonl) == ["a\nb", "plain string", "t"]
    prompts = PromptSet(prompts=load_prompts(jsonl))
    assert [prompts[i] for i in range(4)] == ["a\nb", "plain string", "t", "a\nb"]
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
    """An async mock Ollama server that streams `tokens` chunks `gap` seconds apart and counts
    how many generate requests are in flight."""

    def __init__(self, tokens: int = 3, gap: float = 0.01, fail: bool = False) -> None:
        self.tokens, self.gap, self.fail = tokens, gap, fail
        self.in_flight = 0
        self.max_in_flight = 0
        self.prompts: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/":
            return httpx.Response(200, text="Ollama is running")
        if self.fail:
            return httpx.Response(404, json={"error": "model 'm' not found"})
        self.prompts.append(json.loads(request.content)["prompt"])
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

        async def body() -> AsyncIterator[bytes]:
            for _ in range(self.tokens):
                await asyncio.sleep(self.gap)
                yield _ndjson([{"response": "t", "done": False}])
            self.in_flight -= 1  # done from here on: the client may send its next request
            yield _ndjson([{"response": "", "done": True, "eval_count": self.tokens}])

        return httpx.Response(200, content=body())


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
