"""Speculative decoding by prompt lookup (n-gram drafting), for the batching engine.

A sequence that re-writes text it was given (a code edit, a quoted document, a JSON round trip)
often continues the way an earlier stretch of its own prompt or output continued. Each step the
engine asks every generating sequence's `Drafter` for a guess of its next tokens: the tokens that
followed the most recent earlier occurrence of its last few tokens (the longest of NGRAM_SIZES
that occurred before). The guesses go into the same llama_decode as everything else, one logits
row each; the engine samples row by row and keeps a guessed token only while the sampled token
equals it, so the output is the one decoding without guesses gives (greedy: token for token;
sampled: the same distribution, as every kept token is a sample of the target model), then cuts
the rejected rows' positions off the KV cache.

Guessing is never free: each row costs compute, and with one KV stream per slot llama.cpp splits
a batch into micro-batches holding the same number of rows of every sequence in it, so rows of
different counts cost extra graph runs. Hence:

- each `Drafter` tracks how often its guesses hold (per drafted token) and shrinks its draft
  length after a miss, pausing for longer and longer after drafts that failed outright;
- the `Planner` keeps a cost model of a step, seconds = c_ubatch x micro-batches + c_row x rows
  (least squares over recent steps, with a prior), and each step picks the draft length for the
  sequences that guess (one length for all, so that they fit one micro-batch) that maximises the
  expected tokens per second of the whole batch, or none when guessing does not pay.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

NGRAM_SIZES = (4, 3, 2)  # the match tried first is the longest
ACCEPT_PRIOR = 0.5  # a new sequence's guessed per-token acceptance
ACCEPT_DECAY = 0.7  # weight of the past in the acceptance estimate, per verified token
# Share of the way back to ACCEPT_PRIOR a sequence's estimate goes in a step whose guess was not
# worth verifying, so that one that failed early is tried again later.
ACCEPT_DRIFT = 0.02
MAX_PAUSE = 32  # steps a sequence whose drafts keep failing waits before it guesses again
# Draft lengths the planner tries (capped by each sequence's own length).
LENGTHS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
# Speculation must gain at least this share of tokens per second (the model's error margin).
MIN_GAIN = 1.05


class NgramIndex:
    """For each n in NGRAM_SIZES: the last position where each n-gram of the history ended."""

    __slots__ = ("_done", "_maps")

    def __init__(self) -> None:
        self._maps: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in NGRAM_SIZES}
        self._done = 0  # n-grams ending before this position are indexed

    def _extend(self, tokens: list[int], upto: int) -> None:
        for n, seen in self._maps.items():
            for end in range(max(self._done, n - 1), upto):
                seen[tuple(tokens[end - n + 1:end + 1])] = end
        self._done = max(self._done, upto)

    def draft(self, tokens: list[int], k: int) -> list[int]:
        """Up to `k` guessed tokens to follow `tokens`: what followed the most recent earlier
        occurrence of its longest suffix found, extended periodically when that occurrence is
        so recent that the history runs out (a loop repeats)."""
        last = len(tokens) - 1
        self._extend(tokens, last)  # every n-gram but the one ending at the last token
        for n in NGRAM_SIZES:
            if last + 1 < n:
                continue
            end = self._maps[n].get(tuple(tokens[last - n + 1:]))
            if end is not None:
                period = last - end
                return [tokens[end + 1 + j % period] for j in range(k)]
        return []


@dataclass
class Drafter:
    """One sequence's guesses and how well they have held."""

    n_prompt: int  # tokens of the prompt at the start of `tokens`
    tokens: list[int]  # prompt and output so far (the drafter's own copy, extended each step)
    k_max: int
    k: int = 0  # the longest draft to propose next
    accept: float = ACCEPT_PRIOR  # estimated chance that a drafted token holds
    pause: int = 0  # steps left without drafting
    backoff: int = 1  # the next pause after a draft that failed outright
    drafted: int = 0
    accepted: int = 0
    index: NgramIndex = field(default_factory=NgramIndex)

    def __post_init__(self) -> None:
        self.k = self.k_max

    @classmethod
    def for_prompt(cls, prompt: Seq[int], k_max: int) -> Drafter:
        return cls(len(prompt), list(prompt), k_max)

    def propose(self, generated: Seq[int], room: int) -> list[int]:
        """The guess for the tokens after `generated` (the sequence's output so far), at most
        `room` tokens; [] while paused or when nothing matches."""
        self.tokens.extend(generated[len(self.tokens) - self.n_prompt:])
        if self.pause > 0:
            self.pause -= 1
            return []
        k = min(self.k, room)
        return self.index.draft(self.tokens, k) if k > 0 else []

    def record(self, drafted: int, accepted: int) -> None:
        """A verified draft: `accepted` of its first `drafted` tokens held."""
        self.drafted += drafted
        self.accepted += accepted
        # Tokens were tried up to the first miss: `accepted` successes in `tried` trials.
        tried = accepted + (accepted < drafted)
        if tried:
            weight = ACCEPT_DECAY ** tried
            self.accept = weight * self.accept + (1 - weight) * accepted / tried
        if accepted == drafted:
            self.k = min(self.k_max, max(self.k * 2, 2))
        else:
            self.k = min(self.k_max, max(2, accepted + 1))
        if accepted == 0:
            self.pause, self.backoff = self.backoff, min(self.backoff * 2, MAX_PAUSE)
        else:
            self.backoff = 1

    def expected(self, k: int) -> float:
        """Expected tokens kept from a draft of `k`: p + p^2 + ... + p^k."""
        p = self.accept
        if p >= 0.999:
            return float(k)
        return p * (1 - p ** k) / (1 - p)


