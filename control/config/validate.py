"""From documents to typed resources: every check, in order, with every problem located.

Before: `control.config.loader.load_documents` (or any caller holding `Document`s). After:
`validate_documents` returns the resources that passed and the problems of those that did not;
`parse` turns one document into one resource or raises `ConfigError`. Both are pure: no I/O
beyond the documents given, so local mode's `apply` and the control plane call them freely.

For each document:
1. envelope — apiVersion and kind name a mesh kind (or a waypoint's Gateway API `Gateway`) and
   one of its served versions; other Istio and Gateway API kinds are *unsupported*; Kubernetes workload kinds are passed over (they are not mesh
   configuration; `analyze` reads them); anything else is *invalid*;
2. schema — the CRD's openAPIV3Schema and CEL rules (`control.config.schema`);
3. fields — every key is implemented by the model, or *unsupported*, or unknown (`codec`);
4. semantics — rules the schema cannot express (`rules`; type-tolerant, so a document
   with schema errors still gets every other problem reported);
5. decode — into the frozen model, only if nothing above was invalid or unsupported.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

from control.config import codec, rules, schema
from control.config.errors import INVALID, UNSUPPORTED, WARNING, ConfigError, Problem
from control.config.loader import Document
from control.config.model import CONFIG_KINDS, Resource, Source

# Every kind read into the model: the mesh configuration and the waypoint's Gateway.
MESH_KINDS: dict[tuple[str, str], type[Resource]] = {(c.GROUP, c.KIND): c for c in CONFIG_KINDS}

# Kubernetes objects that describe workloads, not mesh configuration.
WORKLOAD_KINDS = frozenset({
    ("", "Namespace"), ("", "Service"), ("", "ServiceAccount"), ("", "Pod"), ("", "ConfigMap"),
    ("", "Secret"), ("", "Endpoints"), ("apps", "Deployment"), ("apps", "StatefulSet"),
    ("apps", "DaemonSet"), ("apps", "ReplicaSet"), ("discovery.k8s.io", "EndpointSlice"),
})
# Gateway API kinds: a welcome second front end, not implemented yet but for the waypoint's
# `Gateway` (a mesh kind above); Istio's own kinds come from the shipped CRDs.
GATEWAY_API_KINDS = frozenset({
    "Gateway", "GatewayClass", "HTTPRoute", "GRPCRoute", "TCPRoute", "TLSRoute", "UDPRoute",
    "ReferenceGrant", "BackendTLSPolicy",
})


def split_api_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def is_workload(doc: Document) -> bool:
    api_version, kind = doc.obj.get("apiVersion"), doc.obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return False
    return (split_api_version(api_version)[0], kind) in WORKLOAD_KINDS


def validate_document(doc: Document) -> tuple[Resource | None, list[Problem]]:
    """One document: its resource (None if refused or not mesh configuration) and problems."""
    found: list[tuple[str, str, str]] = []
    resource = None
    cls_version = _envelope(doc.obj, found)
    if cls_version is not None:
        cls, version = cls_version
        group, kind = cls.GROUP, cls.KIND
        structural = schema.structural_problems(doc.obj, group, version, kind)
        found.extend((path, INVALID, message) for path, message in structural)
        found.extend(codec.field_problems(doc.obj, cls, schema.document_schema(group, version, kind)))
        # One message per field: a semantic rule is not repeated where the schema already spoke.
        spoken = {path for path, _ in structural}
        found.extend(p for p in rules.semantic_problems(kind, doc.obj) if p[0] not in spoken)
        if not any(k in (INVALID, UNSUPPORTED) for _, k, _ in found):
            try:
                resource = codec.decode_resource(cls, doc.obj, source=Source(doc.file, doc.index))
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                found.append(("", INVALID, f"cannot read the resource: {exc}"))
    found.sort(key=lambda item: _path_key(item[0]))
    problems = _dedupe(Problem(doc.file, doc.index, path, message, kind) for path, kind, message in found)
    return resource, problems


def _path_key(path: str) -> list[tuple[int, int | str]]:
    """Order problems as a reader meets them: `http[2]` before `http[10]`."""
    return [(0, int(tok)) if tok.isascii() and tok.isdigit() else (1, tok) for tok in re.split(r"[.\[\]]+", path) if tok]


def _envelope(obj: dict[str, Any], found: list[tuple[str, str, str]]) -> tuple[type[Resource], str] | None:
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not api_version:
        found.append(("apiVersion", INVALID, "apiVersion is required (a string such as networking.istio.io/v1)"))
    if not isinstance(kind, str) or not kind:
        found.append(("kind", INVALID, "kind is required (a string such as VirtualService)"))
    if found:
        return None
    group, version = split_api_version(api_version)
    cls = MESH_KINDS.get((group, kind))
    if cls is not None:
        if version not in cls.VERSIONS:
            served = ", ".join(f"{group}/{v}" for v in cls.VERSIONS)
            found.append(("apiVersion", INVALID, f"{kind} is not served as {api_version}; use {served}"))
            return None
        return cls, version
    if (group, kind) in WORKLOAD_KINDS:
        return None
    if (group, kind) in schema.crd_schemas() or (
            group == "gateway.networking.k8s.io" and kind in GATEWAY_API_KINDS):
        found.append(("kind", UNSUPPORTED, f"kind {kind} ({group}) is not supported by Lacewing yet"))
        return None
    for mesh_group, mesh_kind in MESH_KINDS:
        if kind == mesh_kind:
            found.append(("apiVersion", INVALID, f"{kind} belongs to the {mesh_group} group; "
                          f"use apiVersion {mesh_group}/{MESH_KINDS[(mesh_group, kind)].PREFERRED_VERSION}"))
            return None
    known = sorted({k for _, k in MESH_KINDS} | {k for g, k in schema.crd_schemas() if g == group})
    close = difflib.get_close_matches(kind, known, n=1)
    hint = f"; did you mean {close[0]}?" if close else f"; mesh kinds are {', '.join(sorted(k for _, k in MESH_KINDS))}"
    found.append(("kind", INVALID, f"unknown kind {kind} ({api_version}){hint}"))
    return None


def _dedupe(problems: Iterable[Problem]) -> list[Problem]:
    seen: set[Problem] = set()
    out = []
    for p in problems:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def validate_documents(docs: Iterable[Document]) -> tuple[list[Resource], list[Problem]]:
    """All documents: the accepted resources and every problem, in document order.

    A resource is returned only if its document had no invalid or unsupported problem;
    warnings do not stop it. Workload documents give neither a resource nor a problem.
    """
    resources: list[Resource] = []
    problems: list[Problem] = []
    for doc in docs:
        resource, found = validate_document(doc)
        problems.extend(found)
        if resource is not None:
            resources.append(resource)
    return resources, problems


def parse(doc: Document) -> Resource:
    """One mesh document to its resource, or `ConfigError` with every problem."""
    resource, problems = validate_document(doc)
    errors = [p for p in problems if p.kind != WARNING]
    if errors or resource is None:
        raise ConfigError(errors or [Problem(doc.file, doc.index, "kind", "not a mesh resource")])
    return resource
