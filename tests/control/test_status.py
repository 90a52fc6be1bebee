"""`lacewing status` against a real control plane (in process, loopback): the table, the JSON,
the exit status, and what happens when nothing answers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from lacewing.commands import status as status_cmd
from lacewing.errors import UserError
from tests.control.helpers import (
    converged,
    eventually,
    free_port,
    mesh,
    namespace,
    pod,
    run,
    write_yaml,
)


def lacewing(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lacewing.cli", *args], capture_output=True,
                          text=True, timeout=60)


def test_status_lists_every_node_agent_with_its_acknowledged_version(tmp_path):
    async def go():
        async with mesh(tmp_path, ["n1", "n2"]) as m:
            write_yaml(m.config / "Namespace_shop.yaml", namespace("shop"))
            write_yaml(m.runtime / "Pod_shop_a.yaml", pod("shop", "a", node_name="n1", ip="10.0.0.1"))
            plane = await m.start_plane()
            clients = [m.client(n, [plane.port]) for n in m.nodes]
            for c in clients:
                m.start_client(c)
            await eventually(lambda: all(converged(c, plane) for c in clients), what="sync")
            await eventually(lambda: status_cmd.healthy(plane.status()), what="acks")
            host, port = plane.metrics_address
            url = f"http://{host}:{port}"
            table = await asyncio.to_thread(lacewing, "status", "--control-plane-url", url)
            as_json = await asyncio.to_thread(lacewing, "status", "--control-plane-url", url,
                                              "-o", "json")
            return plane.catalog.version_info, table, as_json
    version, table, as_json = run(go())
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert "ready" in lines[0] and "2 client(s)" in lines[0]
    rows = [ln.split() for ln in lines if ln.startswith("node-agent")]
    assert [(r[1], r[2], r[3]) for r in rows] == [("n1", version, "SYNCED"), ("n2", version, "SYNCED")]
    data = json.loads(as_json.stdout)
    assert data["kind"] == "ControlPlaneStatus" and data["version"] == version
    assert {c["node"] for c in data["clients"]} == {"n1", "n2"}


def test_status_says_what_to_do_when_the_control_plane_is_unreachable():
    port = free_port()
    with pytest.raises(UserError, match="is the control plane running"):
        status_cmd.fetch_url(f"http://127.0.0.1:{port}", timeout=2)
    out = lacewing("status", "--control-plane-url", f"http://127.0.0.1:{port}")
    assert out.returncode != 0 and "is the control plane running" in out.stderr


def test_rejects_and_lagging_clients_make_status_fail():
    base = {"ready": True, "version": "7", "clients": [
        {"node": "n1", "role": "node", "ackedVersion": "7", "inSync": True, "rejects": []}]}
    assert status_cmd.healthy(base)
    lag = json.loads(json.dumps(base))
    lag["clients"][0]["ackedVersion"] = "6"
    assert not status_cmd.healthy(lag)
    rej = json.loads(json.dumps(base))
    rej["clients"][0]["rejects"] = [{"type": "Workload", "name": "a/b", "version": "v",
                                     "reason": "bad"}]
    assert not status_cmd.healthy(rej)
    text = status_cmd.format_table(rej, now=0)
    assert "rejected Workload a/b (version v): bad" in text
    gone = {**base, "nodes": ["n1", "n2"]}
    assert not status_cmd.healthy(gone)
    assert "node-agent n2  -      NOT CONNECTED" in status_cmd.format_table(gone, now=0)
