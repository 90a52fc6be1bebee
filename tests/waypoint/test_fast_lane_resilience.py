"""Tier 2: the fast lane's failures, retries, timeouts, metrics, spans and snapshots.

A try the lane makes that fails (a retriable status, a reset, a connect failure, a per-try
timeout) is handed to the Python pipeline with its outcome, which goes on exactly as it
would have: same tries, same answers, same metrics. (The rest of tests/waypoint runs with
the lane on too: it is the default.)
"""

from __future__ import annotations

import re
import socket
import time

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lacewing.sample_app import Behaviour, run_load
from tests.waypoint.conftest import eventually, get, make_snapshot, service_dict
from tests.waypoint.lane_peers import RecordingUpstream, exchange, without_ids
from waypoint import fastlane
from waypoint.proxy import WaypointThread
from waypoint.telemetry import Tracing

pytestmark = pytest.mark.skipif(fastlane.native is None, reason="fast lane not built")


def vs(http: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: demo}}
spec:
  hosts: [web]
  http:
{http}"""


def raw_service(port: int, *, name: str = "web") -> dict:
    return {"name": name, "namespace": "demo", "ports": [{"port": 80}],
            "endpoints": [{"name": f"{name}-0", "ip": "127.0.0.1", "port": port,
                           "serviceAccount": name, "labels": {"app": name, "version": "v1"}}]}


def lane_of(wp) -> dict:
    return wp.call(wp.waypoint.describe)["fastLane"]


def get_raw(port: int, path: str) -> bytes:
    return exchange(port, [f"GET {path} HTTP/1.1\r\nHost: web.demo\r\n\r\n".encode()], 1)


def test_retries_behind_the_lane_turn_30_percent_failures_into_99_percent(backends,
                                                                           waypoint_for):
    backs = backends(("v1", Behaviour(fail_rate=0.3)), ("v1", Behaviour(fail_rate=0.3)))
    wp = waypoint_for([service_dict(backs)], vs("""
  - route: [{destination: {host: web}}]
    retries: {attempts: 5, retryOn: 5xx}
"""))
    r = run_load(f"http://127.0.0.1:{wp.port}/", requests=600, concurrency=4,
                 headers={"Host": "web"})
    assert r.count(200) >= 594, r.statuses
    lane = lane_of(wp)
    assert lane["answered"] > 300                       # the successes on the first try
    assert lane["handedOver"].get("retry", 0) > 50      # the 503s, retried by Python


@pytest.mark.parametrize("fast_lane", [True, False])
def test_the_same_tries_as_the_python_path(fast_lane):
    """Every third upstream answer is a 503: with retries on 5xx each failed first try
    costs exactly one more try, lane or not."""
    up = RecordingUpstream(fail_every=3)
    snap = make_snapshot([raw_service(up.port)], vs("""
  - route: [{destination: {host: web}}]
    retries: {attempts: 2, retryOn: 5xx}
"""))
    try:
        with WaypointThread(snap, fast_lane=fast_lane, metrics_port=None) as wp:
            s = socket.create_connection(("127.0.0.1", wp.port), timeout=5)
            statuses = []
            for i in range(30):
                got = b""
                s.sendall(f"GET /cl?i={i} HTTP/1.1\r\nHost: web.demo\r\n\r\n".encode())
                while b"\r\n\r\n" not in got or not got.endswith(b"}\n"):
                    got += s.recv(65536)
                statuses.append(got.split(b" ", 2)[1])
            s.close()
            lane = wp.call(wp.waypoint.describe)["fastLane"]
    finally:
        up.close()
    assert statuses == [b"200"] * 30
    # tries 3, 6, 9, ... fail and are retried once: 44 tries give 30 answers (14 failed)
    assert len(up.requests) == 44
    if fast_lane:
        assert lane["handedOver"].get("retry", 0) >= 10 and lane["answered"] >= 10


def test_connect_failure_answers_as_the_python_path():
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()                                        # nothing listens there
    outs = {}
    for on in (True, False):
        snap = make_snapshot([raw_service(port)])
        with WaypointThread(snap, fast_lane=on, metrics_port=None) as wp:
            outs[on] = get_raw(wp.port, "/x")
            if on:
                assert lane_of(wp)["handedOver"].get("failure", 0) >= 1
    assert outs[True].startswith(b"HTTP/1.1 503 ")
    assert b"connection failure" in outs[True]
    assert outs[True] == outs[False]


def test_route_timeout_is_504_ut(backends, waypoint_for):
    backs = backends(("v1", Behaviour(latency=1.0)))
    wp = waypoint_for([service_dict(backs)], vs("""
  - route: [{destination: {host: web}}]
    timeout: 0.2s
