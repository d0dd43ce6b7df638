"""The access log: one JSON line per request, never the prompt or the output.

To stderr by default (in `corral serve`'s log), to a file with CORRAL_ACCESS_LOG=PATH (appended;
reopened when logrotate moves it), nowhere with CORRAL_ACCESS_LOG=off.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
from datetime import UTC, datetime
from typing import Any


class AccessLog:
    def __init__(self, setting: str, *, pid: bool = False) -> None:
        self.enabled = setting != "off"
        # With several HTTP processes each line names the one that served it.
        self._pid = {"pid": os.getpid()} if pid else {}
        # A logger of its own (not from getLogger): several apps in one process (tests) must not
        # pile handlers onto one shared logger, and nothing else's lines may land in the file.
        self._logger = logging.Logger("corral.access", logging.INFO)
        if not self.enabled:
            return
        if setting:  # who called what, when: readable by the server's user only
            fd = os.open(setting, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.fchmod(fd, 0o600)
            os.close(fd)
        handler: logging.Handler = (logging.handlers.WatchedFileHandler(setting, encoding="utf-8")
                                    if setting else logging.StreamHandler(sys.stderr))
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(handler)

    def write(self, entry: dict[str, Any]) -> None:
        if self.enabled:
            now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            self._logger.info(json.dumps({"time": now, **self._pid, **entry},
                                         separators=(",", ":")))

    def close(self) -> None:
        for handler in list(self._logger.handlers):
            handler.close()
            self._logger.removeHandler(handler)
