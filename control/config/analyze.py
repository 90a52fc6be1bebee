"""Cross-object analysis: configuration that is valid alone but suspicious together.

Before: resources that passed `validate_documents`, and the workload documents given beside them
(Namespace, Service, Deployment, Pod, ...). After: `WARNING` problems, each located at the field
that raised it, the way Istio's analyzers report:
- a route or mirror to a subset that no DestinationRule for that host defines;
- more than one mesh-wide PeerAuthentication (no selector, in the root namespace), or more than
  one namespace-wide PeerAuthentication in a namespace;
- a PeerAuthentication or AuthorizationPolicy whose selector matches no workload;
- a VirtualService host, or a policy's targetRef, that no Service has;
- two VirtualServices for the same host (which one routes it is undefined);
- `waypoint.placement.unenforceable`: an AuthorizationPolicy with a workload `selector` and L7
  attributes (methods, paths, hosts, request headers) that selects a workload whose traffic
  passes no waypoint — the node tunnel (L4 only) fails closed on it, refusing the connections
  the policy would judge. Which workloads pass a waypoint follows `lacewing.dev/use-waypoint`
  on the pod (template), else its Namespace, or on a Service that selects it. `unenforceable`
  is the one copy of this check: the waypoint (`waypoint.placement`) re-exports it, and the
  node tunnel's snapshot `Workload` fits it as well as the analyzer's.
The workload-based checks run only when the input holds workloads (resp. Services) to check
against; `skipped_checks` says which were skipped, so silence is never mistaken for health.

Pure: no I/O; the command `lacewing analyze` does the reading.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

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
from control.config.schema import format_path
from control.config.validate import split_api_version

DOMAIN = "svc.cluster.local"
UNENFORCEABLE = "waypoint.placement.unenforceable"
USE_WAYPOINT = "lacewing.dev/use-waypoint"   # control.snapshot.WAYPOINT_LABEL
NO_WAYPOINT = "none"
POD_TEMPLATE_KINDS = frozenset({("apps", "Deployment"), ("apps", "StatefulSet"),
                                ("apps", "DaemonSet"), ("apps", "ReplicaSet")})


@dataclass(frozen=True)
class Workload:
    kind: str
    name: str
    namespace: str
    labels: dict[str, str]
    waypoint: str | None = None  # "<namespace>/<name>" of the waypoint its traffic passes

    @property
    def uid(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ServiceInfo:
    name: str
    namespace: str
    selector: dict[str, str]
    labels: dict[str, str]


@dataclass
class Inventory:
    """What the input says exists: workloads (pod labels), Services, Namespace labels."""

    workloads: list[Workload] = field(default_factory=list)
    services: set[str] = field(default_factory=set)  # FQDNs
    service_list: list[ServiceInfo] = field(default_factory=list)
    namespace_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    saw_workloads: bool = False
    saw_services: bool = False


def inventory(docs: Sequence[Document]) -> Inventory:
    inv = Inventory()
    pods: list[Workload] = []
    for doc in docs:
        obj = doc.obj
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if not isinstance(api_version, str) or not isinstance(kind, str):
            continue
        group = split_api_version(api_version)[0]
        meta = _dict(obj, "metadata")
        name, namespace = meta.get("name"), meta.get("namespace") or "default"
        if not isinstance(name, str) or not isinstance(namespace, str):
            continue
        if (group, kind) in POD_TEMPLATE_KINDS:
            labels = _dict(_dict(_dict(_dict(obj, "spec"), "template"), "metadata"), "labels")
            pods.append(Workload(kind, name, namespace, _str_map(labels)))
            inv.saw_workloads = True
        elif (group, kind) == ("", "Pod"):
            pods.append(Workload(kind, name, namespace, _str_map(_dict(meta, "labels"))))
            inv.saw_workloads = True
        elif (group, kind) == ("", "Service"):
            inv.services.add(f"{name}.{namespace}.{DOMAIN}")
            inv.service_list.append(ServiceInfo(name, namespace,
                                                _str_map(_dict(_dict(obj, "spec"), "selector")),
                                                _str_map(_dict(meta, "labels"))))
            inv.saw_services = True
        elif (group, kind) == ("", "Namespace"):
            inv.namespace_labels[name] = _str_map(_dict(meta, "labels"))
    inv.workloads = [Workload(w.kind, w.name, w.namespace, w.labels, waypoint_of(w, inv))
                     for w in pods]
    return inv


def _waypoint_ref(value: str | None, namespace: str) -> str | None:
    if not value or value == NO_WAYPOINT:
        return None
    return value if "/" in value else f"{namespace}/{value}"


def waypoint_of(workload: Workload, inv: Inventory) -> str | None:
    """The waypoint a workload's traffic passes, if any (`control.workloads` rules): its own
    `lacewing.dev/use-waypoint` label, else its Namespace's; failing that, the waypoint of a
    Service that selects it (the Service's label, else its Namespace's)."""
    ns_labels = inv.namespace_labels.get(workload.namespace, {})
    if USE_WAYPOINT in workload.labels:
        own = _waypoint_ref(workload.labels[USE_WAYPOINT], workload.namespace)
    else:
        own = _waypoint_ref(ns_labels.get(USE_WAYPOINT), workload.namespace)
    if own:
        return own
    for svc in inv.service_list:
        if svc.namespace != workload.namespace or not svc.selector:
            continue
        if not all(workload.labels.get(k) == v for k, v in svc.selector.items()):
            continue
        value = svc.labels[USE_WAYPOINT] if USE_WAYPOINT in svc.labels else ns_labels.get(USE_WAYPOINT)
        ref = _waypoint_ref(value, svc.namespace)
        if ref:
            return ref
    return None


def _dict(obj: Any, key: str) -> dict[str, Any]:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else {}


def _str_map(value: dict[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()}


def fqdn(host: str, namespace: str) -> str:
    """Istio's short-name rule: a name without dots is a Service of the resource's namespace."""
    return host if "." in host or host.startswith("*") else f"{host}.{namespace}.{DOMAIN}"


def host_matches(pattern: str, host: str) -> bool:
    """Istio's rule: a leading `*` matches any prefix (`*` alone matches everything)."""
    if pattern.startswith("*"):
        return host.endswith(pattern[1:])
    return pattern == host


