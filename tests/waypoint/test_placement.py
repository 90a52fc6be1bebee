"""Tier 1: sidecar-style L7 policies on workloads without a waypoint are reported."""

from __future__ import annotations

from types import MappingProxyType

from control.snapshot import Workload
from waypoint.bootstrap import parse_resources
from waypoint.placement import l7_fields, unenforceable

POLICIES = parse_resources("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: l7, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  rules: [{to: [{operation: {methods: [GET], paths: ["/api/*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: l4, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]}]
""")


def workload(name: str, waypoint: str | None) -> Workload:
    return Workload("shop", name, "n1", "10.0.0.1", "10.0.0.1", "cart",
                    "spiffe://cluster.local/ns/shop/sa/cart",
                    labels=MappingProxyType({"app": "cart"}), waypoint=waypoint)


def test_l7_fields():
    assert l7_fields(POLICIES[0]) == ["methods", "paths"]
    assert l7_fields(POLICIES[1]) == []


def test_only_l7_policies_on_workloads_without_a_waypoint_are_reported():
    found = unenforceable(POLICIES, [workload("cart-0", None), workload("cart-1", "shop/wp")])
    assert [(f.policy, f.workload) for f in found] == [("shop/l7", "shop/cart-0")]
    assert "lacewing waypoint apply -n shop --enroll-namespace" in found[0].message
