"""Tier 2: the compiled HTTP/1.1 fast lane (waypoint/fastlane) against the Python path.

The same requests go through a waypoint with the lane on and one with it off, in front of
the same recording upstream: what the upstream receives and what the client receives must
be the same bytes (random ids aside), and the lane must actually have answered the common
requests (its counter). Requests outside the lane's subset are handed over and answered
exactly as the Python path answers them.
"""

from __future__ import annotations

import pytest

from tests.waypoint.conftest import make_snapshot
from tests.waypoint.lane_peers import RecordingUpstream, exchange, without_ids
from waypoint import fastlane
from waypoint.proxy import WaypointThread
from waypoint.telemetry import Tracing

pytestmark = pytest.mark.skipif(fastlane.native is None, reason="fast lane not built")

CONFIG = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: demo}
spec:
  host: web
  subsets:
  - {name: a, labels: {version: v1}}
  - {name: b, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /api/}}]
    rewrite: {uri: /v2/}
    headers:
      request: {set: {x-via: waypoint}, remove: [x-secret], add: {x-added: "1"}}
      response: {set: {x-route: api}, remove: [x-up]}
    route: [{destination: {host: web}}]
  - match: [{headers: {x-pick: {exact: b}}}]
    route: [{destination: {host: web, subset: b}}]
  - match: [{uri: {prefix: /weighted}}]
    route:
    - {destination: {host: web, subset: a}, weight: 50}
    - {destination: {host: web, subset: b}, weight: 50}
  - route: [{destination: {host: web}}]
    retries: {attempts: 0}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: guarded, namespace: demo}
spec:
  targetRefs: [{kind: Service, group: "", name: guarded}]
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin"]}}]
---
apiVersion: lacewing.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: limited, namespace: demo}
spec:
  targetRef: {kind: Service, group: "", name: limited}
  tokenBucket: {maxTokens: 1000, tokensPerFill: 1, fillInterval: 1h}