def skipped_checks(inv: Inventory) -> list[str]:
    skipped = []
    if not inv.saw_workloads:
        skipped.append("selectors that match no workload (no Deployment, Pod, ... in the input)")
    if not inv.saw_services:
        skipped.append("hosts and targetRefs with no Service (no Service in the input)")
    return skipped


def analyze(resources: Sequence[Resource], docs: Sequence[Document] = (), *,
            root_namespace: str = "istio-system") -> list[Problem]:
    inv = inventory(docs)
    found: list[Problem] = []
    found += _missing_subsets(resources)
    found += _duplicate_peer_authentications(resources, root_namespace)
    found += _conflicting_virtual_services(resources)
    if inv.saw_workloads:
        found += _selectors_matching_nothing(resources, inv, root_namespace)
    if inv.saw_services:
        found += _hosts_without_service(resources, inv)
    if inv.saw_workloads:
        policies = [r for r in resources if isinstance(r, AuthorizationPolicy)]
        for f in unenforceable(policies, inv.workloads, root_namespace=root_namespace):
            found.append(_warn(f.resource, ["spec", "selector"], f"{UNENFORCEABLE}: {f.message}"))
    return found


# --- L7 policies no waypoint can enforce ------------------------------------------------------


class PlacedWorkload(Protocol):
    """What `unenforceable` reads of a workload (the analyzer's `Workload` and the snapshot's)."""

    @property
    def namespace(self) -> str: ...

    @property
    def labels(self) -> Mapping[str, str]: ...

    @property
    def waypoint(self) -> str | None: ...

    @property
    def uid(self) -> str: ...


@dataclass(frozen=True)
class Finding:
    policy: str        # namespace/name
    workload: str      # namespace/name
    message: str
    resource: AuthorizationPolicy | None = field(default=None, compare=False, repr=False)


def l7_fields(policy: AuthorizationPolicy) -> list[str]:
    """The L7 attributes a policy uses (empty: the node tunnel can enforce it alone)."""
    used = []
    for rule in policy.spec.rules:
        for to in rule.to:
            op = to.operation
            if op is None:
                continue
            for name in ("methods", "not_methods", "paths", "not_paths", "hosts", "not_hosts"):
                if getattr(op, name):
                    used.append(name)
        for cond in rule.when:
            if cond.key.startswith("request."):
                used.append(cond.key)
    return sorted(set(used))


def unenforceable(policies: Iterable[AuthorizationPolicy], workloads: Iterable[PlacedWorkload], *,
                  root_namespace: str = "istio-system") -> list[Finding]:
    """For every sidecar-style policy (a `selector`, no targetRefs) with L7 attributes, each
    workload it selects whose traffic passes no waypoint: the node tunnel must fail closed there."""
    workloads = list(workloads)
    out = []
    for p in policies:
        sel = p.spec.selector
        if sel is None or p.spec.targets:
            continue
        fields = l7_fields(p)
        if not fields:
            continue
        for w in workloads:
            if p.namespace not in (w.namespace, root_namespace):
                continue
            if not all(w.labels.get(k) == v for k, v in sel.match_labels.items()):
                continue
            if w.waypoint:
                continue
            out.append(Finding(
                f"{p.namespace}/{p.name}", w.uid,
                f"uses L7 attributes ({', '.join(fields)}) but {w.uid}'s traffic passes no "
                f"waypoint, so the node tunnel refuses the connections this policy would judge; "
                f"fix: `lacewing waypoint apply -n {w.namespace} --enroll-namespace` (or label "
                f"its Service lacewing.dev/use-waypoint=<name>)", p))
    return out


def _warn(resource: Resource, path: list[Any], message: str) -> Problem:
    src = resource.source
    return Problem(src.file if src else f"{resource.KIND}/{resource.namespace}/{resource.name}",
                   src.index if src else None, format_path(path), message, WARNING)


