"""Fuzz a live corral from its own /openapi.json with schemathesis.

    .venv/bin/python -m tests.fuzz [--max-examples 8] [--max-time 60] [--seed N]

Starts a server on a loopback port with a store of its own holding the bundled model, then runs
`schemathesis run` on every documented operation except those that reach other hosts or destroy
models (pull, push, create, copy, delete, blobs), with the checks: no 5xx, statuses, content
types and bodies as documented (NDJSON streams line by line). Requests stay small (see
tests/fuzz/hooks.py). Exit status: schemathesis's (0 when nothing failed).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from registry.bundled import import_bundled_model
from registry.store import Store
from tests.conftest import ROOT, start_server

EXCLUDED = r"^/api/(pull|push|create|copy|delete|blobs)"
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,ndjson_conformance")


def command(url: str, *, max_examples: int, max_time: int | None, seed: int | None,
            workers: int) -> list[str]:
    args = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
            "--checks", CHECKS, "--exclude-path-regex", EXCLUDED,
            "--max-examples", str(max_examples), "--workers", str(workers),
            "--phases", "examples,coverage,fuzzing", "--request-timeout", "120",
            "--suppress-health-check", "all", "--no-shrink"]
    if max_time is not None:
        args += ["--max-time", str(max_time)]
    if seed is not None:
        args += ["--seed", str(seed)]
    return args


def run(*, max_examples: int, max_time: int | None = None, seed: int | None = None,
        workers: int = 2, log: Path | None = None) -> int:
    """Start a server, fuzz it, stop it; schemathesis's exit status."""
    with tempfile.TemporaryDirectory(prefix="corral-fuzz-") as tmp:
        models = Path(tmp) / "models"
        import_bundled_model(Store(models))
        server = start_server(models, log or Path(tmp) / "serve.log",
                              OLLAMA_KEEP_ALIVE="-1", OLLAMA_NUM_PARALLEL="2")
        try:
            env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz.hooks",
                   "PYTHONPATH": str(ROOT)}
            return subprocess.run(command(server.url, max_examples=max_examples,
                                          max_time=max_time, seed=seed, workers=workers),
                                  cwd=ROOT, env=env, check=False).returncode
        finally:
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz")
    parser.add_argument("--max-examples", type=int, default=8, help="per operation")
    parser.add_argument("--max-time", type=int, help="seconds for the whole run")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server on the way out
    return run(max_examples=args.max_examples, max_time=args.max_time, seed=args.seed,
               workers=args.workers)


if __name__ == "__main__":
    raise SystemExit(main())
