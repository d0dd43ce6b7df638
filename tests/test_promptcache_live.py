"""The prompt cache through a live server: a conversation whose slot was taken comes back warm,
from RAM while the model stays loaded and from disk after it was unloaded and loaded again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import LiveServer, start_server

MODEL = "gemma3:270m"
HISTORY = ("The river town keeps an archive of letters, maps and ledgers about floods, fairs, "
           "fires and festivals, and every season adds a box of papers to it. ") * 6


@pytest.fixture(scope="module")
def one_slot(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One slot, so every new conversation takes the slot of the one before."""
    folder = tmp_path_factory.mktemp("promptcache-live")
    server = start_server(models_dir, folder / "serve.log", OLLAMA_NUM_PARALLEL="1",
                          OLLAMA_KEEP_ALIVE="10m",
                          CORRAL_PROMPT_CACHE_DIR=str(folder / "prompt-cache"))
    try:
        yield server
    finally:
        server.stop()


def ask(client: openai.OpenAI, messages: list[dict[str, Any]]) -> tuple[str, int, int]:
    """(reply, prompt tokens, of which cached) for one greedy turn."""
    reply = client.chat.completions.create(model=MODEL, messages=messages,  # type: ignore[arg-type]
                                           temperature=0, max_tokens=8, seed=1)
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    return (reply.choices[0].message.content or "", usage.prompt_tokens,
            usage.prompt_tokens_details.cached_tokens or 0)


def test_a_conversation_whose_slot_was_taken_comes_back_warm(one_slot: LiveServer) -> None:
    client = openai.OpenAI(base_url=one_slot.url + "/v1", api_key="unused", max_retries=0)
    first = [{"role": "user", "content": HISTORY + "Which boxes are the oldest?"}]
    other = [{"role": "user", "content": "Name three colours of autumn leaves."}]
    reply, prompt_tokens, _ = ask(client, first)
    assert prompt_tokens > 150
    ask(client, other)  # takes the only slot: the first conversation's state goes to the cache

    second = first + [{"role": "assistant", "content": reply},
                      {"role": "user", "content": "And the newest?"}]
    reply2, _, cached = ask(client, second)
    # Everything of turn 1 but its last token comes from the restored state; without the cache
    # only the template's first tokens (shared with the other conversation) would.
    assert cached >= prompt_tokens - 1
    stats = one_slot.wait_ps(MODEL, lambda e: e is not None
                             and e["corral"]["prompt_cache"].get("hits", 0) >= 1)
    assert stats is not None and stats["corral"]["prompt_cache"]["entries"] >= 1

    # Unload (keep_alive 0): entries used more than once go to disk, and come back at the next
    # load of the same model.
    ask(client, other)  # the second turn's state (used twice: saved from turn 1) to the cache
    unload = httpx.post(one_slot.url + "/api/generate", json={"model": MODEL, "keep_alive": 0},
                        timeout=60)
    assert unload.status_code == 200
    one_slot.wait_ps(MODEL, lambda e: e is None)
    saved = list((Path(one_slot.env["CORRAL_PROMPT_CACHE_DIR"])).rglob("*"))
    assert any(path.is_file() for path in saved), saved

    third = second + [{"role": "assistant", "content": reply2},
                      {"role": "user", "content": "Thank you."}]
    _, prompt_tokens3, cached3 = ask(client, third)
    assert cached3 >= prompt_tokens > 150, (cached3, prompt_tokens3)
    # /api/ps shows the runner's last health report, a moment behind.
    one_slot.wait_ps(MODEL, lambda e: e is not None
                     and e["corral"]["prompt_cache"].get("hits", 0) >= 1)
