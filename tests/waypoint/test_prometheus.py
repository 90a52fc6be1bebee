"""Tier 2: a real Prometheus server (Debian's) scrapes the waypoint and agrees with the counts
the load client saw — names, labels and values as Istio dashboards expect."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from lacewing.sample_app import Behaviour, run_load
from tests.waypoint.conftest import service_dict

PROMETHEUS = shutil.which("prometheus")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prometheus(tmp_path):
    if PROMETHEUS is None:
        pytest.fail("prometheus is not installed: run `make setup` (Debian package prometheus)")
    procs = []

    def start(target_port: int) -> str:
        port = free_port()
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(f"""global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
- job_name: waypoint
  static_configs: [{{targets: ["127.0.0.1:{target_port}"]}}]
""")
        log = open(tmp_path / "prometheus.log", "wb")
        procs.append(subprocess.Popen(
            [PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        log.close()
        return f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def query(base: str, promql: str) -> list:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback only
        return json.loads(r.read())["data"]["result"]


def test_prometheus_scrape_agrees_with_the_load(backends, waypoint_for, prometheus):
    backs = backends(("v1", Behaviour(fail_rate=0.2)), ("v2", Behaviour()))
    wp = waypoint_for([service_dict(backs)], """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  http:
  - route: [{destination: {host: web}}]
    retries: {attempts: 0}
""")
    base = prometheus(wp.metrics_port)
    r = run_load(f"http://127.0.0.1:{wp.port}/", requests=500, concurrency=4,
                 headers={"Host": "web"})
    expected = {"200": r.count(200), "503": r.count(503)}
    assert sum(expected.values()) == 500 and expected["503"] > 0
    promql = ('sum by (response_code) (istio_requests_total{reporter="waypoint",'
              'destination_service_name="web"})')
    got: dict = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            got = {s["metric"]["response_code"]: int(float(s["value"][1]))
                   for s in query(base, promql)}
        except OSError:
            got = {}
        if got == expected:
            break
        time.sleep(0.5)
    assert got == expected
    hist = query(base, 'sum(istio_request_duration_milliseconds_count{reporter="waypoint"})')
    assert int(float(hist[0]["value"][1])) == 500
    by_version = query(base, 'sum by (destination_version) (istio_requests_total)')
    assert {s["metric"]["destination_version"] for s in by_version} == {"v1", "v2"}