"""))
    t0 = time.monotonic()
    status, _, body = get(wp.port, "/", host="web")
    assert status == 504 and body == b"upstream request timeout"
    assert time.monotonic() - t0 < 0.9
    assert lane_of(wp)["handedOver"].get("route_timeout", 0) == 1
    series = {labels[15:18]: s.count for labels, s in wp.metrics.series.items()}
    assert series == {("504", "-", "UT"): 1}


def test_per_try_timeout_then_the_retry(backends, waypoint_for):
    slow = backends(("v1", Behaviour(latency=1.0)))
    fast = backends(("v1", Behaviour()))
    wp = waypoint_for([service_dict(slow + fast)], vs("""
  - route: [{destination: {host: web}}]
    retries: {attempts: 3, perTryTimeout: 0.1s, retryOn: "reset,5xx"}
""") + """---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: demo}
spec:
  host: web
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
""")
    for _ in range(4):
        status, _, _ = get(wp.port, "/", host="web")
        assert status == 200
    assert lane_of(wp)["handedOver"].get("failure", 0) >= 1


def test_metrics_are_the_same_series_and_values_on_both_paths():
    def run(on: bool) -> dict:
        up = RecordingUpstream()
        snap = make_snapshot([raw_service(up.port)])
        try:
            with WaypointThread(snap, fast_lane=on, metrics_port=None) as wp:
                for path in ("/cl", "/cl", "/204", "/500", "/chunked", "/head"):
                    method = "HEAD" if path == "/head" else "GET"
                    exchange(wp.port, [f"{method} {path} HTTP/1.1\r\nHost: web.demo\r\n"
                                       f"Content-Length: 3\r\n\r\nabc".encode()], 1,
                             head=method == "HEAD")
                exchange(wp.port, [b"POST /cl HTTP/1.1\r\nHost: web.demo\r\n"
                                   b"Content-Length: 5000\r\n\r\n" + b"p" * 5000], 1)
                assert eventually(lambda: sum(s.count for s in wp.metrics.series.values())
                                  == 7)
                return {labels: (s.count, s.req_sum, s.resp_sum, s.req, s.resp, sum(s.dur))
                        for labels, s in wp.metrics.series.items()}
        finally:
            up.close()
    on, off = run(True), run(False)
    assert on == off
    assert len(on) == 3     # 200 (GETs, HEAD, POST), 204, 500


def test_a_sampled_request_goes_through_the_lane_and_gets_its_span():
    exporter = InMemorySpanExporter()
    up = RecordingUpstream()
    snap = make_snapshot([raw_service(up.port)])
    try:
        with WaypointThread(snap, metrics_port=None,
                            tracing=Tracing(sample_ratio=1.0, exporter=exporter)) as wp:
            parent = "0af7651916cd43dd8448eb211c80319c"
            out = exchange(wp.port, [
                b"GET /cl HTTP/1.1\r\nHost: web.demo\r\n\r\n",
                f"GET /cl HTTP/1.1\r\nHost: web.demo\r\ntraceparent: 00-{parent}-"
                f"b7ad6b7169203331-01\r\n\r\n".encode()], 2)
            assert out.count(b"HTTP/1.1 200 OK") == 2
            assert eventually(lambda: len(exporter.get_finished_spans()) == 2)
            lane = lane_of(wp)
    finally:
        up.close()
    assert lane["answered"] == 2 and not lane["handedOver"]
    spans = exporter.get_finished_spans()
    for span, raw in zip(spans, up.requests, strict=True):
        ctx = span.get_span_context()
        assert span.attributes["http.response.status_code"] == 200
        assert f"traceparent: 00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01".encode() in raw
        assert b"x-b3-sampled: 1\r\n" in raw
    assert f"{spans[1].get_span_context().trace_id:032x}" == parent
    assert spans[1].parent.span_id == 0xb7ad6b7169203331


def test_a_new_snapshot_drops_the_cached_plans(backends):
    up = RecordingUpstream()
    config = vs("""
  - route: [{destination: {host: web}}]
    headers: {request: {set: {x-version: "%s"}}}
