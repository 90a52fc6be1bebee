"""`lacewing waypoint apply|generate|delete`: declare a namespace's waypoint, like
`istioctl waypoint`.

Before: a namespace (and, for apply/delete, a local cluster that is up). After: `generate`
prints the Gateway (`gatewayClassName: lacewing-waypoint`) as YAML; `apply` writes it into
the local cluster and, with `--enroll-namespace`, labels the namespace
`lacewing.dev/use-waypoint=<name>` so its traffic goes through the waypoint; `delete` removes
both. The resource itself comes from `waypoint.manifest`.
"""

from __future__ import annotations

import argparse

from lacewing.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("waypoint", help="declare a namespace's waypoint (L7 proxy)",
                       description="Declare the waypoint that gives a namespace L7 routing, "
                       "resilience, policy and telemetry, as `istioctl waypoint` does.")
    wsub = p.add_subparsers(dest="waypoint_command", metavar="COMMAND", required=True)

    def add(name: str, help: str, func, *, cluster: bool) -> argparse.ArgumentParser:
        sp = wsub.add_parser(name, help=help, description=help)
        sp.add_argument("-n", "--namespace", required=True, help="the waypoint's namespace")
        sp.add_argument("--name", default="waypoint", help="waypoint name (default waypoint)")
        if cluster:
            from lacewing.local.names import DEFAULT_CLUSTER

            sp.add_argument("--cluster", default=DEFAULT_CLUSTER,
                            help=f"local cluster name (default {DEFAULT_CLUSTER})")
        sp.set_defaults(func=func)
        return sp

    g = add("generate", "print the waypoint's Gateway as YAML", _generate, cluster=False)
    g.add_argument("--for", dest="traffic", default="service",
                   choices=("service", "workload", "all", "none"),
                   help="which traffic the waypoint handles (default service)")
    a = add("apply", "write the waypoint's Gateway into the local cluster", _apply, cluster=True)
    a.add_argument("--enroll-namespace", action="store_true",
                   help="also label the namespace lacewing.dev/use-waypoint=NAME")
    a.add_argument("--for", dest="traffic", default="service",
                   choices=("service", "workload", "all", "none"))
    add("delete", "remove the waypoint (and the namespace's label if it names it)", _delete,
        cluster=True)


def _manifest(args) -> dict:
    from waypoint.manifest import gateway

    try:
        return gateway(args.namespace, args.name, traffic=getattr(args, "traffic", "service"))
    except ValueError as e:
        raise UserError(str(e)) from None


def _yaml(obj: dict) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)


def _generate(args) -> int:
    print(_yaml(_manifest(args)), end="")
    return 0


def _document(obj: dict):
    from control.config.loader import Document

    return Document("<lacewing waypoint>", 0, obj)


def _cluster(args):
    from lacewing.local.cluster import LocalCluster

    return LocalCluster(args.cluster)


def _apply(args) -> int:
    from control.config.errors import ConfigError

    obj = _manifest(args)
    cluster = _cluster(args)
    try:
        cluster.apply([_document(obj)])
    except ConfigError as e:
        raise UserError(f"the local cluster refused the waypoint's Gateway: {e}; "
                        "check `lacewing waypoint generate` output with `lacewing validate`"
                        ) from None
    print(f"waypoint {args.namespace}/{args.name} applied")
    if args.enroll_namespace:
        from waypoint.manifest import enroll_label

        cluster.label("namespace", args.namespace, enroll_label(args.name))
        print(f"namespace {args.namespace} labeled lacewing.dev/use-waypoint={args.name}")
    return 0


def _delete(args) -> int:
    from control.snapshot import WAYPOINT_LABEL

    obj = _manifest(args)
    cluster = _cluster(args)
    cluster.delete([_document(obj)])
    ns = next((o for o in cluster.store.objects().values()
               if o.get("kind") == "Namespace"
               and o.get("metadata", {}).get("name") == args.namespace), None)
    labels = ((ns or {}).get("metadata", {}).get("labels") or {})
    if labels.get(WAYPOINT_LABEL) == args.name:
        cluster.label("namespace", args.namespace, {WAYPOINT_LABEL: None})
        print(f"namespace {args.namespace}: label {WAYPOINT_LABEL} removed")
    print(f"waypoint {args.namespace}/{args.name} deleted")
    return 0
