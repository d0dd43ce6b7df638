"""The runners: one process per loaded model, and what manages them from outside.

- `runner/process/`: the code that runs inside a runner process (`python -m runner.process.worker`):
  the ZeroMQ loop, the engine over llama.cpp, sampling, the prompt cache.
- `runner/supervisor/`: the code that manages runners from the gateway's side: the pool that
  starts, places and evicts them, the placement decisions, the memory estimate and inventory, and
  the client that speaks the wire protocol (shared/protocol.py) to a runner.
- `runner/build.py` (how `make install` builds llama.cpp), `runner/cpusafety.py` (how a build
  crashes on some CPUs) and `runner/kvlayout.py` (how llama.cpp sizes a KV cache) are facts both
  sides use.

Prompt rendering and grammars, which the gateway uses as well, live in shared/.
"""
