"""The sample app's server over real loopback sockets: what it echoes, injects and how it stops."""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import time

import pytest

from lacewing.sample_app import run_load


def _get(server, path="/", *, method="GET", headers=None, body=None, conn=None, chunked=False):
    own = conn is None
    conn = conn or http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        resp = conn.getresponse()
        payload = resp.read()
        doc = json.loads(payload) if payload else None
        return resp, doc
    finally:
        if own:
            conn.close()


def _wait_for(predicate, what: str, *, limit: float = 10.0):
    """Poll until `predicate()` holds; fails the test (not a timing assertion) after `limit`."""
    end = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.005)


def test_answers_with_identity_request_and_headers_as_json(start_server):
    server = start_server(pod="reviews-v2-abc", namespace="bookinfo", node="node-2", version="v2",
                          pod_ip="10.244.1.7")
    resp, doc = _get(server, "/reviews/1?x=y", headers={"x-user": "alice", "traceparent": "00-abc-def-01"})
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "application/json"
    assert int(resp.getheader("Content-Length")) > 0
    assert resp.getheader("X-Sample-Pod") == "reviews-v2-abc"
    assert doc["pod"] == "reviews-v2-abc"
    assert doc["namespace"] == "bookinfo"
    assert doc["node"] == "node-2"
    assert doc["version"] == "v2"
    assert doc["pod_ip"] == "10.244.1.7"
    assert doc["method"] == "GET"
    assert doc["path"] == "/reviews/1?x=y"
    assert doc["headers"]["x-user"] == "alice"
    assert doc["headers"]["traceparent"] == "00-abc-def-01"
    assert doc["failed"] is False


def test_pod_ip_defaults_to_the_address_the_connection_reached(start_server):
    _, doc = _get(start_server(pod_ip=""))
    assert doc["pod_ip"] == "127.0.0.1"


def test_keeps_connections_alive_and_reads_request_bodies(start_server):
    server = start_server()
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        _, first = _get(server, "/a", method="POST", body=b"x" * 1000, conn=conn)
        _, second = _get(server, "/b", method="PUT", body=iter([b"abc", b"defgh"]),
                         headers={"Transfer-Encoding": "chunked"}, conn=conn, chunked=True)
        _, third = _get(server, "/c", conn=conn)
    finally:
        conn.close()
    assert first["body_bytes"] == 1000
    assert second["body_bytes"] == 8
    assert first["client"] == second["client"] == third["client"]  # one connection throughout
    assert server.connections_accepted == 1


def test_head_has_headers_but_no_body(start_server):
    server = start_server()
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("HEAD", "/")
        resp = conn.getresponse()
        assert resp.read() == b""
        assert int(resp.getheader("Content-Length")) > 0
        _, doc = _get(server, "/after-head", conn=conn)  # still in step on the same connection
        assert doc["path"] == "/after-head"
    finally:
        conn.close()


def test_fail_rate_is_statistically_right_and_uses_the_fail_status(start_server):
    server = start_server(fail_rate=0.3, fail_status=500, seed=None)
    report = run_load(server.url, requests=1000, concurrency=4)
    assert report.answered == 1000
    assert set(report.statuses) == {200, 500}
    assert 0.24 < report.count(500) / 1000 < 0.36
    resp, doc = _get(server, headers={"x-sample-status": "500"})
    assert (resp.status, doc["failed"], doc["pod"]) == (500, True, "web-1")


def test_failed_answers_carry_the_same_json_plus_failed(start_server):
    server = start_server(fail_rate=1.0, fail_status=503)
    resp, doc = _get(server, "/x", headers={"x-trace": "1"})
    assert resp.status == 503
    assert doc["failed"] is True and doc["reason"] == "fail-rate"
    assert doc["pod"] == "web-1" and doc["headers"]["x-trace"] == "1"


def test_healthz_stays_healthy_while_the_app_fails(start_server):
    server = start_server(fail_rate=1.0, close_rate=1.0, latency=30.0)
    resp, doc = _get(server, "/healthz")
    assert (resp.status, doc["reason"]) == (200, "healthz")
    resp, _ = _get(start_server(fail_healthz=True), "/healthz")
    assert resp.status == 503


def test_latency_is_applied_and_reported(start_server):
    slow = start_server(latency=0.1, latency_jitter=0.01)
    fast = start_server()
    _, doc = _get(slow)
    assert 100.0 <= doc["delay_ms"] <= 110.0
    slow_report = run_load(slow.url, requests=5)
    fast_report = run_load(fast.url, requests=5)
    # Ordering against a run without latency, never a wall-clock threshold.
    assert slow_report.latency.min > fast_report.latency.p50


def test_delay_override_header_is_reported(start_server):
    _, doc = _get(start_server(), headers={"x-sample-delay": "30ms"})
    assert doc["delay_ms"] == 30.0


def test_bad_override_header_gets_a_400_that_names_it(start_server):
    resp, doc = _get(start_server(), headers={"x-sample-delay": "soon"})
    assert resp.status == 400
    assert "x-sample-delay" in doc["error"]


def _raw_exchange(server, request: bytes) -> bytes | Exception:
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except OSError as exc:
            return data or exc  # an answer followed by a reset still counts as the answer
        return data


