"""Model families through a live server (issue 26): tiny models of each family's architecture
with its real special tokens, created with Ollama's template and stop parameters for it, and
scripted to write exact text (tests/tinymodels.py), so that what the server does around the
model's text is checked: stop strings naming special tokens, special tokens never printed, one
BOS, /api/show, and for embedding-only models the 400s Ollama answers."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ROOT, LiveServer, start_server
from tests.families import create
from tests.tinymodels import (
    BERT,
    CHAT_FAMILIES,
    COMMAND_R,
    DEEPSEEK_R1_FAMILY,
    GEMMA2_FAMILY,
    GPT_OSS,
    GRANITE,
    LLAMA,
    MISTRAL_FAMILY,
    NOMIC_BERT,
    PHI3_FAMILY,
    QWEN2,
    QWEN3_FAMILY,
    Family,
    token_id,
)

pytestmark = pytest.mark.e2e

# A special token each family's Modelfile stops on that is not its end-of-generation token:
# a model that writes it must stop there (Ollama's decoding matches it as text).
STOP_SPECIAL = {LLAMA.name: "<|start_header_id|>", QWEN2.name: "<|im_start|>",
                QWEN3_FAMILY.name: "<|im_start|>", PHI3_FAMILY.name: "<|user|>",
                GEMMA2_FAMILY.name: "<start_of_turn>"}
# A special token that neither ends the turn nor is a stop: Ollama decodes it as its text.
QUIET_SPECIAL = {LLAMA.name: "<|begin_of_text|>", QWEN2.name: "<|object_ref_start|>",
                 QWEN3_FAMILY.name: "<|object_ref_start|>", PHI3_FAMILY.name: "<s>",
                 GEMMA2_FAMILY.name: "<bos>"}
IDS = [f.name for f in CHAT_FAMILIES]
OPTS = {"temperature": 0, "num_predict": 12}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    models = tmp_path_factory.mktemp("family-models")
    log = tmp_path_factory.mktemp("family-logs") / "serve.log"
    live = start_server(models, log, OLLAMA_KEEP_ALIVE="5m", OLLAMA_MAX_LOADED_MODELS="4")
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("family-ggufs")


def post(server: LiveServer, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=120)


def stream_lines(server: LiveServer, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", server.url + path, json=body, timeout=120) as resp:
        assert resp.status_code == 200, resp.read()
        return [json.loads(line) for line in resp.iter_lines() if line]


def chat(server: LiveServer, model: str, **extra: Any) -> dict[str, Any]:
    resp = post(server, "/api/chat", {"model": model, "stream": False, "options": OPTS,
                                      "messages": [{"role": "user", "content": "Hello"}],
                                      **extra})
    assert resp.status_code == 200, resp.text
    return resp.json()


# --- stop strings naming special tokens; special tokens never printed --------------------------


@pytest.fixture(scope="module")
def stop_models(server: LiveServer, ggufs: Path) -> dict[str, str]:
    """Per family: a model that writes "Hi", " there", a special token its Modelfile stops on,
    then "!"."""
    return {f.name: create(server, f, ggufs, name=f"{f.name}-stop",
                           script=["Hi", " there", STOP_SPECIAL[f.name], "!"])
            for f in CHAT_FAMILIES}


@pytest.mark.parametrize("family", CHAT_FAMILIES, ids=IDS)
def test_a_stop_naming_a_special_token_fires(server: LiveServer, stop_models: dict[str, str],
                                             family: Family) -> None:
    model = stop_models[family.name]
    reply = chat(server, model)
    assert reply["message"]["content"] == "Hi there"
    assert reply["done_reason"] == "stop"
    lines = stream_lines(server, "/api/chat", {
        "model": model, "options": OPTS, "messages": [{"role": "user", "content": "Hello"}]})
    assert "".join(x["message"]["content"] for x in lines) == "Hi there"
    assert lines[-1]["done"] and lines[-1]["done_reason"] == "stop"
    generated = post(server, "/api/generate", {"model": model, "prompt": "Hello",
                                               "stream": False, "options": OPTS}).json()
    assert generated["response"] == "Hi there" and generated["done_reason"] == "stop"
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    completion = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hello"}], temperature=0,
        max_tokens=12)
    assert completion.choices[0].message.content == "Hi there"
    assert completion.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("family", CHAT_FAMILIES, ids=IDS)
def test_special_tokens_are_text_and_the_end_of_turn_is_never_printed(
        server: LiveServer, ggufs: Path, family: Family) -> None:
    """A special token that no stop names goes out as its text, as Ollama decodes it (tool-call
    and thinking parsers read such tokens: [TOOL_CALLS], <|python_tag|>); the end of turn that
    follows the script ends the reply and is never printed."""
    special = QUIET_SPECIAL[family.name]
    model = create(server, family, ggufs, name=f"{family.name}-special",
                   script=["A", special, "B"])
    reply = chat(server, model)
    assert reply["message"]["content"] == f"A{special}B" and reply["done_reason"] == "stop"
    streamed = stream_lines(server, "/api/generate", {"model": model, "prompt": "Hello",
                                                      "options": OPTS})
    assert "".join(x["response"] for x in streamed) == f"A{special}B"
    assert streamed[-1]["done_reason"] == "stop" and streamed[-1]["eval_count"] == 3


@pytest.mark.parametrize("family", CHAT_FAMILIES, ids=IDS)
def test_one_bos_and_show(server: LiveServer, ggufs: Path, family: Family) -> None:
    model = create(server, family, ggufs, name=f"{family.name}-plain", script=["ok"])
    done = post(server, "/api/generate", {"model": model, "prompt": "Hello", "stream": False,
                                          "options": OPTS}).json()
    assert done["response"] == "ok"
    bos = token_id(family, family.bos or "", ["ok"])
    prompt = done["context"][:len(done["context"]) - done["eval_count"]]
    # `context` holds no BOS (as Ollama's); the prompt had exactly one where the family adds it
    assert bos not in prompt
    assert done["prompt_eval_count"] == len(prompt) + (1 if family.add_bos else 0)
    shown = post(server, "/api/show", {"model": model}).json()
    assert shown["details"]["family"] == family.arch
    assert shown["template"] == family.template
    assert shown["capabilities"][0] == "completion"
    assert ("tools" in shown["capabilities"]) == (".Tools" in family.template)
    assert ("thinking" in shown["capabilities"]) == ("<think>" in family.template)
    for stop in family.stops:
        assert f'stop                           "{stop}"' in shown["parameters"]


# --- embedding-only models -------------------------------------------------------------------


@pytest.fixture(scope="module")
def embed_models(server: LiveServer, ggufs: Path) -> list[str]:
    return [create(server, f, ggufs) for f in (BERT, NOMIC_BERT)]


def test_embedding_only_models_refuse_generate_and_chat(server: LiveServer,
                                                        embed_models: list[str]) -> None:
    for model in embed_models:
        for path, body, what in (
                ("/api/generate", {"prompt": "hi"}, "generate"),
                ("/api/generate", {}, "generate"),  # a load request too, as Ollama
                ("/api/chat", {"messages": [{"role": "user", "content": "hi"}]}, "chat")):
            resp = post(server, path, {"model": model, **body})
            assert resp.status_code == 400, resp.text
            assert resp.json() == {"error": f'"{model}" does not support {what}'}
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=model,
                                           messages=[{"role": "user", "content": "hi"}])
        assert info.value.body["message"] == f'"{model}" does not support chat'  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model=model, prompt="hi")
        assert info.value.body["message"] == f'"{model}" does not support generate'  # type: ignore[index]
        shown = post(server, "/api/show", {"model": model}).json()
        assert shown["capabilities"] == ["embedding"]


# --- vision is not advertised while images are refused -----------------------------------------


def test_vision_is_not_advertised_for_a_vision_block_without_a_projector(server: LiveServer,
                                                           ggufs: Path) -> None:
    family = dataclasses.replace(LLAMA, extra_kv={**LLAMA.extra_kv, "vision.block_count": 2})
    model = create(server, family, ggufs, name="tiny-llama3-vision")
    shown = post(server, "/api/show", {"model": model}).json()
    assert "vision" not in shown["capabilities"]
    assert shown["model_info"]["llama.vision.block_count"] == 2  # the GGUF does say it
    listed = httpx.get(server.url + "/api/tags").json()["models"]
    entry = next(m for m in listed if m["name"].startswith(model))
    assert "vision" not in entry.get("capabilities", [])


# --- the memory estimate per architecture --------------------------------------------------


@pytest.mark.parametrize("family", CHAT_FAMILIES + [BERT, NOMIC_BERT],
                         ids=[f.name for f in CHAT_FAMILIES + [BERT, NOMIC_BERT]])
def test_plan_is_within_15_percent_of_the_loaded_runner(server: LiveServer, ggufs: Path,
                                                        family: Family) -> None:
    """`corral plan` against the runner the server loaded: llama.cpp's buffers as it logged
    them (what a GPU would hold: weights, KV cache, compute) and the runner's RSS on the CPU.
    Grouped-query attention (all), a sliding window (gemma2), encoders without a KV cache."""
    model = create(server, family, ggufs, name=f"{family.name}-plan", script=["ok"]
                   if family.pooling == 0 else None)
    if family.pooling:
        # An input as long as the context (cut to it): the estimate is the most an input can
        # touch, and RSS counts only the pages touched.
        resp = post(server, "/api/embed", {"model": model, "input": ["hello world " * 3000]})
    else:
        resp = post(server, "/api/generate", {"model": model, "prompt": "Hello",
                                              "stream": False, "options": OPTS})
    assert resp.status_code == 200, resp.text
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "plan", model, "--json"],
                          env=server.env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    need, measured = plan["estimate"], plan["measured"]
    buffers = measured["buffers"]
    if family.pooling:
        assert need["kv"] == 0 and "kv" not in buffers  # llama.cpp allocates none
    held = buffers["weights"] + buffers.get("kv", 0) + buffers["compute"]
    assert abs(need["total"] - held) <= 0.15 * held, (need, buffers)
    assert abs(need["host_total"] - measured["rss"]) <= 0.15 * measured["rss"], (need, measured)


# --- /api/generate's own template ------------------------------------------------------------


def test_generate_renders_with_the_request_template(server: LiveServer, ggufs: Path) -> None:
    """The request's `template` replaces the model's for that request (Ollama's), `.System`
    and `.Prompt` included; the model's own stays for other requests. (The tiny Llama's
    vocabulary is byte-level: one token per character here.)"""
    model = create(server, LLAMA, ggufs, name="tiny-llama3-template", script=["ok"])
    body = {"model": model, "prompt": "Hi", "system": "S", "stream": False, "options": OPTS}
    done = post(server, "/api/generate", {**body, "template": "[{{ .System }}|{{ .Prompt }}]\n"}
                ).json()
    assert done["response"] == "ok"
    prompt = done["context"][:len(done["context"]) - done["eval_count"]]
    assert prompt == [token_id(LLAMA, c, ["ok"]) for c in "[S|Hi]\n"]
    plain = post(server, "/api/generate", body).json()
    assert len(plain["context"]) > len(done["context"]) + 5  # the model's Llama 3 turns
    bad = post(server, "/api/generate", {**body, "template": "{{ .Prompt "})
    assert bad.status_code == 400 and bad.json()["error"].startswith("template error: ")
    raw = post(server, "/api/generate", {**body, "system": None, "raw": True, "template": "x"})
    assert raw.status_code == 400


# --- embedding-only models: the three embedding APIs ---------------------------------------


def reference_vectors(path: Path, texts: list[str]) -> list[list[float]]:
    """llama-cpp-python's own Llama.embed on the same GGUF (its pooling, normalised), in a
    process of its own."""
    code = ("import json, sys, llama_cpp\n"
            "llm = llama_cpp.Llama(sys.argv[1], embedding=True, n_ctx=512, verbose=False)\n"
            "print(json.dumps(llm.embed(json.loads(sys.argv[2]), normalize=True)))\n")
    done = subprocess.run([sys.executable, "-c", code, str(path), json.dumps(texts)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4


@pytest.mark.parametrize("family", [BERT, NOMIC_BERT], ids=[BERT.name, NOMIC_BERT.name])
def test_embedding_models_on_all_three_apis(server: LiveServer, ggufs: Path,
                                            family: Family) -> None:
    model = create(server, family, ggufs, name=f"{family.name}-apis")
    texts = ["hello world", "the river and the bridge", "rain in town"]
    expected = reference_vectors(ggufs / f"{model}.gguf", texts)
    body = post(server, "/api/embed", {"model": model, "input": texts}).json()
    assert all(close(v, e) for v, e in zip(body["embeddings"], expected, strict=True))
    assert body["prompt_eval_count"] > 3 * 2  # [CLS] and [SEP] around each input
    legacy = post(server, "/api/embeddings", {"model": model, "prompt": texts[1]}).json()
    norm = sum(v * v for v in legacy["embedding"]) ** 0.5
    assert close([v / norm for v in legacy["embedding"]], expected[1])  # not normalised
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    data = client.embeddings.create(model=model, input=texts).data
    assert all(close(d.embedding, e) for d, e in zip(data, expected, strict=True))
    # Matryoshka: the first `dimensions` values, normalised again
    short = post(server, "/api/embed", {"model": model, "input": texts[0],
                                        "dimensions": 8}).json()["embeddings"][0]
    head = expected[0][:8]
    scale = sum(v * v for v in head) ** 0.5
    assert close(short, [v / scale for v in head])
    assert close(client.embeddings.create(model=model, input=texts[0], dimensions=8)
                 .data[0].embedding, short)


def test_an_embedding_input_longer_than_the_context(server: LiveServer, ggufs: Path) -> None:
    model = create(server, BERT, ggufs, name="tiny-bert-short", parameters={"num_ctx": 16})
    long_text = " ".join(["river"] * 40)
    refused = post(server, "/api/embed", {"model": model, "input": long_text,
                                          "truncate": False})
    assert refused.status_code == 400, refused.text
    assert "context length" in refused.json()["error"]
    cut = post(server, "/api/embed", {"model": model, "input": long_text}).json()
    assert cut["prompt_eval_count"] == 16  # num_ctx as asked (llama.cpp's context is 256)
    # cut to [CLS] + 14 words + [SEP], as Ollama's truncation of the text gives
    expected = reference_vectors(ggufs / f"{model}.gguf", [" ".join(["river"] * 14)])
    assert close(cut["embeddings"][0], expected[0])


# --- tool calls out of the text, per family ---------------------------------------------------

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "required": ["city"],
                   "properties": {"city": {"type": "string"}}}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}}
PARIS = {"name": "get_weather", "arguments": {"city": "Paris"}}
CET = {"name": "get_time", "arguments": {"zone": "CET"}}

# (family, what the model writes, the calls clients get, the content they get)
TOOL_CASES = {
    "llama3.1-bare-json": (LLAMA, ['{"name": "get_weather", ', '"parameters": {"city": "Paris"}}'],
                           [PARIS], ""),
    "llama3.1-python-tag": (LLAMA, ["<|python_tag|>",
                                    '{"name": "get_weather", "parameters": {"city": "Paris"}}'],
                            [PARIS], ""),
    "mistral-tool-calls": (MISTRAL_FAMILY, ["[TOOL_CALLS]", ' [{"name": "get_weather", '
                                            '"arguments": {"city": "Paris"}}, {"name": '
                                            '"get_time", "arguments": {"zone": "CET"}}]'],
                           [PARIS, CET], ""),
    "qwen2.5-two-calls": (QWEN2, ["<tool_call>", '\n{"name": "get_weather", "arguments": ',
                                 '{"city": "Paris"}}\n', "</tool_call>",
                                 '\n<tool_call>\n{"name": "get_time", "arguments": '
                                 '{"zone": "CET"}}\n</tool_call>'], [PARIS, CET], ""),
    "qwen3-text-then-call": (QWEN3_FAMILY, ["Let me check.", "<tool_call>",
                                            '{"name": "get_weather", "arguments": '
                                            '{"city": "Paris"}}', "</tool_call>"],
                             [PARIS], "Let me check."),
    "granite3-tool-call": (GRANITE, ["<|tool_call|>", '[{"name": "get_weather", '
                                     '"arguments": {"city": "Paris"}}]'], [PARIS], ""),
    "command-r-action": (COMMAND_R, ['Action: ```json\n[\n    {\n        "tool_name": '
                                     '"get_weather",\n        "parameters": {"city": "Paris"}'
                                     '\n    }', ',\n    {\n        "tool_name": "get_time",\n'
                                     '        "parameters": {"zone": "CET"}\n    }\n]```'],
                         [PARIS, CET], ""),
    "qwen2.5-malformed-call": (QWEN2, ["<tool_call>", '{"name": "get_weather", "arguments": '
                                       '{"city": ', "</tool_call>"], [],
                               '<tool_call>{"name": "get_weather", "arguments": {"city": '
                               '</tool_call>'),
}


def _calls(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
            for c in raw]


@pytest.mark.parametrize("case", list(TOOL_CASES))
def test_tool_calls_out_of_the_text(server: LiveServer, ggufs: Path, case: str) -> None:
    family, script, calls, content = TOOL_CASES[case]
    model = create(server, family, ggufs, name=f"tiny-tools-{case}", script=script)
    ask = {"model": model, "options": OPTS, "tools": [WEATHER, TIME],
           "messages": [{"role": "user", "content": "Weather in Paris?"}]}
    whole = post(server, "/api/chat", {**ask, "stream": False})
    assert whole.status_code == 200, whole.text
    message = whole.json()["message"]
    assert _calls(message.get("tool_calls", [])) == calls
    assert message["content"] == content
    lines = stream_lines(server, "/api/chat", ask)
    streamed = [c for x in lines for c in x["message"].get("tool_calls", [])]
    assert _calls(streamed) == calls
    assert "".join(x["message"]["content"] for x in lines) == content
    assert [c["function"]["index"] for c in streamed] == list(range(len(calls)))

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    tools: Any = [WEATHER, TIME]
    choice = client.chat.completions.create(model=model, messages=messages, tools=tools,
                                            temperature=0, max_tokens=12).choices[0]
    got = [{"name": c.function.name, "arguments": json.loads(c.function.arguments)}
           for c in choice.message.tool_calls or []]
    assert got == calls
    assert (choice.message.content or "") == content
    assert choice.finish_reason == ("tool_calls" if calls else "stop")
    pieces: dict[int, dict[str, str]] = {}
    text = []
    for chunk in client.chat.completions.create(model=model, messages=messages, tools=tools,
                                                temperature=0, max_tokens=12, stream=True):
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is None:
            continue
        text.append(delta.content or "")
        for call in delta.tool_calls or []:
            entry = pieces.setdefault(call.index, {"name": "", "arguments": ""})
            entry["name"] += call.function.name or ""
            entry["arguments"] += call.function.arguments or ""
    assert [{"name": v["name"], "arguments": json.loads(v["arguments"])}
            for _, v in sorted(pieces.items())] == calls
    assert "".join(text) == content


# --- thinking ----------------------------------------------------------------------------------


def test_qwen3_thinking_split_from_the_answer(server: LiveServer, ggufs: Path) -> None:
    model = create(server, QWEN3_FAMILY, ggufs, name="tiny-qwen3-think",
                   script=["<think>", "Paris is in France.", "</think>", "It is sunny."])
    reply = chat(server, model, think=True)["message"]
    assert reply["thinking"] == "Paris is in France."
    assert reply["content"] == "It is sunny."
    lines = stream_lines(server, "/api/chat", {
        "model": model, "options": OPTS, "think": True,
        "messages": [{"role": "user", "content": "Hello"}]})
    assert "".join(x["message"].get("thinking", "") for x in lines) == "Paris is in France."
    assert "".join(x["message"]["content"] for x in lines) == "It is sunny."
    assert "<think>" not in json.dumps(lines)


def test_deepseek_r1_thinking(server: LiveServer, ggufs: Path) -> None:
    model = create(server, DEEPSEEK_R1_FAMILY, ggufs, name="tiny-deepseek-r1-think",
                   script=["<think>", "\nParis is in France.\n", "</think>", "\n\nSunny."])
    shown = post(server, "/api/show", {"model": model}).json()
    assert "thinking" in shown["capabilities"]
    reply = chat(server, model)["message"]  # a thinking model thinks unless told not to
    assert reply["thinking"].strip() == "Paris is in France."
    assert reply["content"].strip() == "Sunny."
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    message = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hello"}], temperature=0,
        max_tokens=12).choices[0].message
    assert (message.content or "").strip() == "Sunny."
    assert "Paris is in France." in str(message.model_extra)  # reasoning, as Ollama's /v1


def test_think_false_closes_the_block_in_the_prompt(server: LiveServer, ggufs: Path) -> None:
    """Qwen3's template closes an empty <think></think> in the prompt when think is false:
    the reply (scripted from the newline that ends it) is all content."""
    model = create(server, QWEN3_FAMILY, ggufs, name="tiny-qwen3-nothink",
                   script=["No thinking here."])
    reply = chat(server, model, think=False)
    assert reply["message"]["content"] == "No thinking here."
    assert "thinking" not in reply["message"]
    done = post(server, "/api/generate", {"model": model, "prompt": "Hello", "think": False,
                                          "stream": False, "options": OPTS}).json()
    prompt = done["context"][:len(done["context"]) - done["eval_count"]]
    think_open = token_id(QWEN3_FAMILY, "<think>", ["No thinking here."])
    assert think_open in prompt  # the closed block is in the prompt


def test_qwen3_coder_xml_calls(server: LiveServer, ggufs: Path) -> None:
    """PARSER qwen3-coder (Ollama's built-in parser by name): XML calls, typed by the schema,
    on both APIs, streamed and not."""
    model = create(server, QWEN3_FAMILY, ggufs, name="tiny-qwen3-coder", parser="qwen3-coder",
                   script=["Checking.", "<tool_call>", "\n<function=get_weather>\n<parameter="
                           "city>\nParis\n</parameter>\n</function>\n", "</tool_call>"])
    assert post(server, "/api/show", {"model": model}).json()["parser"] == "qwen3-coder"
    ask = {"model": model, "options": OPTS, "tools": [WEATHER],
           "messages": [{"role": "user", "content": "Weather in Paris?"}]}
    message = post(server, "/api/chat", {**ask, "stream": False}).json()["message"]
    assert _calls(message["tool_calls"]) == [PARIS] and message["content"] == "Checking."
    lines = stream_lines(server, "/api/chat", ask)
    assert _calls([c for x in lines for c in x["message"].get("tool_calls", [])]) == [PARIS]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    tools: Any = [WEATHER]
    choice = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Weather?"}], tools=tools,
        temperature=0, max_tokens=12).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Paris"}


# --- gpt-oss: harmony -----------------------------------------------------------------------


def test_harmony_channels_split_into_thinking_content_and_calls(server: LiveServer,
                                                               ggufs: Path) -> None:
    model = create(server, GPT_OSS, ggufs, name="tiny-gpt-oss-answer", script=[
        "<|channel|>", "analysis<|message|>", "Paris is in France.", "<|end|>",
        "<|start|>assistant<|channel|>final<|message|>", "It is sunny."])
    reply = chat(server, model)["message"]
    assert reply["thinking"] == "Paris is in France." and reply["content"] == "It is sunny."
    lines = stream_lines(server, "/api/chat", {
        "model": model, "options": OPTS, "messages": [{"role": "user", "content": "Hi"}]})
    assert "".join(x["message"].get("thinking", "") for x in lines) == "Paris is in France."
    assert "".join(x["message"]["content"] for x in lines) == "It is sunny."
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    message = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], temperature=0,
        max_tokens=12).choices[0].message
    assert message.content == "It is sunny."

    caller = create(server, GPT_OSS, ggufs, name="tiny-gpt-oss-call", script=[
        "<|channel|>", "commentary to=functions.get_weather <|constrain|>json<|message|>",
        '{"city": ', '"Paris"}'])
    ask = {"model": caller, "options": OPTS, "tools": [WEATHER, TIME],
           "messages": [{"role": "user", "content": "Weather in Paris?"}]}
    message = post(server, "/api/chat", {**ask, "stream": False}).json()["message"]
    assert _calls(message["tool_calls"]) == [PARIS] and message["content"] == ""
    streamed = stream_lines(server, "/api/chat", ask)
    assert _calls([c for x in streamed for c in x["message"].get("tool_calls", [])]) == [PARIS]
    tools: Any = [WEATHER, TIME]
    choice = client.chat.completions.create(
        model=caller, messages=[{"role": "user", "content": "Weather?"}], tools=tools,
        temperature=0, max_tokens=12).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Paris"}
