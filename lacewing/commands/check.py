"""`lacewing check`: preflight of the kernel, BPF features, headers and privileges."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="preflight: kernel, BPF features, headers, privileges",
                       description="Check that this host can run Lacewing: one line per "
                       "requirement, with the fix for each one that fails. Exit 1 if anything "
                       "required is missing.")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from lacewing.check import run_checks

    results = run_checks()
    if args.output == "json":
        json.dump([asdict(r) for r in results], sys.stdout, indent=2)
        print()
    else:
        for r in results:
            mark = "✔" if r.ok else ("✘" if r.required else "!")
            print(f"{mark} {r.name}: {r.detail}")
            if not r.ok and r.fix:
                print(f"    fix: {r.fix}")
    failed = [r for r in results if r.required and not r.ok]
    if args.output != "json":
        print("\nall checks passed" if not failed else f"\n{len(failed)} check(s) failed")
    return 1 if failed else 0
