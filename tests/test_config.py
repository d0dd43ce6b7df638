"""Settings from OLLAMA_* variables: Ollama's forms and defaults, clear errors otherwise."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from shared.config import (
    FOREVER,
    Settings,
    format_duration,
    keep_alive_seconds,
    parse_go_duration,
    parse_host,
)
from shared.errors import ConfigError


@pytest.mark.parametrize(("value", "url"), [
    (None, "http://127.0.0.1:11434"),
    ("", "http://127.0.0.1:11434"),
    ("0.0.0.0", "http://0.0.0.0:11434"),
    (":8080", "http://127.0.0.1:8080"),
    ("example.com:99", "http://example.com:99"),
    ("http://example.com", "http://example.com:80"),
    ("https://example.com", "https://example.com:443"),
    ("https://example.com:8443/", "https://example.com:8443"),
    ("[::1]:11500", "http://[::1]:11500"),
    ('"127.0.0.1:5000"', "http://127.0.0.1:5000"),
])
def test_parse_host(value: str | None, url: str) -> None:
    assert parse_host(value).url == url


def test_client_url_replaces_unspecified_address() -> None:
    assert parse_host("0.0.0.0:9000").client_url() == "http://127.0.0.1:9000"


@pytest.mark.parametrize("bad", ["host:port", "host:", "ftp://x", "h:99999"])
def test_bad_host(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_host(bad)


@pytest.mark.parametrize(("text", "seconds"), [
    ("5m", 300), ("1h30m", 5400), ("300ms", 0.3), ("1.5h", 5400), ("0", 0), ("-1m", -60),
    ("2h45m10s", 9910),
])
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5", "5 m", "m", "1d", "abc"])
def test_bad_go_durations(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(bad)


def test_keep_alive_forms() -> None:
    assert keep_alive_seconds(3600) == 3600
    assert keep_alive_seconds(0.5) == 0.5
    assert keep_alive_seconds("10m") == 600
    assert keep_alive_seconds(-1) == FOREVER
    assert keep_alive_seconds("-1m") == FOREVER
    with pytest.raises(ValueError):
        keep_alive_seconds("3600")  # Go's parser rejects a bare number string on the API
    assert keep_alive_seconds("3600", allow_bare_string_number=True) == 3600
    with pytest.raises(ValueError):
        keep_alive_seconds(True)
    assert format_duration(300) == "5m0s" and format_duration(FOREVER) == "-1"


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s.host.url == "http://127.0.0.1:11434"
    assert s.models == Path.home() / ".ollama" / "models"
    assert s.keep_alive == 300 and s.max_queue == 512 and s.kv_cache_type == "f16"
    assert s.flash_attention is None and s.cuda_visible_devices is None
    assert s.max_replicas == 2


def test_values_from_env(tmp_path: Path) -> None:
    s = Settings.from_env({
        "OLLAMA_HOST": ":1234", "OLLAMA_MODELS": str(tmp_path), "OLLAMA_KEEP_ALIVE": "-1",
        "OLLAMA_NUM_PARALLEL": "4", "OLLAMA_MAX_LOADED_MODELS": "2", "OLLAMA_MAX_QUEUE": "10",
        "OLLAMA_CONTEXT_LENGTH": "8192", "OLLAMA_FLASH_ATTENTION": "1",
        "OLLAMA_KV_CACHE_TYPE": "q8_0", "OLLAMA_LLM_LIBRARY": "cpu",
        "OLLAMA_GPU_OVERHEAD": "512MiB", "OLLAMA_DEBUG": "true", "OLLAMA_ORIGINS": "a://b, c://*",
        "CUDA_VISIBLE_DEVICES": "1,0", "OLLAMA_TELEMETRY": "0", "CORRAL_MAX_REPLICAS": "4",
    })
    assert s.host.port == 1234 and s.models == tmp_path and math.isinf(s.keep_alive)
    assert (s.num_parallel, s.max_loaded_models, s.max_queue, s.context_length) == (4, 2, 10, 8192)
    assert s.flash_attention is True and s.kv_cache_type == "q8_0" and s.cpu_only
    assert s.gpu_overhead == 512 * 1024**2 and s.debug == 1
    assert s.origins == ("a://b", "c://*") and s.cuda_visible_devices == ("1", "0")
    assert s.max_replicas == 4


@pytest.mark.parametrize(("name", "value"), [
    ("OLLAMA_HOST", "localhost:notaport"),
    ("OLLAMA_KEEP_ALIVE", "forever"),
    ("OLLAMA_NUM_PARALLEL", "four"),
    ("OLLAMA_NUM_PARALLEL", "-1"),
    ("OLLAMA_MAX_QUEUE", "0"),
    ("OLLAMA_FLASH_ATTENTION", "maybe"),
    ("OLLAMA_KV_CACHE_TYPE", "q2"),
    ("OLLAMA_GPU_OVERHEAD", "lots"),
    ("OLLAMA_DEBUG", "loud"),
    ("CORRAL_MAX_REPLICAS", "0"),
    ("CORRAL_HEALTH_TIMEOUT", "0"),
    ("CORRAL_HEALTH_TIMEOUT", "-1"),
    ("CORRAL_HEALTH_TIMEOUT", "soon"),
])
def test_malformed_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({name: value})
    assert name in str(err.value)


def test_health_timeout_is_a_duration() -> None:
    assert Settings.from_env({}).health_timeout == 30.0
    assert Settings.from_env({"CORRAL_HEALTH_TIMEOUT": "1m"}).health_timeout == 60.0
    assert Settings.from_env({"CORRAL_HEALTH_TIMEOUT": "2.5"}).health_timeout == 2.5


def test_responses_store_settings(tmp_path: Path) -> None:
    s = Settings.from_env({"OLLAMA_MODELS": str(tmp_path / "models")})
    assert s.responses_root == tmp_path / "corral" / "responses"
    assert s.responses_store == 256 * 1024**2 and s.responses_ttl == 30 * 86400
    s = Settings.from_env({"CORRAL_RESPONSES_DIR": str(tmp_path / "r"),
                           "CORRAL_RESPONSES_STORE": "0", "CORRAL_RESPONSES_TTL": "1h"})
    assert (s.responses_root, s.responses_store, s.responses_ttl) == (tmp_path / "r", 0, 3600)
    for name, value in (("CORRAL_RESPONSES_STORE", "lots"), ("CORRAL_RESPONSES_TTL", "-1"),
                        ("CORRAL_RESPONSES_TTL", "0"), ("CORRAL_RESPONSES_TTL", "soon")):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: value})