"""


def services(up: RecordingUpstream) -> list[dict]:
    def svc(svc_name: str, **port) -> dict:
        name = svc_name
        return {"name": name, "namespace": "demo", "ports": [{"port": 80, **port}],
                "endpoints": [{"name": f"{name}-0", "ip": "127.0.0.1", "port": up.port,
                               "serviceAccount": name,
                               "labels": {"app": name, "version": "v1"}}]}
    return [svc("web"), svc("guarded"), svc("limited"),
            svc("grpcsvc", name="grpc", appProtocol="grpc")]


def req(path: str, *, method: str = "GET", host: str = "web.demo", extra: str = "",
        body: bytes = b"") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    return (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: t\r\n{extra}{length}\r\n"
            ).encode() + body


# name → (pieces written, responses expected, read as HEAD)
CORPUS: dict[str, tuple[list[bytes], int, bool]] = {
    "get": ([req("/cl")], 1, False),
    "rewrite_and_header_ops": ([req("/api/cl?x=1", extra="X-Secret: s\r\nX-Keep: k\r\n")], 1,
                               False),
    "header_route": ([req("/cl", extra="x-pick: b\r\n")], 1, False),
    "mixed_case_names": ([req("/cl", extra="X-MiXeD: Value  \r\nACCEPT: */*\r\n")], 1, False),
    "connection_close": ([req("/cl", extra="Connection: close\r\n")], 1, False),
    "keep_alive_two": ([req("/cl") + req("/204")], 2, False),
    "head": ([req("/head", method="HEAD")], 1, True),
    "status_204": ([req("/204")], 1, False),
    "status_304": ([req("/304")], 1, False),
    "chunked_whole": ([req("/chunked")], 1, False),
    "chunked_streamed": ([req("/chunked-split")], 1, False),
    "length_streamed": ([req("/length-split")], 1, False),
    "close_delimited": ([req("/close")], 1, False),
    "informational_skipped": ([req("/continue")], 1, False),
    "upstream_keepalive_header": ([req("/keepalive-header")], 1, False),
    "status_500": ([req("/500")], 1, False),
    "upgrade_offer": ([req("/upgrade-offer")], 1, False),
    "obs_text_no_reason": ([req("/obs-text")], 1, False),
    "malformed_answer": ([req("/malformed")], 1, False),
    "pipelined_10": ([b"".join(req(f"/cl?n={i}") for i in range(10))], 10, False),
    "post_body": ([req("/cl", method="POST", body=b"x" * 3000)], 1, False),
    "post_empty": ([req("/cl", method="POST")], 1, False),
    "given_request_id": ([req("/cl", extra="X-Request-Id: mine-1\r\n")], 1, False),
    "traceparent": ([req("/cl", extra="traceparent: 00-0af7651916cd43dd8448eb211c80319c-"
                                      "b7ad6b7169203331-00\r\ntracestate: k=v\r\n")], 1, False),
    "tiny_writes": ([bytes([b]) for b in req("/cl?tiny=1", extra="X-A: b\r\n")], 1, False),
    # handed over: the Python path answers, the lane must not change a byte of it
    "bad_head": ([b"GET / HTTP/1.1\r\nHost: web.demo\r\nBad Name: x\r\n\r\n"], 1, False),
    "bare_lf": ([b"GET / HTTP/1.1\nHost: web.demo\n\n"], 1, False),
    "big_head": ([req("/cl", extra="X-Big: " + "a" * 70000 + "\r\n")], 1, False),
    "duplicate_host": ([b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"], 1, False),
    "transfer_encoding": ([req("/cl", method="POST", extra="Transfer-Encoding: chunked\r\n")
                           + b"3\r\nabc\r\n0\r\n\r\n"], 1, False),
    "expect": ([req("/cl", method="POST", extra="Expect: 100-continue\r\n", body=b"abc")], 1,
               False),
    "big_body": ([req("/cl", method="POST", body=b"y" * 70000)], 1, False),
    "b3": ([req("/cl", extra="x-b3-traceid: 0af7651916cd43dd8448eb211c80319c\r\n"
                            "x-b3-spanid: b7ad6b7169203331\r\nx-b3-sampled: 0\r\n")], 1, False),
    "bad_traceparent": ([req("/cl", extra="traceparent: 00-XYZ\r\n")], 1, False),
    "weighted": ([req("/weighted/cl")], 1, False),
    "authz_service": ([req("/cl", host="guarded.demo")], 1, False),
    "authz_denied": ([req("/admin", host="guarded.demo")], 1, False),
    "ratelimit": ([req("/cl", host="limited.demo")], 1, False),
    "no_service": ([req("/cl", host="nowhere.demo")], 1, False),
    "h2_cluster": ([req("/cl", host="grpcsvc.demo")], 1, False),
    "http10": ([b"GET /cl HTTP/1.0\r\nHost: web.demo\r\n\r\n"], 1, False),
    "bad_path_escape": ([req("/a%zz")], 1, False),
    "then_handover_keeps_order": ([req("/cl?first") + req("/cl", extra="x-b3-sampled: 0\r\n")
                                   + req("/cl?third")], 3, False),
}
ANSWERED_BY_LANE = {"get", "rewrite_and_header_ops", "header_route", "mixed_case_names",
                    "connection_close", "keep_alive_two", "head", "status_204", "status_304",
                    "chunked_whole", "chunked_streamed", "length_streamed", "close_delimited",
                    "informational_skipped", "upstream_keepalive_header", "status_500",
                    "upgrade_offer", "obs_text_no_reason",
                    "pipelined_10", "post_body", "post_empty", "given_request_id",
                    "traceparent", "tiny_writes"}


def run_corpus(fast_lane: bool, names) -> tuple[dict, dict, dict]:
    up = RecordingUpstream()
    snap = make_snapshot(services(up), CONFIG)
    out, upstream = {}, {}
    try:
        with WaypointThread(snap, fast_lane=fast_lane, metrics_port=None,
                            tracing=Tracing(sample_ratio=0.0)) as wp:
            for name in names:
                pieces, n, head = CORPUS[name]
                before = len(up.requests)
                out[name] = exchange(wp.port, pieces, n, head=head,
                                     pause=0.002 if len(pieces) > 1 else 0.0)
                upstream[name] = list(up.requests[before:])
            lane = wp.call(wp.waypoint.describe)["fastLane"]
    finally:
        up.close()
    return out, upstream, lane or {}


@pytest.fixture(scope="module")
def both():
    names = list(CORPUS)
    return run_corpus(True, names), run_corpus(False, names)


@pytest.mark.parametrize("name", list(CORPUS))
def test_lane_and_python_path_write_the_same_bytes(both, name):
    (lane_out, lane_up, _), (py_out, py_up, _) = both
    assert lane_out[name], "no answer"
    assert without_ids(lane_out[name]) == without_ids(py_out[name])
    assert [without_ids(r) for r in lane_up[name]] == [without_ids(r) for r in py_up[name]]


def test_the_lane_answered_the_common_requests(both):
    (_, _, lane), (_, _, off) = both
    expected = sum(CORPUS[n][1] for n in ANSWERED_BY_LANE)
    assert lane["answered"] >= expected
    assert off == {}
    handed = lane["handedOver"]
    for reason in ("grammar", "big_head", "host", "transfer_encoding", "expect", "big_body",
                   "b3", "traceparent", "no_plan", "version"):
        assert handed.get(reason, 0) >= 1, (reason, handed)


def test_ids_and_trace_headers_are_written_as_the_python_path_writes_them(both):
    (_, lane_up, _), _ = both
    import re

    raw = lane_up["get"][0]
    rid = re.search(rb"x-request-id: ([0-9a-f-]+)\r\n", raw).group(1)
    assert re.fullmatch(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                        rid)
    tp = re.search(rb"traceparent: 00-([0-9a-f]{32})-([0-9a-f]{16})-00\r\n", raw)
    assert tp and b"x-b3-traceid: " + tp.group(1) in raw and b"x-b3-spanid: " + tp.group(2) in raw
    parented = lane_up["traceparent"][0]
    assert b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-" in parented
    assert b"x-b3-parentspanid: b7ad6b7169203331\r\n" in parented
    assert b"tracestate: k=v\r\n" in parented
    assert b"x-request-id: mine-1\r\n" in lane_up["given_request_id"][0]
