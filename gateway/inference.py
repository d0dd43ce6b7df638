"""What both APIs share: resolve a model, merge options, lease its runner, stream the result.

The Ollama and OpenAI routes translate HTTP bodies into calls here and format what comes back;
nothing in this module knows about either wire format.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import time
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway import images
from gateway.harmony import HarmonyCalls, HarmonyParser, speaks_harmony
from gateway.options import (
    LOAD_OPTION_NAMES,
    check_options,
    load_request,
    merge_options,
    sampling_options,
)
from gateway.team import context as team
from gateway.thinking import (
    Markers,
    ThinkingParser,
    ThinkValue,
    is_on,
    jinja_variables,
    opens_thinking,
    resolve_think,
    thinking_markers,
)
from gateway.tools import CallFormat, CallParser, Tool, call_format, forced_call_grammar
from gateway.xmlcalls import XmlCallParser
from registry import gotemplate, renderers
from registry.draftvocab import resolve_draft
from registry.renderers.harmony import harmony_tools
from registry.store import LocalModel, Store
from runner.supervisor.pool import LoadedRunner, RunnerPool
from shared import protocol as p
from shared.config import Settings, keep_alive_seconds
from shared.errors import BadRequest, CorralError, Forbidden
from shared.prompt import render_jinja, render_messages

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
    unload_refused: bool = False  # a non-admin key asked for keep_alive 0

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
        if item.get("thinking") is not None and not isinstance(item["thinking"], str):
            raise BadRequest("message thinking must be a string")
        message = {**item, "role": role.lower(), "content": content or ""}
        if item.get("tool_calls") is not None:
            message["tool_calls"] = _check_calls(item["tool_calls"])
        messages.append(message)
    images.check_messages(messages)  # base64 -> bytes, each named in its error
    return messages


def _check_calls(raw: Any) -> list[Message]:
    """An assistant message's tool_calls: each names a function; arguments are an object."""
    if not isinstance(raw, list):
        raise BadRequest("tool_calls must be an array")
    for call in raw:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRequest("each tool call needs function.name")
        if not isinstance(fn.get("arguments", {}), dict):
            raise BadRequest("tool call arguments must be a JSON object")
    return raw


@dataclass
class ToolCalls:
    """Tool calls parsed from the model's text (an event of a Generation with tools)."""

    calls: list[Message]


@dataclass
class Thinking:
    """Thinking split from the model's text (an event of a Generation of a thinking model)."""

    text: str
    logprobs: list[dict[str, Any]] | None = None


Event = p.Chunk | Thinking | ToolCalls | p.Done


@dataclass
class Collected:
    """A whole reply, for non-streaming responses."""

    text: str
    done: p.Done
    tool_calls: list[Message] = field(default_factory=list)
    logprobs: list[dict[str, Any]] | None = None
    thinking: str = ""


