"""The interactive chat of `corral run MODEL` on a terminal (Ollama's `>>> ` prompt)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from gateway.cli import replcmd as rc
from gateway.cli.chat import ChatSettings, chat_turn, load_model
from gateway.cli.client import APIError, Client, CLIError
from gateway.cli.format import go_value, list_table
from gateway.cli.show import show_info

try:  # line editing and history for input(); absent on some platforms, which is fine
    import readline
except ImportError:  # pragma: no cover - depends on the platform
    readline = None  # type: ignore[assignment]

PROMPT = ">>> "
CONTINUATION = "... "


@dataclass
class Session:
    settings: ChatSettings
    messages: list[dict[str, Any]] = field(default_factory=list)
    system: str | None = None
    history: bool = True


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _set_system(session: Session, text: str) -> None:
    session.system = text
    msg = {"role": "system", "content": text}
    # Like Ollama: a new system message replaces a trailing one, else joins the conversation.
    if session.messages and session.messages[-1].get("role") == "system":
        session.messages[-1] = msg
    else:
        session.messages.append(msg)


def _show(client: Client, session: Session, what: str) -> None:
    body: dict[str, Any] = {"model": session.settings.model}
    if session.system:
        body["system"] = session.system
    if session.settings.options:
        body["options"] = session.settings.options
    try:
        resp = client.post("/api/show", body) or {}
    except APIError as exc:
        _out(f"error: couldn't get model: {exc.message}\n")
        return
    if what == "info":
        _out(show_info(resp))
    elif what == "license":
        _out((resp.get("license") or "No license was specified for this model.") + "\n")
    elif what == "modelfile":
        _out(str(resp.get("modelfile") or "") + "\n")
    elif what == "parameters":
        lines = ["Model defined parameters:"]
        params = str(resp.get("parameters") or "")
        if params:
            lines += [f"  {line}" for line in params.splitlines()]
        else:
            lines.append("  No additional parameters were specified for this model.")
        lines.append("")
        if session.settings.options:
            lines.append("User defined parameters:")
            lines += [f"  {k:<30} {go_value(v)}" for k, v in session.settings.options.items()]
            lines.append("")
        _out("\n".join(lines) + "\n")
    elif what == "system":
        system = session.system or resp.get("system")
        _out(f"{system}\n\n" if system else "No system message was specified for this model.\n")
    elif what == "template":
        template = resp.get("template")
        _out(f"{template}\n" if template else "No prompt template was specified for this model.\n")


def _forget_last_history_line() -> None:
    if readline is not None:
        n = readline.get_current_history_length()
        if n > 0:
            readline.remove_history_item(n - 1)


def _execute(client: Client, session: Session, cmd: rc.Command) -> bool:
    """Carry out one command; returns False when the REPL should end."""
    s = session.settings
    if isinstance(cmd, rc.Exit):
        return False
    if isinstance(cmd, rc.Print):
        _out(cmd.text)
    elif isinstance(cmd, rc.SetParameter):
        s.options[cmd.name] = cmd.value
        _out(cmd.message)
    elif isinstance(cmd, rc.SetSystem):
        _set_system(session, cmd.text)
        _out("Set system message.\n")
    elif isinstance(cmd, rc.SetOption):
        if cmd.name == "history":
            session.history = bool(cmd.value)
        else:
            setattr(s, cmd.name, cmd.value)
        _out(cmd.message)
    elif isinstance(cmd, rc.Show):
        _show(client, session, cmd.what)
    elif isinstance(cmd, rc.Clear):
        session.messages = []
        if session.system:
            session.messages.append({"role": "system", "content": session.system})
        _out("Cleared session context\n")
    elif isinstance(cmd, rc.Load):
        _out(f"Loading model '{cmd.model}'\n")
        try:
            load_model(client, cmd.model, s.keep_alive)
        except APIError as exc:
            if "not found" in exc.message:
                _out(f"Couldn't find model '{cmd.model}'\n")
                return True
            raise
        s.model = cmd.model
        session.messages = []
    elif isinstance(cmd, rc.ListModels):
        _out(list_table((client.get("/api/tags") or {}).get("models") or []))
    elif isinstance(cmd, rc.Message):
        session.messages.append({"role": "user", "content": cmd.text})
        try:
            reply = chat_turn(client, s, session.messages, trailer="\n\n")
        except APIError as exc:
            # A failed turn is not part of the conversation; the user can retry or /load.
            session.messages.pop()
            sys.stderr.write(f"Error: {exc.message}\n")
            return True
        if reply is None:  # cancelled: keep the question, as Ollama does, but no answer
            return True
        session.messages.append(reply)
    return True


def run_repl(client: Client, settings: ChatSettings) -> int:
    """Read, send, print until /bye or Ctrl+D. Ctrl+C at the prompt only reminds how to leave."""
    session = Session(settings)
    assembler = rc.LineAssembler()
    while True:
        try:
            line = input(CONTINUATION if assembler.pending else PROMPT)
        except EOFError:  # Ctrl+D
            _out("\n")
            return 0
        except KeyboardInterrupt:
            if assembler.pending:
                assembler.reset()
                _out("\n")
            else:
                _out("\nUse Ctrl + d or /bye to exit.\n")
            continue
        if not session.history and line.strip():
            _forget_last_history_line()
        text = assembler.feed(line)
        if text is None:
            continue
        cmd = rc.parse_command(text, assembler.last_quoted)
        if cmd is None:
            continue
        try:
            if not _execute(client, session, cmd):
                return 0
        except KeyboardInterrupt:  # Ctrl+C during /show, /load, ...: back to the prompt
            _out("\n")
        except CLIError as exc:
            sys.stderr.write(f"Error: {exc.message}\n")
