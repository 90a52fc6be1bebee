"""PeerAuthentication: does a workload port accept plaintext? (STRICT / PERMISSIVE / DISABLE)

Before: the inbound-plaintext listener (15006) accepted a connection that did not come through a
tunnel, for an enrolled workload. After: `mode_for` says STRICT (refuse it), PERMISSIVE (accept,
labelled plaintext) or DISABLE (accept; for the node tunnel the same as PERMISSIVE).

Istio's precedence: a workload-selector policy in the workload's namespace, then the namespace's
policy without selector, then the mesh-wide one in the root namespace; `UNSET` (or no `mtls`)
inherits from the next level; nothing at all means PERMISSIVE. `portLevelMtls` applies only in a
policy with a selector, keyed by the workload's (target) port. When several policies tie at one
level, the one sorting first by name wins (Istio picks the oldest; names are deterministic here).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from control.config.model import PeerAuthentication
from node_agent.ztunnel.authz import ROOT_NAMESPACE

STRICT, PERMISSIVE, DISABLE = "STRICT", "PERMISSIVE", "DISABLE"


def _mode(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.upper()
    return None if value == "UNSET" else value


def mode_for(policies: Iterable[PeerAuthentication], *, namespace: str,
             labels: Mapping[str, str], port: int, root_namespace: str = ROOT_NAMESPACE) -> str:
    workload_level, namespace_level, mesh_level = [], [], []
    for p in policies:
        sel = p.spec.selector
        if p.namespace == namespace and sel is not None and sel.match_labels:
            if all(labels.get(k) == v for k, v in sel.match_labels.items()):
                workload_level.append(p)
        elif p.namespace == namespace and (sel is None or not sel.match_labels):
            namespace_level.append(p)
        elif p.namespace == root_namespace and (sel is None or not sel.match_labels):
            mesh_level.append(p)
    for level in (workload_level, namespace_level, mesh_level):
        level.sort(key=lambda p: p.name)
        if not level:
            continue
        p = level[0]
        if level is workload_level and port in p.spec.port_level_mtls:
            m = _mode(p.spec.port_level_mtls[port].mode)
            if m is not None:
                return m
        m = _mode(p.spec.mtls.mode if p.spec.mtls else None)
        if m is not None:
            return m
    return PERMISSIVE


def accepts_plaintext(mode: str) -> bool:
    return mode != STRICT
