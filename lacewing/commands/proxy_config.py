"""`lacewing proxy-config secret PART [-o table|json|pem]`: what a node holds, as istioctl shows it.

Before: a node agent runs its certificate admin endpoint (node_agent/certs/admin.py). After: one
row per identity on that node (identity, serial, not-before, not-after), or the JSON, or the PEM
chains. Other views (workloads, policies, routes) are added by the issues that build them.

TODO(local cluster, issue "local up"): resolve PART (a node agent or waypoint of the local
cluster, `--name C`) to its admin URL through lacewing/local; until then pass `--admin-url`.
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


def run_secret(args: argparse.Namespace) -> int:
    if not args.admin_url:
        # TODO(local cluster): look PART up in the local cluster and use its admin port.
        raise UserError(
            f"finding {args.part!r} in a local cluster is not implemented yet; "
            "pass --admin-url http://127.0.0.1:PORT of its node agent"
        )
    certs = fetch_certs(args.admin_url, timeout=args.timeout)
    if args.output == "json":
        json.dump(certs, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.output == "pem":
        sys.stdout.write(format_pem(certs))
    else:
        print(format_table(certs) if certs else "no certificates on this node")
    return 0
