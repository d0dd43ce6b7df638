"""Settings read once from the environment, with Ollama's variable names and defaults.

`Settings.from_env()` is the one place that reads OLLAMA_* variables. A malformed value raises
ConfigError naming the variable and the form it expects, so `corral serve` can stop with it.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from shared.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434
DEFAULT_KEEP_ALIVE = 300.0  # 5m
FOREVER = math.inf
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")
# Longest prompt-lookup draft by default (CORRAL_DRAFT_MAX): on one stream copying text, 32 beat
# 16 (2.05x against 1.93x end to end, python -m tests.bench.speculative).
DRAFT_MAX = 32
DEFAULT_MAX_BODY = 32 * 1024**2  # CORRAL_MAX_BODY: larger request bodies get 413 (blobs excepted)

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Parse a Go duration ("5m", "1h30m", "-1m", "300ms", "0") into seconds."""
    s = text.strip()
    sign = 1.0
    if s[:1] in ("+", "-"):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total, pos = 0.0, 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def keep_alive_seconds(value: object, *, allow_bare_string_number: bool = False) -> float:
    """Ollama's keep_alive: a number of seconds or a Go duration; negative means forever.

    Returns seconds, `FOREVER` (inf) for negative values. Raises ValueError on a bad value.
    A bare numeric string ("3600") is only accepted where Ollama accepts it (the env variable).
    """
    if isinstance(value, bool):
        raise ValueError("keep_alive must be a number or a duration string")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        stripped = value.strip()
        if allow_bare_string_number and re.fullmatch(r"[+-]?\d+(\.\d+)?", stripped):
            seconds = float(stripped)
        else:
            seconds = parse_go_duration(stripped)
    else:
        raise ValueError("keep_alive must be a number or a duration string")
    if math.isnan(seconds):
        raise ValueError("keep_alive must be a number")
    return FOREVER if seconds < 0 else seconds


def format_duration(seconds: float) -> str:
    """Seconds as Go prints a duration ("5m0s"), or "-1" for forever."""
    if seconds == FOREVER:
        return "-1"
    whole = int(seconds)
    h, rem = divmod(whole, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m}m{s}s"
    if m:
        return f"{m}m{s}s"
    return f"{s}s"


@dataclass(frozen=True)
class HostAddress:
    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def client_url(self) -> str:
        """The URL a client should use: unspecified bind addresses mean this machine."""
        if self.host in ("0.0.0.0", "::", ""):
            return HostAddress(self.scheme, DEFAULT_HOST, self.port).url
        return self.url


def parse_host(value: str | None) -> HostAddress:
    """OLLAMA_HOST forms: "", "host", "host:port", ":port", "scheme://host[:port]", "[::1]:port"."""
    text = (value or "").strip().strip("\"'")
    if not text:
        return HostAddress("http", DEFAULT_HOST, DEFAULT_PORT)
    scheme, default_port = "http", DEFAULT_PORT
    if "://" in text:
        scheme, _, text = text.partition("://")
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"unsupported scheme {scheme!r}")
        default_port = 443 if scheme == "https" else 80
    text = text.split("/", 1)[0]
    parts = urlsplit(f"//{text}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid port in {value!r}") from exc
    host = parts.hostname or DEFAULT_HOST
    if text.endswith(":") or (port is None and text.count(":") == 1 and not text.startswith("[")):
        raise ValueError(f"invalid port in {value!r}")
    return HostAddress(scheme, host, port if port is not None else default_port)


MIN_API_KEY_CHARS = 32  # `corral keys create` makes 43 random characters (256 bits)


def _check_api_key(raw: str) -> str:
    """CORRAL_API_KEY opens the whole server as an admin: refuse one that can be guessed."""
    if len(raw) < MIN_API_KEY_CHARS or len(set(raw)) < 10:
        raise ConfigError(f"CORRAL_API_KEY is too weak: use at least {MIN_API_KEY_CHARS} "
                          "random characters (`openssl rand -hex 32`, or the secret that "
                          "`corral keys create NAME --admin` prints)")
    return raw


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "t", "true", "yes", "on"):
        return True
    if lowered in ("0", "f", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r}: expected a boolean (true/false/1/0)")


def _parse_int(name: str, raw: str, *, minimum: int | None = None) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected an integer") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={raw!r}: expected an integer >= {minimum}")
    return value


_SIZE_SUFFIXES = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
                  "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def _parse_bytes(name: str, raw: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)", raw)
    if not m or m.group(2).lower() not in _SIZE_SUFFIXES:
        raise ConfigError(f"{name}={raw!r}: expected a byte count such as 536870912 or 512MiB")
    return int(float(m.group(1)) * _SIZE_SUFFIXES[m.group(2).lower()])


def default_keys_file() -> Path:
    """Where API keys live unless CORRAL_KEYS_FILE says otherwise."""
    return Path.home() / ".ollama" / "corral" / "keys.json"


