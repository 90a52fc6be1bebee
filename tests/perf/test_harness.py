"""The performance harness: parsers on captured tool output, and one short real run that must
produce its JSON, table and chart for direct and haproxy-mtls (numbers are not judged here —
performance is measured by `make perf`, never asserted in tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from perf.parse import duration_us, parse_iperf3_gbps, parse_wrk

WRK = """Running 2s test @ http://10.244.1.2:80/
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    70.12us   20.00us   1.20ms   90.00%
  Latency Distribution
     50%   65.00us
     75%   70.00us
     90%   80.00us
     99%    1.10ms
  29000 requests in 2.00s, 5.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  14500.25
Transfer/sec:      2.50MB
"""


def test_parse_wrk():
    r = parse_wrk(WRK)
    assert (r.requests_per_s, r.requests, r.errors) == (14500.25, 29000, 7)
    assert (r.p50_us, r.p90_us, r.p99_us) == (65.0, 80.0, 1100.0)


def test_parse_wrk_without_result_is_an_error():
    with pytest.raises(ValueError, match="no result"):
        parse_wrk("unable to connect to 10.244.1.2:80 Connection refused\n")


def test_durations_and_iperf():
    assert duration_us("2.5s") == 2_500_000 and duration_us("12us") == 12
    with pytest.raises(ValueError):
        duration_us("fast")
    out = json.dumps({"end": {"sum_received": {"bits_per_second": 12.5e9}}})
    assert parse_iperf3_gbps(out) == 12.5
    with pytest.raises(ValueError, match="refused"):
        parse_iperf3_gbps(json.dumps({"error": "connection refused"}))


def test_a_short_run_writes_table_and_chart(root_required, tmp_path):
    out = subprocess.run([sys.executable, "-m", "perf", "run", "--repeat", "1", "--duration",
                          "1", "--scenarios", "direct,haproxy-mtls", "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["summary"]) == {"direct", "haproxy-mtls"}
    for values in data["summary"].values():
        assert values["rps_64"] > 0 and values["conn_rate"] > 0 and values["bulk_gbps"] > 0
    assert data["summary"]["haproxy-mtls"]["rss_mb"] > 0
    table = (tmp_path / "report.md").read_text()
    assert "| haproxy-mtls |" in table and "×direct" in table
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Nothing of the run is left: its cluster was removed.
    cluster = out.stdout.split("perf: on local cluster ", 1)[1].split()[0]
    assert f"lw-{cluster}-" not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                  text=True).stdout


def test_capture_benchmark_runs_all_modes(root_required, tmp_path):
    out = subprocess.run([sys.executable, "-m", "perf.bench_capture", "--repeat", "1",
                          "--duration", "1", "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:] + out.stdout[-2000:]
    summary = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert set(summary) == {"no-relay", "addressed", "ebpf", "tproxy"}
    # Each mode carried traffic: a capture that did not deliver would have no answers.
    assert all(m["conn_rate"] > 0 and m["p50_us"] > 0 for m in summary.values())
    assert "| ebpf |" in (tmp_path / "report.md").read_text()
    cluster = out.stdout.split("capture benchmark on local cluster ", 1)[1].split()[0]
    assert not Path(f"/sys/fs/bpf/lw-{cluster}").exists()
    assert not Path(f"/run/netns/lw-{cluster}-node0").exists()
