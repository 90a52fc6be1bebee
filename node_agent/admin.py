"""The node agent's HTTP endpoints: admin (loopback), metrics, readiness.

Before: a running `NodeAgent` (node_agent/agent.py). After:
- admin on 127.0.0.1:15000 (loopback only): `/config_dump` — the current snapshot, resource
  versions and the xDS connection (JSON); `/certs` — the certificates on this node (what
  `lacewing proxy-config secret` reads);
- metrics on :15020 `/metrics` (the agent's own registry: certificates, xDS client, and
  whatever the datapath and tunnel register there);
- readiness on :15021 `/healthz/ready`: 200 once a snapshot has been received (kept while the
  control plane is away) and every part in `agent.readiness` (the node tunnel, when attached:
  listening, configured, not draining) says it is ready; 503 naming what is not, otherwise.
Served by control/debug_http.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from control import debug_http

if TYPE_CHECKING:
    from node_agent.agent import NodeAgent


def admin_routes(agent: NodeAgent) -> dict[str, debug_http.Route]:
    def config_dump(_q):
        return debug_http.json_reply({"node": agent.node, "cluster": agent.cluster,
                                      "xds": agent.xds.describe(), "snapshot": agent.state.describe()})

    def certs(_q):
        body = json.dumps({"certificates": agent.certs.describe()}, indent=2).encode() + b"\n"
        return 200, "application/json", body

    return {"/config_dump": config_dump, "/certs": certs}


def metrics_routes(agent: NodeAgent) -> dict[str, debug_http.Route]:
    return {"/metrics": lambda _q: (200, CONTENT_TYPE_LATEST, generate_latest(agent.registry))}


def ready_routes(agent: NodeAgent) -> dict[str, debug_http.Route]:
    def ready(_q):
        if not agent.state.received_any:
            return 503, "text/plain", b"no configuration from the control plane yet\n"
        waiting = [name for name, check in agent.readiness.items() if not check()]
        if waiting:
            return 503, "text/plain", f"not ready: {', '.join(waiting)}\n".encode()
        return 200, "text/plain", b"ready\n"
    return {"/healthz/ready": ready}


async def serve_all(agent: NodeAgent, *, admin_port: int, metrics_host: str, metrics_port: int,
                    ready_port: int) -> list[asyncio.Server]:
    servers = [await debug_http.serve(admin_routes(agent), host="127.0.0.1", port=admin_port)]
    if metrics_port == ready_port and metrics_port != 0:
        servers.append(await debug_http.serve({**metrics_routes(agent), **ready_routes(agent)},
                                              host=metrics_host, port=metrics_port))
    else:
        servers.append(await debug_http.serve(metrics_routes(agent), host=metrics_host,
                                              port=metrics_port))
        servers.append(await debug_http.serve(ready_routes(agent), host=metrics_host,
                                              port=ready_port))
    return servers
