"""`corral launch`: the settings it gives each coding agent, the message when one is missing, and
Claude Code completing a task against a live server.

The Claude Code runs need the `claude` executable (npm's @anthropic-ai/claude-code; `make test`
installs it under .venv/node when npm is there) and skip with the reason when it is missing.
With all its tools Claude Code sends ~24 tools (~64 KB of JSON) and a long system prompt on
every request, about 16k tokens, so the server runs with OLLAMA_CONTEXT_LENGTH=32768 (the
bundled model's most); that run is minutes of prompt reading on a CPU and is opt-in
(CORRAL_TEST_FULL_AGENT=1); the default run keeps Claude Code's system prompt and two of its
tools. The pre-trained model never ends a turn by itself, and Claude Code asks for 32000
tokens: the model made for the runs ends its turn at a newline (a PARAMETER stop).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest

from tests.conftest import ROOT, LiveServer, start_server
from tests.test_tools import GEMMA_TOOLS

MODEL = "gemma3:270m"
AGENT_MODEL = "corral-agent:test"


def launch(*args: str, env: dict[str, str] | None = None, timeout: float = 60
           ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("CORRAL_API_KEY", "OLLAMA_HOST")}
    return subprocess.run([sys.executable, "-m", "gateway.cli", "launch", *args], cwd=ROOT,
                          env={**base, "PYTHONPATH": str(ROOT), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def settings(output: str) -> tuple[dict[str, str], list[str]]:
    """`--config` output: the exported variables (as the shell would set them, with
    $CORRAL_API_KEY left as written) and the command line."""
    lines = output.strip().splitlines()
    exported = {}
    for line in lines[:-1]:
        assert line.startswith("export ")
        name, _, value = line[len("export "):].partition("=")
        [exported[name]] = shlex.split(value, posix=True) or [""]
    return exported, shlex.split(lines[-1])


def test_claude_config(tmp_path: Path) -> None:
    done = launch("claude", "--model", "qwen3:8b", "--config", "--", "-p", "fix the tests",
                  env={"OLLAMA_HOST": "127.0.0.1:9999"})
    assert done.returncode == 0, done.stderr
    env, argv = settings(done.stdout)
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9999"
    assert env["ANTHROPIC_AUTH_TOKEN"] == "corral" and env["ANTHROPIC_API_KEY"] == ""
    for name in ("ANTHROPIC_MODEL", "ANTHROPIC_DEFAULT_OPUS_MODEL",
                 "ANTHROPIC_DEFAULT_SONNET_MODEL", "ANTHROPIC_DEFAULT_HAIKU_MODEL",
                 "CLAUDE_CODE_SUBAGENT_MODEL"):
        assert env[name] == "qwen3:8b"
    assert int(env["CLAUDE_STREAM_IDLE_TIMEOUT_MS"]) > 300_000
    assert argv == ["claude", "--model", "qwen3:8b", "-p", "fix the tests"]
    # A key from CORRAL_API_KEY is shown as the variable, never printed.
    keyed = launch("claude", "--model", "m", "--config", env={"CORRAL_API_KEY": "sk-secret"})
    assert "sk-secret" not in keyed.stdout
    assert 'export ANTHROPIC_AUTH_TOKEN="$CORRAL_API_KEY"' in keyed.stdout


def test_codex_config_uses_the_responses_wire_api() -> None:
    done = launch("codex", "--model", "gemma3:270m", "--config", "--", "exec", "hi",
                  env={"OLLAMA_HOST": "http://10.0.0.5:8080"})
    assert done.returncode == 0, done.stderr
    env, argv = settings(done.stdout)
    assert env == {"CORRAL_API_KEY": "corral"}
    assert argv[0] == "codex" and argv[-2:] == ["exec", "hi"]
    overrides = dict(o.split("=", 1) for o in argv[2:-2:2])
    assert all(flag == "-c" for flag in argv[1:-2:2])
    assert json.loads(overrides["model_provider"]) == "corral"
    assert json.loads(overrides["model"]) == "gemma3:270m"
    assert json.loads(overrides["model_providers.corral.base_url"]) == "http://10.0.0.5:8080/v1"
    assert json.loads(overrides["model_providers.corral.wire_api"]) == "responses"
    assert json.loads(overrides["model_providers.corral.env_key"]) == "CORRAL_API_KEY"
    # Codex's built-in web_search tool would make every request a 400 (no server-run tools)
    assert json.loads(overrides["web_search"]) == "disabled"


def test_opencode_config_is_an_openai_compatible_provider() -> None:
    done = launch("opencode", "--model", "gemma3:270m", "--config", "--", "run", "hi")
    assert done.returncode == 0, done.stderr
    env, argv = settings(done.stdout)
    config = json.loads(env["OPENCODE_CONFIG_CONTENT"])
    provider = config["provider"]["corral"]
    assert provider["npm"] == "@ai-sdk/openai-compatible"
    assert provider["options"]["baseURL"] == "http://127.0.0.1:11434/v1"
    assert provider["options"]["apiKey"] == "{env:CORRAL_API_KEY}"
    assert env["CORRAL_API_KEY"] == "corral"
    assert list(provider["models"]) == ["gemma3:270m"] and config["model"] == "corral/gemma3:270m"
    assert argv == ["opencode", "run", "hi"]


def test_a_missing_tool_says_how_to_install_it(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    done = launch("opencode", "--model", "m", env={"PATH": str(empty)})
    assert done.returncode == 1
    assert "opencode (opencode) is not installed" in done.stderr
    assert "npm install -g opencode-ai" in done.stderr and "Node.js" in done.stderr  # no npm
    npm = shutil.which("npm")
    if npm is None:
        return
    (empty / "npm").symlink_to(npm)
    done = launch("claude", "--model", "m", env={"PATH": str(empty)})
    assert done.returncode == 1
    assert done.stderr.strip() == ("Error: claude (Claude Code) is not installed; install it "
                                   "with: npm install -g @anthropic-ai/claude-code")


def test_unknown_tool_and_no_server_for_the_default_model() -> None:
    done = launch("emacs", "--config")
    assert done.returncode == 1 and "invalid choice" in done.stderr
    nobody = launch("claude", "--config", env={"OLLAMA_HOST": "127.0.0.1:9"})
    assert nobody.returncode == 1 and "could not connect" in nobody.stderr


# --- Claude Code against a live server -----------------------------------------------------------


def claude_executable() -> str | None:
    return shutil.which("claude") or next(
        (str(p) for p in [ROOT / ".venv" / "node" / "bin" / "claude"] if p.exists()), None)


@pytest.fixture(scope="module")
def agent_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("agent")
    server = start_server(models_dir, folder / "serve.log", OLLAMA_CONTEXT_LENGTH="32768",
                          OLLAMA_KEEP_ALIVE="10m", CORRAL_ACCESS_LOG=str(folder / "access.log"))
    native = ollama.Client(host=server.url)
    native.create(AGENT_MODEL, from_=MODEL, template=GEMMA_TOOLS,
                  parameters={"temperature": 0, "stop": ["\n"]})
    try:
        yield server
    finally:
        server.stop()


def run_claude(server: LiveServer, home: Path, *claude_args: str
               ) -> subprocess.CompletedProcess[str]:
    claude = claude_executable()
    if claude is None:
        pytest.skip("Claude Code is not installed (npm install -g @anthropic-ai/claude-code; "
                    "`make test` installs it under .venv/node when npm is there)")
    home.mkdir()  # Claude Code's own settings and session files go here
    return launch("claude", "--model", AGENT_MODEL, "--", "-p", "Say hello.", *claude_args,
                  timeout=3600, env={"OLLAMA_HOST": server.host, "HOME": str(home),
                                     "PATH": f"{Path(claude).parent}{os.pathsep}"
                                             f"{os.environ['PATH']}"})


def check_run(server: LiveServer, done: subprocess.CompletedProcess[str], least: int) -> None:
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert done.stdout.strip()  # some answer: what the tiny model says is not checked
    # Every request it made was accepted: HEAD / and POST /v1/messages?beta=true.
    log = [json.loads(line) for line in
           Path(server.env["CORRAL_ACCESS_LOG"]).read_text().splitlines()]
    calls = [(e["method"], e["route"], e["status"]) for e in log if e["model"] == AGENT_MODEL
             or e["route"] == "/"]
    assert ("POST", "/v1/messages", 200) in calls
    assert all(status == 200 for _, _, status in calls), calls
    asked = [e for e in log if e["route"] == "/v1/messages"]
    assert asked[-1]["prompt_tokens"] > least  # its system prompt and tools reached the model


@pytest.mark.e2e
def test_claude_code_completes_a_task(agent_server: LiveServer, tmp_path: Path) -> None:
    """Claude Code's own system prompt with two of its tools (its JSON schemas as it sends
    them): over a thousand tokens, which a CPU reads in a minute or two."""
    done = run_claude(agent_server, tmp_path / "home", "--tools", "Bash,Read")
    check_run(agent_server, done, 1000)


@pytest.mark.e2e
@pytest.mark.skipif(not os.environ.get("CORRAL_TEST_FULL_AGENT"),
                    reason="Claude Code with all its tools sends ~16k tokens per request, "
                           "minutes of prompt reading on a CPU: set CORRAL_TEST_FULL_AGENT=1")
def test_claude_code_with_all_its_tools(agent_server: LiveServer, tmp_path: Path) -> None:
    done = run_claude(agent_server, tmp_path / "home")
    check_run(agent_server, done, 12000)
