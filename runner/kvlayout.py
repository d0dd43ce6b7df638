"""How llama.cpp lays out a model's KV cache: facts both worlds of runner/ need, the runner process
(to report what it holds) and the supervisor (to estimate it before loading)."""

from __future__ import annotations

KV_BYTES_PER_ELEMENT = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
KV_PAD = 256  # llama.cpp rounds a sliding-window cache up to this many cells
# Which layers use the sliding window, by architecture, where the GGUF does not say: llama.cpp
# sets these patterns in code (every n-th layer is a full-attention one; `set_swa_pattern`).
SWA_PATTERN = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "gemma-embedding": 6, "cohere2": 4,
               "gpt-oss": 2, "exaone4": 4}


def swa_layers(architecture: str, n_layers: int, pattern: object = None) -> tuple[bool, ...]:
    """Which layers use the sliding window: the GGUF's per-layer list or period, else
    llama.cpp's pattern for the architecture (none for those it has none for)."""
    if isinstance(pattern, list) and len(pattern) >= n_layers:
        return tuple(bool(v) for v in pattern[:n_layers])
    period = int(pattern) if isinstance(pattern, int) and not isinstance(pattern, bool) \
        else SWA_PATTERN.get(architecture, 0)
    if period <= 0:
        return (False,) * n_layers  # llama.cpp ignores the window for other architectures
    return tuple(i % period < period - 1 for i in range(n_layers))


def swa_cells(num_ctx: int, window: int, ubatch: int) -> int:
    """Cells per slot of a sliding-window layer's cache (`swa_full = false`): the window plus one
    micro-batch, rounded up to KV_PAD, never more than the context."""
    return min(num_ctx, -(-(window + ubatch) // KV_PAD) * KV_PAD)
