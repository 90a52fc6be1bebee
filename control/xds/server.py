"""The xDS push: `envoy.service.discovery.v3.AggregatedDiscoveryService`, delta streams only.

Before: the CA's mTLS gRPC server (control/ca/grpc_server.py) on :15012; a node agent or a
waypoint opens `DeltaAggregatedResources` with its node credential. After: one `DeltaSession`
(control/xds/session.py) per stream, fed with the stream's requests and with every catalog
change; its responses are written by one writer task per stream (a slow client never holds up
the others). Counters, convergence and rejects go to `ControlMetrics`; `describe()` is what
`lacewing status` shows (through the debug endpoint, control/debug_http.py).

Who is asking comes from the verified peer certificate, never from the request: a node agent's
credential (`spiffe://<td>/lacewing/node/<node>`). `node.metadata` may say
`role: waypoint` and `waypoint: <namespace>/<name>` for a waypoint's client (it runs with its
node's credential). State-of-the-world ADS is not served (UNIMPLEMENTED).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from control.ca import spiffe_id
from control.ca.grpc_service import peer_spiffe_id
from control.catalog import Catalog, Change
from control.metrics import ControlMetrics
from control.xds.resources import SHORT_NAMES
from control.xds.session import NODE, WAYPOINT, DeltaSession

log = logging.getLogger("lacewing.control.xds")

_ids = itertools.count(1)

# A client that falls this many responses behind stops getting per-change pushes; once its
# queue drains it gets one catch-up diff per type instead (memory stays bounded, nothing lost).
MAX_QUEUED = 64


class _Client:
    def __init__(self, *, node: str, role: str, waypoint: str, peer: str, client_id: str) -> None:
        self.id = next(_ids)
        self.node = node
        self.role = role
        self.waypoint = waypoint
        self.peer = peer
        self.client_id = client_id
        self.session = DeltaSession(role=role, waypoint=waypoint)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.connected_at = time.time()
        self.behind = False


class XdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, *, catalog: Catalog, metrics: ControlMetrics, trust_domain: str) -> None:
        self.catalog = catalog
        self.metrics = metrics
        self.trust_domain = trust_domain
        self.clients: dict[int, _Client] = {}
        catalog.listeners.append(self._on_change)

    def register(self, server: grpc.aio.Server) -> None:
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, server)

    # --- catalog changes ------------------------------------------------------------------------
    def _on_change(self, change: Change) -> None:
        now = time.monotonic()
        for client in list(self.clients.values()):
            if client.queue.qsize() >= MAX_QUEUED or client.behind:
                client.behind = True
                continue
            if change.changed:
                out = client.session.on_change(change, self.catalog, now=now)
            else:
                out = client.session.on_ready(self.catalog, now=now)
            for resp in out:
                client.queue.put_nowait(resp)

    # --- the stream -----------------------------------------------------------------------------
    async def StreamAggregatedResources(self, request_iterator, context):  # noqa: N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "Lacewing serves delta xDS only: use DeltaAggregatedResources")

    async def DeltaAggregatedResources(self, request_iterator, context):  # noqa: N802
        uri = peer_spiffe_id(context)
        try:
            ident = spiffe_id.parse(uri) if uri else None
        except spiffe_id.SpiffeIdError:
            ident = None
        if not isinstance(ident, spiffe_id.NodeId) or ident.trust_domain != self.trust_domain:
            log.warning("refused xDS stream from %s: not a node of %s", uri or context.peer(),
                        self.trust_domain)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"caller {uri or '(no SPIFFE ID)'} is not a node agent of trust "
                                f"domain {self.trust_domain}")
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        meta = first.node.metadata.fields if first.HasField("node") else {}
        role = meta["role"].string_value if "role" in meta else NODE
        if role not in (NODE, WAYPOINT):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"node.metadata.role must be {NODE!r} or {WAYPOINT!r}")
        waypoint = meta["waypoint"].string_value if "waypoint" in meta else ""
        client = _Client(node=ident.node, role=role, waypoint=waypoint, peer=context.peer(),
                         client_id=first.node.id if first.HasField("node") else ident.node)
        self.clients[client.id] = client
        self.metrics.connected.labels(role=role).inc()
        log.info("xDS stream %d from node %s (%s%s) at %s", client.id, client.node, role,
                 f" {waypoint}" if waypoint else "", client.peer)
        writer = asyncio.create_task(self._write(client, context))
        try:
            self._handle(client, first)
            while True:
                req = await context.read()
                if req is grpc.aio.EOF:
                    break
                self._handle(client, req)
        except asyncio.CancelledError:
            raise
        finally:
            self.clients.pop(client.id, None)
            self.metrics.connected.labels(role=role).dec()
            writer.cancel()
            log.info("xDS stream %d from node %s closed", client.id, client.node)

    def _handle(self, client: _Client, req: discovery_pb2.DeltaDiscoveryRequest) -> None:
        for resp in client.session.on_request(req, self.catalog, now=time.monotonic()):
            client.queue.put_nowait(resp)
        for ack in client.session.acks:
            if ack.convergence is not None:
                self.metrics.convergence.observe(ack.convergence)
            for rej in ack.rejected:
                self.metrics.rejects.labels(type=SHORT_NAMES.get(rej.type_url, rej.type_url)).inc()
                log.warning("node %s rejected %s %s (version %s): %s", client.node,
                            SHORT_NAMES.get(rej.type_url, rej.type_url), rej.name, rej.version,
                            rej.reason)
        client.session.acks.clear()

    async def _write(self, client: _Client, context) -> None:
        while True:
            resp = await client.queue.get()
            self.metrics.pushes.labels(type=SHORT_NAMES.get(resp.type_url, resp.type_url)).inc()
            self.metrics.pushed_bytes.inc(client.session.sizes.pop(resp.nonce, 0))
            await context.write(resp)
            if client.behind and client.queue.empty():
                client.behind = False
                log.info("xDS stream %d (node %s) caught up; sending what it missed", client.id,
                         client.node)
                for catch_up in client.session.on_ready(self.catalog, now=time.monotonic()):
                    client.queue.put_nowait(catch_up)

    # --- status ---------------------------------------------------------------------------------
    def describe(self) -> list[dict]:
        now_mono, now = time.monotonic(), time.time()
        out = []
        for c in sorted(self.clients.values(), key=lambda c: (c.role, c.node, c.waypoint, c.id)):
            d = c.session.describe()
            d.update(
                stream=c.id, node=c.node, role=c.role, waypoint=c.waypoint, id=c.client_id,
                peer=c.peer, connectedAt=c.connected_at,
                lastPush=(now - (now_mono - c.session.last_push)) if c.session.last_push else None,
                lastAck=(now - (now_mono - c.session.last_ack)) if c.session.last_ack else None,
                catalogVersion=self.catalog.version_info,
            )
            out.append(d)
        return out