@dataclass(frozen=True)
class Settings:
    """Everything `corral serve` and the CLI read from the environment."""

    host: HostAddress = field(default_factory=lambda: parse_host(None))
    origins: tuple[str, ...] = ()
    models: Path = field(default_factory=lambda: Path.home() / ".ollama" / "models")
    keep_alive: float = DEFAULT_KEEP_ALIVE
    load_timeout: float = 300.0
    # CORRAL_HEALTH_TIMEOUT: a runner that does not answer a health check in this long is killed
    # and replaced (one decode step of a large batch on a slow CPU must fit in it).
    health_timeout: float = 30.0
    num_parallel: int = 0  # 0 = decide automatically
    max_loaded_models: int = 0  # 0 = 3 x max(number of GPUs, 1)
    max_queue: int = 512
    context_length: int = 0  # 0 = by memory tier (4096 below 23 GiB of VRAM)
    flash_attention: bool | None = None  # None = llama.cpp decides
    kv_cache_type: str = "f16"
    llm_library: str = ""
    gpu_overhead: int = 0
    debug: int = 0
    noprune: bool = False
    cuda_visible_devices: tuple[str, ...] | None = None
    serve_registry: bool = False  # CORRAL_SERVE_REGISTRY: answer the OCI read side on /v2/
    gpus_file: Path | None = None  # CORRAL_GPUS: a JSON description of simulated GPUs
    max_replicas: int = 2  # CORRAL_MAX_REPLICAS: runners of one hot model (GPUs only; 1 = off)
    max_parallel: int = 16  # CORRAL_MAX_PARALLEL: the most slots chosen on GPUs (CPU: 4)
    safe_cpu: bool = False  # CORRAL_SAFE_CPU: load without llama.cpp's extra CPU buffer types
    # Teams (gateway/team/): the keys file, an admin key from the environment (never printed),
    # the request body cap, the access log ("" = stderr, "off", or a file) and fair sharing.
    keys_file: Path = field(default_factory=default_keys_file)
    api_key: str = field(default="", repr=False)
    max_body: int = DEFAULT_MAX_BODY
    access_log: str = ""
    fair_share: bool = True
    # With API keys on, a key reuses only the prompt caches its own requests made (and the
    # shared SYSTEM prompt); CORRAL_CACHE_ISOLATION=0 shares them across keys (measurements).
    cache_isolation: bool = True
    # Once a server has had API keys, no keys left means 401 for everyone; CORRAL_OPEN_WITHOUT_KEYS
    # =1 trusts every caller again when there are none (gateway/team/keys.py).
    open_without_keys: bool = False
    # CORRAL_METRICS_LISTEN=host:port: a second listener that answers only GET /metrics, with no
    # API key (scrapers that send none: the Inference Extension's endpoint picker).
    metrics_listen: HostAddress | None = None
    # The prompt cache beyond the slots (runner/process/promptcache.py): CORRAL_PROMPT_CACHE bytes
    # of host RAM per runner (-1 = by the free RAM and the model's KV size; 0 = off), and the copy
    # kept across reloads: CORRAL_PROMPT_CACHE_DIR (None = corral/prompt-cache beside the store) and
    # CORRAL_PROMPT_CACHE_DISK bytes per model (0 = off).
    prompt_cache: int = -1
    prompt_cache_dir: Path | None = None
    prompt_cache_disk: int = 2 * 1024**3
    # CORRAL_HTTP_WORKERS: processes serving HTTP on the one port; with 2 or more, `serve`
    # becomes their supervisor (gateway/supervise.py).
    http_workers: int = 1
    # The Responses API's store (gateway/responses/store.py), kept for previous_response_id and
    # GET /v1/responses/{id}: CORRAL_RESPONSES_DIR (None = corral/responses beside the store),
    # CORRAL_RESPONSES_STORE bytes on disk in all (0 = nothing is stored), CORRAL_RESPONSES_TTL
    # how long a response is kept (OpenAI keeps them 30 days).
    responses_dir: Path | None = None
    responses_store: int = 256 * 1024**2
    responses_ttl: float = 30 * 86400.0
    # CORRAL_DRAFT_MAX: speculative decoding by prompt lookup (runner/process/speculation.py), the
    # longest draft a sequence guesses unless its request or model says (option draft_max);
    # 0 = off. On by default: python -m tests.bench.speculative showed no loss on fresh text
    # (1 and 4 streams) and 2x on copying (README, Speculative decoding).
    draft_max: int = DRAFT_MAX
    # Images in one request (CORRAL_MAX_IMAGES, over all its messages) and bytes per image
    # (CORRAL_MAX_IMAGE_BYTES, decoded): beyond them a request is refused with a 400.
    max_images: int = 16
    max_image_bytes: int = 20 * 1024**2

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def get(name: str) -> str:
            return env.get(name, "").strip().strip("\"'")

        kwargs: dict[str, object] = {}
        try:
            kwargs["host"] = parse_host(get("OLLAMA_HOST"))
        except ValueError as exc:
            raise ConfigError(
                f"OLLAMA_HOST: {exc}; expected [scheme://]host[:port], e.g. 127.0.0.1:11434"
            ) from None
        if raw := get("OLLAMA_ORIGINS"):
            kwargs["origins"] = tuple(o.strip() for o in raw.split(",") if o.strip())
        if raw := get("OLLAMA_MODELS"):
            kwargs["models"] = Path(raw).expanduser()
        durations = (("OLLAMA_KEEP_ALIVE", "keep_alive"), ("OLLAMA_LOAD_TIMEOUT", "load_timeout"),
                     ("CORRAL_HEALTH_TIMEOUT", "health_timeout"))
        for var, key in durations:
            if raw := get(var):
                try:
                    kwargs[key] = keep_alive_seconds(raw, allow_bare_string_number=True)
                except ValueError:
                    raise ConfigError(
                        f"{var}={raw!r}: expected a duration such as 5m, 1h30m, 300s, "
                        "a number of seconds, or a negative value for forever"
                    ) from None
        if not 0 < float(kwargs.get("health_timeout", 1)) < float("inf"):  # type: ignore[arg-type]
            raise ConfigError(f"CORRAL_HEALTH_TIMEOUT={get('CORRAL_HEALTH_TIMEOUT')!r}: expected "
                              "a positive duration such as 30s")
        if raw := get("OLLAMA_NUM_PARALLEL"):
            kwargs["num_parallel"] = _parse_int("OLLAMA_NUM_PARALLEL", raw, minimum=0)
        if raw := get("OLLAMA_MAX_LOADED_MODELS"):
            kwargs["max_loaded_models"] = _parse_int("OLLAMA_MAX_LOADED_MODELS", raw, minimum=0)
        if raw := get("OLLAMA_MAX_QUEUE"):
            kwargs["max_queue"] = _parse_int("OLLAMA_MAX_QUEUE", raw, minimum=1)
        if raw := get("OLLAMA_CONTEXT_LENGTH"):
            kwargs["context_length"] = _parse_int("OLLAMA_CONTEXT_LENGTH", raw, minimum=0)
        if raw := get("OLLAMA_FLASH_ATTENTION"):
            kwargs["flash_attention"] = _parse_bool("OLLAMA_FLASH_ATTENTION", raw)
        if raw := get("OLLAMA_KV_CACHE_TYPE"):
            if raw.lower() not in KV_CACHE_TYPES:
                raise ConfigError(
                    f"OLLAMA_KV_CACHE_TYPE={raw!r}: expected one of {', '.join(KV_CACHE_TYPES)}"
                )
            kwargs["kv_cache_type"] = raw.lower()
        if raw := get("OLLAMA_LLM_LIBRARY"):
            kwargs["llm_library"] = raw.lower()
        if raw := get("OLLAMA_GPU_OVERHEAD"):
            kwargs["gpu_overhead"] = _parse_bytes("OLLAMA_GPU_OVERHEAD", raw)
        if raw := get("OLLAMA_DEBUG"):
            lowered = raw.lower()
            if lowered in ("true", "t", "yes", "on"):
                kwargs["debug"] = 1
            elif lowered in ("false", "f", "no", "off"):
                kwargs["debug"] = 0
            else:
                kwargs["debug"] = _parse_int("OLLAMA_DEBUG", raw, minimum=0)
        if raw := get("OLLAMA_NOPRUNE"):
            kwargs["noprune"] = _parse_bool("OLLAMA_NOPRUNE", raw)
        if "CUDA_VISIBLE_DEVICES" in env:
            kwargs["cuda_visible_devices"] = tuple(
                d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()
            )
        if raw := get("CORRAL_GPUS"):
            path = Path(raw).expanduser()
            if not path.is_file():
                raise ConfigError(f"CORRAL_GPUS={raw!r}: expected a JSON file describing GPUs")
            kwargs["gpus_file"] = path
        if raw := get("CORRAL_MAX_REPLICAS"):
            kwargs["max_replicas"] = _parse_int("CORRAL_MAX_REPLICAS", raw, minimum=1)
        if raw := get("CORRAL_MAX_PARALLEL"):
            kwargs["max_parallel"] = _parse_int("CORRAL_MAX_PARALLEL", raw, minimum=1)
        if raw := get("CORRAL_SAFE_CPU"):
            kwargs["safe_cpu"] = _parse_bool("CORRAL_SAFE_CPU", raw)
        if raw := get("CORRAL_SERVE_REGISTRY"):
            kwargs["serve_registry"] = _parse_bool("CORRAL_SERVE_REGISTRY", raw)
        if raw := get("CORRAL_KEYS_FILE"):
            kwargs["keys_file"] = Path(raw).expanduser()
        if raw := get("CORRAL_API_KEY"):
            kwargs["api_key"] = _check_api_key(raw)
        if raw := get("CORRAL_MAX_BODY"):
            kwargs["max_body"] = _parse_bytes("CORRAL_MAX_BODY", raw)
        if raw := get("CORRAL_ACCESS_LOG"):
            kwargs["access_log"] = "off" if raw.lower() == "off" else str(Path(raw).expanduser())
        if raw := get("CORRAL_FAIR_SHARE"):
            kwargs["fair_share"] = _parse_bool("CORRAL_FAIR_SHARE", raw)
        if raw := get("CORRAL_OPEN_WITHOUT_KEYS"):
            kwargs["open_without_keys"] = _parse_bool("CORRAL_OPEN_WITHOUT_KEYS", raw)
        if raw := get("CORRAL_CACHE_ISOLATION"):
            kwargs["cache_isolation"] = _parse_bool("CORRAL_CACHE_ISOLATION", raw)
        if raw := get("CORRAL_PROMPT_CACHE"):
            kwargs["prompt_cache"] = _parse_bytes("CORRAL_PROMPT_CACHE", raw)
        if raw := get("CORRAL_PROMPT_CACHE_DIR"):
            kwargs["prompt_cache_dir"] = Path(raw).expanduser()
        if raw := get("CORRAL_PROMPT_CACHE_DISK"):
            kwargs["prompt_cache_disk"] = _parse_bytes("CORRAL_PROMPT_CACHE_DISK", raw)
        if raw := get("CORRAL_DRAFT_MAX"):
            kwargs["draft_max"] = _parse_int("CORRAL_DRAFT_MAX", raw, minimum=0)
        if raw := get("CORRAL_HTTP_WORKERS"):
            kwargs["http_workers"] = _parse_int("CORRAL_HTTP_WORKERS", raw, minimum=1)
        if raw := get("CORRAL_METRICS_LISTEN"):
            try:
                kwargs["metrics_listen"] = listen = parse_host(raw)
            except ValueError as exc:
                raise ConfigError(f"CORRAL_METRICS_LISTEN: {exc}; expected host:port, e.g. "
                                  "0.0.0.0:9400") from None
            if ":" not in raw or listen.port == kwargs["host"].port:  # type: ignore[attr-defined]
                raise ConfigError("CORRAL_METRICS_LISTEN needs a port of its own, e.g. "
                                  "0.0.0.0:9400")
            if int(kwargs.get("http_workers", 1)) > 1:  # type: ignore[call-overload]
                raise ConfigError("CORRAL_METRICS_LISTEN works with one HTTP process only "
                                  "(CORRAL_HTTP_WORKERS=1)")
        if raw := get("CORRAL_RESPONSES_DIR"):
            kwargs["responses_dir"] = Path(raw).expanduser()
        if raw := get("CORRAL_RESPONSES_STORE"):
            kwargs["responses_store"] = _parse_bytes("CORRAL_RESPONSES_STORE", raw)
        if raw := get("CORRAL_RESPONSES_TTL"):
            try:
                ttl = keep_alive_seconds(raw, allow_bare_string_number=True)
            except ValueError:
                ttl = -1.0
            if not 0 < ttl < float("inf"):
                raise ConfigError(f"CORRAL_RESPONSES_TTL={raw!r}: expected a positive duration "
                                  "such as 720h or 3600")
            kwargs["responses_ttl"] = ttl
        if raw := get("CORRAL_MAX_IMAGES"):
            kwargs["max_images"] = _parse_int("CORRAL_MAX_IMAGES", raw, minimum=0)
        if raw := get("CORRAL_MAX_IMAGE_BYTES"):
            kwargs["max_image_bytes"] = _parse_bytes("CORRAL_MAX_IMAGE_BYTES", raw)
        # OLLAMA_TELEMETRY is accepted and ignored: corral never sends anything anywhere.
        return cls(**kwargs)  # type: ignore[arg-type]

    @property
    def prompt_cache_root(self) -> Path:
        """Where runners keep prompt states across reloads, one folder per model digest."""
        return self.prompt_cache_dir or self.models.parent / "corral" / "prompt-cache"

    @property
    def responses_root(self) -> Path:
        """Where the Responses API keeps stored responses, one folder per API key."""
        return self.responses_dir or self.models.parent / "corral" / "responses"

    @property
    def cpu_only(self) -> bool:
        return self.llm_library == "cpu" or self.cuda_visible_devices == ("-1",)


def is_loopback_host(host: str) -> bool:
    """Whether `host` names this machine (localhost, 127.0.0.0/8, ::1): proxy variables must not
    reroute requests to it."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
