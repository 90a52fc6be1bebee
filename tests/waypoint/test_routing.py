"""Tier 1: VirtualService matching, weighted destinations, rewrites, faults, and the compiled
view of a snapshot (services by host, subsets, policy scoping)."""

from __future__ import annotations

import random

import pytest

from control.config.model import HeaderOperations
from tests.waypoint.conftest import make_snapshot
from waypoint.config import WaypointConfig
from waypoint.router import RequestView, apply_header_ops, decide_fault, plan, select_route

ROUTES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  http:
  - name: exact
    match: [{uri: {exact: /login}}]
    route: [{destination: {host: web, subset: v1}}]
  - name: header
    match: [{headers: {x-user: {exact: tester}}}]
    route: [{destination: {host: web, subset: v2}}]
  - name: regex-and-method
    match: [{uri: {regex: "/items/[0-9]+"}, method: {exact: DELETE}}]
    route: [{destination: {host: web, subset: v2}}]
  - name: query
    match: [{queryParams: {debug: {exact: "1"}}}]
    route: [{destination: {host: web, subset: v2}}]
  - name: present
    match: [{headers: {x-canary: {}}}]
    route: [{destination: {host: web, subset: v2}}]
  - name: api
    match: [{uri: {prefix: /api/}}]
    rewrite: {uri: /v2/}
    route: [{destination: {host: web, subset: v1}}]
    headers:
      request: {set: {x-route: api}, remove: [x-secret]}
      response: {add: {x-served-by: waypoint}}
  - name: split
    route:
    - {destination: {host: web, subset: v1}, weight: 90}
    - {destination: {host: web, subset: v2}, weight: 10}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: demo}
