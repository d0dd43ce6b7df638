"""Typed messages between the gateway and a runner process, framed with msgpack over ZeroMQ.

The gateway holds one DEALER socket per runner; the runner binds a ROUTER on an ipc path in a
private runtime directory. Every request carries its own id, so many requests can be in flight on
one connection and replies are routed back by id. A stream is cancelled with a `Cancel` message.

On the wire a message is a msgpack array: `[tag, field1, field2, ...]` in dataclass field order.
Arrays are smaller and faster to pack than maps, and the tags keep the format explicit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import msgpack

from shared.errors import BadRequest

MAX_TOP_LOGPROBS = 20  # most rivals per token that `Generate.logprobs` may ask for

# --- gateway -> runner -------------------------------------------------------------------------


@dataclass(slots=True)
class Load:
    """Load the model; the runner answers `Ready` or `Error` (id 0)."""

    TAG: ClassVar[int] = 1
    model_path: str
    num_ctx: int
    num_batch: int = 512
    num_gpu: int = -1  # layers to offload; -1 = all that the device has room for, 0 = CPU
    main_gpu: int = -1  # -1: wherever the supervisor places it
    use_mmap: bool = True
    num_thread: int = 0  # 0 = llama.cpp's choice
    parallel: int = 0  # slots; 0 (from the gateway) = the supervisor decides
    flash_attention: bool | None = None
    kv_cache_type: str = "f16"
    adapters: list[str] = field(default_factory=list)  # LoRA adapter GGUFs applied at load
    tensor_split: list[float] | None = None  # share of layers per GPU when split across GPUs
    # The conservative CPU configuration: no extra buffer types (AMX, repacked weights). The pool
    # asks for it after a runner crashed while loading.
    safe_cpu: bool = False
    # Prompt states kept beyond the slots (runner/process/promptcache.py): bytes of host RAM (0 =
    # off), and the folder and bytes of the copy kept across reloads ("" or 0 = none).
    prompt_cache: int = 0
    prompt_cache_dir: str = ""
    prompt_cache_disk: int = 0
    # Speculative decoding by prompt lookup (runner/process/speculation.py): the longest draft a
    # sequence guesses when its request does not say (option draft_max); 0 = off.
    draft_max: int = 0
    projector: str = ""  # a vision projector GGUF (CLIP/mmproj) loaded with libmtmd; "" = none
    # A draft model's GGUF (the model option draft_model, of the same vocabulary): it drafts the
    # guesses instead of prompt lookup (runner/process/draftmodel.py); "" = none.
    draft_path: str = ""


@dataclass(slots=True)
class Generate:
    """Generate text for `prompt` (already rendered) or for `messages` (rendered by the runner)."""

    TAG: ClassVar[int] = 2
    id: int
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    truncate: bool = True
    context: list[int] | None = None  # token ids from an earlier /api/generate reply, prepended
    format: str | dict[str, Any] | None = None  # "json" or a JSON schema: constrained sampling
    shift: bool = True  # when the context fills: shift it (True) or stop with "length" (False)
    tools: list[dict[str, Any]] | None = None  # function tools, for the GGUF's Jinja template
    grammar: str | None = None  # GBNF that wins over `format` (forced tool calls)
    logprobs: int = -1  # -1: none; k >= 0: each token's logprob and its k most likely rivals
    # Extra inputs of the GGUF's Jinja template (llama.cpp's chat_template_kwargs), such as
    # enable_thinking and reasoning_effort.
    template_vars: dict[str, Any] | None = None
    # The API key's name ("anonymous" without keys; "" for everyone when fair sharing is off):
    # the runner's free slots go round-robin across tenants.
    tenant: str = ""
    # The reply is read whole ("stream": false): the runner sends all the text (and logprobs)
    # in one Chunk just before Done, with the per-token timings in `Done.token_gaps`.
    whole: bool = False
    # With API keys on: the key's cache salt (a request reuses only caches its own key's requests
    # made) and the shared text its prompt may start with, which every key may reuse (an
    # admin-set SYSTEM prompt: with `messages` its text, the runner renders it; with `prompt`
    # rendered as the prompt starts). "" without keys: everything is shared.
    cache_salt: str = ""
    shared_prefix: str = ""
    # Images (encoded files: PNG, JPEG, ...) of a `prompt`, read where it says `[img-N]` (N from
    # 0). Images of `messages` travel in each message's own "images" list.
    images: list[bytes] | None = None


@dataclass(slots=True)
class Cancel:
    """Stop the sequence `id` (the client went away); the runner frees its slot at once."""

    TAG: ClassVar[int] = 3
    id: int


@dataclass(slots=True)
class Embed:
    TAG: ClassVar[int] = 4
    id: int
    inputs: list[str]
    truncate: bool = True
    normalize: bool = True


@dataclass(slots=True)
class Tokenize:
    TAG: ClassVar[int] = 5
    id: int
    text: str
    add_special: bool = True
    # Images the text names with [img-N] tags, each counted as the positions it takes.
    images: list[bytes] | None = None


@dataclass(slots=True)
class Health:
    TAG: ClassVar[int] = 6
    id: int


@dataclass(slots=True)
class Shutdown:
    TAG: ClassVar[int] = 7


@dataclass(slots=True)
class SetThreads:
    """Change the CPU threads of a loaded runner (no reply): the supervisor divides the cores
    among the runners that compute on the CPU as they come and go."""

    TAG: ClassVar[int] = 8
    n_threads: int


# --- runner -> gateway -------------------------------------------------------------------------


@dataclass(slots=True)
class Ready:
    TAG: ClassVar[int] = 20
    pid: int
    n_ctx: int  # per-sequence context length actually granted
    n_ctx_train: int
    parallel: int
    model_bytes: int  # bytes of weights (llama_model_size)
    kv_bytes: int  # bytes of KV cache (estimated from the model shape)
    device: str  # "cpu" or e.g. "gpu:0"
    cpu_config: str = "optimized"  # or "safe (...)": why the extra CPU buffer types are off
    # Bytes llama.cpp allocated per GPU device ("CUDA0": n), from its load log; {} on the CPU.
    device_bytes: dict[str, int] = field(default_factory=dict)
    # Bytes llama.cpp allocated by kind over all devices ("weights", "kv", "compute", "output"),
    # from the same log: what the memory estimate is held against.
    buffer_bytes: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Chunk:
    """New text for request `id`; per-token messages stay tiny."""

    TAG: ClassVar[int] = 21
    id: int
    text: str
    # When asked for: one {"token", "logprob", "bytes", "top_logprobs": [...]} per token whose
    # text this chunk completes (OpenAI's and Ollama's shape, so the gateway passes it through).
    logprobs: list[dict[str, Any]] | None = None


@dataclass(slots=True)
class Done:
    TAG: ClassVar[int] = 22
    id: int
    done_reason: str  # "stop" | "length"
    prompt_eval_count: int
    prompt_eval_duration: int  # ns
    eval_count: int
    eval_duration: int  # ns
    context: list[int] = field(default_factory=list)
    cached_tokens: int = 0  # prompt tokens served from the KV cache
    queue_duration: int = 0  # ns it waited in the runner for a free slot
    # For a whole reply (`Generate.whole`): microseconds between the pieces of text, in order,
    # which a stream's chunks would have shown (the metrics' inter-token latency).
    token_gaps: list[int] = field(default_factory=list)
    # The stop string that ended the reply ("" when it ended otherwise): the Anthropic API names
    # the stop sequence it met (stop_reason "stop_sequence").
    stop: str = ""


@dataclass(slots=True)
class Error:
    TAG: ClassVar[int] = 23
    id: int
    message: str
    status: int = 500


@dataclass(slots=True)
class Embeddings:
    TAG: ClassVar[int] = 24
    id: int
    vectors: list[bytes]  # little-endian float32 arrays
    prompt_eval_count: int


@dataclass(slots=True)
class Tokens:
    TAG: ClassVar[int] = 25
    id: int
    tokens: list[int]


@dataclass(slots=True)
class HealthReply:
    TAG: ClassVar[int] = 26
    id: int
    active: int
    queued: int
    kv_used: int = 0  # cache positions the active sequences hold (of n_ctx x parallel)
    # The prompt cache beyond the slots: [entries, bytes, hits, misses]
    prompt_cache: list[int] = field(default_factory=list)
    # Speculative decoding since the runner loaded: [tokens guessed and verified, of which held]
    speculative: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Batch:
    """Several replies in one frame: what one runner step produced for all its sequences, so a
    step costs one ZeroMQ message and one msgpack pass however many streams it advanced. Only
    `encode_many`/`decode_many` make and open it; it never reaches the code above them."""

    TAG: ClassVar[int] = 27
    messages: list[Any]


Message = (
    Load | Generate | Cancel | Embed | Tokenize | Health | Shutdown
    | Ready | Chunk | Done | Error | Embeddings | Tokens | HealthReply | SetThreads
)

_BY_TAG: dict[int, type] = {
    cls.TAG: cls
    for cls in (Load, Generate, Cancel, Embed, Tokenize, Health, Shutdown,
                Ready, Chunk, Done, Error, Embeddings, Tokens, HealthReply, SetThreads)
}

_packer = msgpack.Packer(use_bin_type=True)


# Field names per class, computed once (dataclasses.astuple deep-copies, too slow per token).
_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in _BY_TAG.values()
}


def register(*classes: type) -> None:
    """Let `encode`/`decode` carry more message types (shared/control.py's, between the
    supervisor and the HTTP workers); their tags must not clash with these."""
    for cls in classes:
        tag = cls.TAG  # type: ignore[attr-defined]
        if _BY_TAG.get(tag, cls) is not cls:
            raise ValueError(f"message tag {tag} is taken")
        _BY_TAG[tag] = cls
        _FIELDS[cls] = tuple(f.name for f in fields(cls))


def encode_request(message: Message) -> bytes:
    """`encode` for a message built from a client's request: a number msgpack cannot carry
    (64 bits; JSON integers have no bound) is the client's error, a 400."""
    try:
        return encode(message)
    except OverflowError:
        raise BadRequest("a number in the request is out of range") from None


def encode(message: Message) -> bytes:
    return _packer.pack([message.TAG, *(getattr(message, n) for n in _FIELDS[type(message)])])


def encode_many(messages: list[Message]) -> bytes:
    """One frame for all of `messages` (a `Batch`; a single message goes as itself)."""
    if len(messages) == 1:
        return encode(messages[0])
    return _packer.pack([Batch.TAG, [[m.TAG, *(getattr(m, n) for n in _FIELDS[type(m)])]
                                     for m in messages]])


def _build(tag: Any, fields: list[Any]) -> Message:
    try:
        cls = _BY_TAG[tag]
    except (KeyError, TypeError):
        raise ValueError(f"unknown message tag {tag!r}") from None
    return cls(*fields)


def decode(frame: bytes) -> Message:
    tag, *fields = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    return _build(tag, fields)


def decode_many(frame: bytes) -> list[Message]:
    """The messages of a frame: the items of a `Batch`, or the one message it holds."""
    tag, *fields = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    if tag != Batch.TAG:
        return [_build(tag, fields)]
    return [_build(item[0], item[1:]) for item in fields[0]]


def request_id(message: Message) -> int:
    """The request a reply belongs to; 0 for connection-level messages."""
    return getattr(message, "id", 0)
