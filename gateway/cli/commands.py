"""Handlers for the short verbs: serve, list, ps, show, cp, rm, stop, --version.

Each takes the parsed arguments, prints what `ollama` would print, and returns the exit code.
Failures are raised as CLIError; `main` prints them as `Error: ...`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.cli.client import APIError, Client, CLIError, ConnectFailed
from gateway.cli.format import list_table, ps_table
from gateway.cli.show import SHOW_FIELDS, show_info
from shared.version import __version__


def normalize_name(name: str) -> str:
    """Compare model names the way the server resolves them: case-insensitive, default tag."""
    n = name.strip().lower()
    for prefix in ("registry.ollama.ai/library/", "registry.ollama.ai/"):
        if n.startswith(prefix):
            n = n[len(prefix) :]
            break
    n = n.removeprefix("library/")
    last = n.rsplit("/", 1)[-1]
    if ":" not in last:
        n += ":latest"
    return n


def cmd_serve(args: argparse.Namespace) -> int:
    from shared.config import Settings
    from shared.errors import ConfigError

    try:
        Settings.from_env()  # fail fast, with the variable named, before importing the server
        # Imported here so that client verbs never pay for the server's imports.
        import gateway.server

        rc = gateway.server.serve_forever()
    except ConfigError as exc:
        sys.stderr.write(f"Error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 0
    return rc if isinstance(rc, int) else 0


def cmd_list(args: argparse.Namespace, client: Client) -> int:
    models: list[dict[str, Any]] = (client.get("/api/tags") or {}).get("models") or []
    if args.prefix:
        prefix = args.prefix.lower()
        models = [m for m in models if str(m.get("name", "")).lower().startswith(prefix)]
    sys.stdout.write(list_table(models))
    return 0


def cmd_ps(args: argparse.Namespace, client: Client) -> int:
    models: list[dict[str, Any]] = (client.get("/api/ps") or {}).get("models") or []
    if args.prefix:
        models = [m for m in models if str(m.get("name", "")).startswith(args.prefix)]
    sys.stdout.write(ps_table(models))
    return 0


def cmd_show(args: argparse.Namespace, client: Client) -> int:
    chosen = [f for f in SHOW_FIELDS if getattr(args, f)]
    if len(chosen) > 1:
        raise CLIError(
            "only one of '--license', '--modelfile', '--parameters', '--system', or "
            "'--template' can be specified"
        )
    body: dict[str, Any] = {"model": args.model}
    if args.verbose:
        body["verbose"] = True
    resp = client.post("/api/show", body) or {}
    if chosen:
        sys.stdout.write(SHOW_FIELDS[chosen[0]](resp))
    else:
        sys.stdout.write(show_info(resp, verbose=args.verbose))
    return 0


def cmd_cp(args: argparse.Namespace, client: Client) -> int:
    client.post("/api/copy", {"source": args.source, "destination": args.destination})
    sys.stdout.write(f"copied '{args.source}' to '{args.destination}'\n")
    return 0


def _unload(client: Client, model: str) -> None:
    # An empty generate with keep_alive 0 unloads without loading first.
    client.post("/api/generate", {"model": model, "keep_alive": 0})


def cmd_rm(args: argparse.Namespace, client: Client) -> int:
    for model in args.models:
        try:
            _unload(client, model)
        except APIError as exc:
            if "not found" not in exc.message.lower():
                sys.stderr.write(f"Warning: unable to stop model '{model}'\n")
        client.delete("/api/delete", {"model": model})
        sys.stdout.write(f"deleted '{model}'\n")
    return 0


def cmd_stop(args: argparse.Namespace, client: Client) -> int:
    not_running = CLIError(f'couldn\'t find model "{args.model}" to stop')
    loaded = (client.get("/api/ps") or {}).get("models") or []
    wanted = normalize_name(args.model)
    names = (normalize_name(str(m.get("name") or m.get("model") or "")) for m in loaded)
    if wanted not in names:
        raise not_running
    try:
        _unload(client, args.model)
    except APIError as exc:
        if "not found" in exc.message.lower():
            raise not_running from None
        raise
    return 0


def cmd_version(client: Client) -> int:
    """Ollama prints the server's version, and warns when it differs from (or lacks) a server."""
    server_version = ""
    try:
        data = client.get("/api/version") or {}
        server_version = str(data.get("corral") or data.get("version") or "")
    except ConnectFailed:
        sys.stdout.write("Warning: could not connect to a running corral instance\n")
    except CLIError as exc:
        sys.stdout.write(f"Warning: could not get the server version: {exc.message}\n")
    if server_version:
        sys.stdout.write(f"corral version is {server_version}\n")
    if server_version != __version__:
        sys.stdout.write(f"Warning: client version is {__version__}\n")
    return 0