def _missing_subsets(resources: Sequence[Resource]) -> list[Problem]:
    defined: list[tuple[str, set[str]]] = [
        (fqdn(r.spec.host, r.namespace), {s.name for s in r.spec.subsets})
        for r in resources if isinstance(r, DestinationRule)
    ]
    found = []
    for vs in (r for r in resources if isinstance(r, VirtualService)):
        for i, route in enumerate(vs.spec.http):
            targets = [(["spec", "http", i, "route", j, "destination"], d.destination)
                       for j, d in enumerate(route.route)]
            if route.mirror is not None:
                targets.append((["spec", "http", i, "mirror"], route.mirror))
            for path, dest in targets:
                if dest.subset is None:
                    continue
                host = fqdn(dest.host, vs.namespace)
                rules = [subsets for pattern, subsets in defined if host_matches(pattern, host)]
                if not any(dest.subset in subsets for subsets in rules):
                    why = ("no DestinationRule exists for that host" if not rules
                           else "the DestinationRule for that host does not define it")
                    found.append(_warn(vs, [*path, "subset"],
                                       f"subset {dest.subset!r} of host {dest.host!r} is not defined: {why}; "
                                       "requests routed there will fail"))
    return found


def _duplicate_peer_authentications(resources: Sequence[Resource], root: str) -> list[Problem]:
    wide: dict[str, list[PeerAuthentication]] = {}
    for pa in (r for r in resources if isinstance(r, PeerAuthentication)):
        if pa.spec.selector is None or not pa.spec.selector.match_labels:
            wide.setdefault(pa.namespace, []).append(pa)
    found = []
    for namespace, policies in wide.items():
        if len(policies) < 2:
            continue
        names = ", ".join(p.name for p in policies)
        scope = (f"mesh-wide (root namespace {root})" if namespace == root
                 else f"namespace-wide in {namespace}")
        for pa in policies:
            found.append(_warn(pa, ["spec"], f"more than one {scope} PeerAuthentication ({names}); "
                               "which one applies is undefined: keep one"))
    return found


def _conflicting_virtual_services(resources: Sequence[Resource]) -> list[Problem]:
    owners: dict[str, list[tuple[VirtualService, int]]] = {}
    for vs in (r for r in resources if isinstance(r, VirtualService)):
        for i, host in enumerate(vs.spec.hosts):
            owners.setdefault(fqdn(host, vs.namespace), []).append((vs, i))
    found = []
    for host, claims in owners.items():
        if len(claims) < 2:
            continue
        names = ", ".join(f"{vs.namespace}/{vs.name}" for vs, _ in claims)
        for vs, i in claims:
            found.append(_warn(vs, ["spec", "hosts", i], f"host {host} is routed by more than one "
                               f"VirtualService ({names}); which one applies is undefined: merge them"))
    return found


def _selectors_matching_nothing(resources: Sequence[Resource], inv: Inventory, root: str) -> list[Problem]:
    found = []
    for res in resources:
        if not isinstance(res, (PeerAuthentication, AuthorizationPolicy)):
            continue
        selector = res.spec.selector
        if selector is None or not selector.match_labels:
            continue
        wanted = dict(selector.match_labels)
        candidates = [w for w in inv.workloads if res.namespace == root or w.namespace == res.namespace]
        if not any(all(w.labels.get(k) == v for k, v in wanted.items()) for w in candidates):
            labels = ",".join(f"{k}={v}" for k, v in sorted(wanted.items()))
            where = "any namespace" if res.namespace == root else f"namespace {res.namespace}"
            found.append(_warn(res, ["spec", "selector", "matchLabels"],
                               f"selector {labels} matches no workload in {where}; the policy has no effect"))
    return found


def _hosts_without_service(resources: Sequence[Resource], inv: Inventory) -> list[Problem]:
    found = []
    for res in resources:
        if isinstance(res, VirtualService):
            for i, host in enumerate(res.spec.hosts):
                if host.startswith("*"):
                    continue
                if fqdn(host, res.namespace) not in inv.services:
                    found.append(_warn(res, ["spec", "hosts", i],
                                       f"host {host!r} is not the name of any Service; "
                                       "the VirtualService never applies"))
        refs: list[tuple[list[Any], Any]] = []
        if isinstance(res, AuthorizationPolicy):
            if res.spec.target_ref is not None:
                refs.append((["spec", "targetRef"], res.spec.target_ref))
            refs += [(["spec", "targetRefs", i], t) for i, t in enumerate(res.spec.target_refs)]
        elif isinstance(res, RateLimitPolicy) and res.spec.target_ref is not None:
            refs.append((["spec", "targetRef"], res.spec.target_ref))
        for path, ref in refs:
            if ref.kind == "Service" and f"{ref.name}.{res.namespace}.{DOMAIN}" not in inv.services:
                found.append(_warn(res, [*path, "name"],
                                   f"Service {ref.name!r} does not exist in namespace {res.namespace}"))
    return found
