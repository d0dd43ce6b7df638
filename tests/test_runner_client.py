"""A runner process driven directly over its socket: load, health, and a frozen runner."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from runner.supervisor.client import RunnerProcess
from shared import protocol as p
from shared.errors import CorralError, RunnerError

pytestmark = pytest.mark.e2e


async def test_load_generate_tokenize_and_frozen_runner(model_path: str, tmp_path: Path) -> None:
    runner = RunnerProcess("gemma3:270m", p.Load(model_path, num_ctx=512), tmp_path)
    ready = await runner.start(timeout=120)
    try:
        assert ready.n_ctx == 512 and ready.pid == runner.pid and ready.model_bytes > 10**8
        tokens = await runner.tokenize("Hello world")
        assert tokens[0] == 2 and len(tokens) >= 3  # BOS first

        # Two requests in flight on one connection, each answered under its own id.
        async def run(prompt: str, whole: bool = False) -> tuple[str, list[p.Message]]:
            parts, messages = [], []
            async for batch in runner.generate(p.Generate(0, prompt=prompt, whole=whole,
                                                          options={"num_predict": 4,
                                                                   "temperature": 0})):
                messages.extend(batch)
                parts.extend(m.text for m in batch if isinstance(m, p.Chunk))
            return "".join(parts), messages
        (a, _), (b, _) = await asyncio.gather(run("The capital of France is"), run("1, 2, 3,"))
        assert a and b and a != b
        # Read whole: the same text in one Chunk before Done, which carries the token timings.
        text, messages = await run("The capital of France is", whole=True)
        assert text == a and [type(m) for m in messages] == [p.Chunk, p.Done]
        done = messages[-1]
        assert isinstance(done, p.Done) and done.eval_count == 4
        assert len(done.token_gaps) >= 1 and all(g >= 0 for g in done.token_gaps)
        assert await runner.health(timeout=5)

        os.kill(runner.pid, signal.SIGSTOP)  # alive but answering nothing
        try:
            assert not await runner.health(timeout=1)
        finally:
            os.kill(runner.pid, signal.SIGCONT)
    finally:
        await runner.stop()
    assert not runner.alive
    with pytest.raises(RunnerError):
        await runner.tokenize("x")


async def test_bad_model_file_fails_to_load(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)
    runner = RunnerProcess("bogus", p.Load(str(bogus), num_ctx=512), tmp_path)
    with pytest.raises(CorralError, match="failed to load model"):
        await runner.start(timeout=60)
    assert not runner.alive


async def test_pool_runtime_dir_is_private() -> None:
    from runner.supervisor.pool import RunnerPool
    from shared.config import Settings

    pool = RunnerPool(Settings.from_env({}))
    try:
        assert pool._runtime_dir.stat().st_mode & 0o777 == 0o700
    finally:
        await pool.close()
    assert not pool._runtime_dir.exists()
