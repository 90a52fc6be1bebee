"""Tier 2: the real waypoint on loopback in front of real sample-app servers — routing."""

from __future__ import annotations

import json
import socket
import time

import h2.config
import h2.connection
import h2.events
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lacewing.sample_app import Behaviour, run_load
from tests.waypoint.conftest import SUBSETS, get, make_snapshot, service_dict
from waypoint.telemetry import Tracing

CANARY = SUBSETS + """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  http:
  - name: testers
    match: [{headers: {x-user: {exact: tester}}}]
    route: [{destination: {host: web, subset: v2}}]
  - name: split
    route:
    - {destination: {host: web, subset: v1}, weight: 90}
    - {destination: {host: web, subset: v2}, weight: 10}
"""


def url(wp) -> str:
    return f"http://127.0.0.1:{wp.port}/"


def test_90_10_split_within_3_points_over_2000(backends, waypoint_for):
    backs = backends(("v1", Behaviour()), ("v1", Behaviour()), ("v2", Behaviour()))
    wp = waypoint_for([service_dict(backs)], CANARY)
    r = run_load(url(wp), requests=2000, concurrency=4, headers={"Host": "web.demo"})
    assert r.count(200) == 2000 and r.error_count == 0
    share_v2 = r.versions.get("v2", 0) / 2000
    assert abs(share_v2 - 0.10) <= 0.03, r.versions
    assert set(r.pods) == {"web-v1-0", "web-v1-1", "web-v2-0"}   # v1 spread over its pods


def test_header_routing_is_exact(backends, waypoint_for):
    backs = backends(("v1", Behaviour()), ("v2", Behaviour()))
    wp = waypoint_for([service_dict(backs)], CANARY)
    r = run_load(url(wp), requests=300, concurrency=2,
                 headers={"Host": "web.demo", "x-user": "tester"})
    assert r.versions == {"v2": 300}
    r = run_load(url(wp), requests=300, concurrency=2,
                 headers={"Host": "web.demo", "x-user": "Tester"})   # not exact: the split
    assert r.versions.get("v1", 0) > 200


def test_rewrite_header_ops_and_no_route(backends, waypoint_for):
    backs = backends(("v1", Behaviour()))
    wp = waypoint_for([service_dict(backs)], """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web.demo.svc.cluster.local]
  http:
  - match: [{uri: {prefix: /api/}}]
    rewrite: {uri: /v2/}
    headers:
      request: {set: {x-via: waypoint}, remove: [x-secret]}
      response: {set: {x-route: api}}
    route: [{destination: {host: web}}]
""")
    status, headers, body = get(wp.port, "/api/users?id=7", headers={"x-secret": "s"})
    doc = json.loads(body)
    assert status == 200 and doc["path"] == "/v2/users?id=7"
    assert doc["headers"]["x-via"] == "waypoint" and "x-secret" not in doc["headers"]
    assert headers["x-route"] == "api"
    status, _, body = get(wp.port, "/other")
    assert (status, body) == (404, b"route not found")
    status, _, body = get(wp.port, "/", host="nosuch.demo")
    assert status == 404


def test_fault_abort_and_mirror(backends, waypoint_for):
    main = backends(("v1", Behaviour()))
    shadow = backends(("v1", Behaviour()), service="shadow")
    wp = waypoint_for([service_dict(main), service_dict(shadow, name="shadow")], """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /faulty}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 50}}}
    route: [{destination: {host: web}}]
  - route: [{destination: {host: web}}]
    mirror: {host: shadow}
    mirrorPercentage: {value: 100}
""")
    r = run_load(url(wp) + "faulty", requests=400, concurrency=2, headers={"Host": "web"})
    assert 140 < r.count(418) < 260 and r.count(418) + r.count(200) == 400
    r = run_load(url(wp), requests=50, concurrency=1, headers={"Host": "web"})
    assert r.count(200) == 50
    deadline = time.monotonic() + 10
    while shadow[0].server.requests_served < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert shadow[0].server.requests_served == 50


def test_live_snapshot_update_changes_routes(backends, waypoint_for):
    backs = backends(("v1", Behaviour()), ("v2", Behaviour()))
    wp = waypoint_for([service_dict(backs)], CANARY)
    everything_v2 = CANARY.replace("weight: 90", "weight: 0").replace("weight: 10", "weight: 100")
    wp.update(make_snapshot([service_dict(backs)], everything_v2, version="2"))
    r = run_load(url(wp), requests=100, headers={"Host": "web.demo"})
    assert r.versions == {"v2": 100}


def _h2_get(port: int, paths: list[str], authority: str = "web.demo") -> list[tuple[int, dict]]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    ids = []
    for p in paths:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "GET"), (":path", p), (":scheme", "http"),
                                (":authority", authority)], end_stream=True)
        ids.append(sid)
    sock.sendall(conn.data_to_send())
    status: dict[int, int] = {}
    bodies: dict[int, bytes] = {i: b"" for i in ids}
    done: set[int] = set()
    try:
        while len(done) < len(ids):
            data = sock.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status[ev.stream_id] = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    bodies[ev.stream_id] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    done.add(ev.stream_id)
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    return [(status.get(i, 0), json.loads(bodies[i]) if bodies[i] else {}) for i in ids]


def test_http2_requests_on_one_connection_spread_over_endpoints(backends, waypoint_for):
    backs = backends(("v1", Behaviour()), ("v1", Behaviour()), ("v1", Behaviour()))
    wp = waypoint_for([service_dict(backs)], """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: demo}
spec:
  host: web
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
""")
    results = _h2_get(wp.port, [f"/r{i}" for i in range(30)])
    assert all(s == 200 for s, _ in results)
    pods = {doc["pod"] for _, doc in results}
    assert pods == {"web-v1-0", "web-v1-1", "web-v1-2"}
    assert {doc["path"] for _, doc in results} == {f"/r{i}" for i in range(30)}


def test_trace_context_is_propagated_with_a_span_per_request(backends, waypoint_for):
    backs = backends(("v1", Behaviour()))
    exporter = InMemorySpanExporter()
    wp = waypoint_for([service_dict(backs)], "",
                      tracing=Tracing(sample_ratio=0.0, exporter=exporter))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    _, _, body = get(wp.port, headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    sent = json.loads(body)["headers"]
    version, tid, sid, flags = sent["traceparent"].split("-")
    assert (tid, flags) == (trace_id, "01") and sid != "00f067aa0ba902b7"
    assert sent["x-b3-traceid"] == trace_id and sent["x-b3-spanid"] == sid
    assert sent["x-b3-parentspanid"] == "00f067aa0ba902b7"
    spans = exporter.get_finished_spans()
    assert len(spans) == 1 and f"{spans[0].context.trace_id:032x}" == trace_id
    # B3 in, W3C out, same trace.
    b3 = "463ac35c9f6413ad48485a3953bb6124"
    _, _, body = get(wp.port, headers={"x-b3-traceid": b3, "x-b3-spanid": "a2fb4a1d1a96d312",
                                       "x-b3-sampled": "1"})
    assert json.loads(body)["headers"]["traceparent"].split("-")[1] == b3


def test_head_keeps_the_upstream_length(backends, waypoint_for):
    backs = backends(("v1", Behaviour()))
    wp = waypoint_for([service_dict(backs)], "")
    status, headers, head_body = get(wp.port, host="web", method="HEAD")
    assert status == 200 and head_body == b""
    # The length of the body a GET would have had (the sample app's JSON), not 0.
    assert int(headers["content-length"]) > 200
