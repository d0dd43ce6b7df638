"""systemd's service notification protocol (sd_notify), spoken directly on `NOTIFY_SOCKET`.

Under `Type=notify` systemd passes a Unix datagram socket in `NOTIFY_SOCKET` (a path, or an
abstract name written with a leading "@") and waits for `READY=1` before it calls the service
started. Each datagram is newline-separated `KEY=value` lines: `READY=1`, `STATUS=...` (shown by
`systemctl status`), `STOPPING=1`, and `WATCHDOG=1`, which must arrive at least every
`WATCHDOG_USEC` microseconds when the unit sets `WatchdogSec=` (systemd's advice: ping at half of
it). Outside systemd there is no socket and every call does nothing.

The protocol is a few lines of socket code, so it is written here rather than pulled in from the
unmaintained `sdnotify` package or `systemd-python` (which needs libsystemd's headers to build).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger("corral.sdnotify")


class Notifier:
    """Sends notifications to systemd; a no-op when not started by systemd with Type=notify."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, env: MutableMapping[str, str] | None = None) -> Notifier:
        """Read and remove NOTIFY_SOCKET and WATCHDOG_* (sd_notify's unset_environment), so the
        runner processes started later do not inherit them: only the main process may notify."""
        env = os.environ if env is None else env
        address = env.pop("NOTIFY_SOCKET", None) or None
        usec_text = env.pop("WATCHDOG_USEC", None)
        pid_text = env.pop("WATCHDOG_PID", None)
        watchdog: int | None = None
        if usec_text:
            try:
                watchdog = int(usec_text)
            except ValueError:
                log.warning("ignoring WATCHDOG_USEC=%r: not a number", usec_text)
            # WATCHDOG_PID names the process the watchdog is meant for; another process that
            # inherited the variables must not ping in its place.
            if pid_text and pid_text.strip() != str(os.getpid()):
                watchdog = None
            if watchdog is not None and watchdog <= 0:
                watchdog = None
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half the timeout), or None without a watchdog."""
        if not self.enabled or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def _target(self) -> str | bytes:
        assert self.address is not None
        if self.address.startswith("@"):  # abstract namespace: a leading NUL byte
            return b"\0" + self.address[1:].encode()
        return self.address

    def notify(self, *lines: str) -> bool:
        """Send one datagram of KEY=value lines; False when there is nobody to tell or the send
        failed (systemd gone: never a reason to stop serving)."""
        if not self.enabled or not lines:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self._target())
        except OSError as exc:
            log.debug("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        lines = ["READY=1", f"MAINPID={os.getpid()}"]
        return self.notify(*lines, *([_status(status)] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(_status(text))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([_status(status)] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str) -> str:
    # One line: a newline would start another KEY=value assignment.
    return "STATUS=" + " ".join(text.split())


def _probe_host(host: str) -> str:
    """Where to connect to reach a server bound to `host` (any-address binds: the loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


async def ready_when_listening(notifier: Notifier, host: str, port: int, status: str) -> None:
    """Send READY=1 once the HTTP port accepts connections. Hypercorn has no "listening" hook and
    binds only after the app's start-up, so ask the kernel: connect until it succeeds."""
    if not notifier.enabled:
        return
    target = _probe_host(host)
    while True:
        try:
            _, writer = await asyncio.open_connection(target, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        break
    notifier.ready(status)


async def run_watchdog(notifier: Notifier) -> None:
    """WATCHDOG=1 at half of WATCHDOG_USEC from the event loop itself, so a wedged loop (the part
    that answers every request) stops the pings and systemd restarts the service."""
    interval = notifier.watchdog_interval
    if interval is None:
        return
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)
