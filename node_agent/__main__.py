"""`python -m node_agent`: run a node agent.

    python -m node_agent --cluster C --node N --control-plane 172.18.0.2:15012 \\
        --credentials /run/lacewing/lw-C/nodes/N

`--control-plane` may be repeated (or comma-separated) for replicas. Admin on 127.0.0.1:15000,
metrics on :15020, readiness on :15021 (see node_agent/admin.py). Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import sys

from control import process
from control.process import run_until_signalled
from node_agent.agent import NodeAgent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m node_agent", description=__doc__.split("\n")[0])
    p.add_argument("--cluster", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--control-plane", action="append", required=True, metavar="HOST:PORT")
    p.add_argument("--credentials", required=True, metavar="DIR",
                   help="node-cert.pem, node-key.pem and root-cert.pem of this node")
    p.add_argument("--admin-port", type=int, default=15000)
    p.add_argument("--metrics-host", default="0.0.0.0")
    p.add_argument("--metrics-port", type=int, default=15020)
    p.add_argument("--ready-port", type=int, default=15021)
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--no-dataplane", action="store_true",
                   help="run without the node tunnel and eBPF capture (node_agent/ztunnel/wiring.py)")
    p.add_argument("--tunnel-reuse", action=argparse.BooleanOptionalAction, default=None,
                   help="reuse TLS connections between node tunnels (docs/tunnel.md; default: "
                        "the tunnel's default)")
    return p.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    addresses = [a.strip() for arg in args.control_plane for a in arg.split(",") if a.strip()]
    agent = NodeAgent(cluster=args.cluster, node=args.node, control_planes=addresses,
                      credentials=args.credentials, admin_port=args.admin_port,
                      metrics_host=args.metrics_host, metrics_port=args.metrics_port,
                      ready_port=args.ready_port)
    if not args.no_dataplane:
        from node_agent.ztunnel.wiring import attach
        options = {}
        if args.tunnel_reuse is not None:
            from node_agent.ztunnel.proxy import TunnelConfig
            options["config"] = TunnelConfig(readiness_addr=None, reuse=args.tunnel_reuse)
        attach(agent, **options)
    return await run_until_signalled(agent)


def main(argv: list[str] | None = None) -> int:
    return process.main(amain, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
