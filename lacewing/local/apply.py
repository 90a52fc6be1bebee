"""Planning an apply or delete: which objects to write, and every problem with them.

Before: documents the user gave, the objects already applied, the cluster's nodes. After: a
`Plan` (objects to write, keys to delete, problems). Pure: nothing is written here, so an
apply with any error changes nothing (`cluster.LocalCluster.apply` writes only a clean plan).
Kubernetes' own admission rules are followed where local mode has them: a namespaced object
needs its Namespace, a pod needs its ServiceAccount (`default` always exists), a Service gets a
cluster IP when it has none, and a Service that selects no pod is accepted with a warning.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from control.config.errors import INVALID, WARNING, Problem
from control.config.loader import Document
from lacewing.local import topology
from lacewing.local.manifests import (
    Deployment,
    Namespace,
    Pod,
    Service,
    ServiceAccount,
    Workload,
    is_workload,
    parse_workload,
)
from lacewing.local.store import object_key

MESH_KINDS = {
    "networking.istio.io": {"VirtualService", "DestinationRule"},
    "security.istio.io": {"PeerAuthentication", "AuthorizationPolicy"},
    "lacewing.dev": {"RateLimitPolicy"},
    "gateway.networking.k8s.io": {"Gateway", "HTTPRoute"},
}
BUILTIN_NAMESPACES = {"default", "kube-system", "istio-system", "lacewing-system"}


@dataclass
class Plan:
    write: list[dict[str, Any]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.kind != WARNING]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.kind == WARNING]


def _group(obj: dict[str, Any]) -> str:
    api = str(obj.get("apiVersion", ""))
    return api.rsplit("/", 1)[0] if "/" in api else ""


def is_mesh(obj: dict[str, Any]) -> bool:
    return obj.get("kind") in MESH_KINDS.get(_group(obj), set())


def _validate_mesh(docs: list[Document]) -> list[Problem]:
    """Mesh kinds are validated by the configuration model (control.config), exactly."""
    try:
        from control.config.validate import validate_documents
    except ImportError:
        return [Problem(d.file, d.index, "kind", "mesh configuration is not validated by this "
                        "build yet", INVALID) for d in docs]
    _, problems = validate_documents(docs)
    return list(problems)


def _parse_all(objs: dict[str, dict[str, Any]]) -> dict[str, Workload]:
    out = {}
    for key, obj in objs.items():
        if isinstance(obj, dict) and is_workload(obj):
            parsed = parse_workload(Document(key, 0, obj), [])
            if parsed is not None:
                out[key] = parsed
    return out


def plan_apply(docs: list[Document], existing: dict[str, dict[str, Any]], *,
               nodes: list[str]) -> Plan:
    plan = Plan()
    new: dict[str, tuple[Document, Workload | None, dict[str, Any]]] = {}
    mesh_docs = []
    for doc in docs:
        obj = copy.deepcopy(doc.obj)
        if is_workload(obj):
            parsed = parse_workload(doc, plan.problems)
            if parsed is None:
                continue
            meta = obj.setdefault("metadata", {})
            if parsed.kind != "Namespace":
                meta.setdefault("namespace", "default")
        elif is_mesh(obj):
            mesh_docs.append(doc)
            parsed = None
            (obj.setdefault("metadata", {}) or {}).setdefault("namespace", "default")
        else:
            plan.problems.append(Problem(
                doc.file, doc.index, "kind",
                f"unknown kind {obj.get('kind')!r} (apiVersion {obj.get('apiVersion')!r}): local "
                "mode takes v1 Namespace, ServiceAccount, Pod, Service, apps/v1 Deployment, and "
                "the mesh kinds (VirtualService, DestinationRule, PeerAuthentication, "
                "AuthorizationPolicy, RateLimitPolicy, Gateway)"))
            continue
        key = object_key(obj)
        if key in new:
            first = new[key][0]
            plan.problems.append(Problem(doc.file, doc.index, "metadata.name",
                                         f"the same object as {first.file}: document "
                                         f"{first.index}; the later one wins", WARNING))
        new[key] = (doc, parsed, obj)
    plan.problems += _validate_mesh(mesh_docs)
    if plan.errors:
        return plan

    merged = _parse_all(existing)
    for key, (_, parsed, _) in new.items():
        if parsed is not None:
            merged[key] = parsed
    namespaces = BUILTIN_NAMESPACES | {o.name for o in merged.values() if isinstance(o, Namespace)}
    accounts = {(o.namespace, o.name) for o in merged.values() if isinstance(o, ServiceAccount)}
    used_ips = {o.cluster_ip: k for k, o in merged.items()
                if isinstance(o, Service) and o.cluster_ip and k not in new}
    for key, (doc, parsed, obj) in new.items():
        ns = (obj.get("metadata") or {}).get("namespace", "")
        if parsed is None or not isinstance(parsed, Namespace):
            if ns not in namespaces:
                plan.problems.append(Problem(doc.file, doc.index, "metadata.namespace",
                                             f"namespace {ns!r} not found: apply a Namespace "
                                             "first, or in the same file"))
        if isinstance(parsed, (Deployment, Pod)):
            where = "spec.template.spec" if isinstance(parsed, Deployment) else "spec"
            sa = parsed.spec.service_account
            if sa != "default" and (parsed.namespace, sa) not in accounts:
                plan.problems.append(Problem(doc.file, doc.index, f"{where}.serviceAccountName",
                                             f"service account {parsed.namespace}/{sa} not found"))
            if parsed.spec.node_name and parsed.spec.node_name not in nodes:
                plan.problems.append(Problem(doc.file, doc.index, f"{where}.nodeName",
                                             f"no node {parsed.spec.node_name!r}; this cluster "
                                             f"has {', '.join(nodes)}"))
            if isinstance(parsed, Pod) and key in existing and existing[key] != obj:
                plan.problems.append(Problem(doc.file, doc.index, "spec",
                                             "a Pod cannot be changed once made: delete it first, "
                                             "or use a Deployment"))
        if isinstance(parsed, Service):
            _plan_service(plan, doc, key, parsed, obj, existing, used_ips, merged)
        plan.write.append(obj)
    return plan


def _plan_service(plan: Plan, doc: Document, key: str, svc: Service, obj: dict[str, Any],
                  existing: dict[str, dict[str, Any]], used_ips: dict[str, str],
                  merged: dict[str, Workload]) -> None:
    old_ip = ((existing.get(key) or {}).get("spec") or {}).get("clusterIP")
    ip = svc.cluster_ip or old_ip
    if svc.cluster_ip and old_ip and svc.cluster_ip != old_ip:
        plan.problems.append(Problem(doc.file, doc.index, "spec.clusterIP",
                                     f"cannot change from {old_ip} to {svc.cluster_ip}: delete "
                                     "the Service first"))
    if ip and ip in used_ips:
        plan.problems.append(Problem(doc.file, doc.index, "spec.clusterIP",
                                     f"{ip} is already the cluster IP of {used_ips[ip]}"))
    if not ip:
        slot = 0
        while topology.cluster_ip(slot) in used_ips:
            slot += 1
        ip = topology.cluster_ip(slot)
    used_ips[ip] = key
    obj["spec"]["clusterIP"] = ip
    if svc.selector and not any(
        isinstance(o, (Deployment, Pod)) and o.namespace == svc.namespace
        and all(o.labels.get(k) == v for k, v in svc.selector.items())
        for o in merged.values()
    ):
        plan.problems.append(Problem(doc.file, doc.index, "spec.selector",
                                     f"selects no pod in namespace {svc.namespace!r} (accepted; "
                                     "it gets endpoints when matching pods appear)", WARNING))


def plan_delete(docs: list[Document], existing: dict[str, dict[str, Any]]) -> Plan:
    plan = Plan()
    for doc in docs:
        obj = copy.deepcopy(doc.obj)
        meta = obj.setdefault("metadata", {}) or {}
        if obj.get("kind") != "Namespace":
            meta.setdefault("namespace", "default")
        key = object_key(obj)
        if key not in existing:
            plan.problems.append(Problem(doc.file, doc.index, "metadata.name",
                                         f"{obj.get('kind')} {meta.get('name')!r} not found",
                                         WARNING))
            continue
        plan.delete.append(key)
        if obj.get("kind") == "Namespace":  # everything in it goes too, as in Kubernetes
            name = meta.get("name")
            plan.delete += [k for k, o in existing.items()
                            if ((o or {}).get("metadata") or {}).get("namespace") == name]
    return plan
