"""`lacewing check` on this machine: every requirement met, nothing left behind; and as a
non-root user: refused with the fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lacewing.local import netns


def _check(*prefix: str) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "lacewing.cli", "check", "-o", "json"],
                          capture_output=True, text=True, timeout=120)


def test_check_passes_here_and_cleans_up(root_required):
    out = _check()
    results = json.loads(out.stdout)
    assert out.returncode == 0, [r for r in results if not r["ok"]]
    names = {r["name"] for r in results}
    assert {"root", "bpf syscall", "BTF", "kernel headers for BCC", "cgroup v2",
            "bpf_sk_assign on tc ingress"} <= names
    assert [ns for ns in netns.list_netns() if ns.startswith("lw-chk")] == []
    assert not list(Path("/sys/fs/bpf").glob("lw-chk*"))


def test_check_as_an_unprivileged_user_fails_with_the_fix(root_required):
    out = _check("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    assert out.returncode == 1
    results = json.loads(out.stdout)
    root = next(r for r in results if r["name"] == "root")
    assert root["ok"] is False and "sudo" in root["fix"]
