"""One streamed request, timed chunk by chunk.

`--api ollama`: POST /api/generate (the prompt sent raw, no template) or /api/chat, NDJSON lines
until the `"done": true` object, whose `eval_count` is the output token count.
`--api openai`: POST /v1/chat/completions or /v1/completions as server-sent events with
`stream_options.include_usage`, until `data: [DONE]`; `usage.completion_tokens` is the count.
Where the server reports no count, the number of non-empty chunks stands in for it.

A prompt is a string or a list of chat messages: the chat endpoints send the messages as they
are (a string becomes one user message); generate and completions send the messages' contents
joined by blank lines, so a growing conversation keeps a growing common prefix there too.

Every request asks for greedy decoding (temperature 0) and at most `output_tokens` tokens.
Timestamps are `time.perf_counter()` seconds, taken as each line is read.

Errors are sorted by kind: the HTTP status ("429", "503", ...), "timeout" (the request ran past
its time limit), "connect" (no connection), "stream" (a broken or unreadable stream, or an error
object inside it) and "cut" (cancelled when the run's time budget ran out).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from gateway.cli.client import error_message
from shared.config import is_loopback_host

APIS: dict[str, tuple[str, ...]] = {"ollama": ("generate", "chat"),
                                    "openai": ("chat", "completions")}
DEFAULT_ENDPOINT = {"ollama": "generate", "openai": "chat"}
_PATHS = {
    ("ollama", "generate"): "/api/generate",
    ("ollama", "chat"): "/api/chat",
    ("openai", "chat"): "/v1/chat/completions",
    ("openai", "completions"): "/v1/completions",
}


Message = Mapping[str, str]
Prompt = str | Sequence[Message]


def prompt_text(prompt: Prompt) -> str:
    """The prompt as one string, for the endpoints that take text: contents joined by blank
    lines (the roles are dropped: a raw prompt has no template to mark them)."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(str(message.get("content", "")) for message in prompt)


def prompt_messages(prompt: Prompt) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(message) for message in prompt]


@dataclass(frozen=True)
class Target:
    """Where and what to ask: the server, its API flavour, the endpoint and the generation size."""

    url: str
    api: str = "ollama"
    endpoint: str | None = None  # None: generate for ollama, chat for openai
    model: str = ""
    output_tokens: int = 128
    api_key: str | None = None

    def __post_init__(self) -> None:
        if self.api not in APIS:
            raise ValueError(f"unknown API {self.api!r}: expected ollama or openai")
        if self.endpoint is None:
            object.__setattr__(self, "endpoint", DEFAULT_ENDPOINT[self.api])
        if self.endpoint not in APIS[self.api]:
            raise ValueError(f"--api {self.api} has no endpoint {self.endpoint!r}: expected "
                             f"{' or '.join(APIS[self.api])}")
        object.__setattr__(self, "url", self.url.rstrip("/"))

    @property
    def request_url(self) -> str:
        path = _PATHS[(self.api, self.endpoint)]  # type: ignore[index]
        if self.api == "openai" and self.url.endswith("/v1"):  # a base URL given as .../v1
            path = path.removeprefix("/v1")
        return self.url + path

    def body(self, prompt: Prompt, output_tokens: int | None = None) -> dict[str, Any]:
        """The request body; `output_tokens` overrides the target's own limit."""
        limit = self.output_tokens if output_tokens is None else output_tokens
        if self.api == "ollama":
            body: dict[str, Any] = {"model": self.model, "stream": True,
                                    "options": {"temperature": 0, "num_predict": limit}}
            if self.endpoint == "chat":
                body["messages"] = prompt_messages(prompt)
            else:
                body.update(prompt=prompt_text(prompt), raw=True)
            return body
        body = {"model": self.model, "stream": True, "stream_options": {"include_usage": True},
                "max_tokens": limit, "temperature": 0}
        if self.endpoint == "chat":
            body["messages"] = prompt_messages(prompt)
        else:
            body["prompt"] = prompt_text(prompt)
        return body

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "api": self.api, "endpoint": self.endpoint,
                "request_url": self.request_url, "model": self.model}

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": "corral-bench"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


@dataclass
class RequestResult:
    """One request's timeline (perf_counter seconds) and outcome."""

    sent: float
    chunks: list[float] = field(default_factory=list)  # arrivals of non-empty chunks
    end: float | None = None  # arrival of the final message
    output_tokens: int = 0
    prompt_tokens: int | None = None  # as the server reports it
    tokens_from: str = "server"  # "server" (eval_count / usage) or "chunks" (counted)
    error: str | None = None
    error_kind: str | None = None  # see the module docstring
    status: int | None = None  # the HTTP status, once the reply's head has arrived
    scheduled: float | None = None  # when an open-loop schedule wanted it sent
    text: str = ""  # the reply, kept for the next turn of a conversation

    @property
    def ok(self) -> bool:
        return self.error is None and self.end is not None

    @property
    def lateness(self) -> float:
        """How long after its scheduled time the request went out (0 for closed loops)."""
        return max(0.0, self.sent - self.scheduled) if self.scheduled is not None else 0.0

    def fail(self, kind: str, message: str) -> None:
        self.error_kind, self.error = kind, message

    @property
    def ttft(self) -> float | None:
        """Send to the first non-empty chunk, seconds."""
        return self.chunks[0] - self.sent if self.chunks else None

    @property
    def e2e(self) -> float | None:
        """Send to the final message, seconds."""
        return self.end - self.sent if self.end is not None else None

    @property
    def gaps(self) -> list[float]:
        """Inter-token latencies: gaps between consecutive chunks after the first, seconds."""
        return [b - a for a, b in zip(self.chunks, self.chunks[1:], strict=False)]


