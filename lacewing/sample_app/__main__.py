"""`python -m lacewing.sample_app serve|load ...`: the same command as `lacewing sample-app`.

Before: a process started with the sample-app's arguments (local-mode pods may start it this
way). After: the exit status of `lacewing sample-app`. Only this command's module is imported,
so a pod's app does not depend on every other `lacewing` subcommand importing cleanly.
"""

from __future__ import annotations

import argparse
import sys

from lacewing.commands import sample_app
from lacewing.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lacewing")  # usage reads as `lacewing sample-app ...`
    sub = parser.add_subparsers(dest="command", metavar="sample-app", required=True)
    sample_app.register(sub)
    args = parser.parse_args(["sample-app", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
