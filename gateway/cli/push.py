"""`corral push [--insecure] MODEL`: the server's /api/push stream drawn as progress bars.

The model must already carry the registry's name (`corral cp gemma3:270m host:5000/me/gemma3`
first), as with `ollama push`.
"""

from __future__ import annotations

import argparse

from gateway.cli.client import Client
from gateway.cli.pull import run_transfer


def cmd_push(args: argparse.Namespace, client: Client) -> int:
    return run_transfer(client, "/api/push", args.model, args.insecure)
