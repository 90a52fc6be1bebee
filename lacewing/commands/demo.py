"""`lacewing demo`: the one-minute tour (what `make demo` runs)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the one-minute tour: a local cluster, the sample app, traffic",
                       description="Make a 2-node local cluster, run the sample app behind a "
                       "Service with pods on both nodes, call it from a client pod and show "
                       "which pods answered; then remove everything (also on Ctrl-C).")
    p.add_argument("--requests", type=int, default=200, help="requests the client sends")
    p.add_argument("--name", default="demo", help="cluster name (default demo)")
    p.add_argument("--no-mesh", action="store_true",
                   help="only the plain cluster part (no control plane, tunnels or waypoint)")
    p.add_argument("--keep", action="store_true", help="leave the cluster up afterwards")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from lacewing.demo import run

    return run(requests=args.requests, keep=args.keep, name=args.name, mesh=not args.no_mesh)
