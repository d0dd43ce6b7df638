"""GET /openapi.json: it covers every route the app serves, its schemas are valid JSON Schema,
and real replies of a live server (bundled model) match what it documents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from gateway import openapi
from gateway.app import create_app
from registry.store import Store
from shared.config import Settings
from tests._openapi import body_problems
from tests.conftest import LiveServer

MODEL = "gemma3:270m"
SHORT = {"num_predict": 3, "temperature": 0}


@pytest.fixture(scope="module")
def app_routes(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    models = tmp_path_factory.mktemp("models")
    settings = Settings.from_env({"OLLAMA_MODELS": str(models)})
    return list(create_app(settings, Store(models)).routes)


def test_every_served_route_is_described(app_routes: list[Any]) -> None:
    assert openapi.undescribed(app_routes) == []
    document = openapi.build(app_routes)
    served = set(openapi.documented_routes(app_routes))
    assert {(path, method) for path, item in document["paths"].items() for method in item} \
        == served
    assert ("/api/chat", "post") in served and ("/v1/embeddings", "post") in served
    # Described operations that no route serves would be documentation of nothing.
    assert set(openapi.OPERATIONS) <= served


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return ([node["$ref"]] if "$ref" in node else []) + [r for v in node.values()
                                                             for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_schemas_are_valid_and_references_resolve(app_routes: list[Any]) -> None:
    document = openapi.build(app_routes)
    assert document["openapi"] == "3.1.0"
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    names = set(document["components"]["schemas"])
    assert {ref.rsplit("/", 1)[1] for ref in _refs(document)} <= names


def test_request_examples_follow_their_schemas(app_routes: list[Any]) -> None:
    document = openapi.build(app_routes)
    for name, example in openapi.EXAMPLES.items():
        schema = {**document["components"]["schemas"][name],
                  "components": document["components"]}
        jsonschema.Draft202012Validator(schema).validate(example)
        assert document["components"]["schemas"][name]["examples"] == [example]


def test_options_follow_the_gateways_option_types() -> None:
    options = openapi.COMPONENTS["Options"]["properties"]
    assert options["num_ctx"] == {"type": "integer"} and options["top_p"] == {"type": "number"}
    assert options["use_mmap"] == {"type": "boolean"}
    from gateway.options import OPTION_TYPES
    assert set(options) == set(OPTION_TYPES)


# --- against a live server -------------------------------------------------------------------

CALLS: list[tuple[str, str, Any]] = [
    ("GET", "/", None),
    ("GET", "/api/version", None),
    ("GET", "/api/tags", None),
    ("POST", "/api/show", {"model": MODEL}),
    ("POST", "/api/show", {"model": "no-such-model"}),
    ("POST", "/api/generate", {"model": MODEL}),
    ("POST", "/api/generate", {"model": MODEL, "prompt": "Hi", "options": SHORT}),
    ("POST", "/api/generate", {"model": MODEL, "prompt": "Hi", "stream": False,
                               "options": SHORT, "logprobs": True, "top_logprobs": 2}),
    ("POST", "/api/generate", {"model": MODEL, "prompt": "Hi", "options": {"top_k": "many"}}),
    ("POST", "/api/generate", {"model": "no-such-model", "prompt": "Hi"}),
    ("GET", "/api/ps", None),
    ("POST", "/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                           "options": SHORT}),
    ("POST", "/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                           "options": SHORT, "stream": False}),
    ("POST", "/api/embed", {"model": MODEL, "input": ["a", "b"]}),
    ("POST", "/api/embeddings", {"model": MODEL, "prompt": "a"}),
    ("HEAD", "/api/blobs/sha256:" + "0" * 64, None),
    ("GET", "/v1/models", None),
    ("GET", f"/v1/models/{MODEL}", None),
    ("GET", "/v1/models/no-such-model", None),
    ("POST", "/v1/chat/completions", {"model": MODEL, "max_tokens": 3,
                                      "messages": [{"role": "user", "content": "Hi"}]}),
    ("POST", "/v1/chat/completions", {"model": MODEL, "max_tokens": 3, "stream": True,
                                      "stream_options": {"include_usage": True},
                                      "messages": [{"role": "user", "content": "Hi"}]}),
    ("POST", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "wizard"}]}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 3}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 3,
                                 "stream": True}),
    ("POST", "/v1/embeddings", {"model": MODEL, "input": "a"}),
    ("POST", "/v1/embeddings", {"model": MODEL, "input": 5}),
    ("POST", "/v1/messages", {"model": MODEL, "max_tokens": 3,
                              "messages": [{"role": "user", "content": "Hi"}]}),
    ("POST", "/v1/messages", {"model": MODEL, "max_tokens": 3, "stream": True,
                              "messages": [{"role": "user", "content": "Hi"}]}),
    ("POST", "/v1/messages", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}),
    ("POST", "/v1/messages", {"model": "no-such-model", "max_tokens": 3,
                              "messages": [{"role": "user", "content": "Hi"}]}),
    ("POST", "/v1/messages/count_tokens", {"model": MODEL,
                                           "messages": [{"role": "user", "content": "Hi"}]}),
    ("POST", "/v1/responses", {"model": MODEL, "input": "Hi", "max_output_tokens": 3}),
    ("POST", "/v1/responses", {"model": MODEL, "input": [{"role": "user", "content": "Hi"}],
                               "max_output_tokens": 3, "stream": True}),
    ("POST", "/v1/responses", {"model": MODEL, "input": 5}),
    ("GET", "/v1/responses/resp_unknown", None),
    ("DELETE", "/v1/responses/resp_unknown", None),
]


@pytest.fixture(scope="module")
def document(corral_server: LiveServer) -> dict[str, Any]:
    reply = httpx.get(corral_server.url + "/openapi.json", timeout=30)
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    return reply.json()


@pytest.mark.e2e
@pytest.mark.parametrize("method,path,body", CALLS)
def test_real_replies_match_the_document(corral_server: LiveServer, document: dict[str, Any],
                                         method: str, path: str, body: Any) -> None:
    reply = httpx.request(method, corral_server.url + path, json=body, timeout=300)
    template = "/v1/models/{model}" if path.startswith("/v1/models/") else path
    template = "/api/blobs/{digest}" if path.startswith("/api/blobs/") else template
    template = ("/v1/responses/{response_id}" if path.startswith("/v1/responses/")
                else template)
    content_type = reply.headers.get("content-type", "")
    assert body_problems(document, template, method, reply.status_code, content_type,
                         reply.content) == []


@pytest.mark.e2e
def test_the_checker_catches_a_reply_that_does_not_match(document: dict[str, Any]) -> None:
    ok = b'{"version": "0.12.0"}'
    assert body_problems(document, "/api/version", "GET", 200, "application/json", ok) == []
    assert body_problems(document, "/api/version", "GET", 200, "application/json",
                         b'{"version": 12}') != []
    assert body_problems(document, "/api/version", "GET", 418, "application/json", ok) != []
    assert body_problems(document, "/api/tags", "GET", 200, "text/html", ok) != []
    assert body_problems(document, "/v1/completions", "POST", 200, "text/event-stream",
                         b'data: {"id": 1}\n\ndata: [DONE]\n\n') != []


def test_readme_links_the_document() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "/openapi.json" in readme


@pytest.mark.e2e
def test_unknown_roles_are_openais_400_and_pass_through_on_api_chat(
        corral_server: LiveServer) -> None:
    import openai

    client = openai.OpenAI(base_url=corral_server.url + "/v1", api_key="unused")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[  # type: ignore[list-item]
            {"role": "user", "content": "hi"}, {"role": "wizard", "content": "hi"}])
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "messages[1].role" and error["code"] == "invalid_value"
    assert error["message"].startswith("Invalid value: 'wizard'. Supported values are: 'system'")
    native = httpx.post(corral_server.url + "/api/chat", timeout=120, json={
        "model": MODEL, "stream": False, "options": SHORT,
        "messages": [{"role": "wizard", "content": "hi"}]})
    assert native.status_code == 200  # Ollama passes roles to the template
