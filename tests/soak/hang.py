"""A runner that stops answering (SIGSTOP): the health check notices, its requests fail cleanly,
the runner is killed and the next request gets a new one."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from tests.soak.common import MODEL, Row, Scale, Streamer, generate, soak_server, wait_gone

HEALTH_TIMEOUT = 3  # CORRAL_HEALTH_TIMEOUT for this server (30 s by default); checks every 5 s


def run(scale: Scale, source: Path, folder: Path) -> Row:
    problems: list[str] = []
    detected: list[float] = []
    with soak_server(folder, source, CORRAL_HEALTH_TIMEOUT=f"{HEALTH_TIMEOUT}s") as server:
        assert generate(server.url).status_code == 200
        for i in range(scale.hangs):
            pids = server.runner_pids()
            if len(pids) != 1:
                problems.append(f"hang {i}: expected one runner, found {pids}")
                generate(server.url)
                continue
            stream = Streamer(server.url, "/api/generate", {
                "model": MODEL, "prompt": "Once upon a time", "raw": True,
                "options": {"num_predict": 2000}}, timeout=120)
            stream.start()
            stream.first.wait(60)
            os.kill(pids[0], signal.SIGSTOP)
            stopped = time.monotonic()
            stream.join(60)
            if stream.is_alive():
                problems.append(f"hang {i}: the stream still hangs after 60 s")
            elif not stream.error or stream.done:
                problems.append(f"hang {i}: the stream ended without an error")
            elif "stopped answering" not in stream.error:
                problems.append(f"hang {i}: the error does not say why: {stream.error!r}")
            detected.append(time.monotonic() - stopped)
            if wait_gone(pids):
                problems.append(f"hang {i}: the stopped runner {pids[0]} was not killed")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pids[0], signal.SIGKILL)
            if generate(server.url).status_code != 200:
                problems.append(f"hang {i}: the next request failed")
            elif server.runner_pids() == pids:
                problems.append(f"hang {i}: the runner was not replaced")
    figures = (f"health timeout {HEALTH_TIMEOUT}s (checks every 5s): the stream failed "
               f"{', '.join(f'{s:.1f}s' for s in detected)} after SIGSTOP; runner killed and "
               f"replaced; last error {stream.error!r}" if detected else "no hang measured")
    return Row("runner stops answering (SIGSTOP)", f"{scale.hangs} x", not problems, figures,
               problems)