""")
    try:
        with WaypointThread(make_snapshot([raw_service(up.port)], config % "one"),
                            metrics_port=None) as wp:
            s = socket.create_connection(("127.0.0.1", wp.port), timeout=5)
            for want in ("one", "two"):
                if want == "two":
                    wp.update(make_snapshot([raw_service(up.port)], config % "two"))
                s.sendall(b"GET /cl HTTP/1.1\r\nHost: web.demo\r\n\r\n")
                got = b""
                while not got.endswith(b"}\n"):
                    got += s.recv(65536)
                assert f"x-version: {want}\r\n".encode() in up.requests[-1]
            s.close()
            assert lane_of(wp)["answered"] == 2
    finally:
        up.close()


def test_nothing_leaks_after_the_clients_go():
    up = RecordingUpstream()
    try:
        with WaypointThread(make_snapshot([raw_service(up.port)]), metrics_port=None) as wp:
            for i in range(20):
                s = socket.create_connection(("127.0.0.1", wp.port), timeout=5)
                s.sendall(b"GET /chunked-split HTTP/1.1\r\nHost: web.demo\r\n\r\n")
                if i % 2:
                    s.recv(10)                           # gone mid-answer
                s.close()
            lane = wp.waypoint.lane_glue.lane
            assert eventually(lambda: wp.call(lambda: (len(lane.downs), len(lane.active),
                                                       len(wp.waypoint._tasks)))
                              == (0, 0, 0), timeout=5)
            st = next(iter(wp.waypoint.clusters.values()))
            assert eventually(lambda: wp.call(lambda: st.counters.requests) == 0)
            assert wp.call(lambda: sum(st.in_flight.values())) == 0
            # idle upstream connections are counted once each and reusable
            assert wp.call(lambda: st.counters.connections) == \
                wp.call(lambda: st.lane.idle_count())
    finally:
        up.close()


def test_handover_after_lane_requests_keeps_the_byte_stream_in_order():
    up = RecordingUpstream()
    try:
        with WaypointThread(make_snapshot([raw_service(up.port)]), metrics_port=None) as wp:
            reqs = [b"GET /cl?a HTTP/1.1\r\nHost: web.demo\r\n\r\n",
                    b"GET /cl?b HTTP/1.1\r\nHost: web.demo\r\nb3: 80f198ee56343ba864fe8b2a57d3"
                    b"eff7-e457b5a2e4d86bd1-0\r\n\r\n",
                    b"GET /cl?c HTTP/1.1\r\nHost: web.demo\r\n\r\n"]
            out = exchange(wp.port, [b"".join(reqs)], 3)
    finally:
        up.close()
    assert out.count(b"HTTP/1.1 200 OK") == 3
    paths = [re.match(rb"GET (\S+)", r).group(1) for r in up.requests]
    assert paths == [b"/cl?a", b"/cl?b", b"/cl?c"]
    assert without_ids(up.requests[1]).count(b"x-b3-traceid: 80f198ee56343ba864fe8b2a57d3eff7") \
        or b"80f198ee56343ba864fe8b2a57d3eff7" in up.requests[1]


def test_a_failing_host_is_ejected_through_the_lane_and_returns(backends, waypoint_for):
    bad = backends(("v1", Behaviour(fail_rate=1.0)))
    good = backends(("v1", Behaviour()))
    wp = waypoint_for([service_dict(bad + good)], vs("""
  - route: [{destination: {host: web}}]
    retries: {attempts: 0}
""") + """---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: demo}
spec:
  host: web
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 2s,
                       maxEjectionPercent: 100}
