"""`lacewing demo` end to end: it shows pods on both nodes answering, and leaves nothing —
also when interrupted."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from lacewing.local import netns
from tests.conftest import unique_cluster_name


def _leftovers(name: str) -> list[str]:
    return [ns for ns in netns.list_netns() if ns.startswith(f"lw-{name}-")]


def test_demo_reaches_pods_on_both_nodes(root_required):
    name = unique_cluster_name()
    out = subprocess.run([sys.executable, "-m", "lacewing.cli", "demo", "--requests", "60",
                          "--name", name],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "statuses: 200: 60; errors: 0" in out.stdout
    assert "✔ Service demo/hello answered from both nodes" in out.stdout
    assert "✔ mesh: mTLS identities, STRICT, authorization, metrics" in out.stdout
    assert "✔ canary through a waypoint: 90/10 split, header route, retries" in out.stdout
    assert "✘" not in out.stdout
    assert _leftovers(name) == []


def test_interrupted_demo_tears_down(root_required):
    name = unique_cluster_name()
    proc = subprocess.Popen([sys.executable, "-m", "lacewing.cli", "demo", "--requests",
                             "100000", "--name", name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while not any(n.startswith(f"lw-{name}-p") for n in netns.list_netns()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, output
    assert "interrupted: tearing down" in output
    assert _leftovers(name) == []
