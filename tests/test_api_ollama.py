"""The native API through the official `ollama` Python client, against a live server."""

from __future__ import annotations

import httpx
import ollama
import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.e2e

MODEL = "gemma3:270m"
SHORT = {"temperature": 0, "num_predict": 12, "seed": 1}


@pytest.fixture
def client(corral_server: LiveServer) -> ollama.Client:
    return ollama.Client(host=corral_server.url)


def test_root_and_version(corral_server: LiveServer) -> None:
    assert httpx.get(corral_server.url + "/").text == "Ollama is running"
    assert httpx.head(corral_server.url + "/").status_code == 200
    version = httpx.get(corral_server.url + "/api/version").json()["version"]
    assert version.count(".") == 2


def test_list_shows_bundled_model(client: ollama.Client) -> None:
    models = {m.model: m for m in client.list().models}
    assert MODEL in models
    entry = models[MODEL]
    assert entry.details.family == "gemma3"
    assert entry.details.quantization_level == "Q4_K_M"
    assert entry.details.parameter_size == "268.10M"
    assert entry.size > 250_000_000
    assert len(entry.digest) == 64


def test_show(client: ollama.Client) -> None:
    shown = client.show(MODEL)
    assert shown.details.family == "gemma3"
    assert shown.modelinfo["general.architecture"] == "gemma3"
    assert shown.modelinfo["gemma3.context_length"] == 32768
    assert "FROM " in shown.modelfile
    assert "<end_of_turn>" in (shown.parameters or "")


def test_generate_nonstream(client: ollama.Client) -> None:
    reply = client.generate(MODEL, "The capital of France is", raw=True, options=SHORT)
    assert reply.done and reply.done_reason == "length"
    assert reply.eval_count == 12
    assert reply.prompt_eval_count and reply.prompt_eval_count > 3
    assert reply.response.strip()
    assert reply.total_duration and reply.total_duration >= reply.eval_duration


def test_generate_stream_matches_nonstream(client: ollama.Client) -> None:
    whole = client.generate(MODEL, "Why is the sky blue?", options=SHORT).response
    parts = list(client.generate(MODEL, "Why is the sky blue?", options=SHORT, stream=True))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.response for p in parts) == whole  # greedy decoding is deterministic
    assert parts[-1].context and len(parts[-1].context) > parts[-1].eval_count


def test_chat_nonstream_and_stream(client: ollama.Client) -> None:
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Name three primary colors."}]
    reply = client.chat(MODEL, messages=messages, options=SHORT)
    assert reply.message.role == "assistant"
    assert reply.done and reply.done_reason in ("stop", "length")
    assert reply.eval_count and reply.eval_count <= 12
    chunks = list(client.chat(MODEL, messages=messages, options=SHORT, stream=True))
    assert chunks[-1].done
    assert "".join(c.message.content for c in chunks) == reply.message.content
    assert "<end_of_turn>" not in reply.message.content


def test_stop_string_trims_output(client: ollama.Client) -> None:
    free = client.generate(MODEL, "1, 2, 3, 4,", raw=True, options={**SHORT, "num_predict": 16})
    assert "6" in free.response
    stopped = client.generate(MODEL, "1, 2, 3, 4,", raw=True,
                              options={**SHORT, "num_predict": 16, "stop": ["6"]})
    assert stopped.done_reason == "stop"
    assert "6" not in stopped.response
    assert free.response.startswith(stopped.response)


def test_embed(client: ollama.Client) -> None:
    result = client.embed(MODEL, input=["hello world", "good morning"])
    assert len(result.embeddings) == 2
    for vector in result.embeddings:
        assert len(vector) == 640
        assert abs(sum(v * v for v in vector) - 1.0) < 1e-3
    assert result.embeddings[0] != result.embeddings[1]
    cut = client.embed(MODEL, input="hello world", dimensions=64).embeddings[0]
    assert len(cut) == 64 and abs(sum(v * v for v in cut) - 1.0) < 1e-3


def test_ps_after_use(client: ollama.Client, corral_server: LiveServer) -> None:
    client.generate(MODEL, "hi", options={"num_predict": 1})
    running = {m.model: m for m in client.ps().models}
    assert MODEL in running
    assert running[MODEL].context_length >= 4096  # a larger loaded context is reused
    if not corral_server.real_gpus():  # on a GPU machine the model is (partly) in VRAM
        assert running[MODEL].size_vram == 0
    assert running[MODEL].size > 250_000_000
    # The prompt cache beyond the slots, from the runner's health reply (every few seconds):
    # on by default, and the generate above was an admission it could not serve.
    entry = corral_server.wait_ps(
        MODEL, lambda e: e is not None and e["corral"]["prompt_cache"]["misses"] >= 1)
    assert entry is not None
    assert set(entry["corral"]["prompt_cache"]) == {"entries", "bytes", "hits", "misses"}
    assert entry["corral"]["runners"][0]["prompt_cache"]["misses"] >= 1


def test_copy_and_delete(client: ollama.Client) -> None:
    client.copy(MODEL, "corral-copy:test")
    names = [m.model for m in client.list().models]
    assert "corral-copy:test" in names and MODEL in names
    reply = client.generate("corral-copy:test", "2 + 2 =", raw=True, options=SHORT)
    assert reply.done
    client.delete("corral-copy:test")
    assert "corral-copy:test" not in [m.model for m in client.list().models]
    assert MODEL in [m.model for m in client.list().models]  # shared blobs survive
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("corral-copy:test")
    assert err.value.status_code == 404


def test_unknown_model_is_404(client: ollama.Client) -> None:
    for call in (lambda: client.generate("no-such-model", "hi"),
                 lambda: client.chat("no-such-model", messages=[{"role": "user", "content": "x"}]),
                 lambda: client.show("no-such-model"),
                 lambda: client.embed("no-such-model", input="x")):
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 404
        assert "not found" in err.value.error


def test_empty_prompt_loads_and_keep_alive_zero_unloads(client: ollama.Client) -> None:
    loaded = client.generate(MODEL, "")
    assert loaded.done_reason == "load"
    assert MODEL in [m.model for m in client.ps().models]
    unloaded = client.generate(MODEL, "", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert MODEL not in [m.model for m in client.ps().models]


def test_logprobs_on_generate_and_chat(client: ollama.Client, corral_server: LiveServer
                                       ) -> None:
    reply = httpx.post(corral_server.url + "/api/generate", timeout=120, json={
        "model": MODEL, "prompt": "The sky is", "raw": True, "stream": False, "logprobs": True,
        "top_logprobs": 2, "options": {"num_predict": 5, "temperature": 0}}).json()
    entries = reply["logprobs"]
    assert len(entries) == reply["eval_count"] == 5
    assert "".join(e["token"] for e in entries) == reply["response"]
    assert all(len(e["top_logprobs"]) == 2 and e["logprob"] <= 0 for e in entries)

    chat = httpx.post(corral_server.url + "/api/chat", timeout=120, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "logprobs": True,
        "stream": False, "options": {"num_predict": 4, "temperature": 0}}).json()
    assert len(chat["logprobs"]) == 4 and all(e["top_logprobs"] == [] for e in chat["logprobs"])

    bad = httpx.post(corral_server.url + "/api/generate", json={
        "model": MODEL, "prompt": "x", "logprobs": True, "top_logprobs": 21})
    assert bad.status_code == 400 and "top_logprobs" in bad.json()["error"]
