"""The outbound decision: what to do with a connection a pod of this node opened, before any
socket is opened toward the destination (the shape of ztunnel's `proxy/outbound.rs`).

Before: the capture handed a connection to :15001; its peer address is the source pod, its local
address the original destination (`NodeState` is the current snapshot). After: a `Request` —
`tunnel` (mTLS to the destination node's :15008, presenting the source's SVID and requiring the
destination's), `waypoint` (the same, to the waypoint), `direct` (the destination is not in the
mesh: plain TCP to it) or `deny` (fail closed, with the reason).

A Service cluster IP is resolved here: its port to the endpoint's target port, the endpoint by
round robin over the ready ones. `same_node` marks tunnel requests whose destination lives on
this node: the proxy then decides inbound policy in-process and connects to the pod itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from control.snapshot import Service, Workload
from node_agent.ztunnel.balancer import RoundRobin, ready_endpoints
from node_agent.ztunnel.state import NodeState
from node_agent.ztunnel.wire import Address

TUNNEL_PORT = 15008
TUNNEL, WAYPOINT, DIRECT, DENY = "tunnel", "waypoint", "direct", "deny"


@dataclass(frozen=True)
class Request:
    kind: str                            # tunnel | waypoint | direct | deny
    reason: str = ""
    source: Workload | None = None
    next_hop: Address | None = None      # where to connect
    source_identity: str | None = None   # the SVID to present
    expected_identity: str | None = None  # the SPIFFE ID the server must present
    target: Address | None = None        # the address carried in the tunnel header
    destination: Workload | None = None  # the workload reached (None: waypoint or off-mesh)
    service: Service | None = None
    same_node: bool = False


def _deny(reason: str, source: Workload | None = None, service: Service | None = None) -> Request:
    return Request(DENY, reason, source=source, service=service)


def decide(state: NodeState, src_ip: str, orig_dst: Address, *,
           balancer: RoundRobin | None = None) -> Request:
    src = state.local_by_ip.get(src_ip)
    if src is None or not src.enrolled:
        return _deny(f"source {src_ip} is not an enrolled pod of node {state.node}")
    ident = src.identity

    service = state.services_by_vip.get(orig_dst.ip)
    if service is not None:
        if not any(sp.port == orig_dst.port for sp in service.ports):
            return _deny(f"service {service.uid} has no port {orig_dst.port}", src, service)
        if service.waypoint:
            return _to_waypoint(state, src, service.waypoint, orig_dst, service=service)
        ready = ready_endpoints(service, orig_dst.port, state.snapshot.workloads)
        if not ready:
            return _deny(f"service {service.uid} has no ready endpoint for port {orig_dst.port}",
                         src, service)
        dst, target = (balancer or RoundRobin()).pick(service.uid, ready)
        return _to_workload(state, src, dst, target, service=service)

    dst = state.workloads_by_ip.get(orig_dst.ip)
    if dst is None:
        return Request(DIRECT, "destination is outside the mesh", source=src, source_identity=ident,
                       next_hop=orig_dst, target=orig_dst)
    if dst.waypoint:
        return _to_waypoint(state, src, dst.waypoint, orig_dst, destination=dst)
    return _to_workload(state, src, dst, orig_dst)


def _to_workload(state: NodeState, src: Workload, dst: Workload, target: Address, *,
                 service: Service | None = None) -> Request:
    if not dst.enrolled:
        return Request(DIRECT, f"destination {dst.uid} is not enrolled in the mesh", source=src,
                       source_identity=src.identity, next_hop=target, target=target,
                       destination=dst, service=service)
    if target.port in dst.exclude_inbound_ports:
        return Request(DIRECT, f"port {target.port} of {dst.uid} is excluded from the mesh",
                       source=src, source_identity=src.identity, next_hop=target, target=target,
                       destination=dst, service=service)
    return Request(TUNNEL, f"mTLS to {dst.uid}", source=src,
                   next_hop=Address(dst.node_ip, TUNNEL_PORT), source_identity=src.identity,
                   expected_identity=dst.identity, target=target, destination=dst,
                   service=service, same_node=dst.node == state.node)


def _to_waypoint(state: NodeState, src: Workload, name: str, target: Address, *,
                 service: Service | None = None, destination: Workload | None = None) -> Request:
    wp = state.snapshot.waypoints.get(name)
    if wp is None or not wp.addresses:
        return _deny(f"waypoint {name} is not known or has no address (fail closed)", src, service)
    hop = wp.addresses[0]
    host, _, port = hop.rpartition(":") if hop.count(":") == 1 else (hop, "", "")
    addr = Address(host, int(port)) if port else Address(hop, TUNNEL_PORT)
    return Request(WAYPOINT, f"through waypoint {name}", source=src, next_hop=addr,
                   source_identity=src.identity, expected_identity=wp.identity, target=target,
                   destination=destination, service=service)
