"""Prompt texts for the load test: random or fixed text of about N tokens, or prompts from a file.

Lengths are approximate: the text is built from short, common English words, which most
tokenizers keep as one token each, with a full stop every few words (with Gemma 3's tokenizer
the count comes within about 1% of the target). Prompts end mid-sentence, so that the model keeps
writing up to the output limit instead of stopping at once. The server's own count
(`prompt_eval_count` / `usage.prompt_tokens`) is reported next to the results.

- `random`: every request gets its own prompt (seeded, so a run is repeatable); no two prompts
  share a prefix worth caching, so each request pays for its whole prompt.
- `fixed`: every request gets the same passage; a server with a prompt cache reuses it.
- a file: one prompt per line, or JSON Lines (a JSON string, an object with a "prompt", "text"
  or "content" string, a list of chat messages, or an object with a "messages" list); requests
  take them in turn, wrapping around.

The other workloads (shared prefixes, conversations) are built from these texts in `workload`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from gateway.loadtest.client import Prompt

# Short, common words: one token each in the usual tokenizers.
_WORD_TEXT = (
    "the a an and or but if then so as of in on at to for with from by over under after "
    "before about into near far up down out off old new big small long short high low early "
    "late good bad red green blue black white dark light warm cold quiet loud slow fast hard "
    "soft full empty clear deep rich poor young open closed day night year week morning "
    "evening summer winter spring river town city road street bridge house door window "
    "garden field forest hill mountain sea lake boat ship train car bus station market shop "
    "school church tower wall gate square park farm mill barn horse dog cat bird fish tree "
    "flower grass stone wood iron gold paper book letter map song story word name voice "
    "face hand eye heart head friend mother father child family people man woman king queen "
    "worker teacher doctor farmer baker walks runs sees hears finds keeps builds opens "
    "closes brings takes makes gives writes reads sings plays works waits rests looks turns "
    "holds leaves comes goes stays grows falls rises moves starts stops carries sends"
)
_WORDS = _WORD_TEXT.split()

_PASSAGE_TEXT = (
    "The old town stands where the river bends to the west, and its market square has been "
    "the heart of the place for as long as anyone can remember. Every morning the bakers open "
    "their shops before the sun is up, and the smell of fresh bread drifts across the stone "
    "bridge to the houses on the far bank. Boats come down the river with wood, grain and "
    "wool, and the men who work on the quay know each boat by the colour of its sail. In the "
    "summer the children swim near the mill, and in the winter, when the water is slow and "
    "dark, they skate on the ponds behind the church. The town keeps a book of its history in "
    "a small room above the school: letters, maps and lists of names, with notes about the "
    "great flood, the year the bridge fell and the long hot season when the wells ran dry. "
    "People who move away often come back, because nowhere else feels quite the same."
)
_PASSAGE = _PASSAGE_TEXT.split()

_SENTENCE = 11  # words per sentence in generated text


def _sentences(words: Sequence[str]) -> str:
    """Sentences of _SENTENCE words; the last one is left open, so that the model goes on
    writing rather than ending its answer at once (a full stop at the end makes small base
    models emit end-of-text straight away on about one prompt in five)."""
    out: list[str] = []
    for start in range(0, len(words), _SENTENCE):
        part = list(words[start:start + _SENTENCE])
        part[0] = part[0].capitalize()
        out.append(" ".join(part) + ".")
    return " ".join(out).removesuffix(".")


def _word_count(tokens: int) -> int:
    # Each sentence adds a full stop, itself about one token.
    return max(1, round(tokens * _SENTENCE / (_SENTENCE + 1)))


def random_prompt(tokens: int, seed: int, index: int) -> str:
    """Prompt number `index` of a seeded random set: about `tokens` tokens of word salad."""
    return _salad(tokens, random.Random(seed * 1_000_003 + index))


def random_text(tokens: int, key: str) -> str:
    """About `tokens` tokens of word salad, the same for the same `key` (seeds by string)."""
    return _salad(tokens, random.Random(key))


def _salad(tokens: int, rng: random.Random) -> str:
    return _sentences([rng.choice(_WORDS) for _ in range(_word_count(tokens))])


def fixed_prompt(tokens: int) -> str:
    """One passage of plain prose cut or repeated to about `tokens` tokens, ending mid-sentence."""
    n = _word_count(tokens)
    words = [_PASSAGE[i % len(_PASSAGE)] for i in range(n)]
    return " ".join(words).rstrip(".,:")  # left open, as in _sentences


def _messages(data: list[object], line: str) -> list[dict[str, str]]:
    messages = []
    for item in data:
        if not (isinstance(item, dict) and isinstance(item.get("role"), str)
                and isinstance(item.get("content"), str)):
            raise ValueError(f"a message needs a \"role\" and a \"content\" string: {line[:80]}")
        messages.append({"role": item["role"], "content": item["content"]})
    if not messages:
        raise ValueError(f"an empty message list: {line[:80]}")
    return messages


def _parse_line(line: str) -> Prompt:
    stripped = line.strip()
    if stripped[:1] in ('{', '"', '['):
        try:
            data = json.loads(stripped)
        except ValueError:
            return stripped
        if isinstance(data, str):
            return data
        if isinstance(data, list):
            return _messages(data, stripped)
        if isinstance(data, dict):
            if isinstance(data.get("messages"), list):
                return _messages(data["messages"], stripped)
            for key in ("prompt", "text", "content"):
                if isinstance(data.get(key), str):
                    return data[key]
            raise ValueError(f"JSON line without a \"prompt\", \"text\" or \"content\" string "
                             f"or a \"messages\" list: {stripped[:80]}")
    return stripped


def _has_text(prompt: Prompt) -> bool:
    if isinstance(prompt, str):
        return bool(prompt.strip())
    return any(message["content"].strip() for message in prompt)


def load_prompts(path: str | Path) -> list[Prompt]:
    """Prompts from a file: one per line, or JSON Lines; blank lines are skipped."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read prompts file {file}: {exc.strerror or exc}") from None
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            prompt = _parse_line(line)
        except ValueError as exc:
            raise ValueError(f"{file}:{number}: {exc}") from None
        if _has_text(prompt):
            prompts.append(prompt)
    if not prompts:
        raise ValueError(f"prompts file {file} has no prompts")
    return prompts
