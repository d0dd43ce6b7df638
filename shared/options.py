"""The model options Ollama knows, with their types and defaults.

One table for the layers that read options: the gateway checks and merges a request's options
(gateway/options.py), the registry checks a Modelfile's PARAMETER lines (registry/modelfile.py),
which must not depend on the gateway.
"""

from __future__ import annotations

from typing import Any

# name -> (type, default). `None` default = unset (decided elsewhere).
OPTION_TYPES: dict[str, tuple[type, Any]] = {
    "num_keep": (int, 4),
    "seed": (int, -1),
    "num_predict": (int, -1),
    "top_k": (int, 40),
    "top_p": (float, 0.9),
    "min_p": (float, 0.0),
    "typical_p": (float, 1.0),
    "repeat_last_n": (int, 64),
    "temperature": (float, 0.8),
    "repeat_penalty": (float, 1.0),
    "presence_penalty": (float, 0.0),
    "frequency_penalty": (float, 0.0),
    "stop": (list, None),
    "num_ctx": (int, None),
    "num_batch": (int, 512),
    "num_gpu": (int, -1),
    "main_gpu": (int, -1),  # -1: the supervisor chooses
    "num_parallel": (int, 0),  # corral: slots for this model; 0 = the supervisor chooses
    "use_mmap": (bool, True),
    "num_thread": (int, 0),
    # corral: the longest run of tokens guessed by prompt lookup and verified in one step
    # (speculative decoding); 0 = off; unset = the server's CORRAL_DRAFT_MAX.
    "draft_max": (int, None),
    # corral: a model in the store, of the same vocabulary, that drafts the guesses instead of
    # prompt lookup (runner/process/draftmodel.py); a load option: the runner loads it beside
    # the model.
    "draft_model": (str, None),
}
