"""`corral launch claude|codex|opencode`: run a coding agent against this server, as
`ollama launch` does.

Each tool is pointed at the server the CLI talks to (OLLAMA_HOST) through its own settings:
Claude Code through its environment (the Anthropic Messages API at /v1/messages), Codex CLI
through a model provider given as `-c` overrides (the OpenAI Responses API at /v1/responses),
opencode through an inline config (an OpenAI-compatible provider at /v1). Nothing is written to
the tools' own config files. The key is CORRAL_API_KEY when set (a server with keys needs one),
else a placeholder: the tools insist on some key. `--config` prints what would be set.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

from gateway.cli.client import Client, CLIError, server_address

PLACEHOLDER_KEY = "corral"
KEY_VAR = "CORRAL_API_KEY"
# A local model on a CPU can take minutes to read an agent's long prompt before its first
# token; Claude Code gives up on a silent stream after 5 minutes and on a request after 10.
LONG_WAIT_MS = str(60 * 60 * 1000)


@dataclass(frozen=True)
class Tool:
    command: str  # the executable
    package: str  # its npm package
    name: str  # as people call it


TOOLS = {
    "claude": Tool("claude", "@anthropic-ai/claude-code", "Claude Code"),
    "codex": Tool("codex", "@openai/codex", "Codex CLI"),
    "opencode": Tool("opencode", "opencode-ai", "opencode"),
}


@dataclass
class Launch:
    """What running a tool takes: environment variables and the command line."""

    env: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)


def add_launch_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("launch", help="Run a coding agent (claude, codex, opencode) against "
                                      "this server",
                       usage="corral launch TOOL [--model MODEL] [--config] [-- ARGS...]",
                       epilog="Arguments after -- go to the tool unchanged.")
    p.add_argument("tool", metavar="TOOL", choices=sorted(TOOLS),
                   help="claude, codex or opencode")
    p.add_argument("--model", metavar="MODEL",
                   help="The model the tool uses (default: the first one the server lists)")
    p.add_argument("--config", action="store_true",
                   help="Print the settings instead of running the tool")
    p.set_defaults(args=[])  # what follows `--`: split off before parsing (see tool_args)


def tool_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """`corral launch ... -- ARGS`: corral's own arguments and the tool's."""
    if "--" not in argv:
        return argv, []
    at = argv.index("--")
    return argv[:at], argv[at + 1:]


def plan(tool: str, model: str, base_url: str, key: str, args: list[str]) -> Launch:
    """The environment and command line that point `tool` at the server at `base_url`."""
    if tool == "claude":
        env = {"ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_AUTH_TOKEN": key,
               "ANTHROPIC_API_KEY": "",  # an Anthropic key in the environment must not win
               "ANTHROPIC_MODEL": model,
               # Every model tier and the subagents run on the same local model.
               "ANTHROPIC_DEFAULT_OPUS_MODEL": model, "ANTHROPIC_DEFAULT_SONNET_MODEL": model,
               "ANTHROPIC_DEFAULT_HAIKU_MODEL": model, "CLAUDE_CODE_SUBAGENT_MODEL": model,
               "CLAUDE_STREAM_IDLE_TIMEOUT_MS": LONG_WAIT_MS, "API_TIMEOUT_MS": LONG_WAIT_MS,
               # No telemetry, update checks or error reports to Anthropic's servers.
               "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
        return Launch(env, ["claude", "--model", model, *args])
    if tool == "codex":
        provider = {"name": "corral", "base_url": base_url + "/v1", "wire_api": "responses",
                    "env_key": KEY_VAR}
        # web_search off: it is a built-in (server-run) tool, which corral refuses with a 400.
        overrides = ['model_provider="corral"', f"model={json.dumps(model)}",
                     'web_search="disabled"',
                     *(f"model_providers.corral.{k}={json.dumps(v)}" for k, v in provider.items())]
        return Launch({KEY_VAR: key},
                      ["codex", *(x for o in overrides for x in ("-c", o)), *args])
    if tool == "opencode":
        config = {"$schema": "https://opencode.ai/config.json", "model": f"corral/{model}",
                  "provider": {"corral": {"npm": "@ai-sdk/openai-compatible", "name": "corral",
                                          # opencode reads the key from the environment
                                          "options": {"baseURL": base_url + "/v1",
                                                      "apiKey": "{env:" + KEY_VAR + "}"},
                                          "models": {model: {"name": model}}}}}
        return Launch({KEY_VAR: key, "OPENCODE_CONFIG_CONTENT": json.dumps(config)},
                      ["opencode", *args])
    raise CLIError(f"unknown tool {tool!r}: choose claude, codex or opencode")


def missing_message(tool: Tool) -> str:
    install = f"npm install -g {tool.package}"
    if shutil.which("npm") is None:
        return (f"{tool.command} ({tool.name}) is not installed, and neither is npm: install "
                f"Node.js (https://nodejs.org/), then run: {install}")
    return f"{tool.command} ({tool.name}) is not installed; install it with: {install}"


def _default_model() -> str:
    with Client() as client:
        models = client.get("/api/tags").get("models") or []
    if not models:
        raise CLIError("the server has no models: pull one, or name one with --model")
    return str(models[0]["name"])


def _shown(launch: Launch, secret: str) -> str:
    """The settings as shell lines; the key from CORRAL_API_KEY is shown as that variable."""
    lines = [f'export {name}="${KEY_VAR}"' if secret and value == secret
             else f"export {name}={shlex.quote(value)}" for name, value in launch.env.items()]
    lines.append(shlex.join(launch.argv))
    return "\n".join(lines)


def cmd_launch(args: argparse.Namespace) -> int:
    tool = TOOLS[args.tool]
    extra = list(args.args)
    secret = os.environ.get(KEY_VAR, "").strip().strip("\"'")
    model = args.model or _default_model()
    launch = plan(args.tool, model, server_address().client_url().rstrip("/"),
                  secret or PLACEHOLDER_KEY, extra)
    if args.config:
        print(_shown(launch, secret))
        return 0
    executable = shutil.which(tool.command)
    if executable is None:
        raise CLIError(missing_message(tool))
    sys.stdout.flush()
    return subprocess.call([executable, *launch.argv[1:]], env={**os.environ, **launch.env})
