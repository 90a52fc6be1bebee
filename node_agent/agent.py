"""The node agent: one per node, holding the node's configuration and certificates.

Before: the node's credential (control/ca/node_credentials.py) and the control plane replicas'
addresses. After: a running agent with
- `state` (`XdsState`): the one snapshot the data path reads, kept current by `xds`
  (`XdsClient`, delta xDS with backoff/failover), kept as it was while the control plane is away;
- `certs` (`CertificateManager`): certificates of the identities of this node's enrolled pods,
  fetched ahead and dropped when the pods leave (a snapshot subscriber calls `retain`);
- admin, metrics and readiness endpoints (node_agent/admin.py).

Hooks for the data path (eBPF enrollment, node tunnel): `agent.subscribe(fn)` — `fn(snapshot)`
is called after every applied update, in the event loop, with the new frozen `NodeSnapshot`
(and once at once if a snapshot is already there); `agent.registry` takes their metrics;
`agent.on_start` / `agent.on_stop` take async callables run at start and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from control.snapshot import NodeSnapshot
from node_agent import admin
from node_agent.certs.ca_client import GrpcCaClient
from node_agent.certs.manager import CertificateManager, CertificateUnavailable
from node_agent.xds import metrics as xds_metrics
from node_agent.xds.client import XdsClient
from node_agent.xds.state import XdsState

log = logging.getLogger("lacewing.agent")


def ca_target(addresses: list[str]) -> str:
    """One gRPC target for the CA over every replica: `ipv4:a:p,b:p` when all are IPv4
    literals (gRPC then fails over between them), else the first address."""
    hosts = [a.rpartition(":")[0] for a in addresses]
    if len(addresses) > 1 and all(h.count(".") == 3 and h.replace(".", "").isdigit()
                                  for h in hosts):
        return "ipv4:" + ",".join(addresses)
    return addresses[0]


class NodeAgent:
    def __init__(self, *, cluster: str, node: str, control_planes: list[str],
                 credentials: str | Path, admin_port: int = 15000, metrics_host: str = "0.0.0.0",
                 metrics_port: int = 15020, ready_port: int = 15021) -> None:
        self.cluster = cluster
        self.node = node
        self.registry = CollectorRegistry()
        self.state = XdsState.for_node(node)
        self.xds = XdsClient(addresses=control_planes, credentials=credentials, node=node,
                             state=self.state)
        xds_metrics.register(self.registry, self.xds)
        self.certs = CertificateManager(
            GrpcCaClient.from_node_credential(ca_target(control_planes), credentials),
            registry=self.registry)
        self.on_start: list[Callable[[], Awaitable[None]]] = []
        self.on_stop: list[Callable[[], Awaitable[None]]] = []
        # parts that must be ready for :15021 to say so (name -> check); the tunnel adds itself
        self.readiness: dict[str, Callable[[], bool]] = {}
        self._ports = dict(admin_port=admin_port, metrics_host=metrics_host,
                           metrics_port=metrics_port, ready_port=ready_port)
        self._servers: list[asyncio.Server] = []
        self._tasks: list[asyncio.Task] = []
        self._prefetch: set[asyncio.Task] = set()
        self._wanted: set[str] = set()
        self.subscribe(self._follow_identities)

    @property
    def snapshot(self) -> NodeSnapshot:
        return self.state.snapshot  # type: ignore[return-value]

    def subscribe(self, fn: Callable[[NodeSnapshot], None]) -> None:
        self.state.subscribers.append(fn)
        if self.state.received_any:
            fn(self.snapshot)

    def _follow_identities(self, snapshot: NodeSnapshot) -> None:
        wanted = {w.identity for w in snapshot.local_workloads() if w.enrolled and w.identity}
        if wanted == self._wanted:
            return  # most updates are about other nodes' pods
        new, self._wanted = wanted - self._wanted, wanted
        self.certs.retain(wanted)
        for ident in new:
            task = asyncio.get_running_loop().create_task(self._fetch(ident))
            self._prefetch.add(task)
            task.add_done_callback(self._prefetch.discard)

    async def _fetch(self, identity: str) -> None:
        with contextlib.suppress(CertificateUnavailable):
            await self.certs.get(identity)  # starts (or joins) its lifecycle; errors are kept

    @property
    def ports(self) -> dict[str, int]:
        """Where the endpoints listen (useful when started with port 0)."""
        names = ("admin", "metrics", "ready")
        return {n: s.sockets[0].getsockname()[1] for n, s in zip(names, self._servers,
                                                                   strict=False)}

    async def start(self) -> None:
        self._servers = await admin.serve_all(self, **self._ports)
        self._tasks.append(asyncio.create_task(self.xds.run(), name="xds"))
        for hook in self.on_start:
            await hook()
        log.info("node agent for %s/%s started; control plane %s", self.cluster, self.node,
                 ", ".join(self.xds.addresses))

    async def stop(self) -> None:
        for hook in reversed(self.on_stop):
            with contextlib.suppress(Exception):
                await hook()
        for t in self._tasks + list(self._prefetch):
            t.cancel()
        for t in self._tasks + list(self._prefetch):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.certs.close()
        for s in self._servers:
            s.close()
            await s.wait_closed()
