"""`corral serve`: read settings, import the bundled model, serve the app with Hypercorn."""

from __future__ import annotations

import asyncio
import atexit
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

from gateway.app import create_app
from gateway.sdnotify import Notifier, ready_when_listening, run_watchdog
from registry.bundled import import_bundled_model
from registry.store import Store
from shared.config import Settings
from shared.errors import ConfigError

log = logging.getLogger("corral")


def configure_logging(debug: int) -> None:
    level = logging.DEBUG if debug else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run a serving process's event loop: uvloop's where it is installed (Linux and macOS).
    Every streamed token is a wake-up of this loop (the runner's frame in, the HTTP piece out);
    uvloop's C loop took the gateway's CPU per token at 4 streams from 0.156 to 0.137 ms."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def hypercorn_config(settings: Settings) -> Config:
    """Hypercorn's settings, bound to OLLAMA_HOST (an HTTP worker binds its supervisor's socket
    instead)."""
    config = Config()
    host = settings.host.host
    config.bind = [f"[{host}]:{settings.host.port}" if ":" in host else
                   f"{host}:{settings.host.port}"]
    if (metrics := settings.metrics_listen) is not None:  # /metrics only (team middleware)
        config.bind.append(f"[{metrics.host}]:{metrics.port}" if ":" in metrics.host else
                           f"{metrics.host}:{metrics.port}")
    config.accesslog = "-" if settings.debug else None
    config.errorlog = "-"
    config.keep_alive_timeout = 75
    return config


def stop_on_signals(notifier: Notifier) -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (telling systemd that the server is stopping)."""
    stop = asyncio.Event()

    def on_signal() -> None:
        notifier.stopping("stopping: unloading models")
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    return stop


async def _serve(settings: Settings, store: Store, notifier: Notifier) -> None:
    app = create_app(settings, store)
    config = hypercorn_config(settings)
    host = settings.host.host
    stop = stop_on_signals(notifier)
    atexit.register(app.state.pool.kill_all)  # belt and braces: never leave a runner behind
    log.info("corral listening on %s (models in %s)", settings.host.url, settings.models)
    notifier.status(f"starting the HTTP server on {settings.host.url}")
    # systemd (Type=notify) hears READY=1 only once the port accepts connections.
    helpers = [asyncio.create_task(ready_when_listening(
                   notifier, host, settings.host.port,
                   f"listening on {settings.host.url}, models in {settings.models}")),
               asyncio.create_task(run_watchdog(notifier))]
    try:
        await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
    finally:
        for task in helpers:
            task.cancel()


def serve_forever(settings: Settings | None = None) -> int:
    try:
        settings = settings or Settings.from_env()
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    configure_logging(settings.debug)
    notifier = Notifier.from_env()  # systemd's NOTIFY_SOCKET; does nothing outside systemd
    store = Store(settings.models)
    if not settings.noprune:
        notifier.status(f"checking the model store {settings.models}")
        removed = store.prune()  # unreferenced blobs and stale temp files older than an hour
        if removed:
            log.info("pruned %d unused file(s) from %s", len(removed), store.blobs_dir)
    notifier.status("importing the bundled model")
    try:
        name = import_bundled_model(store)
    except OSError as exc:  # a full or read-only disk: serve the models already there
        log.warning("could not import the bundled model: %s", exc)
        name = None
    if name is not None:
        log.info("bundled model %s is ready", name)
    if settings.http_workers > 1:  # this process supervises; HTTP workers serve the port
        from gateway.supervise import supervise

        run_event_loop(supervise(settings, store, notifier))
    else:
        run_event_loop(_serve(settings, store, notifier))
    return 0
