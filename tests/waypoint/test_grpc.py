"""Tier 2: gRPC through the waypoint — real grpcio servers and client on loopback. One
long-lived client connection still spreads over endpoints (per-request balancing), trailers
and status codes pass through, and the waypoint's own refusals reach the client as gRPC
statuses."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from tests.waypoint.conftest import make_snapshot
from waypoint.proxy import WaypointThread

METHOD = "/lacewing.test.Echo/Say"


def start_server(name: str) -> tuple[grpc.Server, int]:
    def say(request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"fail":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "asked to fail")
        context.set_trailing_metadata((("x-served-by", name),))
        return name.encode() + b":" + request

    handler = grpc.method_handlers_generic_handler("lacewing.test.Echo", {
        "Say": grpc.unary_unary_rpc_method_handler(say)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=(handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture
def grpc_backends():
    started = []

    def start(*names: str):
        out = [(n, *start_server(n)) for n in names]
        started.extend(out)
        return out

    try:
        yield start
    finally:
        for _, server, _ in started:
            server.stop(None)


def services(backs) -> list[dict]:
    return [{"name": "echo", "namespace": "demo",
             "ports": [{"port": 9090, "name": "grpc", "appProtocol": "grpc"}],
             "endpoints": [{"name": n, "ip": "127.0.0.1", "port": p,
                            "labels": {"app": "echo", "version": "v1"}} for n, _, p in backs]}]


def channel(wp) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{wp.port}",
                                 options=[("grpc.default_authority", "echo.demo:9090")])


def test_grpc_calls_on_one_connection_spread_over_endpoints(grpc_backends):
    backs = grpc_backends("echo-0", "echo-1")
    snap = make_snapshot(services(backs), """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: demo}
spec:
  host: echo
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
""")
    with WaypointThread(snap) as wp, channel(wp) as ch:
        say = ch.unary_unary(METHOD)
        seen = set()
        for i in range(20):
            reply, call = say.with_call(f"hi{i}".encode(), timeout=10)
            name, _, echoed = reply.partition(b":")
            assert echoed == f"hi{i}".encode()
            assert dict(call.trailing_metadata())["x-served-by"] == name.decode()
            seen.add(name)
        assert seen == {b"echo-0", b"echo-1"}
        with pytest.raises(grpc.RpcError) as e:
            say(b"fail", timeout=10)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert e.value.details() == "asked to fail"
        text = wp.call(lambda: __import__("prometheus_client").generate_latest(
            wp.metrics.registry).decode())
        assert 'request_protocol="grpc"' in text and 'grpc_response_status="9"' in text


def test_waypoint_refusals_are_grpc_statuses(grpc_backends):
    backs = grpc_backends("echo-0")
    snap = make_snapshot(services(backs), """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-say, namespace: demo}
spec:
  targetRefs: [{kind: Service, group: "", name: echo}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/lacewing.test.Echo/Say"]}}]}]
""")
    with WaypointThread(snap) as wp, channel(wp) as ch:
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary(METHOD)(b"x", timeout=10)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "RBAC: access denied" in e.value.details()


def test_grpc_retry_on_unavailable():
    calls = {"n": 0}

    def say(request: bytes, context: grpc.ServicerContext) -> bytes:
        calls["n"] += 1
        if calls["n"] % 2:
            context.abort(grpc.StatusCode.UNAVAILABLE, "every other call fails")
        return b"ok"

    handler = grpc.method_handlers_generic_handler("lacewing.test.Echo", {
        "Say": grpc.unary_unary_rpc_method_handler(say)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1), handlers=(handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        backs = [("echo-0", server, port)]
        for retry_on, expect_ok in (("5xx", 5), ("unavailable", 10)):
            calls["n"] = 0
            snap = make_snapshot(services(backs), f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: demo}}
spec:
  hosts: [echo]
  http: [{{route: [{{destination: {{host: echo}}}}], retries: {{attempts: 2, retryOn: {retry_on}}}}}]
""")
            ok = 0
            with WaypointThread(snap) as wp, channel(wp) as ch:
                say_ = ch.unary_unary(METHOD)
                for _ in range(10):
                    try:
                        say_(b"x", timeout=10)
                        ok += 1
                    except grpc.RpcError as e:
                        assert e.code() == grpc.StatusCode.UNAVAILABLE
            assert ok == expect_ok, retry_on
    finally:
        server.stop(None)
