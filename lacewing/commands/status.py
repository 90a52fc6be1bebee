"""`lacewing status [--name C] [-o table|json]`: every node agent and waypoint as the control
plane sees it — configuration version acknowledged, last push, rejected resources.

Before: a control plane runs (in a local cluster: the `control-plane` component in the fabric
namespace, metrics port 15014; elsewhere: `--control-plane-url`, e.g. a port-forward). After: one
row per connected xDS client, read from the control plane's `/debug/status`
(control/plane.py), plus a line for the control plane itself; rejected resources are listed
under the table with their reason. Exit status 1 when the control plane cannot be reached, or
when any client rejects a resource or is behind (so scripts can wait on it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import urllib.error
import urllib.request

from lacewing.errors import UserError
from lacewing.local.names import DEFAULT_CLUSTER

METRICS_PORT = 15014
STATUS_PATH = "/debug/status"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "status", help="what every node agent and waypoint has acknowledged",
        description="Every node agent and waypoint connected to the control plane: configuration "
                    "version acknowledged, last push, rejected resources.")
    p.add_argument("--name", default=DEFAULT_CLUSTER,
                   help=f"local cluster name (default {DEFAULT_CLUSTER})")
    p.add_argument("--control-plane-url", metavar="URL",
                   help="ask this control plane instead (its metrics port, e.g. "
                        "http://127.0.0.1:15014)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.add_argument("--timeout", type=float, default=5.0, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _http_get_in_netns(netns: str, host: str, port: int, path: str, *, timeout: float) -> bytes:
    from lacewing.local.netns import socket_in_netns

    sock = socket_in_netns(netns)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    finally:
        sock.close()
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1:2]
    if status != [b"200"]:
        raise OSError(f"answered {head.splitlines()[0].decode(errors='replace') if head else 'nothing'}")
    return body


def fetch_local(name: str, *, timeout: float) -> dict:
    from lacewing.local.cluster import LocalCluster

    cluster = LocalCluster(name)
    record = cluster.store.read_cluster()
    cp = (record or {}).get("controlPlane") or {}
    if not cp.get("netns"):
        raise UserError(f"no local cluster {name!r} with a control plane; start one with "
                        f"`lacewing local up --name {name}` (or pass --control-plane-url)")
    try:
        body = _http_get_in_netns(cp["netns"], "127.0.0.1", METRICS_PORT, STATUS_PATH,
                                  timeout=timeout)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot reach the control plane of cluster {name!r} ({exc}); see "
                        f"`lacewing local status --name {name}` and its log") from None
    return json.loads(body)


def fetch_url(url: str, *, timeout: float) -> dict:
    full = url.rstrip("/") + STATUS_PATH
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(full, timeout=timeout) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        raise UserError(f"{full} answered {exc.code}; is this a Lacewing control plane's "
                        "metrics port (15014)?") from None
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"cannot reach {full} ({getattr(exc, 'reason', exc)}); is the control "
                        "plane running?") from None
    except ValueError:
        raise UserError(f"{full} did not answer JSON; is this a Lacewing control plane?") from None


def _ago(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    return f"{max(0.0, now - ts):.1f}s ago"


def rows(status: dict, *, now: float) -> list[list[str]]:
    out = []
    for c in status.get("clients", []):
        name = f"waypoint {c['waypoint']}" if c.get("role") == "waypoint" else f"node-agent {c['node']}"
        synced = "SYNCED" if c.get("ackedVersion") == status.get("version") and c.get("inSync") \
            else "PENDING"
        out.append([name, c.get("ackedVersion") or "-", synced, _ago(c.get("lastPush"), now),
                    str(len(c.get("rejects") or [])), c.get("peer", "")])
    for node in missing_nodes(status):
        out.append([f"node-agent {node}", "-", "NOT CONNECTED", "-", "-", ""])
    return out


def missing_nodes(status: dict) -> list[str]:
    """Nodes the control plane knows of whose node agent is not connected."""
    connected = {c.get("node") for c in status.get("clients", []) if c.get("role") == "node"}
    return [n for n in status.get("nodes", []) if n not in connected]


def format_table(status: dict, *, now: float) -> str:
    header = ["PART", "ACKED", "STATE", "LAST PUSH", "REJECTS", "PEER"]
    table = [header] + rows(status, now=now)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = [f"control plane {status.get('replica', '?')}: version {status.get('version')}, "
             f"{'ready' if status.get('ready') else 'NOT READY (sources not synced)'}, "
             f"{len(status.get('clients', []))} client(s)"]
    if status.get("refused"):
        lines.append(f"refused mesh resources: {len(status['refused'])}")
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in table]
    for c in status.get("clients", []):
        for rej in c.get("rejects") or ():
            lines.append(f"  {c['node']}: rejected {rej['type']} {rej['name']} "
                         f"(version {rej['version']}): {rej['reason']}")
    for ref in status.get("refused", []):
        lines.append(f"  refused {ref['object']}: {'; '.join(ref['problems'])}")
    return "\n".join(lines)


def healthy(status: dict) -> bool:
    return bool(status.get("ready")) and not missing_nodes(status) and all(
        not c.get("rejects") and c.get("ackedVersion") == status.get("version") and c.get("inSync")
        for c in status.get("clients", []))


def run(args: argparse.Namespace) -> int:
    if args.control_plane_url:
        status = fetch_url(args.control_plane_url, timeout=args.timeout)
    else:
        status = fetch_local(args.name, timeout=args.timeout)
    if args.output == "json":
        json.dump(status, sys.stdout, indent=2, sort_keys=True)
        print()
    else:
        print(format_table(status, now=dt.datetime.now(dt.UTC).timestamp()))
    return 0 if healthy(status) else 1