""")
    s = socket.create_connection(("127.0.0.1", wp.port), timeout=5)

    def one() -> bytes:
        s.sendall(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        got = b""
        while not got.endswith(b"}\n"):
            got += s.recv(65536)
        return got.split(b" ", 2)[1]

    statuses = [one() for _ in range(20)]
    assert statuses.count(b"503") == 3                   # then it is out
    assert bad[0].server.requests_served == 3
    snap = wp.call(wp.waypoint.describe)
    assert any(c["ejected"] for c in snap["clusters"].values())
    assert snap["fastLane"]["answered"] == 20
    # back after baseEjectionTime, at an interval sweep
    assert eventually(lambda: one() == b"503" or bad[0].server.requests_served > 3,
                      timeout=6)
    s.close()


def test_the_lane_counter_is_exported_and_the_lane_can_be_turned_off(monkeypatch):
    import urllib.request

    up = RecordingUpstream()
    try:
        with WaypointThread(make_snapshot([raw_service(up.port)])) as wp:
            get_raw(wp.port, "/cl")
            get_raw(wp.port, "/a%zz")
            text = urllib.request.urlopen(
                f"http://127.0.0.1:{wp.metrics_port}/metrics", timeout=5).read().decode()
        assert 'lacewing_waypoint_fast_lane_total{outcome="answered",reason=""} 1.0' in text
        assert ('lacewing_waypoint_fast_lane_total{outcome="handed_over",reason="no_plan"} 1.0'
                in text)
        monkeypatch.setenv("LACEWING_WAYPOINT_FAST_LANE", "0")
        with WaypointThread(make_snapshot([raw_service(up.port)])) as wp:
            assert get_raw(wp.port, "/cl").startswith(b"HTTP/1.1 200 OK")
            assert wp.server.lane is None and wp.call(wp.waypoint.describe)["fastLane"] is None
    finally:
        up.close()


def test_mtls_clients_keep_their_own_principal_in_metrics_and_x_forwarded_proto(
        tmp_path, backends, waypoint_for):
    from control.ca.authority import CertificateAuthority
    from control.ca.spiffe_id import workload_id
    from waypoint.tls import client_context, server_context

    ca = CertificateAuthority.load_or_generate(tmp_path / "ca")
    bundle = b"".join(ca.trust_bundle)

    def issue(sa: str):
        key, chain = ca.issue_with_new_key(workload_id("demo", sa))
        return b"".join(chain.cert_chain), key

    up = RecordingUpstream()
    try:
        wp = waypoint_for([raw_service(up.port)], ssl_context=server_context(
            *issue("waypoint"), bundle))
        for sa in ("alice", "bob", "alice"):
            status, _, _ = get(wp.port, "/cl", host="web", context=client_context(*issue(sa),
                                                                                  bundle))
            assert status == 200
        assert all(b"x-forwarded-proto: https\r\n" in r for r in up.requests)
        by_principal = {labels[3]: s.count for labels, s in wp.metrics.series.items()}
        assert by_principal == {"cluster.local/ns/demo/sa/alice": 2,
                                "cluster.local/ns/demo/sa/bob": 1}
        assert lane_of(wp)["answered"] == 3
    finally:
        up.close()


def test_pool_overflow_behind_the_lane_is_503_overloaded(backends, waypoint_for):
    backs = backends(("v1", Behaviour(latency=0.3)))
    wp = waypoint_for([service_dict(backs)], vs("""
  - route: [{destination: {host: web}}]
    retries: {attempts: 0}
""") + """---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: demo}
spec:
  host: web
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1}
""")
    r = run_load(f"http://127.0.0.1:{wp.port}/", requests=24, concurrency=6,
                 headers={"Host": "web"})
    assert r.count(503) > 0 and r.count(200) > 0 and r.count(200) + r.count(503) == 24
    assert backs[0].server.connections_accepted == 1       # one slot for lane and Python
    lane = lane_of(wp)
    assert lane["answered"] > 0 and lane["handedOver"].get("pool", 0) > 0
    overflow = [labels for labels in wp.metrics.series if labels[17] == "UO"]
    assert overflow                                           # answered by the Python path


def test_after_a_request_outside_the_lane_the_connection_comes_back():
    up = RecordingUpstream()
    try:
        with WaypointThread(make_snapshot([raw_service(up.port)]), metrics_port=None) as wp:
            s = socket.create_connection(("127.0.0.1", wp.port), timeout=5)
            for extra in ("", "b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0\r\n", "",
                          "Expect: 100-continue\r\nContent-Length: 2\r\n", ""):
                s.sendall(f"POST /cl HTTP/1.1\r\nHost: web.demo\r\n{extra}\r\n".encode()
                          + (b"ok" if "Expect" in extra else b""))
                got = b""
                while not got.endswith(b"}\n"):
                    got += s.recv(65536)
                assert got.startswith(b"HTTP/1.1 200 OK")
            s.close()
            lane = lane_of(wp)
    finally:
        up.close()
    assert lane["answered"] == 3
    assert lane["handedOver"] == {"b3": 1, "expect": 1}
    assert len(up.requests) == 5 and up.connections == 1
