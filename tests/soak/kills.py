"""A runner SIGKILLed while it streams, again and again: every client gets a clean error, the next
request works, no process is left behind, no ipc socket or temp file leaks."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.soak.common import (
    MODEL,
    Row,
    Scale,
    Streamer,
    generate,
    percentile,
    runtime_sockets,
    soak_server,
    temp_leftovers,
    wait_gone,
)

STREAMS = 3


def run(scale: Scale, source: Path, folder: Path) -> Row:
    problems: list[str] = []
    clean = total = 0
    recoveries: list[float] = []
    with soak_server(folder, source, OLLAMA_NUM_PARALLEL="4") as server:
        assert generate(server.url).status_code == 200
        for i in range(scale.kills):
            pids = server.runner_pids()
            if len(pids) != 1:  # (never signal pid 0: that is the whole process group)
                problems.append(f"kill {i}: expected one runner, found {pids}")
                generate(server.url)
                continue
            pid = pids[0]
            streams = [Streamer(server.url, "/api/generate", {
                "model": MODEL, "prompt": f"Story {i}.{n}: once upon a time", "raw": True,
                "options": {"num_predict": 400}}) for n in range(STREAMS)]
            for stream in streams:
                stream.start()
            for stream in streams:
                stream.first.wait(60)
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            for stream in streams:
                stream.join(30)
                total += 1
                if stream.is_alive():
                    problems.append(f"kill {i}: a stream hung after the runner died")
                elif stream.error and not stream.done:
                    clean += 1
                else:
                    problems.append(f"kill {i}: a stream ended without an error: "
                                    f"{stream.lines[-1:]}")
            reply = generate(server.url)
            if reply.status_code != 200:
                problems.append(f"kill {i}: the next request got {reply.status_code}")
            recoveries.append(time.monotonic() - killed)
            if wait_gone([pid]):
                problems.append(f"kill {i}: runner {pid} is still there")
            sockets, live = runtime_sockets(server), server.runner_pids()
            if len(sockets) != len(live):
                problems.append(f"kill {i}: {len(sockets)} ipc sockets for {len(live)} runners")
        runners = server.runner_pids()
    # After a clean stop: no runner left, the runtime folder gone, no temp file in the store.
    if wait_gone(runners):
        problems.append("runners outlived the server")
    leftovers = list((folder / "tmp").iterdir()) + temp_leftovers(server)
    if leftovers:
        problems.append(f"left behind: {leftovers[:3]}")
    figures = (f"{clean}/{total} streams ended with a clean error; recovery (kill to next "
               f"reply) p50 {percentile(recoveries, 50):.1f}s, max {max(recoveries):.1f}s")
    return Row("runner SIGKILL during streams", f"{scale.kills} kills x {STREAMS} streams",
               not problems, figures, problems)
