"""A draft model: a smaller model of the same vocabulary that guesses every drafting sequence's
next tokens (the model option `draft_model`), in the runner beside the model.

The guesses go through the same verification as prompt lookup's (runner/process/speculation.py,
runner/process/engine.py's `_verify`): the model decodes them in its next step and keeps a guess
only while its own sampled token equals it, so greedy output is token for token the same and
sampled output keeps the model's distribution.

The draft model has its own llama.cpp context with one sequence per slot and the same context
size. Each slot's draft cache follows what the model's slot holds (`Slot.tokens`, positions as
there): before a draft, the tokens it lacks (a new prompt, the tokens the last step kept) are
read, and what it holds beyond them (rejected guesses, an earlier prompt) is cut off with
llama_memory_seq_rm, or the cache is read again where a sliding-window cache cannot be cut that
far back. Then the sequences that draft this step (one draft length for all, the planner's
choice) draft together: one llama_decode per drafted position with a row for each, the greedy
(argmax) token of each row fed back as the next row. So a draft of K tokens for n sequences
costs K decodes of n rows; the planner weighs that (`cost`, measured) against what the guesses
are expected to save.
"""

from __future__ import annotations

import time
from typing import Any

import llama_cpp
import numpy as np

from runner.process.promptcache import common_prefix
from runner.process.speculation import Planner

DRAFT_MODEL_MAX = 8  # the longest draft when the model names a draft model and no draft_max
# A copy of another slot's draft cache beats reading this many tokens again (as the engine's).
MIN_COPY_TOKENS = 32
# llama.cpp's compatibility rule (common/speculative.cpp): sizes within padding of each other,
# the same text from id 5 on (the gateway checks the same from the GGUF headers first,
# registry/draftvocab.py).
MAX_SIZE_DIFFERENCE = 128
FIRST_COMPARED_ID = 5


class DraftError(Exception):
    pass


def _text(vocab: Any, token: int) -> bytes:
    return llama_cpp.llama_vocab_get_text(vocab, token) or b""


def vocab_mismatch(target: Any, draft: Any) -> str | None:
    """Why the draft vocabulary `draft` cannot stand in for `target`'s, None if it can."""
    same = (llama_cpp.llama_vocab_type, llama_cpp.llama_vocab_get_add_bos,
            llama_cpp.llama_vocab_bos, llama_cpp.llama_vocab_get_add_eos,
            llama_cpp.llama_vocab_eos)
    for call in same:
        if call(target) != call(draft):
            return f"{call.__name__.removeprefix('llama_vocab_')} differs"
    n_target, n_draft = llama_cpp.llama_vocab_n_tokens(target), \
        llama_cpp.llama_vocab_n_tokens(draft)
    if abs(n_target - n_draft) > MAX_SIZE_DIFFERENCE:
        return f"{n_draft} tokens, the model has {n_target}"
    for token in range(FIRST_COMPARED_ID, min(n_target, n_draft)):
        if _text(target, token) != _text(draft, token):
            return f"token {token} differs"
    return None


