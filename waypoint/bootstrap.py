"""A static snapshot from YAML: how a waypoint runs before (or without) the xDS client.

Before: a file of YAML documents — mesh configuration (VirtualService, DestinationRule,
AuthorizationPolicy, RateLimitPolicy, validated by `control.config` exactly as `lacewing
validate` does) and one `WaypointServices` document describing the waypoint, its Services and
their endpoints. After: a `control.snapshot.WaypointSnapshot`, the same type the control plane
sends, so nothing downstream knows where it came from.

```yaml
apiVersion: lacewing.dev/v1alpha1
kind: WaypointServices
waypoint: {namespace: demo, name: waypoint}
services:
- name: reviews
  namespace: demo
  vip: 10.96.0.20            # optional
  ports: [{port: 9080, targetPort: 9080}]
  endpoints:
  - {name: reviews-v1-0, ip: 10.244.1.5, labels: {app: reviews, version: v1},
     serviceAccount: reviews, enrolled: true, nodeIP: 10.0.0.2}
```
An endpoint that is `enrolled` is reached through the node tunnel at its `nodeIP` (mutual TLS,
docs/tunnel.md); one that is not is connected to directly. `port` (one port for every service
port) or `ports` (service port → target port) override the Service's target ports.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from types import MappingProxyType
from typing import Any

from control.config.errors import INVALID, UNSUPPORTED, ConfigError
from control.config.loader import load_documents
from control.config.model import (
    AuthorizationPolicy,
    DestinationRule,
    RateLimitPolicy,
    Resource,
    VirtualService,
)
from control.config.validate import validate_documents
from control.snapshot import Endpoint, Service, ServicePort, Waypoint, WaypointSnapshot, Workload

KIND = "WaypointServices"


def parse_resources(text: str | bytes, *, name: str = "<config>") -> list[Resource]:
    data = text.encode() if isinstance(text, str) else text
    docs = [d for d in load_documents(data, name=name) if d.obj.get("kind") != KIND]
    resources, problems = validate_documents(docs)
    bad = [p for p in problems if p.kind in (INVALID, UNSUPPORTED)]
    if bad:
        raise ConfigError(bad)
    return resources


def snapshot(*, waypoint: tuple[str, str] = ("default", "waypoint"),
             services: Iterable[dict[str, Any]] = (), resources: Iterable[Resource] = (),
             trust_domain: str = "cluster.local", version: str = "static",
             waypoint_identity: str | None = None) -> WaypointSnapshot:
    """Services as plain dicts (the `WaypointServices` shape) plus typed resources."""
    ns, name = waypoint
    svcs: dict[str, Service] = {}
    workloads: dict[str, Workload] = {}
    for s in services:
        sns = s.get("namespace", ns)
        ports = tuple(ServicePort(int(p["port"]), int(p.get("targetPort", p["port"])),
                                  p.get("name", ""), p.get("appProtocol", ""))
                      for p in s.get("ports", [{"port": 80}]))
        eps = []
        for i, e in enumerate(s.get("endpoints", [])):
            wname = e.get("name", f"{s['name']}-{i}")
            sa = e.get("serviceAccount", s["name"])
            uid = f"{sns}/{wname}"
            labels = dict(e.get("labels", {}))
            port_map = {p.port: int(e.get("ports", {}).get(p.port, p.target_port))
                        for p in ports}
            if "port" in e:  # one port for every service port (tests on loopback)
                port_map = {p.port: int(e["port"]) for p in ports}
            workloads[uid] = Workload(
                namespace=sns, name=wname, node=e.get("node", "local"), ip=e["ip"],
                node_ip=e.get("nodeIP", e["ip"]), service_account=sa,
                identity=e.get("identity", f"spiffe://{trust_domain}/ns/{sns}/sa/{sa}"),
                labels=MappingProxyType(labels), enrolled=bool(e.get("enrolled", False)),
                ready=True,
                waypoint=f"{ns}/{name}")
            eps.append(Endpoint(uid, e["ip"], MappingProxyType(port_map)))
        svc = Service(sns, s["name"], s.get("vip", ""), ports, tuple(eps), f"{ns}/{name}",
                      MappingProxyType(dict(s.get("labels", {}))))
        svcs[svc.uid] = svc
    resources = list(resources)
    return WaypointSnapshot(
        version=version,
        waypoint=Waypoint(ns, name, waypoint_identity or
                          f"spiffe://{trust_domain}/ns/{ns}/sa/{name}"),
        trust_domain=trust_domain,
        services=MappingProxyType(svcs),
        workloads=MappingProxyType(workloads),
        virtual_services=tuple(r for r in resources if isinstance(r, VirtualService)),
        destination_rules=tuple(r for r in resources if isinstance(r, DestinationRule)),
        authorization_policies=tuple(r for r in resources if isinstance(r, AuthorizationPolicy)),
        rate_limit_policies=tuple(r for r in resources if isinstance(r, RateLimitPolicy)),
    )


def load_file(path: str | Path) -> WaypointSnapshot:
    """A bootstrap file: mesh resources plus one `WaypointServices` document."""
    data = Path(path).read_bytes()
    docs = load_documents(data, name=str(path))
    spec = [d.obj for d in docs if d.obj.get("kind") == KIND]
    if len(spec) != 1:
        raise ValueError(f"{path}: expected exactly one {KIND} document, found {len(spec)}")
    wp = spec[0].get("waypoint", {})
    return snapshot(waypoint=(wp.get("namespace", "default"), wp.get("name", "waypoint")),
                    waypoint_identity=wp.get("identity"),
                    services=spec[0].get("services", []),
                    resources=parse_resources(data, name=str(path)),
                    trust_domain=spec[0].get("trustDomain", "cluster.local"))
