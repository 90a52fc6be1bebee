"""The load client against real servers on loopback: counts, errors, bounds and the report."""

from __future__ import annotations

import io
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lacewing.sample_app import run_load
from lacewing.sample_app.load import classify_error, parse_target
from lacewing.sample_app.report import ERROR_KINDS, SCHEMA, percentile


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _PlainHandler(BaseHTTPRequestHandler):
    """Not the sample app: answers text, and closes each connection after answering without
    saying so (as a proxy's idle timeout would), which a pooled client must not call a reset."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.server.seen.append({k.lower(): v for k, v in self.headers.items()})
        body = b"plain text\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def plain_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _PlainHandler)
    httpd.seen = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", httpd.seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def test_counts_statuses_pods_and_versions(start_server):
    v1 = start_server(pod="web-v1-a", version="v1", fail_rate=0.5, seed=3)
    v2 = start_server(pod="web-v2-b", version="v2")
    r1 = run_load(v1.url + "/", requests=200, concurrency=3)
    r2 = run_load(v2.url + "/", requests=50)
    assert r1.attempted == r1.sent == r1.answered == 200
    assert r1.count(200) + r1.count(503) == 200 and r1.count(503) > 0
    assert r1.pods == {"web-v1-a": 200} and r1.versions == {"v1": 200}
    assert r1.pod_statuses["web-v1-a"] == r1.statuses
    assert r2.pods == {"web-v2-b": 50} and r2.versions == {"v2": 50}
    assert r1.error_count == 0 and r1.unidentified == 0


def test_sends_the_given_headers_and_method(start_server):
    log = io.StringIO()
    server = start_server(log=log)
    report = run_load(server.url + "/orders?id=1", requests=5, headers=[("x-sample-status", "418")],
                      method="delete")
    assert report.statuses == {418: 5}
    assert report.method == "DELETE"
    assert log.getvalue().count('"DELETE /orders?id=1 HTTP/1.1" 418') == 5


def test_host_and_user_agent_headers(plain_server):
    url, seen = plain_server
    run_load(url, requests=1)
    run_load(url, requests=1, headers={"host": "reviews.bookinfo", "User-Agent": "probe/2"})
    assert seen[0]["user-agent"].startswith("lacewing-sample-app-load/")
    assert seen[0]["host"] == url.split("/")[2]
    assert (seen[1]["host"], seen[1]["user-agent"]) == ("reviews.bookinfo", "probe/2")


def test_counts_connect_refused_and_sends_nothing():
    report = run_load(f"http://127.0.0.1:{_closed_port()}/", requests=4, concurrency=2)
    assert report.attempted == 4
    assert report.sent == 0
    assert report.errors["connect_refused"] == 4
    assert "refused" in report.error_samples["connect_refused"].lower()
    assert report.latency is None


def test_counts_timeouts(start_server):
    server = start_server()
    report = run_load(server.url, requests=2, headers={"x-sample-delay": "3s"}, timeout=0.1)
    assert report.errors["timeout"] == 2
    assert report.sent == 2 and report.answered == 0


@pytest.mark.parametrize("mode", ["reset", "fin"])
def test_counts_dropped_connections_as_resets(start_server, mode):
    server = start_server(close_rate=1.0, close_mode=mode)
    report = run_load(server.url, requests=6, concurrency=2)
    assert report.errors["reset"] == 6
    assert report.answered == 0 and report.sent == 6


def test_a_server_closing_idle_connections_is_not_a_reset(plain_server):
    url, _ = plain_server
    # A rate leaves the connection idle between requests, as a pool's connections are.
    report = run_load(url, requests=8, rate=20)
    assert report.errors["reset"] == 0
    assert report.statuses == {200: 8}
    assert report.unidentified == 8 and report.pods == {}


def test_keepalive_reuses_connections_and_no_keepalive_does_not(start_server):
    pooled = start_server()
    report = run_load(pooled.url, requests=40, concurrency=2)
    assert report.answered == 40 and pooled.connections_accepted <= 2
    fresh = start_server()
    report = run_load(fresh.url, requests=40, concurrency=2, keepalive=False)
    assert report.answered == 40 and fresh.connections_accepted == 40


def test_a_rate_bounds_the_number_of_requests_in_a_duration(start_server):
    server = start_server()
    report = run_load(server.url, duration=0.3, rate=20)
    # Sends are scheduled at start + i/20 while before the deadline: at most 6 of them.
    assert 1 <= report.attempted <= 6
    assert report.target_rate == 20


def test_duration_runs_stop_by_themselves(start_server):
    report = run_load(start_server().url, duration=0.2, concurrency=2)
    assert report.attempted > 0 and report.answered == report.attempted


def test_a_set_stop_event_ends_the_run_at_once(start_server):
    stop = threading.Event()
    stop.set()
    report = run_load(start_server().url, requests=1000, stop=stop)
    assert report.attempted == 0 and report.interrupted


def test_default_run_is_bounded(start_server):
    assert run_load(start_server().url).attempted == 100


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"requests": 0}, "requests"), ({"duration": 0}, "duration"), ({"rate": 0}, "rate"),
     ({"concurrency": 0}, "concurrency"), ({"timeout": 0}, "timeout")],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_load("http://127.0.0.1:9/", **kwargs)


@pytest.mark.parametrize("url", ["https://x/", "ftp://x/", "http:///path", "http://x:99999/", "x"])
def test_bad_urls_are_refused(url):
    with pytest.raises(ValueError):
        parse_target(url)


def test_url_parts():
    t = parse_target("http://[::1]:8080/a/b?c=d")
    assert (t.host, t.port, t.path) == ("::1", 8080, "/a/b?c=d")
    assert parse_target("http://web").port == 80 and parse_target("http://web").path == "/"


def test_error_classification():
    import http.client

    assert classify_error(ConnectionRefusedError(), connected=False) == "connect_refused"
    assert classify_error(TimeoutError(), connected=False) == "timeout"
    assert classify_error(OSError(113, "No route to host"), connected=False) == "connect_error"
    assert classify_error(TimeoutError(), connected=True) == "timeout"
    assert classify_error(ConnectionResetError(), connected=True) == "reset"
    assert classify_error(http.client.RemoteDisconnected(), connected=True) == "reset"
    assert classify_error(http.client.BadStatusLine("junk"), connected=True) == "protocol_error"


def test_percentiles_use_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 90) == 90.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0


def test_json_report_is_stable_and_serializable(start_server):
    report = run_load(start_server(pod="p", version="v3", fail_rate=1.0).url, requests=3)
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["schema"] == SCHEMA
    assert set(doc) == {
        "schema", "url", "method", "concurrency", "keepalive", "target_rate", "attempted", "sent",
        "answered", "failed", "interrupted", "duration_s", "rate_rps", "status", "errors",
        "error_samples", "latency_ms", "pods", "versions", "pod_status", "unidentified",
    }
    assert doc["status"] == {"503": 3}
    assert list(doc["errors"]) == list(ERROR_KINDS)
    assert set(doc["latency_ms"]) == {"min", "mean", "p50", "p90", "p99", "max"}
    assert doc["pods"] == {"p": 3} and doc["versions"] == {"v3": 3}
    assert doc["pod_status"] == {"p": {"503": 3}}
    text = report.format_text()
    assert "503: 3" in text and "p: 3" in text and "v3: 3" in text


def test_a_json_report_reads_back(start_server):
    from lacewing.sample_app import LoadReport

    report = run_load(start_server(pod="p", fail_rate=0.5).url, requests=20, concurrency=2)
    doc = json.loads(json.dumps(report.to_json()))
    again = LoadReport.from_json(doc)
    assert again.to_json() == doc
    assert again.count(200) == report.count(200) and again.pods == {"p": 20}
    with pytest.raises(ValueError, match="schema"):
        LoadReport.from_json({"schema": "something/else"})


def test_request_bodies_are_sent(start_server):
    server = start_server()
    report = run_load(server.url, requests=3, method="POST", body=b"y" * 777,
                      headers={"x-sample-status": "201"})
    assert report.statuses == {201: 3}
    # The server read exactly the body it was sent, or keep-alive would have gone out of step.
    assert server.connections_accepted == 1
