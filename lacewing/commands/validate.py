"""`lacewing validate -f FILE...`: check mesh configuration exactly, one line per problem.

Before: files the operator names (`-` for standard input, directories for their YAML files).
After: every problem printed as `file: document N: path: message` (kinds other than invalid
are labelled `unsupported:` or `warning:`), a summary on standard error, and exit status 1 if
any document is invalid or unsupported, 0 if there are only warnings or nothing at all.
`-o json` prints the same as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from lacewing.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate", help="check mesh configuration files; exit 1 on any error",
        description="Validate Istio-shaped mesh configuration (VirtualService, DestinationRule, "
        "PeerAuthentication, AuthorizationPolicy), Lacewing's RateLimitPolicy and a waypoint's "
        "Gateway (gateway.networking.k8s.io, gatewayClassName lacewing-waypoint). One line per "
        "problem: file, document (0-based), field path, message. A field Istio accepts but "
        "Lacewing does not implement yet is reported as unsupported. Workload kinds (Service, "
        "Deployment, ...) are passed over.",
    )
    p.add_argument("-f", "--filename", action="extend", nargs="+", required=True, metavar="FILE",
                   help="a YAML/JSON file, a directory of them, or - for standard input")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(func=run)


def summarize(n_docs: int, n_accepted: int, problems) -> dict:
    from control.config.errors import INVALID, UNSUPPORTED, WARNING

    count = {k: sum(1 for p in problems if p.kind == k) for k in (INVALID, UNSUPPORTED, WARNING)}
    return {"documents": n_docs, "accepted": n_accepted, **count}


def print_report(problems, summary: dict, *, output: str) -> None:
    if output == "json":
        json.dump({"summary": summary, "problems": [asdict(p) for p in problems]}, sys.stdout, indent=2)
        print()
        return
    for problem in problems:
        print(problem)
    print(f"{summary['documents']} document(s), {summary['accepted']} mesh resource(s) accepted; "
          f"{summary['invalid']} invalid, {summary['unsupported']} unsupported, "
          f"{summary['warning']} warning(s)", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from control.config.errors import WARNING
    from control.config.files import read_sources
    from control.config.validate import validate_documents

    docs, problems = read_sources(args.filename)
    if not docs and not problems:
        raise UserError("no documents found in the given files; pass YAML files with -f")
    resources, found = validate_documents(docs)
    problems += found
    print_report(problems, summarize(len(docs), len(resources), problems), output=args.output)
    return 1 if any(p.kind != WARNING for p in problems) else 0
