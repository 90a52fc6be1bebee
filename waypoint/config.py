"""The waypoint's view of a snapshot: services by host, routes, clusters and policies.

Before: a `control.snapshot.WaypointSnapshot` (from the xDS client, or `bootstrap` for a static
file). After: a frozen `WaypointConfig` the request path reads without searching:

- `service_for(authority, port)`: the Service a request is for — by its hostname in any of the
  forms a client writes (`name`, `name.ns`, `name.ns.svc`, the FQDN), by cluster IP, or the
  listener's default service;
- `routes[service uid]`: the HTTP routes of the VirtualService bound to it (first one in
  snapshot order, as Istio does for mesh traffic), or none (all traffic to the service);
- `cluster(service uid, port, subset)`: endpoints (`ip:port`, workload uid), the merged
  traffic policy (a subset's settings override the rule's, field by field), built on demand
  and cached;
- authorization policies per Service (targetRef, this waypoint's Gateway, namespace-wide)
  and per workload (sidecar-style `selector` policies, enforced for that workload here);
- rate-limit policies per Service.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from control.config.model import (
    AuthorizationPolicy,
    DestinationRule,
    HTTPRoute,
    RateLimitPolicy,
    Subset,
    TrafficPolicy,
    VirtualService,
)
from control.snapshot import Service, WaypointSnapshot, Workload

ROOT_NAMESPACE = "istio-system"


def fqdn(host: str, namespace: str, *, domain: str = "cluster.local") -> str:
    """Istio's rule: a short name is relative to the resource's namespace."""
    host = host.lower()
    if "." not in host and host != "*":
        return f"{host}.{namespace}.svc.{domain}"
    return host


def host_matches(pattern: str, hostname: str) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return hostname.endswith(pattern[1:])
    return pattern == hostname


def _merge(top: TrafficPolicy | None, sub: TrafficPolicy | None) -> TrafficPolicy:
    top = top or TrafficPolicy()
    if sub is None:
        return top
    return TrafficPolicy(
        load_balancer=sub.load_balancer or top.load_balancer,
        connection_pool=sub.connection_pool or top.connection_pool,
        outlier_detection=sub.outlier_detection or top.outlier_detection,
    )


@dataclass(frozen=True, slots=True)
class Host:
    address: str          # "ip:port", the balancer's key
    ip: str
    port: int
    workload: str         # Workload uid
    version: str          # its `version` label, for metrics


@dataclass(frozen=True, slots=True)
class Cluster:
    key: tuple[str, int, str]            # (service uid, service port, subset name or "")
    service: Service
    port: int
    subset: str
    hosts: tuple[Host, ...]
    policy: TrafficPolicy
    h2: bool = False          # the port speaks HTTP/2 (gRPC): upstream streams, not HTTP/1.1

    @property
    def name(self) -> str:
        uid, port, subset = self.key
        return f"outbound|{port}|{subset}|{self.service.hostname}"


H2_PROTOCOLS = frozenset({"http2", "grpc", "grpc-web", "h2c"})


def speaks_h2(service: Service, port: int) -> bool:
    """Istio's rule: `appProtocol`, else the port name's prefix (`grpc-...`, `http2-...`)."""
    for sp in service.ports:
        if sp.port == port:
            proto = (sp.app_protocol or sp.name.split("-", 1)[0]).lower()
            return proto in H2_PROTOCOLS
    return False


def _labels_match(selector: dict | None, labels) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


@dataclass
class WaypointConfig:
    snapshot: WaypointSnapshot
    default_service: str | None = None
    by_host: dict[str, Service] = field(default_factory=dict)
    routes: dict[str, tuple[HTTPRoute, ...]] = field(default_factory=dict)
    route_owner: dict[str, VirtualService] = field(default_factory=dict)
    rules: dict[str, DestinationRule] = field(default_factory=dict)   # by service FQDN
    _clusters: dict[tuple[str, int, str], Cluster | None] = field(default_factory=dict)
    _authz_service: dict[str, tuple[AuthorizationPolicy, ...]] = field(default_factory=dict)
    _authz_workload: dict[str, tuple[AuthorizationPolicy, ...]] = field(default_factory=dict)
    _ratelimits: dict[str, tuple[RateLimitPolicy, ...]] = field(default_factory=dict)
    _by_authority: dict[str, Service] = field(default_factory=dict)
    _uids: dict[int, str] = field(default_factory=dict)

    def uid_of(self, service: Service) -> str:
        """`service.uid` without formatting it on every request (the snapshot keeps it alive)."""
        uid = self._uids.get(id(service))
        if uid is None:
            uid = self._uids[id(service)] = service.uid
        return uid

    @classmethod
    def compile(cls, snap: WaypointSnapshot, *, default_service: str | None = None
                ) -> WaypointConfig:
        cfg = cls(snapshot=snap, default_service=default_service)
        domain = snap.trust_domain if snap.trust_domain else "cluster.local"
        by_fqdn: dict[str, Service] = {}
        for svc in snap.services.values():
            names = {svc.name, f"{svc.name}.{svc.namespace}", f"{svc.name}.{svc.namespace}.svc",
                     svc.hostname, f"{svc.name}.{svc.namespace}.svc.{domain}"}
            if svc.vip:
                names.add(svc.vip)
            for n in names:
                # A short name belongs to the waypoint's own namespace first.
                if n == svc.name and n in cfg.by_host and svc.namespace != snap.waypoint.namespace:
                    continue
                cfg.by_host[n.lower()] = svc
            by_fqdn[svc.hostname] = svc
        for vs in snap.virtual_services:
            hosts = [fqdn(h, vs.namespace) for h in vs.spec.hosts]
            for hostname, svc in by_fqdn.items():
                if svc.uid in cfg.routes:
                    continue
                if any(host_matches(h, hostname) for h in hosts):
                    cfg.routes[svc.uid] = vs.spec.http
                    cfg.route_owner[svc.uid] = vs
        for dr in snap.destination_rules:
            host = fqdn(dr.spec.host, dr.namespace)
            for hostname in by_fqdn:
                if hostname not in cfg.rules and host_matches(host, hostname):
                    cfg.rules[hostname] = dr
        return cfg

    # --- lookups ----------------------------------------------------------------------------

    def service_for(self, authority: str) -> Service | None:
        hit = self._by_authority.get(authority)
        if hit is not None:
            return hit
        svc = self._service_for(authority)
        if svc is not None and len(self._by_authority) < 10000:
            self._by_authority[authority] = svc
        return svc

    def _service_for(self, authority: str) -> Service | None:
        host = authority.lower()
        if host.startswith("["):
            host = host[1:host.find("]")] if "]" in host else host
        elif host.count(":") == 1:
            host = host.split(":", 1)[0]
        svc = self.by_host.get(host)
        if svc is None and self.default_service:
            svc = self.snapshot.services.get(self.default_service)
        return svc

    def service_by_fqdn(self, host: str, namespace: str) -> Service | None:
        return self.by_host.get(fqdn(host, namespace))

    def cluster(self, service: Service, port: int, subset: str = "") -> Cluster | None:
        key = (self.uid_of(service), port, subset)
        if key in self._clusters:
            return self._clusters[key]
        self._clusters[key] = cluster = self._build_cluster(service, port, subset)
        return cluster

    def _build_cluster(self, service: Service, port: int, subset: str) -> Cluster | None:
        dr = self.rules.get(service.hostname)
        policy = dr.spec.traffic_policy if dr else None
        selector: dict | None = None
        if subset:
            found: Subset | None = None
            for s in (dr.spec.subsets if dr else ()):
                if s.name == subset:
                    found = s
            if found is None:
                return None  # a route to an undefined subset: the proxy answers 503
            selector = dict(found.labels)
            policy = _merge(policy, found.traffic_policy)
        hosts = []
        workloads = self.snapshot.workloads
        for ep in service.endpoints:
            wl = workloads.get(ep.workload)
            labels = wl.labels if wl else {}
            if not _labels_match(selector, labels):
                continue
            target = ep.ports.get(port)
            if target is None:
                continue
            hosts.append(Host(f"{ep.ip}:{target}", ep.ip, target, ep.workload,
                              labels.get("version", "unknown")))
        return Cluster((service.uid, port, subset), service, port, subset, tuple(hosts),
                       policy or TrafficPolicy(), speaks_h2(service, port))

    def workload(self, uid: str) -> Workload | None:
        return self.snapshot.workloads.get(uid)

    # --- policies ---------------------------------------------------------------------------

    def authz_for_service(self, service: Service) -> tuple[AuthorizationPolicy, ...]:
        cached = self._authz_service.get(self.uid_of(service))
        if cached is not None:
            return cached
        wp = self.snapshot.waypoint
        out = []
        for p in self.snapshot.authorization_policies:
            targets = p.spec.targets
            if targets:
                for t in targets:
                    if (t.kind == "Service" and p.namespace == service.namespace
                            and t.name == service.name) or (
                            t.kind == "Gateway" and p.namespace == wp.namespace
                            and t.name == wp.name):
                        out.append(p)
                        break
            elif p.spec.selector is None and p.namespace in (service.namespace, ROOT_NAMESPACE):
                out.append(p)
        self._authz_service[service.uid] = result = tuple(out)
        return result

    def authz_for_workload(self, uid: str) -> tuple[AuthorizationPolicy, ...]:
        cached = self._authz_workload.get(uid)
        if cached is not None:
            return cached
        wl = self.workload(uid)
        out = []
        if wl is not None:
            for p in self.snapshot.authorization_policies:
                sel = p.spec.selector
                if sel is None or p.spec.targets:
                    continue
                if p.namespace in (wl.namespace, ROOT_NAMESPACE) and _labels_match(
                        dict(sel.match_labels), wl.labels):
                    out.append(p)
        self._authz_workload[uid] = result = tuple(out)
        return result

    def ratelimits_for(self, service: Service) -> tuple[RateLimitPolicy, ...]:
        cached = self._ratelimits.get(self.uid_of(service))
        if cached is not None:
            return cached
        out = []
        for p in self.snapshot.rate_limit_policies:
            if p.namespace != service.namespace:
                continue
            t = p.spec.target_ref
            if t is None or (t.kind == "Service" and t.name == service.name):
                out.append(p)
        self._ratelimits[service.uid] = result = tuple(out)
        return result