def micro_batches(rows: Seq[int]) -> int:
    """Micro-batches llama.cpp splits a batch into when each sequence has its own KV stream:
    each takes the same number of rows of every sequence left, so one per distinct count."""
    return len(set(rows))


class Planner:
    """The step's cost model and the choice of draft length.

    seconds = c_ubatch x micro-batches + c_row x rows, fitted by least squares over recent steps
    (exponential forgetting). A prior of a few pseudo-steps keeps the fit sane before the steps
    vary enough to tell the two costs apart."""

    FORGET = 0.98  # weight of the past per observed step
    PRIOR_WEIGHT = 0.5

    def __init__(self, c_ubatch: float = 0.02, c_row: float = 0.004) -> None:
        self.c_ubatch, self.c_row = c_ubatch, c_row
        self._prior = (c_ubatch, c_row)
        # Sums of u*u, u*r, r*r, u*t, r*t over the observations (weighted).
        self._s = [0.0] * 5
        self._prior_sums(self.PRIOR_WEIGHT)

    def _prior_sums(self, weight: float) -> None:
        # Pseudo-steps of 1 micro-batch with 1 row and with 9 rows at the prior costs.
        cu, cr = self._prior
        for rows in (1, 9):
            self._add(1, rows, cu + cr * rows, weight)

    def _add(self, u: float, r: float, t: float, w: float) -> None:
        s = self._s
        s[0] += w * u * u
        s[1] += w * u * r
        s[2] += w * r * r
        s[3] += w * u * t
        s[4] += w * r * t

    def observe(self, ubatches: int, rows: int, seconds: float) -> None:
        """A decoded step: refit the two costs."""
        if ubatches <= 0 or rows <= 0 or seconds <= 0:
            return
        self._s = [v * self.FORGET for v in self._s]
        self._add(ubatches, rows, seconds, 1.0)
        self._prior_sums(self.PRIOR_WEIGHT * (1 - self.FORGET))  # the prior never fades out
        suu, sur, srr, sut, srt = self._s
        det = suu * srr - sur * sur
        if det <= 1e-12:
            return
        cu = (srr * sut - sur * srt) / det
        cr = (suu * srt - sur * sut) / det
        if cu > 0 and cr > 0:
            self.c_ubatch, self.c_row = cu, cr

    def seconds(self, ubatches: int, rows: int) -> float:
        return self.c_ubatch * ubatches + self.c_row * rows

    def choose(self, rows: list[int], extra_rows: int, extra_ubatches: int,
               candidates: list[tuple[int, Drafter, int]],
               draft_cost: Callable[[int, int], float] | None = None) -> dict[int, int]:
        """Draft lengths for this step: {key: length}, or {} when guessing does not pay.

        `rows`: one per generating sequence (1 each); `extra_rows`/`extra_ubatches`: the prompt
        rows the step also reads; `candidates`: (key, drafter, longest draft it has);
        `draft_cost`: seconds that drafting (length, sequences) costs first (a draft model)."""
        base_rows = sum(rows) + extra_rows
        base_tokens = len(rows)
        base = base_tokens / self.seconds(micro_batches(rows) + extra_ubatches, base_rows)
        best, choice = base * MIN_GAIN, (0, 0)
        limit = max((n for _, _, n in candidates), default=0)
        for length in LENGTHS:
            if length > limit:
                break
            # Only drafts of the full length: one size of row count, one more micro-batch.
            able = sorted((c for c in candidates if c[2] >= length),
                          key=lambda c: -c[1].expected(length))
            gain = 0.0
            for m, (_key, drafter, _n) in enumerate(able, 1):
                gain += drafter.expected(length)
                counts = [1 + length] * m + [1] * (len(rows) - m)
                speed = (base_tokens + gain) / (self.seconds(
                    micro_batches(counts) + extra_ubatches, base_rows + m * length)
                    + (draft_cost(length, m) if draft_cost is not None else 0.0))
                if speed > best:
                    best, choice = speed, (length, m)
        length, m = choice
        if not length:
            return {}
        able = sorted((c for c in candidates if c[2] >= length),
                      key=lambda c: -c[1].expected(length))
        return {key: length for key, _, _ in able[:m]}