def test_close_rate_resets_the_connection_without_an_answer(start_server):
    log = io.StringIO()
    server = start_server(close_rate=1.0, log=log)
    outcome = _raw_exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(outcome, ConnectionResetError)
    _wait_for(lambda: server.requests_served == 1, "the server to finish the request")
    assert '"GET / HTTP/1.1" dropped(reset) reason=close-rate' in log.getvalue()
    assert "error" not in log.getvalue()


def test_close_mode_fin_closes_without_an_answer(start_server):
    server = start_server(close_rate=1.0, close_mode="fin")
    assert _raw_exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b""


def test_close_rate_drops_about_that_fraction_and_the_rest_is_answered(start_server):
    server = start_server(close_rate=0.25, seed=None)
    report = run_load(server.url, requests=400, concurrency=4)
    assert report.errors["reset"] + report.answered == 400
    assert 0.15 < report.errors["reset"] / 400 < 0.35
    assert report.statuses == {200: report.answered}


def test_logs_one_line_per_request(start_server):
    log = io.StringIO()
    server = start_server(log=log, fail_rate=1.0)
    _get(server, "/one")
    _get(server, "/two")
    _wait_for(lambda: server.requests_served == 2, "the server to finish both requests")  # logs come last
    lines = [line for line in log.getvalue().splitlines() if '"GET' in line]
    assert len(lines) == 2
    assert '"GET /one HTTP/1.1" 503' in lines[0] and "reason=fail-rate" in lines[0]
    assert "web-1" in lines[1]


def test_stop_finishes_in_flight_requests_and_closes_idle_connections(start_server):
    server = start_server()
    idle = socket.create_connection((server.host, server.port), timeout=10)
    result: dict = {}

    def slow_request():
        result["resp"], result["doc"] = _get(server, "/slow", headers={"x-sample-delay": "300ms"})
        result["connection"] = result["resp"].getheader("Connection")

    client = threading.Thread(target=slow_request)
    client.start()
    try:
        _wait_for(lambda: server.in_flight == 1, "the slow request to arrive")
        assert server.stop() is True
        client.join(10)
        assert result["resp"].status == 200  # the in-flight request was answered
        assert result["connection"] == "close"
        idle.settimeout(10)
        assert idle.recv(1) == b""  # the idle keep-alive connection was closed
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((server.host, server.port), timeout=10).close()
    finally:
        idle.close()
        client.join(10)


def test_stop_cuts_requests_that_outlast_the_drain_timeout(start_server):
    server = start_server()
    outcome: dict = {}

    def stuck_request():
        try:
            outcome["status"] = _get(server, headers={"x-sample-delay": "60s"})[0].status
        except OSError as exc:
            outcome["error"] = exc

    client = threading.Thread(target=stuck_request)
    client.start()
    try:
        _wait_for(lambda: server.in_flight == 1, "the stuck request to arrive")
        assert server.stop(drain_timeout=0.2) is False
        client.join(10)
        assert "status" not in outcome and isinstance(outcome["error"], ConnectionError)
    finally:
        client.join(10)


def test_ipv6_loopback(start_server):
    from lacewing.sample_app import Identity, SampleServer

    try:
        server = SampleServer(identity=Identity("v6", "default", "n", "v1"), host="::1", port=0, quiet=True)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with server:
        report = run_load(server.url, requests=5)
    assert report.pods == {"v6": 5}


def test_a_delayed_request_is_abandoned_when_the_client_goes_away(start_server):
    log = io.StringIO()
    server = start_server(log=log)
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nx-sample-delay: 60s\r\n\r\n")
        _wait_for(lambda: server.in_flight == 1, "the slow request to arrive")
    # The client hung up (as a proxy that timed out does): the server stops waiting for it.
    _wait_for(lambda: server.in_flight == 0, "the server to notice the client left")
    _wait_for(lambda: "client went away" in log.getvalue(), "the log line")


def test_stop_under_load_drains_cleanly(start_server):
    server = start_server(latency=0.002)
    result = {}
    done = threading.Event()
    client = threading.Thread(
        target=lambda: result.setdefault("report", run_load(server.url, duration=30.0, concurrency=8, stop=done)))
    client.start()
    try:
        _wait_for(lambda: server.requests_served > 200, "the load to get going")
        # Connections are busy, idle between requests, or just accepted: none may hold the stop.
        assert server.stop(drain_timeout=20.0) is True
        done.set()
        client.join(30)
        report = result["report"]
        assert report.answered > 200
        unexpected = {k: v for k, v in report.errors.items() if v and k not in ("connect_refused", "reset")}
        assert unexpected == {}
    finally:
        done.set()
        client.join(30)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [(b"BLAH\r\n\r\n", 400), (b"GET / HTTP/9.9\r\n\r\n", 505),
     (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
     (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
     (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414)],
)
def test_malformed_requests_get_a_json_error_and_a_closed_connection(start_server, request_bytes, status):
    server = start_server()
    data = _raw_exchange(server, request_bytes)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status)
    assert b"Connection: close" in head
    doc = json.loads(body)
    assert (doc["status"], doc["reason"], doc["pod"]) == (status, "bad-request", "web-1")
    assert doc["error"]


def test_answers_can_be_sized_for_byte_counter_tests(start_server):
    server = start_server(response_bytes=5000)
    resp, doc = _get(server)
    assert int(resp.getheader("Content-Length")) == 5000
    assert doc["pod"] == "web-1"
    resp, _ = _get(server, headers={"x-sample-response-bytes": "20000"})
    assert int(resp.getheader("Content-Length")) == 20000
