"""One chat turn against /api/chat, printed as it streams; shared by one-shot `run` and the REPL."""

from __future__ import annotations

import contextlib
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from gateway.cli.client import Client
from gateway.cli.format import metrics_summary
from gateway.cli.spinner import Spinner
from gateway.cli.wrap import make_wrapper

_DIM, _RESET = "\x1b[2m", "\x1b[0m"


@dataclass
class ChatSettings:
    """What a chat request carries besides the messages; the REPL's /set edits these."""

    model: str
    options: dict[str, Any] = field(default_factory=dict)
    format: str | None = None
    keep_alive: str | int | float | None = None
    think: bool | str | None = None
    hide_thinking: bool = False
    wordwrap: bool = True
    verbose: bool = False

    def request(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True}
        if self.options:
            body["options"] = self.options
        if self.format:
            body["format"] = self.format
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        if self.think is not None:
            body["think"] = self.think
        return body


def load_model(client: Client, model: str, keep_alive: str | int | float | None = None) -> None:
    """Ask the server to load the model (empty messages), so a bad name fails before chatting."""
    body: dict[str, Any] = {"model": model, "messages": []}
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    with Spinner(), contextlib.closing(client.stream("/api/chat", body)) as chunks:
        for _ in chunks:
            pass


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def chat_turn(
    client: Client,
    settings: ChatSettings,
    messages: list[dict[str, Any]],
    *,
    trailer: str = "\n",
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> dict[str, Any] | None:
    """Stream one reply to `out`; returns the assistant message, or None if cancelled (Ctrl+C).

    `trailer` ends the reply: one newline for one-shot output, a blank line in the REPL.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    tty = _is_tty(out)
    wrapper = make_wrapper(settings.wordwrap and tty, shutil.get_terminal_size((0, 0)).columns)
    spinner = Spinner(err).start()
    content: list[str] = []
    thinking: list[str] = []
    in_thinking = False
    latest: dict[str, Any] = {}
    role = "assistant"

    def write(text: str) -> None:
        if text:
            out.write(text)
            out.flush()

    stream = client.stream("/api/chat", settings.request(messages))
    try:
        for chunk in stream:
            latest = chunk
            msg = chunk.get("message") or {}
            role = msg.get("role") or role
            think_part = msg.get("thinking") or ""
            part = msg.get("content") or ""
            if think_part:
                thinking.append(think_part)
                if not settings.hide_thinking:
                    spinner.stop()
                    if not in_thinking:
                        write((_DIM if tty else "") + "Thinking...\n")
                        in_thinking = True
                    write(wrapper.feed(think_part))
            if part:
                spinner.stop()
                if in_thinking:
                    write(wrapper.flush() + "\n...done thinking.\n\n" + (_RESET if tty else ""))
                    in_thinking = False
                content.append(part)
                write(wrapper.feed(part))
    except KeyboardInterrupt:
        # Ctrl+C cancels this generation only: closing the stream drops the HTTP connection.
        stream.close()
        spinner.stop()
        write(wrapper.flush() + (_RESET if in_thinking and tty else "") + "\n")
        return None
    finally:
        spinner.stop()
        stream.close()
    if in_thinking:
        write(wrapper.flush() + "\n...done thinking.\n" + (_RESET if tty else ""))
    write(wrapper.flush() + trailer)
    if settings.verbose:
        err.write(metrics_summary(latest))
        err.flush()
    reply: dict[str, Any] = {"role": role, "content": "".join(content)}
    if thinking:
        reply["thinking"] = "".join(thinking)
    return reply
