"""The OpenAI-compatible API through the official `openai` client, against a live server."""

from __future__ import annotations

import base64
from array import array

import openai
import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.e2e

MODEL = "gemma3:270m"


@pytest.fixture
def client(corral_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=corral_server.url + "/v1", api_key="unused")


def test_models_list_and_get(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.owned_by == "library"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_chat_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=10, temperature=0, seed=1)
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 10
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_completion_stream(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                  max_tokens=10, temperature=0, seed=1)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and not any(finishes[:-1])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 10


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model",
                                       messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["type"] == "not_found_error"


def test_empty_messages_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[])


def test_completion_and_stream(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="The capital of France is",
                                      max_tokens=8, temperature=0, seed=1)
    assert reply.object == "text_completion" and reply.choices[0].text.strip()
    assert reply.usage.completion_tokens == 8 and reply.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(model=MODEL, prompt="The capital of France is",
                                            max_tokens=8, temperature=0, seed=1, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == reply.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_embeddings_float_and_base64(client: openai.OpenAI) -> None:
    floats = client.embeddings.create(model=MODEL, input=["hello", "world"])
    assert [d.index for d in floats.data] == [0, 1] and len(floats.data[0].embedding) == 640
    assert floats.usage.prompt_tokens > 0
    # Asked for explicitly, base64 comes back as a string of little-endian float32s.
    encoded = client.embeddings.create(model=MODEL, input="hello", encoding_format="base64")
    decoded = array("f", base64.b64decode(encoded.data[0].embedding)).tolist()
    assert decoded == pytest.approx(floats.data[0].embedding, abs=1e-6)
