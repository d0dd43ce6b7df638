"""Image encoding and first-token time with one image: corral's engine against llama-cpp-python's
own mtmd path, in-process, on the same files.

    .venv/bin/python -m tests.bench.vision [--runs 5] [--image-size 336] [--blocks 6]

The model is the tiny vision model of tests/vision_model.py with a larger projector: a CLIP
encoder of `--blocks` blocks (one fewer run: LLaVA reads the second-to-last) at 256 dims over a
square image of `--image-size` pixels (336: 576 image tokens, LLaVA 1.5's size), weights that
keep the image's colour deciding the answer. Each run shows a new colour, so nothing is cached.

- corral: runner.process.engine.Engine with the projector, a chat with one image submitted and
  stepped until its first token (the image is decoded, encoded and read, the prompt around it
  read, a token sampled). "encode" is the engine's own timing of libmtmd's encode call.
- llama-cpp-python: Llama with its Llava15ChatHandler (libmtmd through llama_cpp.mtmd_cpp),
  create_chat_completion(stream=True) with the image as a data URL, until the first chunk.
  "encode" is mtmd_encode_chunk timed on the handler's own mtmd context.

Same threads, CPU, one slot. The medians (and spreads) and the ratio corral / llama-cpp-python
are printed; a ratio near 1 means corral adds nothing measurable to what libmtmd costs.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tests import vision_model

ASK = "what colour?"


def colours(n: int) -> list[tuple[int, int, int]]:
    """Distinct reddish colours: every run a new image (no cache anywhere helps)."""
    return [(200 + i % 50, 10 + i, 10 + 2 * i) for i in range(n)]


def corral(lm: Path, proj: Path, threads: int) -> Callable[[bytes], tuple[float, float, str]]:
    from runner.process.engine import Engine
    from shared import protocol as p

    engine = Engine(p.Load(str(lm), num_ctx=2048, num_batch=1024, parallel=1, num_gpu=0,
                           num_thread=threads, prompt_cache=0, projector=str(proj)))
    ids = iter(range(1, 10**9))

    def run(image: bytes) -> tuple[float, float, str]:
        vision = engine.vision
        assert vision is not None
        before = vision.encode_ns
        started = time.perf_counter()
        engine.submit(p.Generate(next(ids), messages=[
            {"role": "user", "content": ASK, "images": [image]}],
            options={"temperature": 0, "num_predict": 1}))
        text, first = "", 0.0
        while engine.busy:
            for message in engine.step():
                if not first and isinstance(message, p.Chunk | p.Done):
                    first = time.perf_counter() - started
                if isinstance(message, p.Chunk):
                    text += message.text
                if isinstance(message, p.Error):
                    raise RuntimeError(message.message)
        return (vision.encode_ns - before) / 1e9, first, text

    return run


def llama_cpp_python(lm: Path, proj: Path, threads: int
                     ) -> Callable[[bytes], tuple[float, float, str]]:
    from llama_cpp import Llama
    from llama_cpp import mtmd_cpp as mtmd
    from llama_cpp.llama_chat_format import Llava15ChatHandler

    handler = Llava15ChatHandler(clip_model_path=str(proj), verbose=False)
    # Flash attention on, as corral's runner gets it (llama.cpp's "auto" on the CPU): the
    # handler gives libmtmd the Llama's setting.
    llm = Llama(str(lm), chat_handler=handler, n_ctx=2048, n_batch=1024, n_threads=threads,
                n_threads_batch=threads, n_gpu_layers=0, flash_attn=True, verbose=False)

    def encode(image: bytes) -> float:
        ctx = handler.mtmd_ctx
        buf = (ctypes.c_uint8 * len(image)).from_buffer_copy(image)
        bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(ctx, buf, len(image), False)
        marker = mtmd.mtmd_default_marker()
        inp = mtmd.mtmd_input_text(marker, len(marker), False, True)
        chunks = mtmd.mtmd_input_chunks_init()
        mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(inp), (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap),
                           1)
        chunk = next(mtmd.mtmd_input_chunks_get(chunks, i)
                     for i in range(mtmd.mtmd_input_chunks_size(chunks))
                     if mtmd.mtmd_input_chunk_get_type(mtmd.mtmd_input_chunks_get(chunks, i))
                     == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE)
        started = time.perf_counter()
        assert mtmd.mtmd_encode_chunk(ctx, chunk) == 0
        took = time.perf_counter() - started
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_bitmap_free(bitmap)
        return took

    def run(image: bytes) -> tuple[float, float, str]:
        url = "data:image/png;base64," + base64.b64encode(image).decode()
        llm.reset()  # no prompt reuse between runs (corral's runs get none either)
        started = time.perf_counter()
        stream = llm.create_chat_completion(
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                   {"type": "text", "text": ASK}]}],
            temperature=0, max_tokens=1, stream=True)
        first, text = 0.0, ""
        for chunk in stream:
            delta = chunk["choices"][0].get("delta", {})
            if not first and (delta.get("content") or chunk["choices"][0].get("finish_reason")):
                first = time.perf_counter() - started
            text += delta.get("content") or ""
        return encode(image), first, text

    return run


def spread(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms ({min(values) * 1000:.1f}-" \
           f"{max(values) * 1000:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=336)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="corral-bench-vision-"))
    lm = vision_model.write_lm(folder / "lm.gguf")
    proj = vision_model.write_projector(folder / "mmproj.gguf", image_size=args.image_size,
                                        n_embd=256, n_block=args.blocks, n_ff=1024)
    n_tokens = (args.image_size // vision_model.PATCH) ** 2
    results: dict[str, tuple[list[float], list[float]]] = {}
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        contenders = {"corral": corral(lm, proj, args.threads),
                      "llama-cpp-python": llama_cpp_python(lm, proj, args.threads)}
    images = [vision_model.png(rgb, size=args.image_size) for rgb in colours(args.runs + 1)]
    for name, run in contenders.items():
        run(images[-1])  # warm-up (graph allocation, first-touch pages)
        results[name] = ([], [])
    # Interleaved, the order swapping every run: a busy machine's slow spells hit both.
    for k, image in enumerate(images[:-1]):
        order = list(contenders.items())
        for name, run in order if k % 2 == 0 else reversed(order):
            encode, first, text = run(image)
            assert text.strip() == "red", (name, text)  # the image decided the answer
            results[name][0].append(encode)
            results[name][1].append(first)
    table = Table(title=f"one {args.image_size}x{args.image_size} image ({n_tokens} tokens), "
                        f"{args.blocks}-block CLIP, {args.threads} threads, {args.runs} runs")
    for column in ("", "encode", "first token"):
        table.add_column(column)
    for name, (encodes, firsts) in results.items():
        table.add_row(name, spread(encodes), spread(firsts))
    ours, theirs = results["corral"], results["llama-cpp-python"]
    table.add_row("ratio corral / llama-cpp-python",
                  f"{statistics.median(ours[0]) / statistics.median(theirs[0]):.2f}",
                  f"{statistics.median(ours[1]) / statistics.median(theirs[1]):.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
