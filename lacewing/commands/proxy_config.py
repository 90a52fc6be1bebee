"""`lacewing proxy-config secret PART [-o table|json|pem]`: what a node holds, as istioctl shows it.

Before: a node agent runs its certificate admin endpoint (node_agent/certs/admin.py). After: one
row per identity on that node (identity, serial, not-before, not-after), or the JSON, or the PEM
chains. Other views (workloads, policies, routes) are added by the issues that build them.

PART is a node agent of a local cluster (`node1`, or its component name `node-agent-node1`;
`--name C` picks the cluster): its admin port (127.0.0.1:15000 inside the node's namespace) is
reached from here. `--admin-url` asks any reachable admin endpoint instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

from lacewing.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "proxy-config", help="show what a node agent or waypoint holds",
        description="Show what a node agent or waypoint holds.",
    )
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    secret = kinds.add_parser(
        "secret", help="certificates of the identities on a node",
        description="Certificates of the identities on a node: identity, serial, validity.",
    )
    secret.add_argument("part", metavar="PART", help="the node agent to ask (e.g. node1)")
    secret.add_argument("-o", "--output", choices=("table", "json", "pem"), default="table")
    secret.add_argument("--admin-url", metavar="URL",
                        help="the node agent's admin endpoint, e.g. http://127.0.0.1:15000")
    secret.add_argument("--name", default="lacewing",
                        help="the local cluster PART is in (default lacewing)")
    secret.add_argument("--timeout", type=float, default=5.0, help=argparse.SUPPRESS)
    secret.set_defaults(func=run_secret)


def fetch_certs(admin_url: str, *, timeout: float) -> list[dict]:
    url = admin_url.rstrip("/") + "/certs"
    try:
        # The admin port is on loopback: never send this through a proxy from the environment.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=timeout) as resp:
            data = json.load(resp)
    except urllib.error.HTTPError as exc:
        raise UserError(f"{url} answered {exc.code}; is this a Lacewing node agent's admin port?") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"cannot reach {url} ({reason}); is the node agent running?") from None
    except ValueError:
        raise UserError(f"{url} did not answer JSON; is this a Lacewing node agent's admin port?") from None
    certs = data.get("certificates") if isinstance(data, dict) else None
    if not isinstance(certs, list):
        raise UserError(f"{url} answered JSON without a certificate list; check the URL")
    return certs


def format_table(certs: list[dict]) -> str:
    header = ("IDENTITY", "STATE", "SERIAL", "NOT BEFORE", "NOT AFTER")
    rows = [header] + [
        (c.get("identity", ""), c.get("state", ""), c.get("serial", "-"),
         c.get("not_before", "-"), c.get("not_after", "-"))
        for c in certs
    ]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    return "\n".join(lines)


def format_pem(certs: list[dict]) -> str:
    out = []
    for c in certs:
        if c.get("cert_chain"):
            out.append(f"# {c['identity']} serial {c.get('serial')}\n{c['cert_chain']}")
    return "".join(out)


def fetch_certs_local(cluster_name: str, part: str, *, timeout: float) -> list[dict]:
    """The certificates of node agent `part` of a local cluster, from its admin port."""
    from lacewing.local.cluster import LocalCluster
    from lacewing.local.netns import http_get_in_netns

    status = LocalCluster(cluster_name).status()
    agents = [c for c in status["components"] if c["kind"] == "node-agent"]
    match = [c for c in agents if part in (c["name"], c.get("node"))]
    if not match:
        names = ", ".join(sorted(c.get("node") or c["name"] for c in agents)) or "none"
        raise UserError(f"no node agent {part!r} in cluster {cluster_name!r} (node agents: {names})")
    netns = next(n["netns"] for n in status["nodes"] if n["name"] == match[0]["node"])
    try:
        code, body = http_get_in_netns(netns, "127.0.0.1", 15000, "/certs", timeout=timeout)
        data = json.loads(body)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the certificates of {part} ({exc}); is its node agent "
                        "healthy? see `lacewing local status`") from None
    if code != 200 or not isinstance(data.get("certificates"), list):
        raise UserError(f"{part}'s admin port answered {code} without a certificate list")
    return data["certificates"]


def run_secret(args: argparse.Namespace) -> int:
    if args.admin_url:
        certs = fetch_certs(args.admin_url, timeout=args.timeout)
    else:
        certs = fetch_certs_local(args.name, args.part, timeout=args.timeout)
    if args.output == "json":
        json.dump(certs, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.output == "pem":
        sys.stdout.write(format_pem(certs))
    else:
        print(format_table(certs) if certs else "no certificates on this node")
    return 0
