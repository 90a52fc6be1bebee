"""Where L7 authorization can be enforced: a pure check for the node tunnel and `analyze`.

Before: the AuthorizationPolicies and the workloads (with the waypoint each one's traffic
passes, `Workload.waypoint`). After: for every sidecar-style policy (a `selector`) that has L7
rules — methods, paths, hosts, or request-header conditions — and selects a workload whose
traffic does not pass a waypoint, a `Finding` saying why it cannot be enforced and how to fix
it. The node tunnel (L4 only) must fail closed for those workloads (deny what the policy
would have judged); `lacewing analyze` prints the findings. When the workload does pass a
waypoint, the waypoint enforces the policy for it (`config.authz_for_workload`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from control.config.model import AuthorizationPolicy
from control.snapshot import Workload


@dataclass(frozen=True)
class Finding:
    policy: str        # namespace/name
    workload: str      # namespace/name
    message: str


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


def unenforceable(policies: Iterable[AuthorizationPolicy], workloads: Iterable[Workload], *,
                  root_namespace: str = "istio-system") -> list[Finding]:
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
                f"its Service lacewing.dev/use-waypoint=<name>)"))
    return out