spec:
  host: web.demo.svc.cluster.local
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {simple: RANDOM}}
"""

SERVICES = [{
    "name": "web", "namespace": "demo", "vip": "10.96.0.7", "ports": [{"port": 80}],
    "endpoints": [
        {"name": "web-v1-0", "ip": "10.0.0.1", "port": 8080, "labels": {"version": "v1"}},
        {"name": "web-v1-1", "ip": "10.0.0.2", "port": 8080, "labels": {"version": "v1"}},
        {"name": "web-v2-0", "ip": "10.0.0.3", "port": 8080, "labels": {"version": "v2"}},
    ]}]


@pytest.fixture(scope="module")
def cfg():
    return WaypointConfig.compile(make_snapshot(SERVICES, ROUTES))


def view(path="/", *, method="GET", headers=None, query=""):
    return RequestView(method, "web", path, query, headers or {})


@pytest.mark.parametrize("rv,name", [
    (view("/login"), "exact"),
    (view("/login/x"), "split"),
    (view("/", headers={"x-user": "tester"}), "header"),
    (view("/", headers={"x-user": "Tester"}), "split"),        # exact is case-sensitive
    (view("/items/42", method="DELETE"), "regex-and-method"),
    (view("/items/42", method="GET"), "split"),
    (view("/items/42x", method="DELETE"), "split"),            # regex must match whole path
    (view("/", query="a=2&debug=1"), "query"),
    (view("/", query="debug=10"), "split"),
    (view("/", headers={"x-canary": ""}), "present"),
    (view("/api/users"), "api"),
    (view("/apix"), "split"),
])
def test_first_matching_route_wins(cfg, rv, name):
    route, _ = select_route(cfg.routes["demo/web"], rv)
    assert route.name == name


def test_no_match_gives_none(cfg):
    routes = cfg.routes["demo/web"][:1]
    assert select_route(routes, view("/other")) is None


def test_weighted_split_draws_per_request(cfg):
    rng = random.Random(1)
    route, match = select_route(cfg.routes["demo/web"], view("/"))
    subsets = [plan(route, match, view("/"), rng).destination.subset for _ in range(4000)]
    share = subsets.count("v2") / len(subsets)
    assert 0.08 < share < 0.12


def test_prefix_rewrite_keeps_the_rest_and_header_ops(cfg):
    rv = view("/api/users/7")
    route, match = select_route(cfg.routes["demo/web"], rv)
    p = plan(route, match, rv, random.Random(0))
    assert p.path == "/v2/users/7"
    headers = [("x-secret", "s"), ("x-route", "old"), ("accept", "*/*")]
    for ops in p.request_ops:
        apply_header_ops(headers, ops)
    assert headers == [("accept", "*/*"), ("x-route", "api")]
    resp: list = []
    for ops in p.response_ops:
        apply_header_ops(resp, ops)
    assert resp == [("x-served-by", "waypoint")]


def test_header_ops_add_keeps_existing():
    h = [("a", "1")]
    apply_header_ops(h, HeaderOperations(add={"A": "2"}))
    assert h == [("a", "1"), ("a", "2")]


def test_services_are_found_by_every_name(cfg):
    for host in ("web", "web.demo", "web.demo.svc", "web.demo.svc.cluster.local",
                 "WEB.demo:80", "10.96.0.7", "10.96.0.7:80"):
        assert cfg.service_for(host).uid == "demo/web", host
    assert cfg.service_for("other.demo") is None


def test_subsets_select_endpoints_and_merge_policy(cfg):
    svc = cfg.service_for("web")
    v1, v2, all_ = cfg.cluster(svc, 80, "v1"), cfg.cluster(svc, 80, "v2"), cfg.cluster(svc, 80)
    assert [h.workload for h in v1.hosts] == ["demo/web-v1-0", "demo/web-v1-1"]
    assert [h.address for h in v2.hosts] == ["10.0.0.3:8080"]
    assert len(all_.hosts) == 3
    assert v1.policy.load_balancer.simple == "ROUND_ROBIN"
    assert v2.policy.load_balancer.simple == "RANDOM"       # the subset's own wins
    assert cfg.cluster(svc, 80, "v3") is None               # undefined subset


def test_faults_follow_percentages():
    from datetime import timedelta

    from control.config.model import Abort, Delay, HTTPFaultInjection, Percent

    rng = random.Random(3)
    f = HTTPFaultInjection(delay=Delay(fixed_delay=timedelta(milliseconds=5),
                                       percentage=Percent(100)),
                           abort=Abort(http_status=418, percentage=Percent(25)))
    decisions = [decide_fault(f, rng) for _ in range(2000)]
    assert all(d.delay_s == 0.005 for d in decisions)
    aborted = sum(d.abort_status == 418 for d in decisions)
    assert 400 < aborted < 600
    none = HTTPFaultInjection(abort=Abort(http_status=500, percentage=Percent(0)))
    assert decide_fault(none, rng).abort_status is None


POLICIES = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: by-service, namespace: demo}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: namespace-wide, namespace: demo}
spec:
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sidecar-style, namespace: demo}
spec:
  selector: {matchLabels: {version: v2}}
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-service, namespace: demo}
spec:
  targetRefs: [{kind: Service, group: "", name: api}]
  rules: [{}]
---
apiVersion: lacewing.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: web-limit, namespace: demo}
spec:
  targetRef: {kind: Service, group: "", name: web}
  tokenBucket: {maxTokens: 10, fillInterval: 1s}
---
apiVersion: lacewing.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: other, namespace: demo}
spec:
  targetRef: {kind: Service, group: "", name: api}
  tokenBucket: {maxTokens: 10, fillInterval: 1s}
"""


def test_policy_scoping():
    cfg = WaypointConfig.compile(make_snapshot(SERVICES, ROUTES + "---" + POLICIES))
    svc = cfg.service_for("web")
    assert [p.name for p in cfg.authz_for_service(svc)] == ["by-service", "namespace-wide"]
    assert [p.name for p in cfg.authz_for_workload("demo/web-v2-0")] == ["sidecar-style"]
    assert cfg.authz_for_workload("demo/web-v1-0") == ()
    assert [p.name for p in cfg.ratelimits_for(svc)] == ["web-limit"]