class DraftModel:
    """The draft model's context and each slot's draft cache, for the engine's `Speculation`
    (its `source`)."""

    def __init__(self, path: str, target_vocab: Any, slots: list[Any], *, n_ctx: int,
                 n_batch: int, n_ubatch: int, n_threads: int, gpu: bool, main_gpu: int,
                 use_mmap: bool, kv_type: int, flash_attention: bool | None) -> None:
        self.slots = slots  # the engine's: what each slot's model cache holds
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = -1 if gpu else 0  # all of it with the model's main GPU, or none
        mparams.main_gpu = max(main_gpu, 0)
        mparams.split_mode = 0  # LLAMA_SPLIT_MODE_NONE
        mparams.load_mode = 1 if use_mmap else 0
        model = llama_cpp.llama_model_load_from_file(path.encode(), mparams)
        if not model:
            raise DraftError(f"failed to load the draft model {path}")
        self.model = model
        self.ctx: Any = None
        self.batch: Any = None
        try:
            self._open(target_vocab, len(slots), n_ctx, n_batch, n_ubatch, n_threads, kv_type,
                       flash_attention)
        except BaseException:
            self.close()
            raise

    def _open(self, target_vocab: Any, parallel: int, n_ctx: int, n_batch: int, n_ubatch: int,
              n_threads: int, kv_type: int, flash_attention: bool | None) -> None:
        model = self.model
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        reason = vocab_mismatch(target_vocab, self.vocab)
        if reason is not None:
            raise DraftError(f"the draft model's vocabulary is not the model's ({reason})")
        if llama_cpp.llama_model_is_recurrent(model) or llama_cpp.llama_model_is_hybrid(model):
            raise DraftError("a recurrent draft model cannot drop rejected guesses")
        # Drafted ids the model has too (padded vocabularies differ at the end).
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_common = min(self.n_vocab, llama_cpp.llama_vocab_n_tokens(target_vocab))
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx * parallel
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_ubatch
        cparams.n_seq_max = parallel
        cparams.n_threads = cparams.n_threads_batch = n_threads
        cparams.no_perf = True
        cparams.kv_unified = False  # one stream per slot, as the model's
        cparams.swa_full = False
        if flash_attention is not None:
            cparams.flash_attn_type = 1 if flash_attention else 0
        cparams.type_k = cparams.type_v = kv_type
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            raise DraftError("failed to create the draft model's context (out of memory?)")
        self.ctx = ctx
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.n_batch = n_batch
        self.n_swa = max(llama_cpp.llama_model_n_swa(model), 0)
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.held: list[list[int]] = [[] for _ in range(parallel)]  # what each draft cache holds
        # Seconds of a draft decode by rows (c_ubatch: per decode, c_row: per row), learned from
        # every decode; seeded by a few timed decodes now, so that the first plans weigh the
        # real cost (nothing is learned while the planner finds drafting too dear).
        self.costs = Planner()
        self._calibrate()

    def _calibrate(self) -> None:
        """Time a few decodes of 1 and 8 rows (after a first one that pays for page faults and
        graph set-up) as the cost model's first observations."""
        bos = max(llama_cpp.llama_vocab_bos(self.vocab), 0)
        for round_ in range(3):
            for rows in (1, min(8, self.n_batch)):
                self._fill([(0, [bos] * rows, 0, True)])
                if not self._decode(observe=round_ > 0):
                    raise DraftError("the draft model's warm-up decode failed")
                llama_cpp.llama_memory_seq_rm(self.memory, 0, -1, -1)

    # --- the planner's side -------------------------------------------------------------------

    def offer(self, seq: Any, room: int) -> int:
        """The longest draft `seq` may have this step (0: none), as its drafter's pause and
        draft length say (runner/process/speculation.py's Drafter, whose n-gram index stays
        unused). Sequences with images do not draft: the draft model cannot read them."""
        drafter = seq.drafter
        if seq.media is not None:
            return 0
        if drafter.pause > 0:
            drafter.pause -= 1
            return 0
        return max(min(drafter.k, room), 0)

    def cost(self, length: int, n_seqs: int) -> float:
        """Seconds to draft `length` tokens for `n_seqs` sequences (read-up tokens aside)."""
        return length * self.costs.seconds(1, n_seqs)

    def draft(self, chosen: list[tuple[Any, int]]) -> dict[int, list[int]]:
        """{request id: guessed tokens} for the (sequence, length) pairs the planner chose."""
        out: dict[int, list[int]] = {}
        if not chosen:
            return out
        # Bring each draft cache up to the model's, its last token (the one the model reads
        # this step) read with logits: the first guess.
        pending: list[tuple[int, list[int]]] = []
        for seq, _ in chosen:
            slot = self.slots[seq.slot]
            pending.append((slot.index, self._sync(slot.index, [*slot.tokens, seq.last_token])))
        firsts = self._read(pending)
        chosen = [(seq, length) for seq, length in chosen if seq.slot in firsts]
        drafts = {seq.slot: [firsts[seq.slot]] for seq, _ in chosen}
        longest = max((length for _, length in chosen), default=0)
        for step in range(1, longest):
            going = [(seq.slot, [drafts[seq.slot][-1]], len(self.held[seq.slot]), True)
                     for seq, length in chosen if length > step]
            rows = self._fill(going)
            if not self._decode():
                self.forget()
                break  # (what was drafted so far is still a valid guess)
            for row, (index, tokens, _, _) in zip(rows, going, strict=True):
                self.held[index].extend(tokens)
                drafts[index].append(self._argmax(row))
        for seq, length in chosen:
            out[seq.request_id] = drafts[seq.slot][:length]
        return out

    # --- the draft caches -----------------------------------------------------------------------

    def _sync(self, index: int, history: list[int]) -> list[int]:
        """Cut draft cache `index` back to what it shares with `history` (or take a longer
        shared start from another slot's) and return the tokens of `history` it still has to
        read: at least the last one, whose logits give the first guess."""
        held = self.held[index]
        keep = min(common_prefix(held, history), len(history) - 1)
        donor = max(range(len(self.held)), key=lambda i: common_prefix(self.held[i], history))
        shared = min(common_prefix(self.held[donor], history), len(history) - 1)
        if donor != index and shared - keep >= MIN_COPY_TOKENS:
            llama_cpp.llama_memory_seq_rm(self.memory, index, -1, -1)
            llama_cpp.llama_memory_seq_cp(self.memory, donor, index, -1, -1)
            held[:] = self.held[donor]
            keep = shared
        if keep < len(held):
            if keep < self._floor(index) or \
                    not llama_cpp.llama_memory_seq_rm(self.memory, index, keep, -1):
                llama_cpp.llama_memory_seq_rm(self.memory, index, -1, -1)
                keep = 0
            del held[keep:]
        return history[keep:]

    def _floor(self, index: int) -> int:
        """How far back the cache can be cut: a sliding-window cache holds only the last
        window's positions (as the engine's `_floor`)."""
        if not self.n_swa:
            return 0
        pos_min = llama_cpp.llama_memory_seq_pos_min(self.memory, index)
        return pos_min + self.n_swa if pos_min > 0 else 0

    def _read(self, pending: list[tuple[int, list[int]]]) -> dict[int, int]:
        """Read each slot's missing tokens, in batches of up to n_batch rows; {slot: the argmax
        after its last token}."""
        firsts: dict[int, int] = {}
        left = [(index, list(tokens)) for index, tokens in pending]
        while left:
            rows: list[tuple[int, list[int], int, bool]] = []
            room = self.n_batch
            for index, tokens in left:
                take = min(len(tokens), room)
                if take <= 0:
                    break
                rows.append((index, tokens[:take], len(self.held[index]), take == len(tokens)))
                del tokens[:take]
                room -= take
                self.held[index].extend(rows[-1][1])
            outputs = iter(self._fill(rows))
            if not self._decode():
                self.forget()
                return {}
            for index, _, _, last in rows:
                if last:
                    firsts[index] = self._argmax(next(outputs))
            left = [(index, tokens) for index, tokens in left if tokens]
        return firsts

    def forget(self) -> None:
        """After a failed decode: empty every draft cache (each is read again when it drafts)."""
        for index, held in enumerate(self.held):
            llama_cpp.llama_memory_seq_rm(self.memory, index, -1, -1)
            held.clear()

    def _fill(self, rows: list[tuple[int, list[int], int, bool]]) -> list[int]:
        """Put (slot, tokens, first position, logits for the last) rows in the batch; the batch
        indices of the rows with logits."""
        batch, n, outputs = self.batch, 0, []
        for index, tokens, start, logits in rows:
            for j, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = start + j
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = index
                batch.logits[n] = 0
                n += 1
            if logits and tokens:
                batch.logits[n - 1] = 1
                outputs.append(n - 1)
        batch.n_tokens = n
        return outputs

    def _decode(self, observe: bool = True) -> bool:
        started = time.perf_counter()
        ok = llama_cpp.llama_decode(self.ctx, self.batch) == 0
        if ok and observe:
            self.costs.observe(1, self.batch.n_tokens, time.perf_counter() - started)
        return ok

    def _argmax(self, index: int) -> int:
        """The draft model's most likely token after batch row `index` of the last decode,
        among the ids the model has too."""
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, index),
                                       shape=(self.n_common,))
        return int(np.argmax(logits))

    def set_threads(self, n_threads: int) -> None:
        if self.ctx:
            llama_cpp.llama_set_n_threads(self.ctx, n_threads, n_threads)

    def close(self) -> None:
        if self.batch is not None:
            llama_cpp.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None
