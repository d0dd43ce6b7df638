"""Thinking models end to end, with the official `ollama` and `openai` clients and the CLI.

The bundled model does not think, so these tests make one: a Modelfile TEMPLATE in the style of
the registry's reasoning models, which shows earlier turns' thinking between <think> tags and
opens a <think> block in the prompt when `.Think` is set (so the reply starts inside it). A
history of questions answered with thinking shows the small model the pattern, and at
temperature 0 it thinks, closes the block and answers. A tiny random GGUF with a Jinja template
that reads `enable_thinking` and `reasoning_effort` covers the runner-rendered path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.conftest import LiveServer
from tests.test_cli import REPO, PtySession
from tests.test_create import write_tiny_gguf

pytestmark = pytest.mark.e2e

MODEL = "gemma3:270m"
THINKER = "corral-thinker:test"
JINJA_THINKER = "corral-jinja-thinker:test"

TEMPLATE = """{{- if .Tools }}<start_of_turn>user
Functions:
{{ range .Tools }}{{ . }}
{{ end }}Call one with <tool_call>{"name": NAME, "arguments": ARGS}</tool_call>.<end_of_turn>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ else if eq .Role "assistant" }}<start_of_turn>model
{{ if .Thinking }}<think>
{{ .Thinking }}
</think>
{{ end }}{{ if .ToolCalls }}{{ range .ToolCalls }}<tool_call>{"name": "{{ .Function.Name }}", \
"arguments": {{ .Function.Arguments }}}</tool_call>{{ end }}{{ else }}{{ .Content }}{{ end }}\
{{ if not $last }}<end_of_turn>
{{ end }}
{{- else if eq .Role "tool" }}<start_of_turn>user
<tool_response>{{ .Content }}</tool_response><end_of_turn>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<start_of_turn>model
{{ if $.Think }}<think>
{{ end }}
{{- end }}
{{- end }}"""

# Earlier answers with their thinking: the pattern the model continues.
HISTORY: list[dict[str, Any]] = []
for _q, _t, _a in [("What is 2+2?", "Two plus two is four.", "4"),
                   ("What is 3+3?", "Three plus three is six.", "6"),
                   ("What is 5+5?", "Five plus five is ten.", "10")]:
    HISTORY += [{"role": "user", "content": _q},
                {"role": "assistant", "thinking": _t, "content": _a}]
ASK = [*HISTORY, {"role": "user", "content": "What is 4+4?"}]
# The same in OpenAI's shape: earlier thinking as reasoning_content.
OPENAI_ASK = [{"role": m["role"], "content": m["content"],
               **({"reasoning_content": m["thinking"]} if "thinking" in m else {})} for m in ASK]

# A GGUF's own Jinja template: thinking of earlier turns as reasoning_content, and a prompt that
# names the effort and opens the block when thinking is on.
JINJA = """{% for m in messages %}{{ m.role }}:{% if m.reasoning_content %}<think>\
{{ m.reasoning_content }}</think>{% endif %}{{ m.content }}
{% endfor %}{% if enable_thinking %}effort:{{ reasoning_effort }}
assistant:<think>{% else %}assistant:{% endif %}"""


@pytest.fixture(scope="module")
def native(corral_server: LiveServer) -> ollama.Client:
    return ollama.Client(host=corral_server.url)


@pytest.fixture(scope="module")
def thinker(native: ollama.Client) -> Iterator[str]:
    native.create(THINKER, from_=MODEL, template=TEMPLATE,
                  parameters={"temperature": 0, "num_predict": 14})
    yield THINKER
    native.delete(THINKER)


@pytest.fixture(scope="module")
def jinja_thinker(native: ollama.Client, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[str]:
    path = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", chat_template=JINJA)
    native.create(JINJA_THINKER, files={"tiny.gguf": native.create_blob(path)},
                  parameters={"temperature": 0, "num_predict": 6})
    yield JINJA_THINKER
    native.delete(JINJA_THINKER)


@pytest.fixture(scope="module")
def client(corral_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=corral_server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def answer(native: ollama.Client, thinker: str) -> ollama.ChatResponse:
    """The reference reply (think defaults to on for a thinking model)."""
    return native.chat(thinker, messages=ASK)


def test_thinking_comes_apart_from_the_answer(native: ollama.Client, thinker: str,
                                              answer: ollama.ChatResponse) -> None:
    assert "thinking" in native.show(thinker).capabilities
    thinking, content = answer.message.thinking, answer.message.content
    assert thinking and "plus" in thinking  # it continued the pattern inside the block
    assert "<think>" not in thinking and "</think>" not in thinking
    assert content and not content.startswith(("</think>", "\n"))
    # Streamed: the same split, the thinking first, each chunk in its own field.
    parts = [(c.message.thinking or "", c.message.content) for c in
             native.chat(thinker, messages=ASK, stream=True)]
    assert "".join(t for t, _ in parts) == thinking
    assert "".join(c for _, c in parts) == content
    last_thought = max(i for i, (t, _) in enumerate(parts) if t)
    first_answer = min(i for i, (_, c) in enumerate(parts) if c)
    assert last_thought < first_answer
    assert all(not (t and c) for t, c in parts)


def test_think_false_is_passed_to_the_template(native: ollama.Client, thinker: str,
                                               answer: ollama.ChatResponse) -> None:
    plain = native.chat(thinker, messages=ASK, think=False)
    assert not plain.message.thinking
    # The template did not open the block: the prompt is shorter by its tokens.
    assert plain.prompt_eval_count < answer.prompt_eval_count
    assert plain.message.content.strip()


def test_history_thinking_is_rendered_back(native: ollama.Client, thinker: str,
                                           answer: ollama.ChatResponse) -> None:
    bare = [{k: v for k, v in m.items() if k != "thinking"} for m in ASK]
    without = native.chat(thinker, messages=bare, options={"num_predict": 1})
    assert answer.prompt_eval_count > without.prompt_eval_count + 12
    # A round trip: the reply, thinking and all, goes back as history.
    again = native.chat(thinker, messages=[*ASK, answer.message,
                                           {"role": "user", "content": "What is 1+1?"}],
                        options={"num_predict": 1})
    longer = native.chat(thinker, messages=[*ASK, {"role": "assistant",
                                                   "content": answer.message.content},
                                            {"role": "user", "content": "What is 1+1?"}],
                         options={"num_predict": 1})
    assert again.prompt_eval_count > longer.prompt_eval_count


def test_generate_has_a_thinking_field(corral_server: LiveServer, thinker: str) -> None:
    body = {"model": thinker, "prompt": "Why is the sky blue?", "stream": False,
            "options": {"num_predict": 6}}
    reply = httpx.post(corral_server.url + "/api/generate", json=body, timeout=120).json()
    # One question, no history: the small model goes on thinking past the 6 tokens.
    assert reply["thinking"] and reply["response"] == ""
    lines = [json.loads(line) for line in httpx.post(
        corral_server.url + "/api/generate", json={**body, "stream": True},
        timeout=120).text.splitlines()]
    assert "".join(x.get("thinking", "") for x in lines) == reply["thinking"]
    assert all(x["response"] == "" for x in lines)
    assert lines[-1]["done"] and "thinking" not in lines[-1]
    off = httpx.post(corral_server.url + "/api/generate", json={**body, "think": False},
                     timeout=120).json()
    assert "thinking" not in off and off["response"]


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
@pytest.mark.parametrize(("model", "think", "message"), [
    (THINKER, "high", 'think value "high" is not supported for this model'),
    (THINKER, "extreme", 'invalid think value: "extreme" (must be "high", "medium", "low", '
                         '"max", true, or false)'),
    (THINKER, 1, "think must be a boolean or string"),
    (MODEL, True, f'"{MODEL}" does not support thinking'),
    (MODEL, "low", f'"{MODEL}" does not support thinking'),
])
def test_think_errors_are_ollamas(corral_server: LiveServer, thinker: str, path: str,
                                  model: str, think: Any, message: str) -> None:
    reply = httpx.post(corral_server.url + path, timeout=60, json={
        "model": model, "think": think, "messages": ASK, "prompt": "Hi"})
    assert reply.status_code == 400
    assert reply.json() == {"error": message} or message in reply.json()["error"]


def test_openai_reasoning_content(client: openai.OpenAI, thinker: str,
                                  answer: ollama.ChatResponse) -> None:
    reply = client.chat.completions.create(model=thinker, messages=OPENAI_ASK, temperature=0)
    message = reply.choices[0].message
    extra = message.model_extra or {}
    assert extra["reasoning_content"] == answer.message.thinking == extra["reasoning"]
    assert message.content == answer.message.content
    details = reply.usage.completion_tokens_details
    assert details is not None and 0 < details.reasoning_tokens < reply.usage.completion_tokens

    chunks = list(client.chat.completions.create(
        model=thinker, messages=OPENAI_ASK, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    thinking = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    assert thinking == answer.message.thinking
    assert "".join(d.content or "" for d in deltas) == answer.message.content
    assert deltas[0].role == "assistant"
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens_details.reasoning_tokens == details.reasoning_tokens


def test_openai_reasoning_effort_and_history(client: openai.OpenAI, thinker: str) -> None:
    off = client.chat.completions.create(model=thinker, messages=OPENAI_ASK, temperature=0,
                                         reasoning_effort="none")
    assert "reasoning_content" not in (off.choices[0].message.model_extra or {})
    assert off.usage.completion_tokens_details.reasoning_tokens == 0
    with pytest.raises(openai.BadRequestError, match="not supported for this model"):
        client.chat.completions.create(model=thinker, messages=ASK, reasoning_effort="high")
    with pytest.raises(openai.BadRequestError, match="invalid reasoning value"):
        client.chat.completions.create(model=thinker, messages=ASK,
                                       extra_body={"reasoning_effort": "bogus"})
    with pytest.raises(openai.BadRequestError, match="does not support thinking"):
        client.chat.completions.create(model=MODEL, messages=ASK, reasoning_effort="low")
    # Earlier thinking sent back as reasoning_content is rendered into the prompt.
    bare = [{"role": m["role"], "content": m["content"]} for m in ASK]
    shown, hidden = (client.chat.completions.create(model=thinker, messages=msgs, max_tokens=1)
                     for msgs in (OPENAI_ASK, bare))
    assert shown.usage.prompt_tokens > hidden.usage.prompt_tokens + 12


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


def test_a_call_after_thinking_is_a_tool_call(native: ollama.Client, thinker: str) -> None:
    history: list[dict[str, Any]] = []
    for city, weather in (("Rome", "Rainy"), ("Oslo", "Snowy")):
        history += [
            {"role": "user", "content": f"What is the weather in {city}?"},
            {"role": "assistant", "content": "", "thinking": f"I need the weather in {city}.",
             "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": city}}}]},
            {"role": "tool", "content": f"{weather} in {city}", "tool_name": "get_weather"},
            {"role": "assistant", "content": f"It is {weather.lower()} in {city}."}]
    history.append({"role": "user", "content": "What is the weather in Paris?"})
    reply = native.chat(thinker, messages=history, tools=[WEATHER_TOOL],
                        options={"num_predict": 40})
    assert reply.message.thinking and "weather" in reply.message.thinking
    [call, *_] = reply.message.tool_calls or [None]
    assert call is not None and call.function.name == "get_weather"
    assert "city" in call.function.arguments
    assert "<tool_call>" not in reply.message.content


def test_jinja_template_gets_enable_thinking_and_reasoning_effort(
        native: ollama.Client, jinja_thinker: str) -> None:
    assert "thinking" in native.show(jinja_thinker).capabilities
    on = native.chat(jinja_thinker, messages=ASK[-1:])
    # The template opened the block: the tiny random model's whole reply is thinking.
    assert on.message.thinking and on.message.content == ""
    off = native.chat(jinja_thinker, messages=ASK[-1:], think=False)
    assert not off.message.thinking and off.message.content
    assert off.prompt_eval_count < on.prompt_eval_count
    # The level reached the template (this one grades thinking): "high" is a byte longer.
    low, high = (native.chat(jinja_thinker, messages=ASK[-1:], think=level)
                 for level in ("low", "high"))
    assert high.prompt_eval_count == low.prompt_eval_count + 1
    assert low.message.thinking and high.message.thinking
    # Earlier thinking goes to the Jinja template as reasoning_content.
    history = [{"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "Hello", "thinking": "Greet back."},
               ASK[-1]]
    bare = [{k: v for k, v in m.items() if k != "thinking"} for m in history]
    shown, hidden = (native.chat(jinja_thinker, messages=msgs, options={"num_predict": 1})
                     for msgs in (history, bare))
    assert shown.prompt_eval_count >= hidden.prompt_eval_count + len("<think>Greet back.</think>")


def test_cli_shows_thinking_unless_hidden(corral_server: LiveServer, thinker: str) -> None:
    def run(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway.cli", "run", thinker, *flags,
                               "Why is the sky blue?"], capture_output=True, text=True,
                              env=corral_server.env, cwd=REPO, stdin=subprocess.DEVNULL,
                              timeout=120)

    shown = run()
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("Thinking...\n") and "...done thinking." in shown.stdout
    hidden = run("--hidethinking")
    assert hidden.returncode == 0, hidden.stderr
    assert "Thinking..." not in hidden.stdout
    thought = shown.stdout.split("Thinking...\n", 1)[1].split("\n...done thinking.")[0]
    assert thought.strip() and thought.strip() not in hidden.stdout
    off = run("--think=false")
    assert "Thinking..." not in off.stdout and off.stdout.strip()


def test_repl_set_think_and_nothink(corral_server: LiveServer, thinker: str) -> None:
    session = PtySession(corral_server.env, thinker)
    try:
        session.expect(">>> ", timeout=60)
        session.send("/set nothink\n")
        session.expect("Set 'nothink' mode.")
        session.expect(">>> ")
        session.send("Why is the sky blue?\n")
        reply = session.expect(">>> ", timeout=60)
        assert "Thinking..." not in reply and reply.strip()
        session.send("/set think\n")
        session.expect("Set 'think' mode.")
        session.expect(">>> ")
        start = len(session.buf)
        session.send("Why is the grass green?\n")
        reply = session.expect(">>> ", timeout=60)
        assert "Thinking..." in reply and "...done thinking." in reply
        assert "\x1b[2mThinking..." in session.buf[start:]  # dimmed on a terminal
        session.send("/bye\n")
        assert session.proc.wait(timeout=10) == 0
    finally:
        session.close()