class Generation:
    """A started generation: its first message has arrived, so a failure before any output
    (unknown model, load error, prompt too long) raises before the HTTP status is sent.

    `batches()` gives the events as they arrive, a list per wake-up (a stream writes each list
    as one piece); iterating gives them one by one.

    With a `ThinkingParser`, the model's thinking comes out as `Thinking` events; with a
    `CallParser`, the rest is split into content chunks and `ToolCalls` events. With `count`
    (a tokenizer's length), `thinking_tokens` is the thinking's token count once Done is out.
    """

    def __init__(self, first: list[p.Chunk | p.Done],
                 rest: AsyncIterator[list[p.Chunk | p.Done]],
                 parser: CallParser | XmlCallParser | HarmonyCalls | None = None,
                 thinker: ThinkingParser | HarmonyParser | None = None,
                 count: Callable[[str], Awaitable[int]] | None = None) -> None:
        self._first: list[p.Chunk | p.Done] | None = first
        self._rest = rest
        self._parser = parser
        self._thinker = thinker
        self._count = count
        self.thinking_tokens = 0

    @classmethod
    async def start(cls, stream: AsyncIterator[list[p.Chunk | p.Done]],
                    parser: CallParser | XmlCallParser | HarmonyCalls | None = None,
                    thinker: ThinkingParser | HarmonyParser | None = None,
                    count: Callable[[str], Awaitable[int]] | None = None) -> Generation:
        try:
            first = await anext(stream)
        except BaseException:
            await stream.aclose()
            raise
        return cls(first, stream, parser, thinker, count)

    async def _messages(self) -> AsyncIterator[list[p.Chunk | p.Done]]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        async for batch in self._rest:
            yield batch

    async def __aiter__(self) -> AsyncIterator[Event]:
        async for batch in self.batches():
            for event in batch:
                yield event

    async def batches(self) -> AsyncIterator[list[Event]]:
        parser, thinker = self._parser, self._thinker
        if parser is None and thinker is None:
            async for batch in self._messages():
                yield batch  # type: ignore[misc]
            return
        held: list[dict[str, Any]] = []  # logprobs of text the parsers hold back
        thought: list[str] = []
        async for batch in self._messages():
            events: list[Event] = []
            for message in batch:
                final = isinstance(message, p.Done)
                if final:
                    thinking, text = thinker.finish() if thinker else ("", "")
                else:
                    held.extend(message.logprobs or ())
                    thinking, text = thinker.feed(message.text) if thinker else ("", message.text)
                calls: list[Message] = []
                if parser is not None:
                    text, calls = parser.feed(text)
                    if final:
                        rest, late = parser.finish()
                        text, calls = text + rest, calls + late
                if thinking:
                    thought.append(thinking)
                    events.append(Thinking(thinking, held or None))
                    held = []
                if text:
                    events.append(p.Chunk(0, text, held or None))
                    held = []
                if calls:
                    events.append(ToolCalls(calls))
                if final:
                    if thought and self._count is not None:
                        self.thinking_tokens = await self._count("".join(thought))
                    events.append(message)
            if events:
                yield events

    async def aclose(self) -> None:
        """Stop early: the runner cancels the sequence."""
        await self._rest.aclose()

    async def collect(self) -> Collected:
        """All the text, thinking, calls and logprobs, and the final message."""
        parts: list[str] = []
        thought: list[str] = []
        calls: list[Message] = []
        logprobs: list[dict[str, Any]] = []
        async for event in self:
            if isinstance(event, p.Done):
                return Collected("".join(parts), event, calls, logprobs, "".join(thought))
            if isinstance(event, ToolCalls):
                calls.extend(event.calls)
            else:
                (thought if isinstance(event, Thinking) else parts).append(event.text)
                logprobs.extend(event.logprobs or ())
        raise CorralError("the runner ended the stream without a final message")


_USER_MARK = "\x00corral-user-text\x00"


@functools.lru_cache(maxsize=64)
def shared_start(template: str, system: str | None) -> str:
    """The start of a prompt that a model's TEMPLATE renders from its SYSTEM prompt alone, up to
    where the user's text begins: public text, whose cache every API key may reuse. "" when
    there is no SYSTEM prompt or the template will not say."""
    if not system:
        return ""
    try:
        text = gotemplate.render_chat(template, [{"role": "system", "content": system},
                                                 {"role": "user", "content": _USER_MARK}])
    except gotemplate.TemplateError:
        return ""
    return text.split(_USER_MARK, 1)[0] if _USER_MARK in text else ""


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


@dataclass
class ToolUse:
    """The tools a request offers, the model's call format, and a grammar if a call is forced."""

    tools: list[Tool]
    format: CallFormat
    grammar: str | None = None

    def parser(self) -> CallParser | XmlCallParser:
        if self.format.xml:
            return XmlCallParser(self.tools)
        return CallParser(self.format, self.tools)


@dataclass
class ThinkUse:
    """A request's think value (as the template sees it) and the model's thinking markers."""

    value: ThinkValue
    markers: Markers | None

    def constrained(self) -> ThinkUse:
        """For output a grammar constrains (`format`, a forced call), which leaves no room for a
        thinking block: thinking is switched off in the template (Qwen3's and DeepSeek's then
        close the block in the prompt) and the reply is all content."""
        return ThinkUse(False, self.markers) if is_on(self.value) else self

    def parser(self, inside: bool) -> ThinkingParser | None:
        if not is_on(self.value) or self.markers is None:
            return None
        return ThinkingParser(self.markers, inside=inside)


