"""Where L7 authorization can be enforced: a pure check for the node tunnel and `analyze`.

Before: the AuthorizationPolicies and the workloads (with the waypoint each one's traffic
passes, `Workload.waypoint`). After: for every sidecar-style policy (a `selector`) that has L7
rules — methods, paths, hosts, or request-header conditions — and selects a workload whose
traffic does not pass a waypoint, a `Finding` saying why it cannot be enforced and how to fix
it. The node tunnel (L4 only) must fail closed for those workloads (deny what the policy
would have judged); `lacewing analyze` prints the findings (`waypoint.placement.unenforceable`).
When the workload does pass a waypoint, the waypoint enforces the policy for it
(`config.authz_for_workload`).

The check itself lives in `control.config.analyze` (the control plane may not import the
waypoint); this module re-exports it for the data planes. There is one copy.
"""

from __future__ import annotations

from control.config.analyze import UNENFORCEABLE, Finding, l7_fields, unenforceable

__all__ = ["UNENFORCEABLE", "Finding", "l7_fields", "unenforceable"]
