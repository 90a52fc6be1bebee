"""A NodeSnapshot as a JSON file — for the standalone tunnel (perf, debugging, tier-3 tests)
where no control plane pushes one. The node agent never uses this: it gets snapshots over xDS.

Before: a JSON object (below). After: a `control.snapshot.NodeSnapshot`; mesh resources go
through the same validator as every other input (`control.config.validate`).

    {"version": "1", "node": "node0", "trust_domain": "cluster.local",
     "workloads": [{"namespace", "name", "node", "ip", "node_ip", "service_account",
                    "labels": {}, "enrolled": true, "ready": true, "waypoint": null}],
     "services": [{"namespace", "name", "vip", "ports": [{"port", "target_port", "name"}],
                   "endpoints": [{"workload": "ns/name", "ip", "ports": {"80": 8080}}],
                   "waypoint": null}],
     "waypoints": [{"namespace", "name", "identity", "addresses": []}],
     "resources": [<Istio AuthorizationPolicy / PeerAuthentication objects>]}
"""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType
from typing import Any

from control.config.loader import Document
from control.config.model import AuthorizationPolicy, PeerAuthentication
from control.config.validate import validate_document
from control.snapshot import Endpoint, NodeSnapshot, Service, ServicePort, Waypoint, Workload


class SnapshotFileError(ValueError):
    pass


def _workload(d: dict[str, Any], td: str) -> Workload:
    ident = d.get("identity") or f"spiffe://{td}/ns/{d['namespace']}/sa/{d['service_account']}"
    return Workload(namespace=d["namespace"], name=d["name"], node=d["node"], ip=d["ip"],
                    node_ip=d["node_ip"], service_account=d["service_account"], identity=ident,
                    labels=MappingProxyType(dict(d.get("labels") or {})),
                    enrolled=bool(d.get("enrolled", True)), ready=bool(d.get("ready", True)),
                    waypoint=d.get("waypoint"))


def _service(d: dict[str, Any]) -> Service:
    return Service(
        namespace=d["namespace"], name=d["name"], vip=d["vip"],
        ports=tuple(ServicePort(port=p["port"], target_port=p.get("target_port", p["port"]),
                                name=p.get("name", "")) for p in d.get("ports", ())),
        endpoints=tuple(Endpoint(workload=e["workload"], ip=e["ip"], ports=MappingProxyType(
            {int(k): int(v) for k, v in (e.get("ports") or {}).items()}))
            for e in d.get("endpoints", ())),
        waypoint=d.get("waypoint"))


def parse(obj: dict[str, Any], *, source: str = "snapshot") -> NodeSnapshot:
    """Raises SnapshotFileError (and nothing else) for anything that is not a valid file."""
    try:
        return _parse(obj, source)
    except SnapshotFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SnapshotFileError(f"{source}: {type(exc).__name__}: {exc}") from None


def _list(obj: dict[str, Any], key: str) -> list:
    value = obj.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise SnapshotFileError(f"`{key}` must be a list of objects")
    return value


def _parse(obj: dict[str, Any], source: str) -> NodeSnapshot:
    if not isinstance(obj, dict):
        raise SnapshotFileError(f"{source}: the file must hold one JSON object")
    node, td = obj.get("node"), obj.get("trust_domain", "cluster.local")
    if not isinstance(node, str) or not node or not isinstance(td, str):
        raise SnapshotFileError(f"{source}: `node` (and `trust_domain`) must be strings")
    workloads = [_workload(w, td) for w in _list(obj, "workloads")]
    services = [_service(s) for s in _list(obj, "services")]
    waypoints = [Waypoint(namespace=w["namespace"], name=w["name"], identity=w["identity"],
                          addresses=tuple(w.get("addresses", ())))
                 for w in _list(obj, "waypoints")]
    authz, peer = [], []
    for i, res in enumerate(_list(obj, "resources")):
        r, problems = validate_document(Document(source, i, res))
        bad = [p for p in problems if p.kind != "warning"]
        if r is None or bad:
            raise SnapshotFileError(f"{source}: resource {i}: {bad}")
        if isinstance(r, AuthorizationPolicy):
            authz.append(r)
        elif isinstance(r, PeerAuthentication):
            peer.append(r)
    for w in workloads:
        for attr in ("namespace", "name", "node", "ip", "node_ip", "service_account"):
            if not isinstance(getattr(w, attr), str):
                raise SnapshotFileError(f"{source}: workload field `{attr}` must be a string")
    return NodeSnapshot(
        version=str(obj.get("version", "1")), node=node, trust_domain=td,
        workloads=MappingProxyType({w.uid: w for w in workloads}),
        services=MappingProxyType({s.uid: s for s in services}),
        waypoints=MappingProxyType({f"{w.namespace}/{w.name}": w for w in waypoints}),
        authorization_policies=tuple(authz), peer_authentications=tuple(peer))


def load(path: str | Path) -> NodeSnapshot:
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SnapshotFileError(f"{path}: {exc}") from None
    return parse(obj, source=str(path))