class Inference:
    def __init__(self, settings: Settings, store: Store, pool: RunnerPool) -> None:
        self.settings = settings
        self.store = store
        self.pool = pool

    def model(self, name: Any) -> LocalModel:
        if not name or not isinstance(name, str):
            raise BadRequest("model is required")
        team.check_model(name)  # 403 for a model the request's API key may not use
        model = self.store.get(name)
        team.found_model(model.name)
        return model

    @staticmethod
    def with_template(model: LocalModel, text: str) -> LocalModel:
        """The model with a request's own `template` (/api/generate's field) in place of its
        TEMPLATE, as Ollama renders it; checked like one given at create. Same runner."""
        try:
            gotemplate.check(text)
        except gotemplate.TemplateError as exc:
            raise BadRequest(f"template error: {exc}") from None
        model.capabilities  # noqa: B018 - the model's own, cached before the copy
        copied = copy.copy(model)
        copied.__dict__["template"] = text  # (a cached_property: the copy's own value)
        return copied

    @staticmethod
    def check_completion(model: LocalModel, name: str, endpoint: str) -> None:
        """An embedding-only model (BERT, nomic-bert: a pooling type and no causal head) cannot
        generate: Ollama's 400, `"NAME" does not support generate` (or `chat`), on both APIs."""
        caps = model.capabilities
        if caps and "completion" not in caps:
            raise BadRequest(f'"{name}" does not support {endpoint}')

    def job(self, model: LocalModel, raw_options: Any, keep_alive: Any,
            extra_options: dict[str, Any] | None = None) -> Job:
        requested = check_options(raw_options)
        if extra_options:
            requested.update(check_options(extra_options))
        if not team.may_set_keep_alive():
            # As keep_alive: only admin keys choose how a shared runner is loaded (num_ctx and
            # the rest would reload it and drop every key's cache); the server's settings apply.
            requested = {k: v for k, v in requested.items() if k not in LOAD_OPTION_NAMES}
        options = merge_options(model.params, requested)
        if model.model_path is None:
            raise BadRequest(f"{model.display()} has no model weights")
        info = model.gguf
        n_ctx_train = info.context_length if info else 0
        load = load_request(str(model.model_path), options, self.settings, n_ctx_train)
        load.adapters = [str(path) for path in model.adapter_paths]  # ADAPTER layers (LoRA)
        load.projector = str(model.projector_paths[0]) if model.projector_paths else ""
        if options.get("draft_model"):  # a draft model guesses tokens (a 400 for a mismatch)
            load.draft_path = str(resolve_draft(self.store, model.model_path,
                                                options["draft_model"], model.display()))
        keep = parse_keep_alive(keep_alive)
        if keep is not None and not team.may_set_keep_alive():  # the server's keep-alive applies
            return Job(model, options, load, None, unload_refused=keep == 0)
        return Job(model, options, load, keep)

    def think_use(self, model: LocalModel, raw: Any, name: str) -> ThinkUse:
        """`think` checked against the model (400s as Ollama's), with the model's markers."""
        value = resolve_think(model, raw, name)
        return ThinkUse(value, thinking_markers(model) if is_on(value) else None)

    def template_prompt(self, model: LocalModel, messages: list[Message],
                        tools: list[Tool] | None = None, think: ThinkValue = None, *,
                        as_written: bool = False) -> str | None:
        """The prompt from the model's TEMPLATE layer (Go template), or None to let the runner
        render with the GGUF's chat template / family format (no template layer, or Ollama's
        `{{ .Prompt }}` placeholder unless `as_written`: /api/generate renders any TEMPLATE as
        Ollama does). Templates are checked when a model is created; one that still fails here
        (a model from elsewhere) falls back to the runner's rendering. A model's RENDERER
        (Ollama's built-in renderers, registry/renderers/) takes the template's place."""
        renderer = renderers.renderer_of(model.config)
        if renderer is not None:
            return renderer(messages, tools, think)
        text = model.template
        if gotemplate.is_passthrough(text) and not (as_written and text and text.strip()):
            return None
        assert text is not None
        if think == "max" and speaks_harmony(text, None):
            think = "high"  # harmony's Reasoning knows low/medium/high (Ollama maps it so)
        try:
            return gotemplate.render_chat(text, messages, tools=tools, think=think)
        except gotemplate.TemplateError as exc:
            log.warning("%s: cannot use its TEMPLATE (%s); using the GGUF's chat format",
                        model.display(), exc)
            return None

    @staticmethod
    def reads_harmony(model: LocalModel) -> bool:
        """Whether the model's replies come in harmony's channels (gpt-oss)."""
        return speaks_harmony(model.template, model.config.get("parser"),
                              model.config.get("renderer"))

    def prompt_tools(self, model: LocalModel, tools: list[Tool] | None
                     ) -> tuple[list[Tool] | None, dict[str, str]]:
        """The tools as the model's prompt names them, and the map back to the request's
        names: harmony's TypeScript identifiers (as Ollama's harmony parser renames them)."""
        if not tools or not self.reads_harmony(model):
            return tools, {}
        return harmony_tools(tools)

    def fill_in_middle(self, model: LocalModel, prompt: str, suffix: str) -> str:
        """The prompt for code between `prompt` and `suffix`, from the model's TEMPLATE run on
        .Prompt and .Suffix (as Ollama does); the result is sent raw."""
        if "insert" not in model.capabilities or gotemplate.is_passthrough(model.template):
            raise BadRequest(f"{model.name.full()} does not support insert")
        try:
            return gotemplate.render_chat(model.template or "", [], prompt=prompt, suffix=suffix)
        except gotemplate.TemplateError as exc:
            raise BadRequest(f"{model.display()}: cannot render its TEMPLATE: {exc}") from None

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
            job.load_duration += time.perf_counter_ns() - t0  # (a chat may lease twice)
            yield entry

    async def generate(self, job: Job, *, prompt: str | None = None,
                       messages: list[Message] | None = None, truncate: bool = True,
                       context: list[int] | None = None, format_: Any = None,
                       shift: bool = True, tools: ToolUse | None = None,
                       logprobs: int = -1, think: ThinkUse | None = None,
                       count_thinking: bool = False, as_written: bool = False,
                       whole: bool = False, image_data: list[bytes] | None = None
                       ) -> Generation:
        """Start a generation. With `tools` the prompt offers them and the reply is parsed for
        calls (and forced to be one when the tool choice says so). With `think` the template
        gets the think value and the reply's thinking is split from its content
        (`count_thinking`: and its tokens counted). `as_written`: see template_prompt.
        `whole`: the reply is collected, not streamed; the runner sends its text at the end.
        `image_data`: the images of a raw `prompt` (messages carry their own)."""
        from_messages = prompt is None and messages is not None  # (not raw, not infill)
        harmony_reply = from_messages and self.reads_harmony(job.model)
        last = messages[-1] if from_messages and messages else None  # (a prefill?)
        # (harmony's prompt names the tools as TypeScript identifiers; calls are named back)
        tool_list, rename = self.prompt_tools(job.model, tools.tools if tools else None)
        grammar = tools.grammar if tools else None
        if think is not None and (format_ or grammar):
            think = think.constrained()
        value = think.value if think else None
        template_vars = None
        # With keys on: the key's cache salt, and the start every key may share (the model's
        # SYSTEM prompt, set by an admin); a prompt sent as it is shares nothing.
        salt = team.cache_salt()
        shared = ""
        if images.count(messages, image_data):
            if not job.model.projector_paths:
                raise BadRequest(images.NO_IMAGES)
            images.check_limits(messages, image_data, self.settings)
        if prompt is None and messages is not None:
            shared = (job.model.system or "") if salt else ""
            # A Go template reads images where Ollama writes its [img-N] tags.
            tagged, image_data = images.tag_messages(messages)
            rendered = self.template_prompt(job.model, tagged, tool_list, value,
                                            as_written=as_written)
            if rendered is not None:  # the stop strings come from the model's params
                if truncate:
                    rendered = await self._fit(job, tagged, tool_list, rendered, value,
                                               image_data)
                prompt, messages = rendered, None
                shared = shared_start(job.model.template or "", job.model.system) if salt else ""
            else:  # the runner renders the messages, images and all
                image_data = None
                template_vars = jinja_variables(value) or None
        elif prompt is not None and image_data:
            prompt = images.tag_prompt(prompt, image_data)
        thinker: ThinkingParser | HarmonyParser | None = None
        if think is not None and think.markers is not None:
            if prompt is not None:
                inside = opens_thinking(prompt, think.markers)
            else:
                inside = self._jinja_opens_thinking(job.model, messages or [], tool_list,
                                                    template_vars, think.markers)
            thinker = think.parser(inside)
        await team.reserve_tokens(self._token_estimate(job, prompt, messages))
        request = p.Generate(0, prompt, messages, sampling_options(job.options), truncate,
                             context, format_ or None, shift, tools=tool_list,
                             grammar=grammar, logprobs=logprobs, template_vars=template_vars,
                             tenant=team.tenant(), whole=whole, cache_salt=salt,
                             shared_prefix=shared, images=image_data or None)
        parser: CallParser | XmlCallParser | HarmonyCalls | None = \
            tools.parser() if tools else None
        if harmony_reply:  # gpt-oss: thinking, content and calls come on harmony's channels
            harmony = HarmonyParser(tool_list, rename, last)
            thinker, parser = harmony, HarmonyCalls(harmony)
        count = None
        if count_thinking and thinker is not None:
            count = functools.partial(self.count_tokens, job)
        return await Generation.start(self._stream(job, request), parser, thinker, count)

    @staticmethod
    def _token_estimate(job: Job, prompt: str | None, messages: list[Message] | None) -> int:
        """What a generation may cost the key's tokens per minute, reserved before it starts:
        its prompt (a token for every three bytes, and 16 for the template's own: more than
        most text takes, so that a burst cannot overdraw by the estimate's error) and its cap on
        new tokens (num_predict, else the context length). Settled against the real counts when
        the reply ends."""
        size = len((prompt or "").encode())
        for message in messages or ():
            content = message.get("content")
            size += len(content.encode()) if isinstance(content, str) else 0
        cap = job.options.get("num_predict")
        cap = int(cap) if isinstance(cap, int | float) and cap >= 0 else job.load.num_ctx
        return size // 3 + 16 + cap

    @staticmethod
    def _jinja_opens_thinking(model: LocalModel, messages: list[Message],
                              tools: list[Tool] | None, variables: dict[str, Any] | None,
                              markers: Markers) -> bool:
        """Whether the GGUF's Jinja template ends the prompt inside a thinking block. The runner
        renders the prompt; the gateway renders it too, only to look at its end."""
        info = model.gguf
        if info is None or not info.chat_template:
            return False
        try:
            rendered = render_jinja(info.chat_template, messages, bos_token="", eos_token="",
                                    tools=tools, variables=variables)
        except CorralError:  # the runner will report the template's error
            return False
        return opens_thinking(rendered.text, markers)

    async def count_tokens(self, job: Job, text: str) -> int:
        """Tokens of `text` in the model's vocabulary (no BOS). Called while a generation holds
        the runner, so the lease never waits for a load."""
        async with self.lease(job) as entry:
            return len(await entry.runner.tokenize(text, add_special=False))

    async def chat_token_count(self, job: Job, messages: list[Message],
                               tools: ToolUse | None = None, think: ThinkUse | None = None
                               ) -> int:
        """The prompt tokens a chat would read (Anthropic's count_tokens): rendered as
        `generate` renders it (the Go TEMPLATE here, else the GGUF's Jinja template or the
        family's format, as the runner renders them) and tokenized by the model's runner."""
        tool_list = self.prompt_tools(job.model, tools.tools if tools else None)[0]
        if think is not None and tools is not None and tools.grammar:
            think = think.constrained()
        value = think.value if think else None
        image_data: list[bytes] = []
        if images.count(messages, None):
            if not job.model.projector_paths:
                raise BadRequest(images.NO_IMAGES)
            images.check_limits(messages, None, self.settings)
            # Each image read where its [img-N] tag is: the runner counts its positions there.
            messages, image_data = images.tag_messages(messages)
        text = self.template_prompt(job.model, messages, tool_list, value)
        if text is None:
            info = job.model.gguf
            text = render_messages(messages, chat_template=info.chat_template if info else None,
                                   family=info.architecture if info else "",
                                   tools=tool_list, variables=jinja_variables(value) or None
                                   ).text
        async with self.lease(job) as entry:
            return len(await entry.runner.tokenize(text, images=image_data or None))

    async def _fit(self, job: Job, messages: list[Message], tools: list[Tool] | None,
                   rendered: str, think: ThinkValue = None,
                   image_data: list[bytes] | None = None) -> str:
        """A chat rendered by the gateway's Go template, cut to the context as Ollama cuts it:
        the oldest messages go first, system messages and the newest message stay. (The runner
        does this itself for chats it renders.) An image counts as the positions it takes (its
        [img-N] tag goes with its message: kept whole or dropped whole)."""
        if not image_data and len(rendered.encode()) + 1 < job.load.num_ctx:
            return rendered  # a token is at least a byte (plus BOS): it fits, no need to count
        if all(m.get("role") == "system" for m in messages[:-1]):
            return rendered  # nothing to drop (one prompt): the runner keeps its start and end
        async with self.lease(job) as entry:
            limit = entry.ready.n_ctx - 1
            kept = list(messages)
            while len(await entry.runner.tokenize(rendered, images=image_data or None)) > limit:
                droppable = [i for i, m in enumerate(kept[:-1]) if m.get("role") != "system"]
                if not droppable:
                    break  # still too long: the runner keeps its start and end
                del kept[droppable[0]]
                rendered = self.template_prompt(job.model, kept, tools, think) or rendered
            return rendered

    def tool_use(self, model: LocalModel, tools: list[Tool], choice: str | None, *,
                 parallel: bool = True) -> ToolUse | None:
        """How a request uses tools: None when it offers none (or tool_choice is "none")."""
        if not tools or choice == "none":
            return None
        if "tools" not in model.capabilities:
            raise BadRequest(f"{model.name.full()} does not support tools")
        fmt = call_format(model)
        # (the forcing grammar writes JSON calls: none for an XML format, nor for harmony,
        # whose calls are messages on a channel: there nothing forces the call)
        grammar = forced_call_grammar(fmt, tools, choice, parallel=parallel) \
            if choice and not fmt.xml and not self.reads_harmony(model) else None
        return ToolUse(tools, fmt, grammar)

    async def _stream(self, job: Job, request: p.Generate
                      ) -> AsyncIterator[list[p.Chunk | p.Done]]:
        record = team.current()
        times = record.stream() if record is not None else None
        async with self.lease(job) as entry:
            # A stream dropped early still counts what the runner used until then.
            stream = entry.runner.generate(
                request, on_cancel=record.cancelled if record is not None else None)
            sent = time.perf_counter()
            try:
                async for batch in stream:
                    if times is not None:  # usage, limits, metrics and the access log
                        for message in batch:
                            if isinstance(message, p.Done):
                                record.done(message)  # type: ignore[union-attr]
                                if request.whole:  # the runner's timings, not the arrivals
                                    times.whole(message, sent)
                            elif not request.whole:
                                times.chunk()
                    yield batch
            finally:
                await stream.aclose()  # cancels the sequence in the runner if we stop early

    async def load_or_unload(self, job: Job) -> str:
        """An empty prompt loads the model (keep_alive 0: unloads it); the done_reason."""
        if job.unload_refused:
            raise Forbidden("only an admin API key may unload a model")
        if job.keep_alive == 0:
            await self.pool.unload(job.key)
            return "unload"
        async with self.lease(job):
            return "load"

    async def embed(self, job: Job, inputs: list[str], *, truncate: bool, normalize: bool
                    ) -> p.Embeddings:
        async with self.lease(job) as entry:
            result = await entry.runner.embed(inputs, truncate=truncate, normalize=normalize)
        if (record := team.current()) is not None:
            record.prompt_tokens += result.prompt_eval_count
        return result
