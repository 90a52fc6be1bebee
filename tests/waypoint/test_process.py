"""`python -m waypoint` as an operator runs it: flags, readiness line, SIGHUP reload of the
bootstrap file (a bad file keeps the last snapshot), SIGTERM exits 0."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from lacewing.sample_app import Behaviour
from tests.waypoint.conftest import eventually, get, service_dict


def bootstrap_text(backs, weight_v2: int) -> str:
    svc = service_dict(backs)
    import yaml

    doc = {"apiVersion": "lacewing.dev/v1alpha1", "kind": "WaypointServices",
           "waypoint": {"namespace": "demo", "name": "waypoint"}, "services": [svc]}
    return yaml.safe_dump(doc) + f"""---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: demo}}
spec:
  hosts: [web]
  http:
  - route:
    - {{destination: {{host: web, subset: v1}}, weight: {100 - weight_v2}}}
    - {{destination: {{host: web, subset: v2}}, weight: {weight_v2}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: demo}}
spec:
  host: web
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""


def run(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "waypoint", *argv], capture_output=True,
                          text=True, timeout=30, **kw)


def test_bad_invocations_exit_2_with_a_message(tmp_path):
    out = run()
    assert out.returncode == 2 and "--bootstrap FILE or --xds" in out.stderr
    (tmp_path / "bad.yaml").write_text("kind: VirtualService\n")
    out = run("--bootstrap", str(tmp_path / "bad.yaml"))
    assert out.returncode == 2 and "cannot load" in out.stderr
    out = run("--bootstrap", str(tmp_path / "bad.yaml"), "--cert", "x")
    assert out.returncode == 2


def test_reload_on_sighup_and_clean_stop(backends, tmp_path):
    backs = backends(("v1", Behaviour()), ("v2", Behaviour()))
    path = tmp_path / "boot.yaml"
    path.write_text(bootstrap_text(backs, 0))
    proc = subprocess.Popen([sys.executable, "-m", "waypoint", "--bootstrap", str(path),
                             "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line + proc.stderr.read()
        port = int(line.rsplit(":", 1)[1])
        versions = {json.loads(get(port, host="web")[2])["version"] for _ in range(10)}
        assert versions == {"v1"}
        path.write_text(bootstrap_text(backs, 100))
        proc.send_signal(signal.SIGHUP)
        assert eventually(lambda: json.loads(get(port, host="web")[2])["version"] == "v2")
        path.write_text("not: [valid")                      # a broken file: keep serving
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert json.loads(get(port, host="web")[2])["version"] == "v2"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert "reload failed, keeping the last snapshot" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
