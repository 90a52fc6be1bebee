"""The one state a data plane reads, written only by its xDS client.

Before: the xDS client (node_agent/xds/client.py) decoded a response into typed resources.
After: `apply` installs the whole response at once — a new dict for that type, then a new frozen
snapshot built by `control.snapshots` (the same function the control plane uses, so "converged"
means equal) swapped in with one assignment — and then calls every subscriber with the new
snapshot (the eBPF enrollment driver, the node tunnel, the certificate manager's `retain`).
Readers just read `state.snapshot`; they never see half of a response. While the control plane
is away nothing changes here: the last accepted snapshot keeps serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from control.snapshot import NodeSnapshot, Waypoint, WaypointSnapshot
from control.snapshots import node_snapshot, node_snapshot_with, waypoint_snapshot
from control.xds import resources as r

log = logging.getLogger("lacewing.xds.state")

# build(previous snapshot or None, changed type URL, its objects, version, all objects by type)
Builder = Callable[[Any, str, Mapping[str, Any], str, Mapping[str, Mapping[str, Any]]], Any]
Subscriber = Callable[[Any], None]


def node_builder(node: str) -> Builder:
    def build(prev, type_url, objs, version, by_type):
        if prev is None:
            return node_snapshot(node, version, by_type)
        return node_snapshot_with(prev, type_url, objs, version)  # O(the changed type)
    return build


def waypoint_builder(namespace: str, name: str) -> Builder:
    key = f"{namespace}/{name}"

    def build(prev, type_url, objs, version, by_type):
        wp = by_type.get(r.WAYPOINT, {}).get(key) or Waypoint(namespace=namespace, name=name,
                                                            identity="")
        return waypoint_snapshot(wp, version, by_type)
    return build


class XdsState:
    def __init__(self, *, build: Builder, type_urls: tuple[str, ...]) -> None:
        self._build = build
        self.type_urls = type_urls
        self._versions: dict[str, dict[str, str]] = {t: {} for t in type_urls}
        self._objects: dict[str, Mapping[str, Any]] = {t: MappingProxyType({}) for t in type_urls}
        self.system_versions: dict[str, str] = {}
        self.snapshot: NodeSnapshot | WaypointSnapshot = build(None, "", {}, "", self._objects)
        self.subscribers: list[Subscriber] = []
        self.updates = 0
        self.last_update: float | None = None
        self.received_any = False

    @classmethod
    def for_node(cls, node: str) -> XdsState:
        return cls(build=node_builder(node), type_urls=r.NODE_TYPES)

    @classmethod
    def for_waypoint(cls, namespace: str, name: str) -> XdsState:
        return cls(build=waypoint_builder(namespace, name), type_urls=r.WAYPOINT_TYPES)

    def versions(self, type_url: str) -> dict[str, str]:
        """What this data plane holds of a type: sent as `initial_resource_versions`."""
        return dict(self._versions.get(type_url, {}))

    def apply(self, type_url: str, upserts: Mapping[str, tuple[str, Any]],
              removes: list[str] | tuple[str, ...], *, system_version: str) -> Any:
        # Copy-on-write: new dicts for the changed type (C-level copies), never mutated later.
        versions = dict(self._versions.get(type_url, {}))
        objs = dict(self._objects.get(type_url, {}))
        for name in removes:
            versions.pop(name, None)
            objs.pop(name, None)
        for name, (version, obj) in upserts.items():
            versions[name] = version
            objs[name] = obj
        view = MappingProxyType(objs)
        objects = {**self._objects, type_url: view}
        snapshot = self._build(self.snapshot if self.received_any else None, type_url, view,
                               system_version, objects)
        # The swap: everything above is new; these assignments publish it.
        self._versions[type_url] = versions
        self._objects = objects
        self.system_versions[type_url] = system_version
        self.snapshot = snapshot
        self.updates += 1
        self.last_update = time.time()
        self.received_any = True
        for sub in list(self.subscribers):
            try:
                sub(snapshot)
            except Exception:  # noqa: BLE001 - one subscriber must not stop the others
                log.exception("snapshot subscriber %r failed", sub)
        return snapshot

    def describe(self) -> dict:
        """JSON-able view for the admin endpoint's /config_dump."""
        snap = self.snapshot
        out: dict[str, Any] = {
            "version": snap.version, "updates": self.updates, "lastUpdate": self.last_update,
            "systemVersions": {r.SHORT_NAMES.get(t, t): v for t, v in self.system_versions.items()},
            "resources": {r.SHORT_NAMES.get(t, t): dict(sorted(res.items()))
                          for t, res in self._versions.items()},
        }
        if isinstance(snap, NodeSnapshot):
            out["node"] = snap.node
            out["trustDomain"] = snap.trust_domain
            out["workloads"] = {uid: _workload_json(w) for uid, w in sorted(snap.workloads.items())}
            out["services"] = {uid: _service_json(s) for uid, s in sorted(snap.services.items())}
            out["waypoints"] = {k: {"identity": w.identity, "addresses": list(w.addresses)}
                                for k, w in sorted(snap.waypoints.items())}
            out["peerAuthentications"] = [p.to_dict() for p in snap.peer_authentications]
            out["authorizationPolicies"] = [p.to_dict() for p in snap.authorization_policies]
        else:
            out["waypoint"] = f"{snap.waypoint.namespace}/{snap.waypoint.name}"
            out["services"] = {uid: _service_json(s) for uid, s in sorted(snap.services.items())}
            for attr in ("virtual_services", "destination_rules", "authorization_policies",
                         "rate_limit_policies"):
                out[attr] = [p.to_dict() for p in getattr(snap, attr)]
        return out


def _workload_json(w) -> dict:
    return {"node": w.node, "ip": w.ip, "nodeIP": w.node_ip, "identity": w.identity,
            "enrolled": w.enrolled, "ready": w.ready, "waypoint": w.waypoint,
            "labels": dict(w.labels),
            "excludeOutboundPorts": sorted(w.exclude_outbound_ports),
            "excludeInboundPorts": sorted(w.exclude_inbound_ports)}


def _service_json(s) -> dict:
    return {"vip": s.vip, "waypoint": s.waypoint,
            "ports": [{"port": p.port, "targetPort": p.target_port, "name": p.name,
                       "appProtocol": p.app_protocol} for p in s.ports],
            "endpoints": [{"workload": e.workload, "ip": e.ip,
                           "ports": {str(k): v for k, v in e.ports.items()}}
                          for e in s.endpoints]}
