"""`lacewing analyze [-f FILE...]`: warnings about configuration that is wrong together.

Before: files holding mesh configuration and, optionally, the workloads it applies to
(Namespace, Service, Deployment, Pod, ...); without `-f`, what was applied to the local cluster
(`--name`, the directory of YAML its control plane reads, `/run/lacewing/lw-<name>/config`). After: the validation problems of every document
(as `lacewing validate` prints them) followed by cross-object warnings
(`control.config.analyze`): routes to undefined subsets, duplicate mesh-wide
PeerAuthentications, selectors matching no workload, hosts no Service has, and
`waypoint.placement.unenforceable` — an AuthorizationPolicy with a workload selector and L7
attributes that selects workloads whose traffic passes no waypoint (by the
`lacewing.dev/use-waypoint` labels of their Namespace or Service), which the node tunnel fails
closed on. Exit 0 when there are only warnings, 1 on any invalid or unsupported document.
"""

from __future__ import annotations

import argparse
import sys

from lacewing.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze", help="cross-object warnings (missing subsets, policies that select nothing, "
        "L7 policies no waypoint enforces, ...)",
        description="Analyze mesh configuration together with the workloads in the same files. "
        "Checks that need workloads or Services run only when the files contain some.",
    )
    p.add_argument("-f", "--filename", action="extend", nargs="+", metavar="FILE",
                   help="a YAML/JSON file, a directory of them, or - for standard input "
                   "(default: what was applied to the local cluster)")
    p.add_argument("--name", default=None, metavar="C",
                   help="the local cluster to analyze when no -f is given (default: lacewing)")
    p.add_argument("--root-namespace", default="istio-system",
                   help="namespace whose selector-less PeerAuthentication is mesh-wide (default: %(default)s)")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(func=run)


def _local_config_dir(name: str | None):
    from lacewing.local.names import DEFAULT_CLUSTER, ClusterNames, check_cluster_name

    cluster = check_cluster_name(name or DEFAULT_CLUSTER)
    config = ClusterNames(cluster).state_dir / "config"
    if not config.is_dir():
        raise UserError(f"no local cluster {cluster!r} with applied configuration ({config} is "
                        "missing): pass files with -f, or start one with `lacewing local up`")
    return config


def run(args: argparse.Namespace) -> int:
    from control.config.analyze import analyze, inventory, skipped_checks
    from control.config.errors import WARNING
    from control.config.files import read_sources
    from control.config.validate import validate_documents
    from lacewing.commands.validate import print_report, summarize

    sources = args.filename or [str(_local_config_dir(args.name))]
    docs, problems = read_sources(sources)
    if not docs and not problems:
        raise UserError("no documents found in the given files; pass YAML files with -f")
    resources, found = validate_documents(docs)
    problems += found
    problems += analyze(resources, docs, root_namespace=args.root_namespace)
    summary = summarize(len(docs), len(resources), problems)
    summary["skipped_checks"] = skipped_checks(inventory(docs))
    print_report(problems, summary, output=args.output)
    if args.output == "text":
        for skipped in summary["skipped_checks"]:
            print(f"note: skipped check: {skipped}", file=sys.stderr)
    return 1 if any(p.kind != WARNING for p in problems) else 0
