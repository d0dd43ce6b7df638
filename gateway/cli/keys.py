"""`corral keys`: create, list, revoke API keys and show their usage.

These work on the keys file directly (CORRAL_KEYS_FILE, or `--keys-file PATH` for a system
service's own file), with or without a running server: a server sees the change on its next
request. `create` prints the secret once, alone on the last line, so scripts can take it with
`tail -n1`.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.cli.client import CLIError
from gateway.cli.format import human_time, render_table
from gateway.team.keys import ApiKey, KeysFile, KeysFileError, describe_models, parse_expiry
from gateway.team.ledger import Ledger, ledger_path
from shared.config import Settings
from shared.errors import ConfigError


def add_keys_parser(sub: Any) -> None:
    p = sub.add_parser("keys", help="Manage API keys (create, list, revoke, usage)")
    p.add_argument("--keys-file", type=Path, metavar="PATH",
                   help="the keys file (default: CORRAL_KEYS_FILE or ~/.ollama/corral/keys.json)")
    verbs = p.add_subparsers(dest="keys_command", metavar="COMMAND", required=True,
                             parser_class=type(p))
    c = verbs.add_parser("create", help="Create a key and print its secret once")
    c.add_argument("name", metavar="NAME")
    c.add_argument("--models", metavar="M1,M2",
                   help="models it may use (names, or patterns such as 'gemma3:*'; default all)")
    c.add_argument("--rpm", type=int, metavar="N", help="requests per minute")
    c.add_argument("--tpm", type=int, metavar="N", help="prompt + generated tokens per minute")
    c.add_argument("--concurrency", type=int, metavar="N", help="requests in flight at most")
    c.add_argument("--admin", action="store_true",
                   help="may manage models (create, copy, delete, pull, push), unload, /metrics")
    c.add_argument("--expires", metavar="DURATION", help="lifetime, e.g. 30d, 2w, 12h")
    verbs.add_parser("list", help="List keys (never their secrets)")
    r = verbs.add_parser("revoke", help="Delete a key")
    r.add_argument("name", metavar="NAME")
    u = verbs.add_parser("usage", help="Requests and tokens per model since a key's creation")
    u.add_argument("name", metavar="NAME", nargs="?")


def _keys_file(args: argparse.Namespace) -> KeysFile:
    if args.keys_file is not None:
        return KeysFile(args.keys_file.expanduser())
    try:
        return KeysFile(Settings.from_env().keys_file)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None


def _stamp(when: float | None, never: str = "never") -> str:
    return human_time(None if when is None else datetime.fromtimestamp(when, UTC), zero=never)


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)


def _describe(key: ApiKey) -> list[str]:
    return [f"models:      {describe_models(key)}",
            f"rpm:         {_limit(key.rpm)}",
            f"tpm:         {_limit(key.tpm)}",
            f"concurrency: {_limit(key.concurrency)}",
            f"admin:       {'yes' if key.admin else 'no'}",
            f"expires:     {_stamp(key.expires)}"]


def cmd_keys(args: argparse.Namespace) -> int:
    keys = _keys_file(args)
    try:
        handler = {"create": _create, "list": _list, "revoke": _revoke,
                   "usage": _usage}[args.keys_command]
        return handler(args, keys)
    except KeysFileError as exc:
        raise CLIError(str(exc)) from None


def _create(args: argparse.Namespace, keys: KeysFile) -> int:
    models = [m for m in (args.models or "").split(",") if m.strip()]
    expires = parse_expiry(args.expires) if args.expires else None
    key, secret = keys.create(args.name, models=models, rpm=args.rpm, tpm=args.tpm,
                              concurrency=args.concurrency, admin=args.admin,
                              expires_in=expires)
    out = sys.stdout
    out.write(f"created key '{key.name}' in {keys.path}\n")
    for line in _describe(key):
        out.write(f"  {line}\n")
    out.write("The secret below is shown only this once; send it as "
              "'Authorization: Bearer <secret>'.\n")
    out.write(secret + "\n")
    return 0


def _ledger(keys: KeysFile) -> Ledger | None:
    path = ledger_path(keys.path)
    return Ledger(path) if path.exists() else None


def _list(args: argparse.Namespace, keys: KeysFile) -> int:
    listed = keys.read()
    ledger = _ledger(keys)
    last = ledger.last_used() if ledger else {}
    if ledger:
        ledger.close()
    rows = [[k.name, describe_models(k), _limit(k.rpm), _limit(k.tpm), _limit(k.concurrency),
             "yes" if k.admin else "no", _stamp(k.created),
             "expired" if k.expired() else _stamp(k.expires), _stamp(last.get(k.id))]
            for k in listed]
    sys.stdout.write(render_table(rows, header=["NAME", "MODELS", "RPM", "TPM", "CONCURRENCY",
                                                "ADMIN", "CREATED", "EXPIRES", "LAST USED"]))
    return 0


def _revoke(args: argparse.Namespace, keys: KeysFile) -> int:
    keys.revoke(args.name)
    sys.stdout.write(f"revoked key '{args.name}'\n")
    if not keys.read():
        sys.stdout.write("No keys are left: a server that had them now refuses every caller "
                         "(401) until a key is created, or CORRAL_OPEN_WITHOUT_KEYS=1.\n")
    return 0


def _usage(args: argparse.Namespace, keys: KeysFile) -> int:
    listed = keys.read()
    if args.name is not None:
        listed = [k for k in listed if k.name == args.name]
        if not listed:
            raise CLIError(f"no key named {args.name!r}")
    ledger = _ledger(keys)
    rows_by_id: dict[str, list[Any]] = {}
    if ledger:
        for row in ledger.usage([k.id for k in listed]):
            rows_by_id.setdefault(row.key_id, []).append(row)
        ledger.close()
    table = []
    for key in listed:
        for row in rows_by_id.get(key.id, []):
            table.append([key.name, row.model, str(row.requests), str(row.prompt_tokens),
                          str(row.generated_tokens)])
        if key.id not in rows_by_id:
            table.append([key.name, "-", "0", "0", "0"])
    sys.stdout.write(render_table(table, header=["KEY", "MODEL", "REQUESTS", "PROMPT TOKENS",
                                                 "GENERATED TOKENS"]))
    return 0
