"""Clients that leave at random points: while queued before their first token, while their long
prompt is being read, mid-stream. Afterwards every slot is free and the runner's queue empty, by
the gateway's count and by the runner's own, and the slots serve at once."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from pathlib import Path

import httpx

from tests.soak.common import (
    MODEL,
    Row,
    Scale,
    Streamer,
    generate,
    runner_counts,
    soak_server,
)

SLOTS = 4
AT_ONCE = 8
LONG = "The river bends twice before it reaches the town, and the bridge carries carts. " * 120
MODES = ("before the first token", "during prefill", "mid-stream")


def _leave_early(url: str, mode: str, rng: random.Random) -> None:
    body = {"model": MODEL, "raw": True, "options": {"num_predict": 200}}
    if mode == "mid-stream":
        stream = Streamer(url, "/api/generate", {**body, "prompt": "Once upon a time"},
                          stop_after=rng.randint(1, 20))
        stream.run()
        return
    # The reply's headers come with the first token: a read timeout before it is a client
    # that hung up before its first token (queued behind busy slots, or reading its prompt).
    prompt = LONG if mode == "during prefill" else "Once upon a time"
    wait = rng.uniform(0.01, 0.6)
    with contextlib.suppress(httpx.TimeoutException):
        httpx.post(url + "/api/generate", json={**body, "prompt": prompt},
                   timeout=httpx.Timeout(30, read=wait))


def run(scale: Scale, source: Path, folder: Path) -> Row:
    problems: list[str] = []
    rng = random.Random(17)
    modes = [MODES[i % 3] for i in range(scale.disconnects)]
    rng.shuffle(modes)
    with soak_server(folder, source, OLLAMA_NUM_PARALLEL=str(SLOTS)) as server:
        assert generate(server.url).status_code == 200
        started = time.monotonic()
        for start in range(0, len(modes), AT_ONCE):
            threads = [threading.Thread(target=_leave_early,
                                        args=(server.url, mode, random.Random(rng.random())))
                       for mode in modes[start:start + AT_ONCE]]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
        storm = time.monotonic() - started
        # Settled: the gateway's counts drop at once; the runner reports at its next health
        # check (every 5 s), so wait for two of them.
        deadline = time.monotonic() + 15
        while True:
            active, queued, reported = runner_counts(server)
            settled = (active, queued) == (0, 0) and reported == {"active": 0, "queued": 0}
            if settled or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if not settled:
            problems.append(f"after the disconnects: gateway active {active} queued {queued}, "
                            f"runner reported {reported}")
        # Every slot serves at once: SLOTS requests together, none waits behind a lost one.
        replies: list[float] = []

        def one() -> None:
            t0 = time.monotonic()
            if generate(server.url, num_predict=2).status_code == 200:
                replies.append(time.monotonic() - t0)

        threads = [threading.Thread(target=one) for _ in range(SLOTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        if len(replies) != SLOTS:
            problems.append(f"only {len(replies)} of {SLOTS} requests after the storm succeeded")
    counts = {mode: modes.count(mode) for mode in MODES}
    figures = (", ".join(f"{n} {mode}" for mode, n in counts.items()) + f" in {storm:.0f}s; "
               f"then 0 active, 0 queued (gateway and runner); {SLOTS} requests together took "
               f"{max(replies, default=float('nan')):.1f}s")
    return Row("client disconnects at random points", f"{scale.disconnects} disconnects",
               not problems, figures, problems)
