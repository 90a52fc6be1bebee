"""`Expect: 100-continue` over real sockets: `100 Continue` is sent only once the request has
been authorized, rate-limited, routed and admitted and its body is wanted upstream; a request
refused before that (403, 429, 404, 503) gets its final answer without a 100, with
`connection: close`, and a body the client sends anyway — even one that looks like a next
request — is never parsed as one (RFC 9110 §10.1.1)."""

from __future__ import annotations

import json
import socket

import pytest

from lacewing.sample_app import Behaviour
from tests.waypoint.conftest import eventually, service_dict

CONFIG = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: web}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: demo}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: DENY
  rules:
  - to: [{operation: {paths: ["/api/admin"]}}]
---
apiVersion: lacewing.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: limited, namespace: demo}
spec:
  targetRef: {kind: Service, group: "", name: limited}
  tokenBucket: {maxTokens: 1, tokensPerFill: 1, fillInterval: 1h}
"""


@pytest.fixture
def setup(backends, waypoint_for):
    web = backends(("v1", Behaviour()))
    limited = backends(("v1", Behaviour()), service="limited")
    empty = {"name": "empty", "namespace": "demo", "ports": [{"port": 80}], "endpoints": []}
    wp = waypoint_for([service_dict(web), service_dict(limited, name="limited"), empty],
                      CONFIG)
    return wp, web[0].server, limited[0].server


def head_of(sock: socket.socket) -> bytes:
    """Bytes up to the end of the first response head (an interim 100 counts as one)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def expecting(host: str, path: str, length: int = 5) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nExpect: 100-continue\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_100_comes_once_the_request_is_admitted_then_the_answer(setup):
    wp, web, _ = setup
    with socket.create_connection(("127.0.0.1", wp.port), timeout=10) as s:
        s.sendall(expecting("web", "/api/upload"))
        assert head_of(s) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"hello")
        data = head_of(s)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += s.recv(65536)
        doc = json.loads(body)
        assert doc["body_bytes"] == 5 and "expect" not in doc["headers"]
        # The connection stays usable for the next request.
        s.sendall(b"GET /api/next HTTP/1.1\r\nHost: web\r\n\r\n")
        assert head_of(s).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("host,path,status", [
    ("web", "/api/admin", b"403"),          # authorization
    ("web", "/elsewhere", b"404"),          # no route
    ("empty", "/api/x", b"503"),            # no endpoint
])
def test_a_refused_request_gets_its_answer_without_100_and_its_body_is_not_parsed(
        setup, host, path, status):
    wp, web, _ = setup
    served = web.requests_served
    smuggled = b"GET /api/smuggled HTTP/1.1\r\nHost: web\r\n\r\n"
    with socket.create_connection(("127.0.0.1", wp.port), timeout=10) as s:
        s.sendall(expecting(host, path, len(smuggled)))
        head = head_of(s)
        assert head.startswith(b"HTTP/1.1 " + status), head
        assert b"100 Continue" not in head
        assert b"connection: close" in head.lower()
        # A client that sends the body anyway: it is dropped, not read as a request.
        try:
            s.sendall(smuggled)
        except OSError:
            pass                                  # already closed: fine as well
        rest = read_all(s)                        # the waypoint closes the connection
        assert head.count(b"HTTP/1.1") == 1 and b"HTTP/1.1" not in rest
    assert web.requests_served == served          # nothing reached the backend


def test_rate_limited_request_gets_429_without_100(setup):
    wp, _, limited = setup
    with socket.create_connection(("127.0.0.1", wp.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: limited\r\n\r\n")   # takes the only token
        assert head_of(s).startswith(b"HTTP/1.1 200")
    assert eventually(lambda: limited.requests_served == 1)
    with socket.create_connection(("127.0.0.1", wp.port), timeout=10) as s:
        s.sendall(expecting("limited", "/"))
        head = head_of(s)
        assert head.startswith(b"HTTP/1.1 429") and b"100 Continue" not in head
        assert read_all(s).count(b"HTTP/1.1") == 0
    assert limited.requests_served == 1


def test_a_body_sent_with_the_head_needs_no_100(setup):
    wp, _, _ = setup
    with socket.create_connection(("127.0.0.1", wp.port), timeout=10) as s:
        s.sendall(expecting("web", "/api/x") + b"hello")
        head = head_of(s)
        assert head.startswith(b"HTTP/1.1 200"), head


def test_http10_clients_never_get_100(setup):
    wp, _, _ = setup
    with socket.create_connection(("127.0.0.1", wp.port), timeout=10) as s:
        s.sendall(b"POST /api/x HTTP/1.0\r\nHost: web\r\nExpect: 100-continue\r\n"
                  b"Content-Length: 5\r\n\r\n")
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):
            s.recv(100)                           # nothing yet: no 100 to a 1.0 client
        s.settimeout(10)
        s.sendall(b"hello")
        data = read_all(s)
        assert data.startswith(b"HTTP/1.1 200") and b"100 Continue" not in data


def test_100_for_an_http2_upstream_too(waypoint_for):
    from tests.waypoint.test_request_trailers import H2Upstream

    up = H2Upstream()
    try:
        svc = {"name": "web", "namespace": "demo", "ports": [{"port": 80,
                                                              "appProtocol": "http2"}],
               "endpoints": [{"name": "web-0", "ip": "127.0.0.1", "port": up.port,
                              "labels": {"app": "web", "version": "v1"}}]}
        wp = waypoint_for([svc])
        with socket.create_connection(("127.0.0.1", wp.port), timeout=10) as s:
            s.sendall(expecting("web", "/up"))
            assert head_of(s) == b"HTTP/1.1 100 Continue\r\n\r\n"
            s.sendall(b"hello")
            assert head_of(s).startswith(b"HTTP/1.1 200")
        assert eventually(lambda: len(up.finished) == 1)
        assert up.finished[0]["data"] == b"hello"
        assert b"expect" not in [n for n, _ in up.finished[0]["headers"]]
    finally:
        up.close()
