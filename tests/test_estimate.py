"""The memory estimate (runner/supervisor/estimate.py) against what a loaded runner really uses:
llama.cpp's buffers as it logs them at load (runner/process/devicemem.py), and the process's RSS,
for the bundled model at several context, slot and micro-batch settings; and the shape rules on
their own."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner.kvlayout import swa_layers
from runner.supervisor.estimate import ModelShape, estimate, kv_cells

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 0.15

# One runner's load in a process of its own (RSS is the whole process, as /api/ps measures it):
# llama.cpp's logged buffers by kind, then the RSS after a request whose prompt fills a
# micro-batch.
PROBE = """
import json, os, sys
from runner.process import devicemem
from runner.process.engine import Engine
from shared import protocol as p
ctx, parallel, batch = (int(a) for a in sys.argv[2:5])
with devicemem.capture() as buffers:
    engine = Engine(p.Load(sys.argv[1], num_ctx=ctx, parallel=parallel, num_batch=batch,
                           prompt_cache=0))
engine.submit(p.Generate(1, prompt="The river rose and fell. " * 120,
                         options={"temperature": 0, "num_predict": 4}))
while engine.busy:
    engine.step()
with open(f"/proc/{os.getpid()}/status") as f:
    rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
print(json.dumps({"buffers": buffers.by_kind, "rss": rss, "kv_bytes": engine.kv_bytes()}))
"""


@pytest.fixture(scope="module")
def shape(model_path: str) -> ModelShape:
    from registry.gguf_info import read_gguf
    from runner.supervisor.estimate import shape_from_gguf

    return shape_from_gguf(read_gguf(model_path))


def within(estimated: int, measured: int) -> bool:
    return abs(estimated - measured) <= TOLERANCE * measured


@pytest.mark.e2e
@pytest.mark.parametrize(("num_ctx", "parallel", "num_batch"),
                         [(4096, 4, 512), (1024, 1, 512), (2048, 8, 256)])
def test_estimate_matches_a_loaded_runner(model_path: str, shape: ModelShape, num_ctx: int,
                                          parallel: int, num_batch: int) -> None:
    done = subprocess.run([sys.executable, "-c", PROBE, model_path, str(num_ctx),
                           str(parallel), str(num_batch)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env={"PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    buffers = measured["buffers"]
    need = estimate(shape, num_ctx=num_ctx, parallel=parallel, num_batch=num_batch)
    # llama.cpp's own allocations, kind by kind: what a GPU would hold.
    assert within(need.kv, buffers["kv"]), (need.kv, buffers)
    assert within(need.compute, buffers["compute"]), (need.compute, buffers)
    assert within(need.output, buffers["output"]), (need.output, buffers)
    assert within(need.weights, buffers["weights"]), (need.weights, buffers)
    assert within(need.total, buffers["weights"] + buffers["kv"] + buffers["compute"])
    assert measured["kv_bytes"] == buffers["kv"]  # the runner's own figure (Ready.kv_bytes)
    # The process on the CPU: far less than it allocates (the compute buffer's logits rows are
    # never written), and what /api/ps reports for a CPU runner.
    assert within(need.host_total, measured["rss"]), (need.host_total, measured["rss"])
    assert measured["rss"] < need.total


def test_sliding_window_layers_follow_the_gguf_or_llama_cpp_s_pattern() -> None:
    assert swa_layers("gemma3", 12) == (True,) * 5 + (False,) + (True,) * 5 + (False,)
    assert swa_layers("gemma2", 4) == (True, False, True, False)
    assert swa_layers("llama", 3) == (False, False, False)  # llama.cpp ignores the window
    assert swa_layers("llama", 3, [True, False, True]) == (True, False, True)
    assert swa_layers("newarch", 4, 2) == (True, False, True, False)


def tiny(swa: tuple[bool, ...] = (), n_swa: int = 0, n_vocab: int = 32000) -> ModelShape:
    return ModelShape(n_layers=4, layer_bytes=(100,) * 4, other_bytes=50, n_kv_heads=8,
                      key_length=128, value_length=128, n_vocab=n_vocab, n_embd=4096,
                      context_length=8192, embedding_only=False, n_ff=14336, n_swa=n_swa,
                      swa_layers=swa)


def test_kv_is_full_length_only_on_full_attention_layers() -> None:
    per_cell = 8 * 256 * 2  # kv heads x (k + v) x f16
    full = estimate(tiny(), num_ctx=8192, parallel=2)
    assert full.kv == 4 * 8192 * 2 * per_cell
    windowed = estimate(tiny((True, True, True, False), 1024), num_ctx=8192, parallel=2)
    assert kv_cells(tiny((True,) * 4, 1024), num_ctx=8192) == (8192, 1536)  # 1024 + 512
    assert windowed.kv == (3 * 1536 + 8192) * 2 * per_cell
    assert windowed.layer_bytes == (100 + 1536 * 2 * per_cell,) * 3 + (100 + full.kv // 4,)
    # A window longer than the context changes nothing; swa_full keeps the old layout.
    assert estimate(tiny((True,) * 4, 1024), num_ctx=1024, parallel=1).kv == \
        estimate(tiny(), num_ctx=1024, parallel=1).kv
    assert estimate(tiny((True,) * 4, 1024), num_ctx=8192, parallel=1, swa_full=True).kv == \
        estimate(tiny(), num_ctx=8192, parallel=1).kv


def test_compute_is_the_logits_of_a_micro_batch_or_its_activations() -> None:
    mask = 2 * 512 * 4096  # the micro-batch's f16 attention mask against a slot's cells
    big_vocab = estimate(tiny(n_vocab=262144), num_ctx=4096, parallel=1, num_batch=512)
    assert big_vocab.compute == mask + 512 * (4 * 262144 + 8 * 4096)
    # A small vocabulary and a wide model: the feed-forward activations are the larger graph.
    small = estimate(tiny(n_vocab=1000), num_ctx=4096, parallel=1, num_batch=512)
    assert small.compute == mask + 4 * 512 * (14336 + 2 * 4096) == small.host_compute
    # Sliding-window layers add a mask of the window's cells (1024 + 512 here).
    windowed = estimate(tiny((True, True, True, False), 1024, n_vocab=262144), num_ctx=4096,
                        parallel=1, num_batch=512)
    assert windowed.compute == big_vocab.compute + 2 * 512 * 1536
    # On the CPU a runner holds activations, not a micro-batch of logits.
    assert big_vocab.host_compute < big_vocab.compute
    assert big_vocab.host_total - big_vocab.total == \
        big_vocab.host_compute - big_vocab.compute + big_vocab.output + big_vocab.runtime


def test_an_encoder_has_no_kv_cache_and_no_slots_to_pay_for() -> None:
    """An embedding-only model: llama.cpp allocates no KV cache; the runner holds one
    micro-batch's graph and its embedding context's (the whole context in one micro-batch,
    attention mask quadratic in it)."""
    encoder = dataclasses.replace(tiny(), embedding_only=True, n_ff=3072, n_embd=768)
    one = estimate(encoder, num_ctx=2048, parallel=1, num_batch=512)
    assert one.kv == 0
    assert one == estimate(encoder, num_ctx=2048, parallel=4, num_batch=512)
    graph = [2 * n * n + 4 * n * (3 * 3072 + 768) for n in (512, 2048)]
    assert one.compute == sum(graph)
    # On the CPU too, masks and all: an input as long as the context fills them.
    assert one.host_total - one.runtime - one.output - one.weights == sum(graph)
    assert estimate(encoder, num_ctx=16384, parallel=1).compute == \
        estimate(encoder, num_ctx=8192, parallel=1).compute  # the embedding context's cap
