"""Cross-object analysis: configuration that is valid alone but suspicious together.

Before: resources that passed `validate_documents`, and the workload documents given beside them
(Namespace, Service, Deployment, Pod, ...). After: `WARNING` problems, each located at the field
that raised it, the way Istio's analyzers report:
- a route or mirror to a subset that no DestinationRule for that host defines;
- more than one mesh-wide PeerAuthentication (no selector, in the root namespace), or more than
  one namespace-wide PeerAuthentication in a namespace;
- a PeerAuthentication or AuthorizationPolicy whose selector matches no workload;
- a VirtualService host, or a policy's targetRef, that no Service has;
- two VirtualServices for the same host (which one routes it is undefined).
The workload-based checks run only when the input holds workloads (resp. Services) to check
against; `skipped_checks` says which were skipped, so silence is never mistaken for health.

Pure: no I/O; the command `lacewing analyze` does the reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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
POD_TEMPLATE_KINDS = frozenset({("apps", "Deployment"), ("apps", "StatefulSet"),
                                ("apps", "DaemonSet"), ("apps", "ReplicaSet")})


@dataclass(frozen=True)
class Workload:
    kind: str
    name: str
    namespace: str
    labels: dict[str, str]


@dataclass
class Inventory:
    """What the input says exists: workloads (pod labels) and Service host names."""

    workloads: list[Workload] = field(default_factory=list)
    services: set[str] = field(default_factory=set)  # FQDNs
    saw_workloads: bool = False
    saw_services: bool = False


def inventory(docs: Sequence[Document]) -> Inventory:
    inv = Inventory()
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
            inv.workloads.append(Workload(kind, name, namespace, _str_map(labels)))
            inv.saw_workloads = True
        elif (group, kind) == ("", "Pod"):
            inv.workloads.append(Workload(kind, name, namespace, _str_map(_dict(meta, "labels"))))
            inv.saw_workloads = True
        elif (group, kind) == ("", "Service"):
            inv.services.add(f"{name}.{namespace}.{DOMAIN}")
            inv.saw_services = True
    return inv


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
    return found


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
