"""What both APIs share: resolve a model, merge options, lease its runner, stream the result.

The Ollama and OpenAI routes translate HTTP bodies into calls here and format what comes back;
nothing in this module knows about either wire format.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from array import array
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from gateway.options import check_options, load_request, merge_options, sampling_options
from registry import gotemplate
from registry.store import LocalModel, Store
from runner.pool import LoadedRunner, RunnerPool
from shared import protocol as p
from shared.config import Settings, keep_alive_seconds
from shared.errors import BadRequest, CorralError

Message = dict[str, Any]

log = logging.getLogger("corral.inference")


@dataclass
class Job:
    """One request against one model, with the timings Ollama reports."""

    model: LocalModel
    options: dict[str, Any]
    load: p.Load
    keep_alive: float | None
    started_ns: int = field(default_factory=time.perf_counter_ns)
    load_duration: int = 0

    @property
    def key(self) -> str:
        """Runners are per manifest: copies share one, a model with other params gets its own."""
        return self.model.digest

    def total_duration(self) -> int:
        return time.perf_counter_ns() - self.started_ns


def parse_keep_alive(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return keep_alive_seconds(value)
    except ValueError as exc:
        raise BadRequest(f"invalid keep_alive: {exc}") from None


def check_messages(raw: Any) -> list[Message]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadRequest("messages must be an array")
    messages: list[Message] = []
    for item in raw:
        if not isinstance(item, dict):
            raise BadRequest("each message must be an object")
        role = item.get("role")
        if not isinstance(role, str) or not role:
            raise BadRequest("each message needs a role")
        content = item.get("content")
        if content is not None and not isinstance(content, str):
            raise BadRequest("message content must be a string")
        if item.get("images"):
            raise BadRequest("this model does not support images")
        messages.append({**item, "role": role.lower(), "content": content or ""})
    return messages


class Generation:
    """A started generation: its first message has arrived, so a failure before any output
    (unknown model, load error, prompt too long) raises before the HTTP status is sent."""

    def __init__(self, first: p.Chunk | p.Done, rest: AsyncIterator[p.Chunk | p.Done]) -> None:
        self._first: p.Chunk | p.Done | None = first
        self._rest = rest

    @classmethod
    async def start(cls, stream: AsyncIterator[p.Chunk | p.Done]) -> Generation:
        try:
            first = await anext(stream)
        except BaseException:
            await stream.aclose()
            raise
        return cls(first, stream)

    async def __aiter__(self) -> AsyncIterator[p.Chunk | p.Done]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        async for message in self._rest:
            yield message

    async def collect(self) -> tuple[str, p.Done]:
        """All the text and the final message, for non-streaming replies."""
        parts: list[str] = []
        async for message in self:
            if isinstance(message, p.Done):
                return "".join(parts), message
            parts.append(message.text)
        raise CorralError("the runner ended the stream without a final message")


def vector(raw: bytes, dimensions: int | None = None) -> list[float]:
    """A runner's float32 vector as floats, cut to `dimensions` and re-normalised if asked."""
    values = array("f")
    values.frombytes(raw)
    floats = values.tolist()
    if not dimensions or dimensions >= len(floats):
        return floats
    head = floats[:dimensions]
    norm = math.sqrt(sum(v * v for v in head)) or 1.0
    return [v / norm for v in head]


class Inference:
    def __init__(self, settings: Settings, store: Store, pool: RunnerPool) -> None:
        self.settings = settings
        self.store = store
        self.pool = pool

    def model(self, name: Any) -> LocalModel:
        if not name or not isinstance(name, str):
            raise BadRequest("model is required")
        return self.store.get(name)

    def job(self, model: LocalModel, raw_options: Any, keep_alive: Any,
            extra_options: dict[str, Any] | None = None) -> Job:
        requested = check_options(raw_options)
        if extra_options:
            requested.update(check_options(extra_options))
        options = merge_options(model.params, requested)
        if model.model_path is None:
            raise BadRequest(f"{model.display()} has no model weights")
        info = model.gguf
        n_ctx_train = info.context_length if info else 0
        load = load_request(str(model.model_path), options, self.settings, n_ctx_train)
        load.adapters = [str(path) for path in model.adapter_paths]  # ADAPTER layers (LoRA)
        return Job(model, options, load, parse_keep_alive(keep_alive))

    def template_prompt(self, model: LocalModel, messages: list[Message]) -> str | None:
        """The prompt from the model's TEMPLATE layer (Go template), or None to let the runner
        render with the GGUF's chat template / family format (no template layer, or Ollama's
        `{{ .Prompt }}` placeholder). Templates are checked when a model is created; one that
        still fails here (a model from elsewhere) falls back to the runner's rendering."""
        text = model.template
        if gotemplate.is_passthrough(text):
            return None
        assert text is not None
        try:
            return gotemplate.render_chat(text, messages)
        except gotemplate.TemplateError as exc:
            log.warning("%s: cannot use its TEMPLATE (%s); using the GGUF's chat format",
                        model.display(), exc)
            return None

    def chat_messages(self, model: LocalModel, messages: list[Message]) -> list[Message]:
        """The model's MESSAGE history, then the request's; the model's SYSTEM goes first unless
        the request brings its own."""
        full = list(model.messages) + messages
        if model.system and not (messages and messages[0]["role"] == "system"):
            full.insert(0, {"role": "system", "content": model.system})
        return full

    @contextlib.asynccontextmanager
    async def lease(self, job: Job) -> AsyncIterator[LoadedRunner]:
        t0 = time.perf_counter_ns()
        async with self.pool.lease(job.key, job.model.display(), job.model, job.load,
                                   job.keep_alive) as entry:
            job.load_duration = time.perf_counter_ns() - t0
            yield entry

    async def generate(self, job: Job, *, prompt: str | None = None,
                       messages: list[Message] | None = None, truncate: bool = True,
                       context: list[int] | None = None, format_: Any = None,
                       shift: bool = True) -> Generation:
        if prompt is None and messages is not None:
            rendered = self.template_prompt(job.model, messages)
            if rendered is not None:  # the stop strings come from the model's params
                prompt, messages = rendered, None
        request = p.Generate(0, prompt, messages, sampling_options(job.options), truncate,
                             context, format_ or None, shift)
        return await Generation.start(self._stream(job, request))

    async def _stream(self, job: Job, request: p.Generate) -> AsyncIterator[p.Chunk | p.Done]:
        async with self.lease(job) as entry:
            stream = entry.runner.generate(request)
            try:
                async for message in stream:
                    yield message
            finally:
                await stream.aclose()  # cancels the sequence in the runner if we stop early

    async def load_or_unload(self, job: Job) -> str:
        """An empty prompt loads the model (keep_alive 0: unloads it); the done_reason."""
        if job.keep_alive == 0:
            await self.pool.unload(job.key)
            return "unload"
        async with self.lease(job):
            return "load"

    async def embed(self, job: Job, inputs: list[str], *, truncate: bool, normalize: bool
                    ) -> p.Embeddings:
        async with self.lease(job) as entry:
            return await entry.runner.embed(inputs, truncate=truncate, normalize=normalize)
