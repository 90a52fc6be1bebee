"""The scale benchmark at a small size, so that it keeps working: every figure present, and a
one-pod change costs each node a small fraction of its full snapshot."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_control_small(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "perf.bench_control", "--pods", "400", "--services", "40",
         "--policies", "40", "--nodes", "4", "--changes", "3", "--gap", "0", "--out", str(out)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["params"]["streams"] == 4
    assert set(r["convergence_all_nodes_seconds"]) == {"p50", "p99", "max"}
    assert r["control_plane_rss_kib"]["peak"] > 0
    one = r["bytes_per_node_one_pod_change"]["max"]
    assert 0 < one < r["bytes_per_node_full_snapshot"] / 20
    assert "| one change to all nodes, p99 |" in proc.stdout
