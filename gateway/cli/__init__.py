"""`corral`: the command-line client (and `corral serve`), with Ollama's verbs and flags.

`main()` parses the arguments, opens a client on OLLAMA_HOST and dispatches; every CLIError ends
up as one `Error: ...` line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from gateway.cli.client import Client, CLIError


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors look like Ollama's (`Error: ...`, exit 1)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"Error: {message}\n")
        sys.stderr.write(f"Run '{self.prog} --help' for usage.\n")
        raise SystemExit(1)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="corral", description="Large language model runner")
    parser.add_argument("-v", "--version", action="store_true", help="Show version information")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    sub.add_parser("serve", aliases=["start"], help="Start corral")

    p = sub.add_parser("create", help="Create a model from a Modelfile")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("-f", "--file", help="Name of the Modelfile (default \"Modelfile\")")
    p.add_argument("-q", "--quantize", metavar="TYPE",
                   help="Quantize model to this level (e.g. q4_K_M)")

    p = sub.add_parser("show", help="Show information for a model")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--license", action="store_true", help="Show license of a model")
    p.add_argument("--modelfile", action="store_true", help="Show Modelfile of a model")
    p.add_argument("--parameters", action="store_true", help="Show parameters of a model")
    p.add_argument("--template", action="store_true", help="Show template of a model")
    p.add_argument("--system", action="store_true", help="Show system message of a model")
    p.add_argument("-v", "--verbose", action="store_true", help="Show detailed model information")

    p = sub.add_parser("run", help="Run a model")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("prompt", metavar="PROMPT", nargs="*")
    p.add_argument("--verbose", action="store_true", help="Show timings for response")
    p.add_argument("--keepalive", metavar="DUR", help="Duration to keep a model loaded (e.g. 5m)")
    p.add_argument("--format", help="Response format (e.g. json)")
    p.add_argument("--nowordwrap", action="store_true", help="Don't wrap words to the next line")
    p.add_argument(
        "--think", nargs="?", const="true", default=None, metavar="LEVEL",
        help="Enable thinking mode: true/false or high/medium/low",
    )
    p.add_argument("--hidethinking", action="store_true", help="Hide thinking output")
    p.add_argument("--insecure", action="store_true", help=argparse.SUPPRESS)  # for pulls

    p = sub.add_parser("stop", help="Stop a running model")
    p.add_argument("model", metavar="MODEL")

    for name, text in (("pull", "Pull a model from a registry"),
                       ("push", "Push a model to a registry")):
        p = sub.add_parser(name, help=text)
        p.add_argument("model", metavar="MODEL")
        p.add_argument("--insecure", action="store_true", help="Use an insecure registry")

    p = sub.add_parser("list", aliases=["ls"], help="List models")
    p.add_argument("prefix", nargs="?", default="")

    p = sub.add_parser("ps", help="List running models")
    p.add_argument("prefix", nargs="?", default="")

    p = sub.add_parser("cp", help="Copy a model")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("destination", metavar="DESTINATION")

    p = sub.add_parser("rm", help="Remove a model")
    p.add_argument("models", metavar="MODEL", nargs="+")

    from gateway.cli.bench import add_bench_parser  # `corral bench`: gateway/loadtest
    add_bench_parser(sub)
    from gateway.cli.plan import add_plan_parser  # `corral plan`: the supervisor's decision
    add_plan_parser(sub)
    from gateway.cli.keys import add_keys_parser  # `corral keys`: the keys file, no server needed
    add_keys_parser(sub)
    from gateway.cli.verify import add_verify_parser  # `corral verify`: the store, like fsck
    add_verify_parser(sub)
    from gateway.cli.launch import add_launch_parser  # `corral launch`: a coding agent
    add_launch_parser(sub)
    return parser


def _client_command(args: argparse.Namespace) -> Callable[[Client], int]:
    from gateway.cli import commands
    from gateway.cli.create import cmd_create
    from gateway.cli.pull import cmd_pull
    from gateway.cli.push import cmd_push
    from gateway.cli.run import cmd_run

    table: dict[str, Callable[[argparse.Namespace, Client], int]] = {
        "run": cmd_run,
        "show": commands.cmd_show,
        "stop": commands.cmd_stop,
        "list": commands.cmd_list,
        "ls": commands.cmd_list,
        "ps": commands.cmd_ps,
        "cp": commands.cmd_cp,
        "rm": commands.cmd_rm,
        "create": cmd_create,
        "pull": cmd_pull,
        "push": cmd_push,
    }
    handler = table[args.command]
    return lambda client: handler(args, client)


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse as Ollama's CLI does: a bare `--think` takes no value (`--think=high` does), and
    prompt words may come after flags (`corral run MODEL --verbose why?`)."""
    argv = ["--think=true" if arg == "--think" else arg for arg in argv]
    passed_on: list[str] = []
    if argv[:1] == ["launch"]:  # what follows `--` goes to the tool unread
        from gateway.cli.launch import tool_args
        argv, passed_on = tool_args(argv)
    args, extra = parser.parse_known_args(argv)
    if passed_on:
        args.args = passed_on
    if args.command == "run" and extra and not any(arg.startswith("-") for arg in extra):
        args.prompt = [*args.prompt, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["verify"]:  # its own parser: usage errors exit 2, as fsck's do
        from gateway.cli.verify import cmd_verify
        return cmd_verify(argv[1:])
    parser = build_parser()
    try:
        args = parse(parser, argv)
    except SystemExit as exc:  # --help (0) or a usage error (1)
        return exc.code if isinstance(exc.code, int) else 1

    from gateway.cli import commands

    try:
        if args.command in ("serve", "start"):
            return commands.cmd_serve(args)
        if args.command == "bench":
            from gateway.cli.bench import cmd_bench
            return cmd_bench(args)
        if args.command == "plan":
            from gateway.cli.plan import cmd_plan
            return cmd_plan(args)
        if args.command == "keys":
            from gateway.cli.keys import cmd_keys
            return cmd_keys(args)
        if args.command == "launch":
            from gateway.cli.launch import cmd_launch
            return cmd_launch(args)
        if args.version:
            with Client() as client:
                return commands.cmd_version(client)
        if args.command is None:
            parser.print_help()
            return 0
        run = _client_command(args)
        with Client() as client:
            return run(client)
    except CLIError as exc:
        sys.stderr.write(f"Error: {exc.message}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    except BrokenPipeError:
        # `corral list | head`: the reader left. Point stdout at /dev/null so the interpreter's
        # final flush does not complain about the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


__all__ = ["build_parser", "main"]
