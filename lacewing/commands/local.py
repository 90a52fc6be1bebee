"""`lacewing local ...`: a cluster on this host made of network namespaces (DESIGN §5)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from control.config.errors import ConfigError
from lacewing.errors import UserError
from lacewing.local.names import DEFAULT_CLUSTER


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("local", help="a local cluster on network namespaces",
                       description="Make and use a Kubernetes-shaped cluster on this host: nodes "
                       "and pods are network namespaces, every part a plain process.")
    lsub = p.add_subparsers(dest="local_command", metavar="COMMAND", required=True)

    def add(name: str, help: str, func) -> argparse.ArgumentParser:
        sp = lsub.add_parser(name, help=help, description=help)
        sp.add_argument("--name", default=DEFAULT_CLUSTER,
                        help=f"cluster name (default {DEFAULT_CLUSTER})")
        sp.set_defaults(func=func)
        return sp

    up = add("up", "make a local cluster (clearing what a crashed one of that name left)", _up)
    up.add_argument("--nodes", type=int, default=2, help="number of nodes (default 2)")
    up.add_argument("--no-mesh", action="store_true",
                    help="run no control plane or node agents: plain networking only")
    down = add("down", "remove a local cluster and everything it made", _down)
    down.add_argument("--all", action="store_true", help="every local cluster on this host")
    st = add("status", "nodes, pods, services and components", _status)
    st.add_argument("-o", "--output", choices=("table", "json"), default="table")
    for verb, func in (("apply", _apply), ("delete", _delete)):
        sp = add(verb, f"{verb} workloads and mesh configuration from YAML files", func)
        sp.add_argument("-f", "--filename", action="append", required=True, metavar="FILE",
                        help="a YAML file (repeatable; - for standard input)")
        sp.add_argument("--no-wait", action="store_true",
                        help="return once written, before the cluster has acted on it")
    lb = add("label", "set (KEY=VALUE) or remove (KEY-) labels of a namespace or pod", _label)
    lb.add_argument("kind", choices=("namespace", "ns", "pod"))
    lb.add_argument("target", metavar="NAME", help="namespace name, or pod as NAMESPACE/POD")
    lb.add_argument("changes", nargs="+", metavar="KEY=VALUE|KEY-")
    ex = add("exec", "run a command inside a pod's network namespace", _exec)
    ex.add_argument("pod", metavar="POD", help="NAMESPACE/POD, or POD in default")
    ex.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD...")


def _cluster(args):
    from lacewing.local.cluster import LocalCluster

    return LocalCluster(args.name)


def _up(args) -> int:
    cluster = _cluster(args)
    if not cluster.up(nodes=args.nodes, mesh=not args.no_mesh):
        print(f"cluster {args.name!r} is already up; nothing changed")
        return 0
    print(f"cluster {args.name!r} is up with {args.nodes} nodes")
    return 0


def _down(args) -> int:
    from lacewing.local.cluster import LocalCluster

    names = LocalCluster.all_names() if args.all else [args.name]
    for name in names:
        removed = LocalCluster(name).down()
        print(f"cluster {name!r}: " + (f"removed {', '.join(removed)}" if removed
                                       else "nothing to remove"))
    if not names:
        print("no local clusters on this host")
    return 0


def _status(args) -> int:
    status = _cluster(args).status()
    if args.output == "json":
        json.dump(status, sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    print(f"cluster {status['name']}: {status['phase']} (generation {status['generation']}, "
          f"observed {status['observedGeneration']})")
    _table(["NODE", "NETNS", "UNDERLAY", "POD CIDR"],
           [[n["name"], n["netns"], n["underlayIP"], n["podCIDR"]] for n in status["nodes"]])
    _table(["NAMESPACE", "POD", "NODE", "IP", "PHASE", "READY", "RESTARTS"],
           [[p["namespace"], p["name"], p["node"], p["ip"], p["phase"],
             "yes" if p["ready"] else "no", p["restarts"]] for p in status["pods"]])
    _table(["NAMESPACE", "SERVICE", "CLUSTER-IP", "PORTS", "ENDPOINTS"],
           [[s["namespace"], s["name"], s["clusterIP"],
             ",".join(f"{p['port']}→{p['targetPort']}" for p in s["ports"]),
             len(s["endpoints"])] for s in status["services"]])
    _table(["COMPONENT", "KIND", "NODE", "PID", "HEALTHY"],
           [[c["name"], c["kind"], c.get("node", ""), c.get("pid") or "-",
             "yes" if c.get("healthy") else "no"] for c in status["components"]])
    return 0


def _table(header: list[str], rows: list[list]) -> None:
    print()
    if not rows:
        print(f"(no {header[1].lower()}s)")
        return
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _sources(files: list[str]) -> list:
    from control.config.loader import load_documents

    out = []
    for f in files:
        if f == "-":
            out += load_documents(sys.stdin.buffer.read(), name="<stdin>")
        else:
            out.append(f)
    return out


def _report(result, verb: str) -> None:
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for key in result.written:
        kind, rest = key.split(".", 1)
        _, ns, name = rest.split("_", 2)
        print(f"{kind.lower()}/{name}" + (f" ({ns})" if ns != "-" else "") + f" {verb}")


def _apply(args) -> int:
    try:
        result = _cluster(args).apply(_sources(args.filename), wait=not args.no_wait)
    except ConfigError as exc:
        for p in exc.problems:
            print(f"{'warning' if p.kind == 'warning' else 'error'}: {p}", file=sys.stderr)
        print("nothing was applied", file=sys.stderr)
        return 1
    _report(result, "applied")
    return 0


def _delete(args) -> int:
    try:
        result = _cluster(args).delete(_sources(args.filename), wait=not args.no_wait)
    except ConfigError as exc:
        for p in exc.problems:
            print(f"error: {p}", file=sys.stderr)
        return 1
    _report(result, "deleted")
    return 0


def _label(args) -> int:
    changes: dict[str, str | None] = {}
    for c in args.changes:
        if c.endswith("-") and "=" not in c:
            changes[c[:-1]] = None
        elif "=" in c:
            k, v = c.split("=", 1)
            changes[k] = v
        else:
            raise UserError(f"{c!r}: write KEY=VALUE to set a label or KEY- to remove it")
    kind = "namespace" if args.kind in ("namespace", "ns") else "pod"
    _cluster(args).label(kind, args.target, changes)
    print(f"{kind}/{args.target} labeled")
    return 0


def _exec(args) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise UserError("give the command after --, e.g. lacewing local exec web -- ip addr")
    full = _cluster(args).exec_argv(args.pod, argv)
    from lacewing.local.netns import clean_env

    os.execvpe(full[0], full, clean_env())
    return 0  # not reached
