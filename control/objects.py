"""Kubernetes-shaped objects as the sources deliver them: keys and change events.

Before: a source (control/sources/: a directory of YAML, or the Kubernetes API) has read objects
as plain dicts. After: it puts `Upsert`, `Delete` and `Replace` events on the state writer's
queue (control/state.py), which is the only code that changes the cluster state. Keys name an
object by kind (the bare Kubernetes kind: "Pod", "VirtualService"), namespace ("" for
cluster-scoped kinds) and name.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from control.config.model import RESOURCE_KINDS

NAMESPACE = "Namespace"
POD = "Pod"
SERVICE = "Service"
ENDPOINT_SLICE = "EndpointSlice"
SERVICE_ACCOUNT = "ServiceAccount"
NODE = "Node"
DEPLOYMENT = "Deployment"

WORKLOAD_KINDS = frozenset({NAMESPACE, POD, SERVICE, ENDPOINT_SLICE, SERVICE_ACCOUNT, NODE,
                            DEPLOYMENT})
MESH_KINDS = frozenset(cls.KIND for cls in RESOURCE_KINDS)
ALL_KINDS = WORKLOAD_KINDS | MESH_KINDS
CLUSTER_SCOPED = frozenset({NAMESPACE, NODE})


@dataclass(frozen=True, order=True)
class Key:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else \
            f"{self.kind} {self.name}"


def key_of(obj: Mapping[str, Any]) -> Key | None:
    """The key of an object dict, or None if it is not a kind the control plane reads."""
    kind = obj.get("kind")
    meta = obj.get("metadata") or {}
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if kind not in ALL_KINDS or not isinstance(name, str) or not name:
        return None
    namespace = "" if kind in CLUSTER_SCOPED else (meta.get("namespace") or "default")
    return Key(kind, namespace, name)


@dataclass(frozen=True)
class Upsert:
    key: Key
    obj: Mapping[str, Any]
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Delete:
    key: Key
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Replace:
    """The complete set of objects of `kinds` (a relist, or a rescan of the directory)."""

    kinds: frozenset[str]
    objects: Mapping[Key, Mapping[str, Any]]
    at: float = field(default_factory=time.monotonic)


Event = Upsert | Delete | Replace