class Speculation:
    """The engine's side: which sequences guess how far this step, and the counts for /api/ps
    and /metrics."""

    def __init__(self, draft_max: int) -> None:
        self.draft_max = max(draft_max, 0)  # the server's (or the model's load) default
        self.planner = Planner()
        self.drafted = 0  # guessed tokens verified, since the runner loaded
        self.accepted = 0  # of which held
        # A draft model (runner/process/draftmodel.py) that guesses instead of prompt lookup.
        self.source: Any = None

    def limit(self, seq: Any) -> int:
        """The longest draft `seq` may have: its option `draft_max`, else the default. Seeded
        sampling never drafts: a seed reproduces its text only from the same batch layouts
        (runner/process/engine.py's seeded_keep), and guesses change them."""
        if seq.seeded:
            return 0
        value = seq.options.get("draft_max")
        return max(int(value), 0) if value is not None else self.draft_max

    def plan(self, seqs: list[Any], n_ctx: int, max_rows: int) -> dict[int, list[int]]:
        """{request id: guessed tokens} for the generating sequences `seqs` of this step."""
        if not seqs:
            return {}
        candidates: list[tuple[int, Drafter, int]] = []
        proposals: dict[int, list[int]] = {}
        per_seq = max_rows // len(seqs) - 1  # every row in one micro-batch's reach
        for seq in seqs:
            k_max = self.limit(seq)
            if k_max <= 0:
                continue
            if seq.drafter is None:
                seq.drafter = Drafter.for_prompt(seq.prompt, k_max)
            # Never past the context (a shift would move the rows) nor past num_predict.
            room = min(n_ctx - seq.n_past - 3, seq.num_predict - len(seq.generated) - 1, per_seq)
            if self.source is not None:  # it drafts the lengths chosen below
                if (longest := self.source.offer(seq, room)) > 0:
                    candidates.append((seq.request_id, seq.drafter, longest))
                continue
            draft = seq.drafter.propose(seq.generated, room)
            if draft:
                candidates.append((seq.request_id, seq.drafter, len(draft)))
                proposals[seq.request_id] = draft
        if not candidates:
            return {}
        lengths = self.planner.choose([1] * len(seqs), 0, 0, candidates,
                                      self.source.cost if self.source is not None else None)
        for key, drafter, _n in candidates:
            if key not in lengths:  # not worth it now: its estimate drifts back, to retry later
                drafter.accept += (ACCEPT_PRIOR - drafter.accept) * ACCEPT_DRIFT
        if self.source is not None:
            return self.source.draft([(seq, lengths[seq.request_id]) for seq in seqs
                                      if seq.request_id in lengths])
        return {key: proposals[key][:k] for key, k in lengths.items()}

    def record(self, seq: Any, drafted: int, accepted: int) -> None:
        seq.drafter.record(drafted, accepted)
        self.drafted += drafted
        self.accepted += accepted

    def observe(self, rows: list[int], seconds: float) -> None:
        """A decode step of generating sequences only, `rows` rows each."""
        if rows:
            self.planner.observe(micro_batches(rows), sum(rows), seconds)
