"""`corral run MODEL [PROMPT...]`: one-shot answer, or the REPL on a terminal."""

from __future__ import annotations

import argparse
import re
import sys
from typing import TextIO

from gateway.cli.chat import ChatSettings, chat_turn, load_model
from gateway.cli.client import Client, CLIError
from shared.config import parse_go_duration


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def parse_think(value: str | None) -> bool | str | None:
    """--think takes nothing (true), true/false, or a level; None when not given."""
    if value is None:
        return None
    lowered = value.lower()
    if lowered in ("true", ""):
        return True
    if lowered == "false":
        return False
    if lowered in ("low", "medium", "high", "max"):
        return lowered
    raise CLIError(f"invalid value for --think: {value!r} (use true, false, low, medium or high)")


def parse_keepalive(value: str | None) -> str | int | float | None:
    """Validate a Go duration ("5m", "1h30m", "-1s") here, so typos fail before any request.

    A bare number ("-1", "3600") is taken as seconds and sent as a JSON number, which the API
    accepts; Ollama's CLI would refuse it, but "-1" for "forever" is what people type.
    """
    if value is None:
        return None
    text = value.strip()
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+)", text):
        return float(text)
    try:
        parse_go_duration(text)
    except ValueError:
        raise CLIError(f'time: invalid duration "{value}"') from None
    return text


def decide_mode(
    prompt_args: list[str], stdin_tty: bool, stdout_tty: bool, piped: str | None
) -> tuple[bool, str]:
    """(interactive, prompt): piped stdin goes before the prompt words; any prompt or a
    non-terminal on either side means one-shot, as in Ollama."""
    parts = list(prompt_args)
    if piped and piped.strip():  # empty stdin (e.g. /dev/null) adds nothing, not a stray space
        parts.insert(0, piped)
    interactive = stdin_tty and stdout_tty and not parts
    return interactive, " ".join(parts)


def cmd_run(args: argparse.Namespace, client: Client) -> int:
    if args.format not in (None, "", "json"):
        raise CLIError(f"invalid format '{args.format}': only 'json' is supported")
    stdin_tty = _is_tty(sys.stdin)
    piped = None if stdin_tty else sys.stdin.read()
    interactive, prompt = decide_mode(args.prompt, stdin_tty, _is_tty(sys.stdout), piped)
    settings = ChatSettings(
        model=args.model,
        format=args.format or None,
        keep_alive=parse_keepalive(args.keepalive),
        think=parse_think(args.think),
        hide_thinking=args.hidethinking,
        # Piped input means a script is reading; never insert line breaks for it.
        wordwrap=not args.nowordwrap and stdin_tty,
        verbose=args.verbose,
    )
    load_model(client, settings.model, settings.keep_alive)
    if interactive:
        from gateway.cli.repl import run_repl  # only a terminal session needs readline

        return run_repl(client, settings)
    if not prompt.strip():
        return 0  # nothing to ask: like Ollama, an empty prompt only loads the model
    reply = chat_turn(client, settings, [{"role": "user", "content": prompt}], trailer="\n")
    return 130 if reply is None else 0
