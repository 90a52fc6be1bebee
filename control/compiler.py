"""Incremental compilation: changed objects in, changed wire resources out.

Before: the writer (control/writer.py) applied events to the cluster state (control/state.py)
and knows which keys changed. After: `update(keys)` recomputes only what those keys can affect,
packs what really changed (control/xds/resources.py) and installs it in the catalog
(control/catalog.py), which tells the xDS server. `full()` is the same with every key dirty.

What a change touches:
- a Pod: its Workload; the Services of its namespace whose selector matches its old or new
  labels (their endpoints); the waypoint it is an instance of (old or new);
- a Namespace: every pod and Service in it (enrollment and waypoint labels);
- a Node: the pods on it (node address);
- a Service: itself; an EndpointSlice: the Service it names (old and new);
- a Deployment: the Services of its namespace (named target ports in local mode);
- a mesh resource: itself, validated by `control.config` (a refused one is kept out and its
  problems are reported, the others go on).

L7 resources (routes, destination rules, rate limits, AuthorizationPolicies with targetRefs)
go only to the waypoints in front of the Services they name; when a Service changes waypoint,
their audiences are recomputed (and a waypoint that no longer needs one gets its removal).

The per-node snapshot is mesh-wide for L4 (every workload, service, waypoint and L4 policy),
kept at per-resource granularity so a one-pod change costs each node one Workload and the
Services around it. The compiler also answers the CA's question (`NodeWorkloads`): which
service accounts have a pod on a node now.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable

from control import objects as k
from control.catalog import ALL, NODES, WAYPOINTS, Catalog, Change, Entry
from control.config.errors import WARNING, Problem
from control.config.loader import Document
from control.config.model import (
    AuthorizationPolicy,
    DestinationRule,
    PeerAuthentication,
    RateLimitPolicy,
    Resource,
    VirtualService,
)
from control.config.validate import validate_document
from control.objects import Key
from control.snapshot import Service, Waypoint, Workload
from control.state import ClusterState
from control.workloads import (
    SERVICE_NAME_LABEL,
    WAYPOINT_INSTANCE_LABEL,
    container_ports,
    endpoint_of,
    endpoints_from_slices,
    labels,
    meta,
    selector_matches,
    service_of,
    service_ports,
    waypoint_of,
    waypoint_ref,
    workload_of,
)
from control.xds import resources as r
from control.xds.resources import Mesh

log = logging.getLogger("lacewing.control.compiler")


def is_l4(resource: Resource) -> bool:
    """Enforced by node tunnels (sent to nodes); everything else is L7 (sent to waypoints)."""
    if isinstance(resource, PeerAuthentication):
        return True
    return isinstance(resource, AuthorizationPolicy) and not resource.spec.targets


def services_for_host(host: str, namespace: str, services: dict[str, Service]) -> list[Service]:
    """The Services a host of a route or destination rule names (Istio's short names are
    relative to the resource's namespace; `*` and `*.<ns>…` are wildcards)."""
    if host == "*":
        return list(services.values())
    if host.startswith("*."):
        ns = host[2:].split(".")[0]
        return [svc for svc in services.values() if svc.namespace == ns]
    parts = host.split(".")
    uid = f"{namespace}/{parts[0]}" if len(parts) == 1 else f"{parts[1]}/{parts[0]}"
    svc = services.get(uid)
    return [svc] if svc is not None else []


def waypoints_of(resource: Resource, services: dict[str, Service]) -> frozenset[str]:
    """The waypoints an L7 resource concerns: those in front of the Services it names."""
    ns = resource.namespace
    named: list[Service] = []
    out: set[str] = set()
    if isinstance(resource, VirtualService):
        for host in resource.spec.hosts:
            named += services_for_host(host, ns, services)
    elif isinstance(resource, DestinationRule):
        named += services_for_host(resource.spec.host, ns, services)
    elif isinstance(resource, AuthorizationPolicy):
        for ref in resource.spec.targets:
            if ref.kind == "Gateway":
                out.add(f"{ns}/{ref.name}")
            elif ref.kind == "Service" and f"{ns}/{ref.name}" in services:
                named.append(services[f"{ns}/{ref.name}"])
    elif isinstance(resource, RateLimitPolicy):
        ref = resource.spec.target_ref
        if ref is None:
            named += [svc for svc in services.values() if svc.namespace == ns]
        elif ref.kind == "Service" and f"{ns}/{ref.name}" in services:
            named.append(services[f"{ns}/{ref.name}"])
    out |= {svc.waypoint for svc in named if svc.waypoint}
    return frozenset(out)


class Compiler:
    def __init__(self, state: ClusterState, catalog: Catalog, *,
                 trust_domain: str = "cluster.local") -> None:
        self.state = state
        self.catalog = catalog
        self.trust_domain = trust_domain
        self.workloads: dict[str, Workload] = {}
        self.services: dict[str, Service] = {}
        self.waypoints: dict[str, Waypoint] = {}
        self.config: dict[Key, Resource] = {}
        self.problems: dict[Key, list[Problem]] = {}
        self._pods_in_ns: dict[str, set[str]] = defaultdict(set)      # ns -> pod names
        self._pods_on_node: dict[str, set[str]] = defaultdict(set)    # node -> uids
        self._sas_on_node: dict[str, Counter] = defaultdict(Counter)  # node -> (ns, sa) counts
        self._instances: dict[str, set[str]] = defaultdict(set)       # waypoint -> uids
        self._slice_service: dict[Key, str] = {}                      # slice -> service uid
        self._slices_of: dict[str, set[Key]] = defaultdict(set)       # service uid -> slices
        self._mesh_sent = False
        self.last_compile_seconds = 0.0

    # --- the CA's question (control.ca.node_workloads.NodeWorkloads) ---------------------------
    def service_accounts_on(self, node: str) -> frozenset[tuple[str, str]]:
        return frozenset(sa for sa, n in self._sas_on_node.get(node, {}).items() if n > 0)

    # --- compile --------------------------------------------------------------------------------
    def full(self, *, started_at: float | None = None) -> Change | None:
        return self.update(set(self.state.keys()) | self._known_keys(), started_at=started_at)

    def _known_keys(self) -> set[Key]:
        keys = {Key(k.POD, w.namespace, w.name) for w in self.workloads.values()}
        keys |= {Key(k.SERVICE, s.namespace, s.name) for s in self.services.values()}
        return keys | set(self.config)

    def update(self, changed: Iterable[Key], *, started_at: float | None = None) -> Change | None:
        t0 = time.perf_counter()
        pods: set[tuple[str, str]] = set()
        services: set[tuple[str, str]] = set()
        config: set[Key] = set()
        for key in changed:
            if key.kind == k.POD:
                pods.add((key.namespace, key.name))
            elif key.kind == k.SERVICE:
                services.add((key.namespace, key.name))
            elif key.kind == k.NAMESPACE:
                ns = key.name
                pods |= {(ns, n) for n in self.state.names(k.POD, ns)}
                pods |= {(ns, n) for n in self._pods_in_ns.get(ns, ())}
                services |= {(ns, n) for n in self.state.names(k.SERVICE, ns)}
            elif key.kind == k.NODE:
                pods |= {tuple(uid.split("/", 1)) for uid in self._pods_on_node.get(key.name, ())}
            elif key.kind == k.ENDPOINT_SLICE:
                old = self._slice_service.pop(key, None)
                if old:
                    self._slices_of[old].discard(key)
                    services.add(tuple(old.split("/", 1)))
                obj = self.state.get(key.kind, key.namespace, key.name)
                svc = labels(obj).get(SERVICE_NAME_LABEL) if obj else None
                if svc:
                    uid = f"{key.namespace}/{svc}"
                    self._slice_service[key] = uid
                    self._slices_of[uid].add(key)
                    services.add((key.namespace, svc))
            elif key.kind == k.DEPLOYMENT:
                services |= {(key.namespace, n) for n in self.state.names(k.SERVICE, key.namespace)}
            elif key.kind in k.MESH_KINDS:
                config.add(key)

        upserts: dict[tuple[str, str], Entry] = {}
        removes: set[tuple[str, str]] = set()
        waypoints: set[str] = set()
        if not self._mesh_sent:
            mesh = Mesh(self.trust_domain)
            upserts[(r.MESH, "mesh")] = Entry(r.pack(mesh), mesh)
            self._mesh_sent = True
        for ns, name in sorted(pods):
            self._pod(ns, name, upserts, removes, services, waypoints)
        retarget = False
        for ns, name in sorted(services):
            retarget |= self._service(ns, name, upserts, removes)
        for ref in sorted(waypoints):
            self._waypoint(ref, upserts, removes)
        for key in sorted(config):
            self._config(key, upserts, removes)
        if retarget:
            self._retarget_l7(upserts)
        change = self.catalog.apply(upserts, removes, started_at=started_at)
        self.last_compile_seconds = time.perf_counter() - t0
        return change

    # --- per kind -------------------------------------------------------------------------------
    def _pod(self, ns: str, name: str, upserts, removes, services: set, waypoints: set) -> None:
        uid = f"{ns}/{name}"
        pod = self.state.get(k.POD, ns, name)
        old = self.workloads.get(uid)
        new = None
        if pod is not None:
            node = self.state.get(k.NODE, "", (pod.get("spec") or {}).get("nodeName") or "")
            new = workload_of(pod, namespace=self.state.get(k.NAMESPACE, "", ns), node=node,
                              trust_domain=self.trust_domain)
        if old == new:
            return
        if old is not None:
            self._pods_in_ns[ns].discard(name)
            self._pods_on_node[old.node].discard(uid)
            self._sas_on_node[old.node][(ns, old.service_account)] -= 1
            ref = waypoint_ref(old.labels.get(WAYPOINT_INSTANCE_LABEL), ns)
            if ref:
                self._instances[ref].discard(uid)
                waypoints.add(ref)
        if new is None:
            del self.workloads[uid]
            removes.add((r.WORKLOAD, uid))
        else:
            self.workloads[uid] = new
            self._pods_in_ns[ns].add(name)
            self._pods_on_node[new.node].add(uid)
            self._sas_on_node[new.node][(ns, new.service_account)] += 1
            ref = waypoint_ref(new.labels.get(WAYPOINT_INSTANCE_LABEL), ns)
            if ref:
                self._instances[ref].add(uid)
                waypoints.add(ref)
            upserts[(r.WORKLOAD, uid)] = Entry(r.pack(new), new)
        # Endpoints of the Services that select it (before or after).
        if old is None or new is None or old.labels != new.labels or old.ip != new.ip \
                or old.ready != new.ready:
            for svc_name in self.state.names(k.SERVICE, ns):
                svc = self.state.get(k.SERVICE, ns, svc_name) or {}
                selector = (svc.get("spec") or {}).get("selector")
                if (old is not None and selector_matches(selector, old.labels)) or \
                        (new is not None and selector_matches(selector, new.labels)):
                    services.add((ns, svc_name))

    def _endpoints(self, ns: str, svc_obj, ports) -> tuple:
        uid = f"{ns}/{meta(svc_obj).get('name')}"
        slices = [self.state.get(key.kind, key.namespace, key.name)
                  for key in sorted(self._slices_of.get(uid, ()))]
        slices = [s for s in slices if s]
        if slices:
            by_ip = {w.ip: w for n in self._pods_in_ns.get(ns, ())
                     if (w := self.workloads.get(f"{ns}/{n}")) is not None}
            return endpoints_from_slices(ports, slices, ns, by_ip)
        selector = (svc_obj.get("spec") or {}).get("selector")
        if not selector:
            return ()
        out = []
        for pod_name in sorted(self._pods_in_ns.get(ns, ())):
            w = self.workloads.get(f"{ns}/{pod_name}")
            if w is None or not w.ready or not selector_matches(selector, w.labels):
                continue
            named: dict[str, int] = {}
            if any(isinstance(p.target_port, str) for p in ports):
                pod = self.state.get(k.POD, ns, pod_name) or {}
                named = container_ports(pod, self._owner_template(ns, pod))
            out.append(endpoint_of(ports, w, named))
        return tuple(out)

    def _owner_template(self, ns: str, pod) -> dict | None:
        for ref in meta(pod).get("ownerReferences") or ():
            if isinstance(ref, dict) and ref.get("kind") == "Deployment":
                dep = self.state.get(k.DEPLOYMENT, ns, ref.get("name") or "")
                if dep:
                    return ((dep.get("spec") or {}).get("template")) or None
        return None

    def _service(self, ns: str, name: str, upserts, removes) -> bool:
        """Recompile one Service; True when which waypoint fronts it changed."""
        uid = f"{ns}/{name}"
        obj = self.state.get(k.SERVICE, ns, name)
        new = None
        if obj is not None:
            endpoints = self._endpoints(ns, obj, service_ports(obj))
            new = service_of(obj, namespace=self.state.get(k.NAMESPACE, "", ns),
                             endpoints=endpoints)
        old = self.services.get(uid)
        if old == new:
            return False
        if new is None:
            del self.services[uid]
            removes.add((r.SERVICE, uid))
        else:
            self.services[uid] = new
            upserts[(r.SERVICE, uid)] = Entry(r.pack(new), new)
        return (old.waypoint if old else None) != (new.waypoint if new else None)

    def _waypoint(self, ref: str, upserts, removes) -> None:
        ns, name = ref.split("/", 1)
        inst = [self.workloads[u] for u in self._instances.get(ref, ()) if u in self.workloads]
        new = waypoint_of(ns, name, inst, trust_domain=self.trust_domain)
        old = self.waypoints.get(ref)
        if old == new:
            return
        if new is None:
            del self.waypoints[ref]
            removes.add((r.WAYPOINT, ref))
        else:
            self.waypoints[ref] = new
            upserts[(r.WAYPOINT, ref)] = Entry(r.pack(new), new)

    def _config(self, key: Key, upserts, removes) -> None:
        obj = self.state.get(key.kind, key.namespace, key.name)
        old = self.config.get(key)
        new = None
        self.problems.pop(key, None)
        if obj is not None:
            resource, problems = validate_document(Document(f"{key}", 0, dict(obj)))
            errors = [p for p in problems if p.kind != WARNING]
            if errors or resource is None:
                self.problems[key] = errors or problems
                log.warning("%s refused: %s", key, "; ".join(
                    f"{p.path}: {p.message}" for p in (errors or problems)))
            else:
                new = resource
        if old is not None and (new is None or r.type_url_of(old) != r.type_url_of(new)):
            removes.add((r.type_url_of(old), r.resource_name(old)))
            del self.config[key]
        if new is not None:
            self.config[key] = new
            upserts[(r.type_url_of(new), r.resource_name(new))] = Entry(
                r.pack(new), new, self._audience(new))

    def _audience(self, resource: Resource) -> str | frozenset[str]:
        return NODES if is_l4(resource) else waypoints_of(resource, self.services)

    def _retarget_l7(self, upserts) -> None:
        """Services changed their waypoint: L7 resources may now concern other waypoints."""
        for res in self.config.values():
            if is_l4(res):
                continue
            entry_key = (r.type_url_of(res), r.resource_name(res))
            audience = self._audience(res)
            current = upserts.get(entry_key) or self.catalog.entries[entry_key[0]].get(entry_key[1])
            if current is not None and current.audience != audience:
                upserts[entry_key] = Entry(current.packed, res, audience)


__all__ = ["Compiler", "is_l4", "waypoints_of", "services_for_host", "ALL", "NODES", "WAYPOINTS"]
