"""Tier 2: retries, timeouts, outlier detection, pool overflow and rate limits, through the
real waypoint to real sample-app servers on loopback."""

from __future__ import annotations

import time

from lacewing.sample_app import Behaviour, run_load
from tests.waypoint.conftest import eventually, get, service_dict


def url(wp, path="/") -> str:
    return f"http://127.0.0.1:{wp.port}{path}"


def vs(http: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: demo}}
spec:
  hosts: [web]
  http:
{http}
"""


def dr(policy: str) -> str:
    return f"""
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: demo}}
spec:
  host: web
  trafficPolicy:
{policy}
"""


def test_retries_turn_30_percent_failures_into_99_percent_success(backends, waypoint_for):
    backs = backends(("v1", Behaviour(fail_rate=0.3)), ("v1", Behaviour(fail_rate=0.3)))
    no_retry = waypoint_for([service_dict(backs)], vs("""
  - route: [{destination: {host: web}}]
    retries: {attempts: 0}
"""))
    r = run_load(url(no_retry), requests=600, concurrency=4, headers={"Host": "web"})
    assert 0.2 < r.count(503) / 600 < 0.4            # the backend really fails ~30 %
    wp = waypoint_for([service_dict(backs)], vs("""
  - route: [{destination: {host: web}}]
    retries: {attempts: 4, retryOn: "5xx"}
"""))
    r = run_load(url(wp), requests=1000, concurrency=4, headers={"Host": "web"})
    assert r.count(200) / 1000 >= 0.99, r.statuses


def test_retry_on_gateway_error_does_not_retry_500(backends, waypoint_for):
    backs = backends(("v1", Behaviour()))
    wp = waypoint_for([service_dict(backs)], vs("""
  - route: [{destination: {host: web}}]
    retries: {attempts: 3, retryOn: gateway-error}
"""))
    srv = backs[0].server
    assert get(wp.port, host="web", headers={"x-sample-status": "500"})[0] == 500
    assert eventually(lambda: srv.requests_served == 1)
    assert get(wp.port, host="web", headers={"x-sample-status": "502"})[0] == 502
    assert eventually(lambda: srv.requests_served == 1 + 4)   # first try + 3 retries
    time.sleep(0.2)
    assert srv.requests_served == 5


def test_reset_is_retried_when_asked(backends, waypoint_for):
    backs = backends(("v1", Behaviour(close_rate=0.3)))
    wp = waypoint_for([service_dict(backs)], vs("""
  - route: [{destination: {host: web}}]
    retries: {attempts: 5, retryOn: reset}
"""))
    r = run_load(url(wp), requests=300, concurrency=2, headers={"Host": "web"})
    assert r.count(200) >= 297, r.statuses


def test_route_timeout_is_enforced_over_all_tries(backends, waypoint_for):
    backs = backends(("v1", Behaviour()))
    wp = waypoint_for([service_dict(backs)], vs("""
  - route: [{destination: {host: web}}]
    timeout: 300ms
    retries: {attempts: 5, perTryTimeout: 100ms, retryOn: "5xx,reset"}
"""))
    status, _, body = get(wp.port, host="web", headers={"x-sample-delay": "5s"})
    assert (status, body) == (504, b"upstream request timeout")
    status, _, _ = get(wp.port, host="web", headers={"x-sample-delay": "10ms"})
    assert status == 200


def test_per_try_timeout_then_success_on_retry(backends, waypoint_for):
    slow = backends(("v1", Behaviour(latency=5.0)))
    fast = backends(("v1", Behaviour()))
    wp = waypoint_for([service_dict(slow + fast)], vs("""
  - route: [{destination: {host: web}}]
    retries: {attempts: 2, perTryTimeout: 200ms, retryOn: "reset"}
""") + dr("    loadBalancer: {simple: ROUND_ROBIN}"))
    statuses = [get(wp.port, host="web")[0] for _ in range(4)]
    assert statuses == [200] * 4        # a try that timed out went to the other pod


def test_failing_pod_is_ejected_then_returns(backends, waypoint_for):
    backs = backends(("v1", Behaviour()), ("v1", Behaviour()), ("v1", Behaviour(fail_rate=1.0)))
    wp = waypoint_for([service_dict(backs)], vs("""
  - route: [{destination: {host: web}}]
    retries: {attempts: 0}
""") + dr("""    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection:
      consecutive5xxErrors: 3
      interval: 100ms
      baseEjectionTime: 2s
      maxEjectionPercent: 50
"""))
    r = run_load(url(wp), requests=30, concurrency=1, headers={"Host": "web"})
    bad = "web-v1-2"
    assert r.pod_statuses[bad] == {503: 3}                 # ejected after 3 failures
    r = run_load(url(wp), requests=100, concurrency=2, headers={"Host": "web"})
    assert r.count(200) == 100 and bad not in r.pods
    # It comes back once baseEjectionTime has passed (checked at an interval sweep).
    deadline = time.monotonic() + 10
    returned = False
    while time.monotonic() < deadline and not returned:
        r = run_load(url(wp), requests=6, concurrency=1, headers={"Host": "web"})
        returned = bad in r.pods
        time.sleep(0.1)
    assert returned
    text = get(wp.metrics_port, "/metrics", host="localhost")[2].decode()
    assert 'lacewing_waypoint_outlier_ejections_total{cluster="outbound|80||web.demo.svc.cluster.local"}' in text


def test_pool_overflow_is_answered_503(backends, waypoint_for):
    backs = backends(("v1", Behaviour(latency=0.3)))
    wp = waypoint_for([service_dict(backs)], vs("""
  - route: [{destination: {host: web}}]
    retries: {attempts: 0}
""") + dr("""    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1}
"""))
    r = run_load(url(wp), requests=24, concurrency=6, headers={"Host": "web"})
    assert r.count(503) > 0 and r.count(200) > 0 and r.count(200) + r.count(503) == 24
    assert backs[0].server.connections_accepted == 1       # never more than one connection
    text = get(wp.metrics_port, "/metrics", host="localhost")[2].decode()
    assert 'limit="pending"' in text


def test_overflow_answer_carries_the_overloaded_header(backends, waypoint_for):
    backs = backends(("v1", Behaviour(latency=1.0)))
    wp = waypoint_for([service_dict(backs)], dr("""    connectionPool:
      http: {http2MaxRequests: 1}
""").lstrip("-\n"))
    import threading

    t = threading.Thread(target=get, args=(wp.port,), kwargs={"host": "web"})
    t.start()
    deadline = time.monotonic() + 5
    while backs[0].server.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    status, headers, _ = get(wp.port, host="web")
    t.join()
    assert status == 503 and headers["x-envoy-overloaded"] == "true"


def test_rate_limit_gives_the_expected_429_count(backends, waypoint_for):
    backs = backends(("v1", Behaviour()))
    wp = waypoint_for([service_dict(backs)], """
apiVersion: lacewing.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: web, namespace: demo}
spec:
  targetRef: {kind: Service, group: "", name: web}
  tokenBucket: {maxTokens: 25, tokensPerFill: 1, fillInterval: 1h}
  remainingTokensHeader: x-ratelimit-remaining
""")
    _, headers, _ = get(wp.port, host="web")
    assert headers["x-ratelimit-remaining"] == "24"
    r = run_load(url(wp), requests=100, concurrency=4, headers={"Host": "web"})
    assert (r.count(200), r.count(429)) == (24, 76)
    status, headers, body = get(wp.port, host="web")
    assert (status, body, headers["x-ratelimit-remaining"]) == (429, b"local_rate_limited", "0")