def http_client(target: Target, connections: int | None,
                transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """One connection pool per server for the whole run, big enough for the most requests ever
    in flight (None: no limit): a request must never wait for a free connection, which would
    delay it unseen."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0), limits=limits,
                             headers=target.headers(), transport=transport,
                             trust_env=not is_loopback_host(httpx.URL(target.url).host))


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise ValueError(f"unexpected response from the server: {text[:200]!r}") from None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _Stream:
    """Folds parsed stream objects into a RequestResult."""

    def __init__(self, target: Target, result: RequestResult) -> None:
        self.target = target
        self.result = result
        self.counted = 0
        self.reported: int | None = None
        self.finished = False  # an OpenAI finish_reason arrived
        self.parts: list[str] = []

    def chunk(self, text: str, now: float) -> None:
        if text:
            self.result.chunks.append(now)
            self.parts.append(text)
            self.counted += 1

    def ollama(self, obj: Any, now: float) -> bool:
        """One NDJSON object; True once the final one has arrived."""
        if not isinstance(obj, dict):
            raise ValueError(f"unexpected line: {json.dumps(obj)[:200]}")
        if obj.get("error"):
            raise ValueError(str(obj["error"]))
        if self.target.endpoint == "chat":
            message = obj.get("message") or {}
            text = (message.get("content") or "") + (message.get("thinking") or "")
        else:
            text = (obj.get("response") or "") + (obj.get("thinking") or "")
        self.chunk(text, now)
        if obj.get("done"):
            self.reported = _int(obj.get("eval_count"))
            self.result.prompt_tokens = _int(obj.get("prompt_eval_count"))
            return True
        return False

    def openai(self, obj: Any, now: float) -> None:
        if not isinstance(obj, dict):
            raise ValueError(f"unexpected event: {json.dumps(obj)[:200]}")
        if obj.get("error"):
            err = obj["error"]
            raise ValueError(str(err.get("message", err) if isinstance(err, dict) else err))
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.reported = _int(usage.get("completion_tokens"))
            self.result.prompt_tokens = _int(usage.get("prompt_tokens"))
        text = ""
        for choice in obj.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            if self.target.endpoint == "chat":
                delta = choice.get("delta") or {}
                for key in ("content", "reasoning_content", "reasoning"):
                    if isinstance(delta.get(key), str):
                        text += delta[key]
            elif isinstance(choice.get("text"), str):
                text += choice["text"]
            if choice.get("finish_reason"):
                self.finished = True
        self.chunk(text, now)

    def close(self, now: float) -> None:
        self.result.end = now
        self.result.text = "".join(self.parts)
        if self.reported is not None:
            self.result.output_tokens = self.reported
        else:
            self.result.output_tokens = self.counted
            self.result.tokens_from = "chunks"


async def run_request(http: httpx.AsyncClient, target: Target, prompt: Prompt, *,
                      output_tokens: int | None = None, timeout: float | None = None,
                      result: RequestResult | None = None) -> RequestResult:
    """Send one streamed request and time it; failures end up in `result.error`, not raised.

    `result`, when given, is filled in place (its `sent` is reset to the real send time), so a
    caller that cancels the request still holds what it was; `timeout` bounds the whole request.
    """
    if result is None:
        result = RequestResult(sent=time.perf_counter())
    else:
        result.sent = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            await _exchange(http, target, prompt, output_tokens, result)
    except TimeoutError:
        result.fail("timeout", f"timed out after {timeout:g} s")
    except httpx.TimeoutException as exc:
        result.fail("timeout", f"{type(exc).__name__}: {exc}")
    except httpx.ConnectError as exc:
        result.fail("connect", f"could not connect: {exc}")
    except httpx.HTTPError as exc:
        result.fail("stream", f"{type(exc).__name__}: {exc}")
    except ValueError as exc:  # bad JSON, or an error object in the stream
        result.fail("stream", str(exc) or "unexpected response")
    return result


async def _exchange(http: httpx.AsyncClient, target: Target, prompt: Prompt,
                    output_tokens: int | None, result: RequestResult) -> None:
    stream = _Stream(target, result)
    last = result.sent
    body = target.body(prompt, output_tokens)
    async with http.stream("POST", target.request_url, json=body) as reply:
        result.status = reply.status_code
        if reply.status_code >= 400:
            await reply.aread()
            result.fail(str(reply.status_code), f"HTTP {reply.status_code}: "
                        f"{error_message(reply.content, reply.status_code)}")
            return
        async for line in reply.aiter_lines():
            now = time.perf_counter()
            line = line.strip()
            if target.api == "ollama":
                if line and stream.ollama(_loads(line), now):
                    stream.close(now)
                    return
                continue
            if not line.startswith("data:"):
                continue  # blank separators, comments, event names
            data = line[5:].strip()
            if data == "[DONE]":
                stream.close(now)
                return
            stream.openai(_loads(data), now)
            last = now
        if target.api == "openai" and stream.finished:  # a server that sends no [DONE]
            stream.close(last)
            return
        result.fail("stream", "the stream ended before the final message")
