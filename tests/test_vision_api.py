"""Images through every API of a live server, on the tiny vision model (tests/vision_model.py),
whose answer is the colour of the image it is shown: the image really reaches the model.

The model is created over HTTP (blobs uploaded, `files` naming the LM and the projector), once
with the GGUF's Jinja template (the runner renders, images at llama.cpp's media marker) and once
with a Go TEMPLATE (the gateway renders, images at Ollama's [img-N] tags)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from gateway import images
from shared.config import Settings
from shared.errors import BadRequest
from tests import vision_model
from tests.conftest import LiveServer

pytestmark = pytest.mark.e2e

JINJA = "tiny-vision:latest"
GOTMPL = "tiny-vision-go:latest"
GO_TEMPLATE = ("{{ range .Messages }}<|{{ .Role }}|>{{ .Content }}\n{{ end }}<|assistant|>")


def png(colour: str) -> bytes:
    return vision_model.png(vision_model.RGB[colour])


def b64(colour: str) -> str:
    return base64.b64encode(png(colour)).decode()


def upload(server: LiveServer, path: Path) -> str:
    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    resp = httpx.post(f"{server.url}/api/blobs/{digest}", content=data, timeout=60)
    assert resp.status_code in (200, 201), resp.text
    return digest


@pytest.fixture(scope="module")
def models(corral_server: LiveServer, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[LiveServer]:
    lm, proj = vision_model.write_model(tmp_path_factory.mktemp("vision"))
    files = {"tiny-vision.gguf": upload(corral_server, lm),
             "mmproj.gguf": upload(corral_server, proj)}
    for name, extra in ((JINJA, {}), (GOTMPL, {"template": GO_TEMPLATE})):
        resp = httpx.post(f"{corral_server.url}/api/create", timeout=120,
                          json={"model": name, "files": files, "stream": False, **extra})
        assert resp.status_code == 200, resp.text
    yield corral_server
    for name in (JINJA, GOTMPL):
        httpx.request("DELETE", f"{corral_server.url}/api/delete", json={"model": name})


@pytest.fixture
def client(models: LiveServer) -> ollama.Client:
    return ollama.Client(host=models.url, timeout=120)


@pytest.fixture
def oai(models: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=models.url + "/v1", api_key="unused", timeout=120)


OPTIONS = {"temperature": 0, "num_predict": 4}


@pytest.mark.parametrize("model", [JINJA, GOTMPL])
@pytest.mark.parametrize("colour", vision_model.COLOURS)
def test_native_chat_streamed_and_not(client: ollama.Client, model: str, colour: str) -> None:
    ask = [{"role": "user", "content": "what colour?", "images": [png(colour)]}]
    whole = client.chat(model, messages=ask, options=OPTIONS)
    assert whole.message.content == f" {colour}"
    plain = client.chat(model, messages=[{"role": "user", "content": "what colour?"}],
                        options=OPTIONS)
    assert plain.message.content == " the" * 4  # no image: nothing to name
    # 16 image positions (and the text libmtmd puts around an image: none for LLaVA's mlp).
    assert whole.prompt_eval_count >= plain.prompt_eval_count + vision_model.N_IMAGE_TOKENS
    parts = list(client.chat(model, messages=ask, options=OPTIONS, stream=True))
    assert "".join(p.message.content for p in parts) == f" {colour}"
    assert parts[-1].done and parts[-1].prompt_eval_count == whole.prompt_eval_count


def test_history_images_are_read_again_and_cached(models: LiveServer) -> None:
    turn1 = [{"role": "user", "content": "which colour is it?", "images": [b64("green")]}]
    first = httpx.post(f"{models.url}/api/chat", timeout=120, json={
        "model": JINJA, "messages": turn1, "stream": False, "options": OPTIONS}).json()
    assert first["message"]["content"] == " green"
    turn2 = [*turn1, first["message"], {"role": "user", "content": "and again?"}]
    second = httpx.post(f"{models.url}/api/chat", timeout=120, json={
        "model": JINJA, "messages": turn2, "stream": False, "options": OPTIONS}).json()
    assert second["message"]["content"] == " green"  # the history's image, read again
    assert second["prompt_eval_cached_count"] >= first["prompt_eval_count"] - 1
    other = [{**turn1[0], "images": [b64("red")]}, first["message"],
             {"role": "user", "content": "and again?"}]
    third = httpx.post(f"{models.url}/api/chat", timeout=120, json={
        "model": JINJA, "messages": other, "stream": False, "options": OPTIONS}).json()
    assert third["message"]["content"] == " red"  # a different image is never the cached one
    assert third["prompt_eval_cached_count"] < first["prompt_eval_count"] - 16


@pytest.mark.parametrize("model", [JINJA, GOTMPL])
def test_native_generate(client: ollama.Client, model: str) -> None:
    reply = client.generate(model, "what colour?", images=[png("blue")], options=OPTIONS)
    assert reply.response == " blue"
    raw = client.generate(model, "<|user|>[img-1]what colour?\n<|assistant|>", raw=True,
                          images=[png("red"), png("green")], options=OPTIONS)
    assert raw.response == " green"
    parts = list(client.generate(model, "what colour?", images=[png("red")], options=OPTIONS,
                                 stream=True))
    assert "".join(p.response for p in parts) == " red"


@pytest.mark.parametrize("model", [JINJA, GOTMPL])
def test_openai_chat_image_url(oai: openai.OpenAI, model: str) -> None:
    content: Any = [{"type": "text", "text": "what colour?"},
                    {"type": "image_url",
                     "image_url": {"url": "data:image/png;base64," + b64("green")}}]
    reply = oai.chat.completions.create(model=model, temperature=0, max_tokens=4,
                                        messages=[{"role": "user", "content": content}])
    assert reply.choices[0].message.content == " green"
    plain = oai.chat.completions.create(model=model, temperature=0, max_tokens=4,
                                        messages=[{"role": "user", "content": "what colour?"}])
    assert reply.usage is not None and plain.usage is not None
    assert reply.usage.prompt_tokens >= plain.usage.prompt_tokens + vision_model.N_IMAGE_TOKENS
    stream = oai.chat.completions.create(model=model, temperature=0, max_tokens=4, stream=True,
                                         messages=[{"role": "user", "content": content}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == " green"


GREEDY = {"temperature": 0}


def anthropic_image(colour: str) -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                        "data": b64(colour)}}


@pytest.mark.parametrize("model", [JINJA, GOTMPL])
def test_anthropic_messages_image_blocks(models: LiveServer, model: str) -> None:
    client = anthropic.Anthropic(base_url=models.url, api_key="unused", timeout=120)
    ask: Any = [{"role": "user", "content": [anthropic_image("blue"),
                                             {"type": "text", "text": "what colour?"}]}]
    reply = client.messages.create(model=model, max_tokens=4, extra_body=GREEDY, messages=ask)
    assert [b.text for b in reply.content if b.type == "text"] == [" blue"]
    plain = client.messages.create(model=model, max_tokens=4, extra_body=GREEDY, messages=[
        {"role": "user", "content": "what colour?"}])
    def prompt(usage: anthropic.types.Usage) -> int:  # read now plus read from the cache
        return usage.input_tokens + (usage.cache_read_input_tokens or 0)

    assert prompt(reply.usage) >= prompt(plain.usage) + vision_model.N_IMAGE_TOKENS
    # count_tokens counts the image's positions as the reply's usage does.
    counted = client.messages.count_tokens(model=model, messages=ask)
    assert counted.input_tokens == prompt(reply.usage)
    with client.messages.stream(model=model, max_tokens=4, extra_body=GREEDY,
                                messages=ask) as stream:
        assert "".join(stream.text_stream) == " blue"
    # A tool result's image (an agent's screenshot) reaches the model too.
    turn: Any = [
        {"role": "user", "content": "look"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "screenshot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [anthropic_image("red")]}]}]
    shot = client.messages.create(model=model, max_tokens=4, extra_body=GREEDY, messages=turn)
    assert [b.text for b in shot.content if b.type == "text"] == [" red"]


@pytest.mark.parametrize("model", [JINJA, GOTMPL])
def test_responses_input_image(oai: openai.OpenAI, model: str) -> None:
    ask: Any = [{"role": "user", "content": [
        {"type": "input_text", "text": "what colour?"},
        {"type": "input_image", "image_url": "data:image/png;base64," + b64("green")}]}]
    reply = oai.responses.create(model=model, input=ask, temperature=0, max_output_tokens=4)
    assert reply.output_text == " green"
    plain = oai.responses.create(model=model, input="what colour?", temperature=0,
                                 max_output_tokens=4)
    assert reply.usage is not None and plain.usage is not None
    assert reply.usage.input_tokens >= plain.usage.input_tokens + vision_model.N_IMAGE_TOKENS
    events = oai.responses.create(model=model, input=ask, temperature=0, max_output_tokens=4,
                                  stream=True)
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == \
        " green"
    # The stored conversation keeps the image: the next turn reads it again.
    after = oai.responses.create(model=model, input="and now?", temperature=0,
                                 max_output_tokens=4, previous_response_id=reply.id)
    assert after.output_text == " green"
    assert after.usage is not None  # the first turn, its image included, came from the cache
    assert after.usage.input_tokens_details.cached_tokens >= reply.usage.input_tokens - 1


def test_image_errors_on_the_agent_apis(models: LiveServer) -> None:
    url = models.url
    resp = httpx.post(f"{url}/v1/messages", timeout=120, json={
        "model": JINJA, "max_tokens": 4, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/tiff",
                                         "data": b64("red")}}]}]})
    assert resp.status_code == 400
    assert "media_type: must be one of image/jpeg" in resp.json()["error"]["message"]
    resp = httpx.post(f"{url}/v1/messages", timeout=120, json={
        "model": JINJA, "max_tokens": 4, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(b"not a png").decode()}}]}]})
    assert resp.status_code == 400
    assert resp.json()["error"]["message"].startswith("image 1 could not be decoded")
    resp = httpx.post(f"{url}/v1/responses", timeout=120, json={
        "model": JINJA, "input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": "data:image/png;base64,@@"}]}]})
    assert resp.status_code == 400
    assert "input[0].content[0].image_url is not valid base64" in resp.json()["error"]["message"]


def test_errors(models: LiveServer, oai: openai.OpenAI) -> None:
    url = models.url

    def chat(model: str, images_: list[Any]) -> httpx.Response:
        return httpx.post(f"{url}/api/chat", timeout=120, json={
            "model": model, "stream": False,
            "messages": [{"role": "user", "content": "hi", "images": images_}]})

    # A text-only model: Ollama's words, 400.
    resp = chat("gemma3:270m", [b64("red")])
    assert resp.status_code == 400
    assert resp.json() == {"error": "this model is missing data required for image input"}
    resp = chat(JINJA, [b64("red"), "%%% not base64"])
    assert resp.status_code == 400
    assert resp.json()["error"] == ("invalid image input: messages[0].images[1] is not valid "
                                    "base64")
    resp = chat(JINJA, [b64("red"), base64.b64encode(b"GIF89a but not really").decode()])
    assert resp.status_code == 400 and resp.json()["error"].startswith(
        "image 2 could not be decoded")
    resp = chat(JINJA, [b64("red")] * 17)
    assert resp.status_code == 400
    assert resp.json()["error"] == ("too many images: 17 in one request, at most 16 "
                                    "(CORRAL_MAX_IMAGES)")
    resp = httpx.post(f"{url}/api/generate", timeout=120, json={
        "model": JINJA, "prompt": "hi", "images": ["@@"], "stream": False})
    assert resp.status_code == 400 and "images[0] is not valid base64" in resp.json()["error"]

    for image_url, message in (
            ("https://example.com/cat.png", images.URL_REFUSED),
            ("data:text/plain;base64,aGk=", "invalid image input")):
        with pytest.raises(openai.BadRequestError) as err:
            oai.chat.completions.create(model=JINJA, messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": image_url}}]}])
        assert err.value.status_code == 400 and err.value.body["message"] == message


def test_limits_are_settings() -> None:
    settings = Settings.from_env({"CORRAL_MAX_IMAGES": "1", "CORRAL_MAX_IMAGE_BYTES": "100"})
    assert (settings.max_images, settings.max_image_bytes) == (1, 100)
    images.check_limits([{"images": [b"x" * 100]}], None, settings)
    with pytest.raises(BadRequest, match=r"image 1 is too large: 101 bytes, at most 100"):
        images.check_limits(None, [b"x" * 101], settings)
    with pytest.raises(BadRequest, match="too many images: 2"):
        images.check_limits([{"images": [b"a"]}], [b"b"], settings)


def test_a_cut_history_counts_images_as_their_positions(models: LiveServer) -> None:
    """The gateway's cut (Go template) counts an image as its 16 positions, not its tag's
    text: a chat whose text fits num_ctx but whose images do not loses its oldest message,
    images and all, exactly as if the client had not sent it."""
    chat = [{"role": "user", "content": "a", "images": [b64("red")] * 14},
            {"role": "assistant", "content": " red"},
            {"role": "user", "content": "b", "images": [b64("blue")]}]

    def ask(messages: list[dict[str, Any]], num_ctx: int) -> dict[str, Any]:
        resp = httpx.post(f"{models.url}/api/chat", timeout=120, json={
            "model": GOTMPL, "messages": messages, "stream": False,
            "options": {**OPTIONS, "num_ctx": num_ctx}})
        assert resp.status_code == 200, resp.text
        return resp.json()

    num_ctx = 256  # a multiple of 256 cells per slot: llama.cpp grants it as asked
    assert ask(chat, 1024)["prompt_eval_count"] > num_ctx
    tags = "".join(f"[img-{i}]" for i in range(15))
    rendered = tags + "".join(f"<|{m['role']}|>{m['content']}\n" for m in chat) + "<|assistant|>"
    assert len(rendered.encode()) + 1 < num_ctx  # by its bytes the chat would fit
    # Unloaded first: a runner with a larger context serves a smaller num_ctx as it is.
    httpx.post(f"{models.url}/api/generate", json={"model": GOTMPL, "keep_alive": 0},
               timeout=60).raise_for_status()
    cut = ask(chat, num_ctx)
    expected = ask(chat[1:], num_ctx)
    assert cut["message"]["content"] == expected["message"]["content"] == " blue"
    assert cut["prompt_eval_count"] == expected["prompt_eval_count"]
