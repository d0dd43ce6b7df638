"""End-to-end tests of the `corral` CLI: real subprocesses against a real server.

They use the session-scoped `corral_server` fixture (tests/conftest.py), which serves the bundled
gemma3:270m; its `.env` points OLLAMA_HOST/OLLAMA_MODELS at that server.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL = "gemma3:270m"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]")
SPINNER = re.compile(r"[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]")


def corral(
    env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python -m gateway.cli ARGS`; stdin is /dev/null unless text is given."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_list_without_server_says_how_to_start_one() -> None:
    port = _closed_port()
    env = dict(os.environ, OLLAMA_HOST=f"127.0.0.1:{port}")
    result = corral(env, "list")
    assert result.returncode == 1
    assert result.stderr == (
        f"Error: could not connect to corral server at http://127.0.0.1:{port}; "
        "is it running? (start it with: corral serve)\n"
    )
    assert result.stdout == ""


def run_until_text(
    env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 240
) -> tuple[str, str, int]:
    """Start `corral ARGS`, wait for the first printed text, then press Ctrl+C.

    The bundled 270M model has no chat template and never emits an end-of-turn token, and a
    one-shot `run` (like Ollama's) has no way to cap the length, so a one-shot answer would run
    to the context limit. Interrupting after the first text still shows the whole path:
    load, stream, print, and a clean cancel. Returns (stdout, stderr, exit status).
    """
    stdin_fd = subprocess.DEVNULL
    if stdin is not None:  # a pipe already holding all the input, then end-of-file
        stdin_fd, write_end = os.pipe()
        os.write(write_end, stdin.encode())
        os.close(write_end)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", *args],
        stdin=stdin_fd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    if stdin is not None:
        os.close(stdin_fd)
    assert proc.stdout is not None
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while not out.strip():
            left = deadline - time.monotonic()
            assert left > 0, "no text within the time limit"
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break  # the command ended by itself
                out += chunk
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return (out + rest).decode(errors="replace"), err.decode(errors="replace"), proc.returncode


@pytest.mark.e2e
def test_run_one_shot_streams_text(corral_server: Any) -> None:
    # The bundled model's params cap a reply at 256 tokens, so the run ends by itself.
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "run", MODEL, "Say hi"],
                          capture_output=True, text=True, env=corral_server.env, cwd=REPO,
                          stdin=subprocess.DEVNULL, timeout=600)  # a hang guard: 256 tokens
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and done.stdout.endswith("\n")
    assert "Traceback" not in done.stderr and "Error" not in done.stderr, done.stderr


@pytest.mark.e2e
def test_run_with_piped_stdin(corral_server: Any) -> None:
    out, err, rc = run_until_text(corral_server.env, "run", MODEL, stdin="Say hi\n")
    assert out.strip()
    assert rc in (0, 130), err
    assert "Traceback" not in err and "Error" not in err, err


@pytest.mark.e2e
def test_run_without_prompt_or_terminal_only_loads(corral_server: Any) -> None:
    # No prompt and stdin not a terminal (here /dev/null): like Ollama, load and exit.
    result = corral(corral_server.env, "run", MODEL)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


@pytest.mark.e2e
def test_run_unknown_model_fails_early(corral_server: Any) -> None:
    result = corral(corral_server.env, "run", "no-such-model", "hi")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ")
    assert "no-such-model" in result.stderr and "not found" in result.stderr
    assert result.stdout == ""


@pytest.mark.e2e
def test_list_shows_the_bundled_model(corral_server: Any) -> None:
    result = corral(corral_server.env, "list")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    row = next(r for r in rows if r.startswith(MODEL + " "))
    assert re.search(r"\s[0-9a-f]{12}\s+\d+(\.\d)? [KMG]?B\s", row), row


@pytest.mark.e2e
def test_show_model(corral_server: Any) -> None:
    result = corral(corral_server.env, "show", MODEL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("  Model\n")
    assert re.search(r"^    architecture\s+gemma3\s*$", result.stdout, re.M), result.stdout
    assert re.search(r"^    quantization\s+Q4_K_M\s*$", result.stdout, re.M), result.stdout
    assert "  Capabilities\n    completion" in result.stdout
    modelfile = corral(corral_server.env, "show", MODEL, "--modelfile")
    assert modelfile.returncode == 0 and "FROM " in modelfile.stdout
    missing = corral(corral_server.env, "show", "no-such-model")
    assert missing.returncode == 1 and "not found" in missing.stderr


@pytest.mark.e2e
def test_version_comes_from_the_server(corral_server: Any) -> None:
    result = corral(corral_server.env, "--version")
    assert result.returncode == 0
    assert result.stdout.startswith("corral version is "), result.stdout
    assert "could not connect" not in result.stdout


@pytest.mark.e2e
def test_ps_lists_model_after_run_and_stop_unloads_it(corral_server: Any) -> None:
    run = corral(corral_server.env, "run", MODEL, "--keepalive", "5m")  # load only
    assert run.returncode == 0, run.stderr
    ps = corral(corral_server.env, "ps")
    assert ps.returncode == 0, ps.stderr
    assert ps.stdout.split("\n", 1)[0].split() == [
        "NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"
    ]
    row = next(r for r in ps.stdout.splitlines() if r.startswith(MODEL + " "))
    assert re.search(r"100% CPU|100% GPU|\d+%/\d+% CPU/GPU", row), row
    assert "from now" in row, row

    stop = corral(corral_server.env, "stop", MODEL)
    assert stop.returncode == 0, stop.stderr
    deadline = time.monotonic() + 10
    while MODEL + " " in corral(corral_server.env, "ps").stdout:
        assert time.monotonic() < deadline, "model still listed by ps after stop"
        time.sleep(0.5)
    again = corral(corral_server.env, "stop", MODEL)
    assert again.returncode == 1
    assert again.stderr == f'Error: couldn\'t find model "{MODEL}" to stop\n'


class PtySession:
    """`corral run MODEL` on a pseudo-terminal, so it takes the interactive path."""

    def __init__(self, env: dict[str, str], model: str = MODEL) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        self.fd = master
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", model],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=dict(env, TERM="dumb"),
            cwd=REPO,
            close_fds=True,
            # A suite started in the background by a shell without job control inherits SIGINT
            # ignored, and Python then never turns Ctrl+C into KeyboardInterrupt: restore it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        os.close(slave)
        self.buf = ""
        self.pos = 0

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def expect(self, needle: str, timeout: float = 120) -> str:  # a hang guard
        """Read until `needle` shows up after what earlier calls consumed; return the text
        in between (escape codes and spinner frames removed)."""
        deadline = time.monotonic() + timeout
        while (i := self.buf.find(needle, self.pos)) < 0:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None and not self._read(0.1):
                raise AssertionError(f"never saw {needle!r}; output so far:\n{self.buf!r}")
            self._read(min(left, 0.5))
        seen, self.pos = self.buf[self.pos : i], i + len(needle)
        return SPINNER.sub("", ANSI.sub("", seen))

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.buf += data.decode(errors="replace")
        return bool(data)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.fd)


@pytest.mark.e2e
def test_interactive_repl_through_a_pty(corral_server: Any) -> None:
    session = PtySession(corral_server.env)
    try:
        session.expect(">>> ", timeout=180)
        session.send("/set parameter num_predict 8\n")
        session.expect("Set parameter 'num_predict' to '8'")
        session.expect(">>> ")
        session.send("/nope\n")
        session.expect("Unknown command '/nope'. Type /? for help")
        session.expect(">>> ")
        session.send("/set verbose\n")
        session.expect("Set 'verbose' mode.")
        session.expect(">>> ")
        session.send("Say hi\n")
        session.expect("Say hi")  # the terminal echo of what was typed
        answer = session.expect("eval count:", timeout=30)
        assert answer.split("total duration:")[0].strip(), "the model printed nothing"
        session.expect(">>> ")
        session.send("/show info\n")
        assert "architecture" in session.expect(">>> ")
        session.send("/clear\n")
        session.expect("Cleared session context")
        session.expect(">>> ")
        session.send("/bye\n")
        assert session.proc.wait(timeout=10) == 0
    finally:
        session.close()


@pytest.mark.e2e
def test_ctrl_c_cancels_generation_but_keeps_the_repl(corral_server: Any) -> None:
    def generating(entry: dict[str, Any] | None) -> bool:
        return entry is not None and entry["corral"]["active"] > 0

    session = PtySession(corral_server.env)
    try:
        session.expect(">>> ", timeout=180)
        for setting in ("temperature 0", "num_predict 2000"):  # greedy, and far too long
            session.send(f"/set parameter {setting}\n")
            session.expect(">>> ")
        session.send("Count from one to one thousand, in words.\n")
        session.expect("words.")
        # Some of the reply is out and the server is still generating it: press Ctrl+C
        # (SIGINT, as the terminal would send it) in the middle of the reply.
        deadline = time.monotonic() + 120
        while not SPINNER.sub("", ANSI.sub("", session.buf[session.pos :])).strip():
            assert time.monotonic() < deadline, "no output to interrupt"
            session._read(0.2)
        assert generating(corral_server.ps(MODEL)), "the reply ended before Ctrl+C"
        # Take in what is printed so far (a reader that falls behind leaves the reply waiting in
        # the terminal's buffer, which would count as printed after Ctrl+C), then press it.
        drained = time.monotonic() + 1.0
        while time.monotonic() < drained and session._read(0.01):
            pass
        pressed_at = len(session.buf)
        session.proc.send_signal(signal.SIGINT)
        session.expect(">>> ", timeout=300)
        assert session.proc.poll() is None, "Ctrl+C ended the REPL"
        # The reply stopped at once (2000 more tokens would print several thousand characters) ...
        after = SPINNER.sub("", ANSI.sub("", session.buf[pressed_at:session.pos]))
        assert len(after.strip()) < 1500, after
        # ... and the server stopped generating it.
        corral_server.wait_ps(MODEL, lambda e: e is None or not generating(e)
                              and e["corral"]["queued"] == 0)
        # The REPL goes on.
        session.send("/set parameter num_predict 4\n")
        session.expect(">>> ")
        session.send("Say hi\n")
        session.expect("Say hi")
        session.expect(">>> ", timeout=120)
        session.send("/bye\n")
        assert session.proc.wait(timeout=10) == 0
    finally:
        session.close()


@pytest.mark.e2e
def test_cp_then_rm_leaves_the_original(corral_server: Any) -> None:
    cp = corral(corral_server.env, "cp", MODEL, "corral-cli-copy:test")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout == f"copied '{MODEL}' to 'corral-cli-copy:test'\n"
    assert "corral-cli-copy:test" in corral(corral_server.env, "list").stdout

    rm = corral(corral_server.env, "rm", "corral-cli-copy:test")
    assert rm.returncode == 0, rm.stderr
    assert rm.stdout == "deleted 'corral-cli-copy:test'\n"
    listing = corral(corral_server.env, "list").stdout
    assert "corral-cli-copy:test" not in listing
    assert MODEL + " " in listing
    assert corral(corral_server.env, "show", MODEL).returncode == 0  # blobs still there

    missing = corral(corral_server.env, "rm", "corral-cli-copy:test")
    assert missing.returncode == 1 and "not found" in missing.stderr
