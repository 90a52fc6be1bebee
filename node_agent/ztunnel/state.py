"""Lookup tables over one NodeSnapshot: by IP, local workloads, identities served here.

Before: the node agent's snapshot subscriber received a new `control.snapshot.NodeSnapshot`.
After: a `NodeState` built once per snapshot (one writer), read by every connection handler
without locks — the decision functions (`outbound`, `inbound`) take it as their input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from control.snapshot import NodeSnapshot, Service, Workload


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
