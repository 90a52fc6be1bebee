"""Tier 2: readiness (:15021) and graceful drain — in-process, and SIGTERM on the standalone
tunnel process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.ztunnel.helpers import service, snapshot, workload
from tests.ztunnel.mesh import free_port, running_mesh

pytestmark = pytest.mark.timeout(60)

CLIENT = workload("client", "127.0.10.5", node="node0", node_ip="127.0.0.1")
SRV = workload("srv", "127.0.11.5", node="node1", node_ip="127.0.0.2")
PLACEMENTS = {"node0": {("default", "client")}, "node1": {("default", "srv")}}
SVC = service("srv", "127.0.20.1", [SRV])


async def ready(addr) -> int:
    def get():
        try:
            return urllib.request.urlopen(f"http://{addr[0]}:{addr[1]}/healthz/ready",
                                          timeout=5).status
        except urllib.error.HTTPError as e:
            return e.code
    return await asyncio.get_running_loop().run_in_executor(None, get)


def test_readiness_and_drain_let_open_connections_finish(tmp_path):
    async def go():
        async with running_mesh(tmp_path, placements=PLACEMENTS) as mesh:
            t0 = mesh.tunnels["node0"]
            assert await ready(t0.addresses["readiness"]) == 503     # no snapshot yet
            await mesh.pod(SRV.ip)
            await mesh.apply(lambda n: snapshot(n, [CLIENT, SRV], services=[SVC]))
            assert await ready(t0.addresses["readiness"]) == 200
            r, w = await mesh.connect(CLIENT.ip, (SVC.vip, 80))
            assert (await r.readline()).startswith(b"127.")
            drain = asyncio.get_running_loop().create_task(t0.drain(timeout=20))
            await asyncio.sleep(0.2)
            assert not drain.done()                          # waits for the open connection
            assert await ready(t0.addresses["readiness"]) == 503
            with pytest.raises(OSError):                    # no longer accepting
                await mesh.connect(CLIENT.ip, (SVC.vip, 80))
            w.write(b"last words")
            await w.drain()
            assert await asyncio.wait_for(r.readexactly(10), 5) == b"last words"
            w.close()
            await asyncio.wait_for(drain, 10)               # done once it closed
            assert mesh.access("node0")[-1]["decision"] == "allow"
            assert "drain" not in mesh.access("node0")[-1]["reason"]
    asyncio.run(go())


def test_standalone_process_drains_on_sigterm(tmp_path):
    snap = {"version": "1", "node": "node1", "workloads": [
        {"namespace": "default", "name": "srv", "node": "node1", "ip": "127.0.11.5",
         "node_ip": "127.0.0.1", "service_account": "srv"}]}
    (tmp_path / "snap.json").write_text(json.dumps(snap))
    ports = {k: free_port() for k in ("outbound", "plaintext", "inbound", "ready", "metrics")}
    argv = [sys.executable, "-m", "node_agent.ztunnel", "--snapshot", str(tmp_path / "snap.json"),
            "--ca-dir", str(tmp_path / "ca"), "--listen-address", "127.0.0.1",
            "--inbound-address", "127.0.0.1", "--no-transparent", "--access-log", "off",
            *[x for k, v in ports.items() for x in (f"--{k}-port", str(v))]]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=os.getcwd())
    try:
        deadline = time.monotonic() + 20
        status = None
        while time.monotonic() < deadline:
            try:
                status = urllib.request.urlopen(
                    f"http://127.0.0.1:{ports['ready']}/healthz/ready", timeout=1).status
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        assert status == 200
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics",
                                         timeout=5).read().decode()
        assert "lacewing_tunnel_refused_connections" in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_readiness_endpoint_survives_garbage(tmp_path):
    async def go():
        async with running_mesh(tmp_path, placements=PLACEMENTS) as mesh:
            await mesh.apply(lambda n: snapshot(n, [CLIENT, SRV], services=[SVC]))
            addr = mesh.tunnels["node0"].addresses["readiness"]
            for junk in (b"\x00\xff" * 50 + b"\r\n\r\n", b"GET\r\n\r\n", b"A" * 100_000 + b"\n",
                         b"GET /nope HTTP/1.1\r\n\r\n", b""):
                r, w = await asyncio.open_connection(*addr)
                w.write(junk)
                if not junk:
                    w.write_eof()
                reply = await asyncio.wait_for(r.read(), 10)
                assert reply == b"" or reply.startswith(b"HTTP/1.1 404")
                w.close()
            assert await ready(addr) == 200
    asyncio.run(go())
