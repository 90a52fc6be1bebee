"""The `lacewing` command line: one entry point, one module per subcommand.

Before: the user typed `lacewing ...`. After: the chosen subcommand ran and its exit status
is returned (0 success, 1 failure the user can fix, 2 bad usage).

Subcommands live in `lacewing/commands/<name>.py`; each module defines
`register(subparsers) -> None`, which adds its parser and sets `func` to a callable taking
the parsed `argparse.Namespace` and returning an exit status. Modules are discovered here, so
adding a subcommand never edits this file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from lacewing import commands
from lacewing.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lacewing",
        description="Lacewing: a sidecarless, eBPF-steered service mesh.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"lacewing.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
