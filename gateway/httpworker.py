"""One HTTP worker of `corral serve` with CORRAL_HTTP_WORKERS >= 2 (gateway/supervise.py starts
them): the same Starlette app, served by Hypercorn on the socket the supervisor bound, with a pool
that asks the supervisor for every decision (gateway/remotepool.py).

    python -m gateway.httpworker --fd FD --control ipc://...
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from hypercorn.asyncio import serve

from gateway.app import create_app
from gateway.remotepool import RemotePool
from gateway.server import configure_logging, hypercorn_config, run_event_loop
from registry.store import Store
from shared.config import Settings
from shared.parentdeath import die_with_parent


async def _serve(settings: Settings, fd: int, control: str) -> None:
    app = create_app(settings, Store(settings.models), RemotePool(settings, control))
    config = hypercorn_config(settings)
    config.bind = [f"fd://{fd}"]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # Ctrl+C reaches the whole process group: the supervisor decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="corral-http-worker")
    parser.add_argument("--fd", type=int, required=True, help="the listening socket's fd")
    parser.add_argument("--control", required=True, help="the supervisor's ipc:// endpoint")
    args = parser.parse_args(argv)
    die_with_parent()
    settings = Settings.from_env()
    configure_logging(settings.debug)
    run_event_loop(_serve(settings, args.fd, args.control))
    return 0


if __name__ == "__main__":
    sys.exit(main())
