"""Assemble `NodeSnapshot` / `WaypointSnapshot` from resources by type: pure, used on both ends.

Before: a set of typed resources by type URL — the catalog's view for one audience on the
control plane (debug and tests), or what a data plane's xDS client has accepted
(node_agent/xds/state.py). After: the frozen snapshot of `control/snapshot.py` that the data path
reads. Because both ends use this one function, "the node converged" means "the node's snapshot
equals the control plane's snapshot for it".

A waypoint keeps only what concerns it: the Services that use it (and the workloads behind them),
the VirtualServices whose hosts name one of those Services, the DestinationRules for them, the
AuthorizationPolicies that target the waypoint (kind Gateway) or one of its Services, and the
RateLimitPolicies of its Services (a policy without targetRef covers its whole namespace).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from control.config.model import AuthorizationPolicy, Resource
from control.snapshot import NodeSnapshot, Service, Waypoint, WaypointSnapshot
from control.xds import resources as r

ByType = Mapping[str, Mapping[str, Any]]


def _sorted(objs: Mapping[str, Any]) -> tuple:
    return tuple(objs[n] for n in sorted(objs))


def trust_domain_of(by_type: ByType) -> str:
    mesh = by_type.get(r.MESH, {}).get("mesh")
    return mesh.trust_domain if mesh is not None else "cluster.local"


def node_snapshot_with(prev: NodeSnapshot, type_url: str, objs: Mapping[str, Any],
                       version: str) -> NodeSnapshot:
    """`prev` with one type's resources replaced by `objs` — O(that type), not O(mesh).

    `objs` must not be changed afterwards (the snapshot keeps a read-only view of it)."""
    view = objs if isinstance(objs, MappingProxyType) else MappingProxyType(objs)
    if type_url == r.WORKLOAD:
        return replace(prev, version=version, workloads=view)
    if type_url == r.SERVICE:
        return replace(prev, version=version, services=view)
    if type_url == r.WAYPOINT:
        return replace(prev, version=version, waypoints=view)
    if type_url == r.PEER_AUTHENTICATION:
        return replace(prev, version=version, peer_authentications=_sorted(objs))
    if type_url == r.AUTHORIZATION_POLICY:
        return replace(prev, version=version, authorization_policies=tuple(
            p for p in _sorted(objs) if not p.spec.targets))
    if type_url == r.MESH:
        mesh = objs.get("mesh")
        return replace(prev, version=version,
                       trust_domain=mesh.trust_domain if mesh is not None else "cluster.local")
    return replace(prev, version=version)


def node_snapshot(node: str, version: str, by_type: ByType) -> NodeSnapshot:
    snap = NodeSnapshot(version=version, node=node)
    for type_url in r.NODE_TYPES:
        snap = node_snapshot_with(snap, type_url, dict(by_type.get(type_url, {})), version)
    return snap


def _host_names(svc: Service) -> set[str]:
    return {svc.hostname, f"{svc.name}.{svc.namespace}.svc", f"{svc.name}.{svc.namespace}",
            svc.name}


def _names_service(host: str, resource: Resource, svc: Service) -> bool:
    if host == svc.name:
        return resource.namespace == svc.namespace
    return host in _host_names(svc) or host == "*"


def _targets(policy: Any, waypoint: Waypoint, services: Mapping[str, Service]) -> bool:
    for ref in policy.spec.targets if hasattr(policy.spec, "targets") else ():
        if ref.kind == "Gateway" and ref.name == waypoint.name \
                and policy.namespace == waypoint.namespace:
            return True
        if ref.kind == "Service" and f"{policy.namespace}/{ref.name}" in services:
            return True
    return False


def waypoint_snapshot(waypoint: Waypoint, version: str, by_type: ByType) -> WaypointSnapshot:
    key = f"{waypoint.namespace}/{waypoint.name}"
    all_services = by_type.get(r.SERVICE, {})
    services = {n: s for n, s in all_services.items() if s.waypoint == key}
    behind = {e.workload for s in services.values() for e in s.endpoints}
    workloads = {n: w for n, w in by_type.get(r.WORKLOAD, {}).items() if n in behind}
    vss = tuple(vs for vs in _sorted(by_type.get(r.VIRTUAL_SERVICE, {}))
                if any(_names_service(h, vs, s) for h in vs.spec.hosts for s in services.values()))
    drs = tuple(dr for dr in _sorted(by_type.get(r.DESTINATION_RULE, {}))
                if any(_names_service(dr.spec.host, dr, s) for s in services.values()))
    aps = tuple(p for p in _sorted(by_type.get(r.AUTHORIZATION_POLICY, {}))
                if isinstance(p, AuthorizationPolicy) and _targets(p, waypoint, services))
    rls = []
    for p in _sorted(by_type.get(r.RATE_LIMIT_POLICY, {})):
        ref = p.spec.target_ref
        if ref is None:
            if any(s.namespace == p.namespace for s in services.values()):
                rls.append(p)
        elif ref.kind == "Service" and f"{p.namespace}/{ref.name}" in services:
            rls.append(p)
    return WaypointSnapshot(
        version=version, waypoint=waypoint, trust_domain=trust_domain_of(by_type),
        services=MappingProxyType(services), workloads=MappingProxyType(workloads),
        virtual_services=vss, destination_rules=drs, authorization_policies=aps,
        rate_limit_policies=tuple(rls))
