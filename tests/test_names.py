"""Model names: Ollama's grammar, defaults, display form and case-insensitive identity."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from registry.names import ModelName
from shared.errors import BadRequest


def test_defaults_fill_host_namespace_and_tag() -> None:
    name = ModelName.parse("gemma3")
    assert name == ModelName("registry.ollama.ai", "library", "gemma3", "latest", "https")


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("gemma3:270m", ("registry.ollama.ai", "library", "gemma3", "270m")),
        ("user/m", ("registry.ollama.ai", "user", "m", "latest")),
        ("user/m:v1.2", ("registry.ollama.ai", "user", "m", "v1.2")),
        ("example.com/ns/m:tag", ("example.com", "ns", "m", "tag")),
        ("localhost:5000/ns/m", ("localhost:5000", "ns", "m", "latest")),
        ("localhost:5000/ns/m:7b", ("localhost:5000", "ns", "m", "7b")),
        ("llama3.2", ("registry.ollama.ai", "library", "llama3.2", "latest")),
        ("_x/y_z-1:Q4_K_M", ("registry.ollama.ai", "_x", "y_z-1", "Q4_K_M")),
    ],
)
def test_parse_parts(text: str, parts: tuple[str, str, str, str]) -> None:
    name = ModelName.parse(text)
    assert (name.host, name.namespace, name.model, name.tag) == parts


def test_scheme_on_host() -> None:
    name = ModelName.parse("http://localhost:5000/ns/m:tag")
    assert (name.scheme, name.host, name.namespace, name.model, name.tag) == (
        "http",
        "localhost:5000",
        "ns",
        "m",
        "tag",
    )
    assert ModelName.parse("https://example.com/ns/m").scheme == "https"
    assert ModelName.parse("m").scheme == "https"


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":",
        "m:",  # a colon promises a tag
        "/m",
        "ns/",
        "a/b/c/d",  # a host cannot hold "/"
        "example.com/m",  # "." is not allowed in a namespace
        "-m",  # parts start with a letter, digit or "_"
        "m:-tag",
        "m:.tag",
        "m m",
        "mé",
        "ns:1/m",  # ":" only in the host
        "ftp://host/ns/m",
        "x" * 81,
        "m:" + "t" * 81,
        "h" * 351 + "/ns/m",
    ],
)
def test_invalid_names_are_bad_requests(text: str) -> None:
    with pytest.raises(BadRequest) as info:
        ModelName.parse(text)
    assert info.value.message == "invalid model name"
    assert info.value.status == 400
    assert not ModelName.is_valid(text)


def test_length_limits_are_inclusive() -> None:
    assert ModelName.is_valid("x" * 80)
    assert ModelName.is_valid("m:" + "t" * 80)
    assert ModelName.is_valid("h" * 350 + "/ns/m")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("gemma3:270m", "gemma3:270m"),
        ("gemma3", "gemma3:latest"),
        ("registry.ollama.ai/library/gemma3:270m", "gemma3:270m"),
        ("user/m", "user/m:latest"),
        ("registry.ollama.ai/user/m:x", "user/m:x"),
        ("example.com/ns/m:tag", "example.com/ns/m:tag"),
        ("example.com/library/m", "example.com/library/m:latest"),
        ("Registry.Ollama.AI/Library/Gemma3", "Gemma3:latest"),
    ],
)
def test_display_is_shortest_form(text: str, shown: str) -> None:
    name = ModelName.parse(text)
    assert name.display() == shown
    assert str(name) == shown
    assert ModelName.parse(shown).key() == name.key()  # display form names the same model


def test_manifest_path_and_full() -> None:
    name = ModelName.parse("gemma3:270m")
    assert name.manifest_path() == PurePosixPath("registry.ollama.ai/library/gemma3/270m")
    assert name.full() == "registry.ollama.ai/library/gemma3:270m"


def test_key_is_case_insensitive() -> None:
    a = ModelName.parse("Gemma3:270M")
    b = ModelName.parse("gemma3:270m")
    assert a != b  # spelling is preserved...
    assert a.key() == b.key()  # ...but identity ignores case
    assert ModelName.parse("gemma3:1b").key() != b.key()


def test_names_are_hashable_and_frozen() -> None:
    name = ModelName.parse("m")
    assert {name: 1}[ModelName.parse("m:latest")] == 1
    with pytest.raises(AttributeError):
        name.tag = "x"  # type: ignore[misc]
