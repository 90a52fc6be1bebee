"""Lookup tables over one NodeSnapshot: by IP, local workloads, identities served here.

Before: the node agent's snapshot subscriber received a new `control.snapshot.NodeSnapshot`.
After: a `NodeState` built once per snapshot (one writer), read by every connection handler
without locks — the decision functions (`outbound`, `inbound`) take it as their input; and
`service_capture(snapshot)`, the Service VIPs the node's eBPF capture must take from unenrolled
pods before the node's DNAT (the agent writes them with `Datapath.set_services`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from control.snapshot import NodeSnapshot, Service, Workload
from node_agent.ztunnel.balancer import ready_endpoints


@dataclass(frozen=True)
class NodeState:
    snapshot: NodeSnapshot
    workloads_by_ip: dict[str, Workload] = field(default_factory=dict)
    local_by_ip: dict[str, Workload] = field(default_factory=dict)
    services_by_vip: dict[str, Service] = field(default_factory=dict)
    local_identities: frozenset[str] = frozenset()

    @classmethod
    def of(cls, snapshot: NodeSnapshot) -> NodeState:
        by_ip = {w.ip: w for w in snapshot.workloads.values()}
        local = {w.ip: w for w in snapshot.workloads.values() if w.node == snapshot.node}
        vips = {s.vip: s for s in snapshot.services.values() if s.vip}
        idents = frozenset(w.identity for w in local.values() if w.enrolled)
        return cls(snapshot, by_ip, local, vips, idents)

    @property
    def node(self) -> str:
        return self.snapshot.node

    @property
    def version(self) -> str:
        return self.snapshot.version


EMPTY = NodeState.of(NodeSnapshot(version="", node=""))


@dataclass(frozen=True)
class ServiceCapture:
    """What `lw_vips` must hold for one node (docs/datapath.md, "Service VIPs")."""

    vips: frozenset[tuple[str, int]] = frozenset()       # (cluster IP, port) to capture
    backends: frozenset[tuple[str, int]] = frozenset()   # (endpoint IP, port) dialled for them


def service_capture(snapshot: NodeSnapshot) -> ServiceCapture:
    """The (cluster IP, port) of every Service port with a ready, enrolled endpoint on this
    node — an unenrolled pod's connection to it could be DNATed to that pod behind the
    capture's back, so the capture takes it first and :15006 balances it — and the endpoints
    of those ports, which the tunnel may then dial keeping the client's address. An enrolled
    endpoint of this node is among them too: while it is enrolled its own program steers its
    replies, but should it leave the mesh with such a connection open, its backend entry is
    what still takes those replies to the tunnel's socket (the entry drains,
    `Datapath.set_services`)."""
    vips, backends = set(), set()
    for service in snapshot.services.values():
        if not service.vip:
            continue
        for sp in service.ports:
            ready = ready_endpoints(service, sp.port, snapshot.workloads)
            if not any(w.enrolled and w.node == snapshot.node for w, _ in ready):
                continue
            vips.add((service.vip, sp.port))
            backends.update((a.ip, a.port) for _, a in ready)
    return ServiceCapture(frozenset(vips), frozenset(backends))
