"""Codex CLI (`codex exec`, non-interactive) completes a task against a live corral through the
Responses API. Skipped, with the reason, where Codex is not installed (`make test` installs it
with npm where npm is there).

Codex runs through `corral launch codex`: a model provider with `wire_api = "responses"` at
corral's /v1 as `-c` overrides, and a CODEX_HOME of its own. What it sends was recorded on the
wire (codex-cli 0.171):
one streamed POST /v1/responses with `store: false`, `include: ["reasoning.encrypted_content"]`,
`reasoning: {"summary": "auto"}`, `prompt_cache_key`, `client_metadata`, its instructions as
`developer` message items (~17 KB), ~9 function tools, one `namespace` tool (multi_agent_v1) and a
`web_search` tool, which this server refuses (it runs no built-in tools): `web_search =
"disabled"` leaves it out. By default that first request is ~8,500 tokens (num_ctx 16384 or more
for a session); here a short instructions file and two features off bring it to ~1,700, so the
run takes a minute on a slow CPU rather than several.

The bundled model is tiny and has no template: the test makes one with a Go TEMPLATE that shows
system/developer text, tools and calls, and stops it at its first line. What it answers is not
checked, only that Codex finishes (exit 0) and that its request reached corral and succeeded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest

from tests.conftest import ROOT, LiveServer

pytestmark = pytest.mark.e2e

MODEL = "corral-codex:test"
# GEMMA_TOOLS (tests/test_tools.py) with system messages (Codex's developer items) shown too.
TEMPLATE = """{{- if .Tools }}<start_of_turn>user
Functions:
{{ range .Tools }}{{ . }}
{{ end }}Call one with <tool_call>{"name": NAME, "arguments": ARGS}</tool_call>.<end_of_turn>
{{ end }}
{{- range .Messages }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ else if eq .Role "assistant" }}<start_of_turn>model
{{ if .ToolCalls }}{{ range .ToolCalls }}<tool_call>{"name": "{{ .Function.Name }}", \
"arguments": {{ .Function.Arguments }}}</tool_call>{{ end }}{{ else }}{{ .Content }}{{ end }}\
<end_of_turn>
{{ else if eq .Role "tool" }}<start_of_turn>user
<tool_response>{{ .Content }}</tool_response><end_of_turn>
{{ end }}
{{- end }}<start_of_turn>model
"""


def codex_command(model: str, instructions: Path, prompt: str) -> list[str]:
    """`codex exec` through `corral launch codex` (a Responses provider at OLLAMA_HOST's /v1,
    web_search off: a built-in tool), with short instructions and fewer tools (the test's
    speed, not a need)."""
    return [sys.executable, "-m", "gateway.cli", "launch", "codex", "--model", model, "--",
            "exec", "--skip-git-repo-check",
            "-c", f'model_instructions_file="{instructions}"',
            "--disable", "multi_agent", "--disable", "goals", prompt]


@pytest.fixture(scope="module")
def codex_model(corral_server: LiveServer) -> Iterator[str]:
    if shutil.which("codex") is None:
        pytest.skip("Codex CLI is not installed (npm install -g @openai/codex; `make test` "
                    "does it where npm is there)")
    client = ollama.Client(host=corral_server.url)
    client.create(MODEL, from_="gemma3:270m", template=TEMPLATE,
                  parameters={"temperature": 0, "num_predict": 256,
                              # ends its answer at its first line or sentence: a reply cut by
                              # num_predict is "incomplete", which Codex treats as an error
                              "stop": ["\n", ". ", "! ", "? "]})
    yield MODEL
    client.delete(MODEL)


def _requests(log: Path, since: int) -> list[dict]:
    """Access-log lines (JSON, in the server's log) of /v1/responses after byte `since`."""
    lines = log.read_bytes()[since:].decode(errors="replace").splitlines()
    entries = [json.loads(line) for line in lines if line.startswith('{"time"')]
    return [e for e in entries if e["path"] == "/v1/responses"]


def test_codex_exec_completes_a_task(corral_server: LiveServer, codex_model: str,
                                     tmp_path: Path) -> None:
    home, work = tmp_path / "codex-home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    instructions = tmp_path / "instructions.md"
    instructions.write_text("You are a coding agent. Answer briefly.\n")
    since = corral_server.log.stat().st_size
    env = {**os.environ, "CODEX_HOME": str(home), "OLLAMA_HOST": corral_server.url,
           "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    env.pop("CORRAL_API_KEY", None)
    done = subprocess.run(codex_command(codex_model, instructions, "Say hi."),
                          cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    requests = _requests(corral_server.log, since)
    assert requests, "Codex sent no request to /v1/responses"
    assert all(r["status"] == 200 and r["model"] == codex_model for r in requests), requests
    assert requests[0]["prompt_tokens"] > 500  # its instructions, tools and context
