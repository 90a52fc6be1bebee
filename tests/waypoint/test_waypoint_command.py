"""`lacewing waypoint ...`: the Gateway it writes, and its errors."""

from __future__ import annotations

import subprocess
import sys

import yaml

from waypoint.manifest import GATEWAY_CLASS, gateway


def lacewing(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lacewing.cli", *argv], capture_output=True,
                          text=True, timeout=60)


def test_generate_prints_istio_shaped_gateway():
    out = lacewing("waypoint", "generate", "-n", "shop", "--name", "wp1")
    assert out.returncode == 0, out.stderr
    doc = yaml.safe_load(out.stdout)
    assert doc == gateway("shop", "wp1")
    assert doc["kind"] == "Gateway" and doc["spec"]["gatewayClassName"] == GATEWAY_CLASS
    assert doc["spec"]["listeners"] == [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]


def test_bad_names_and_missing_cluster_are_clear_errors():
    out = lacewing("waypoint", "generate", "-n", "Not_Valid")
    assert out.returncode == 1 and "is not a valid name" in out.stderr
    out = lacewing("waypoint", "apply", "-n", "shop", "--cluster", "nosuch0")
    assert out.returncode == 1 and "lacewing local up" in out.stderr
