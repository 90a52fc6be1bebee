"""Tier 2: the node agent process's parts in one process — xDS from two control plane replicas,
certificates for its enrolled local pods only, admin/metrics/readiness endpoints over HTTP."""

from __future__ import annotations

import asyncio
import json
import urllib.request

from node_agent.agent import NodeAgent
from tests.control.helpers import eventually, free_port, mesh, namespace, pod, run, write_yaml


def get(port: int, path: str) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_node_agent_follows_replicas_and_holds_certificates_for_its_pods(tmp_path):
    async def go():
        async with mesh(tmp_path, ["n1", "n2"]) as m:
            write_yaml(m.config / "Namespace_shop.yaml",
                       namespace("shop", {"lacewing.dev/dataplane-mode": "ambient"}))
            write_yaml(m.runtime / "Pod_shop_web.yaml",
                       pod("shop", "web", node_name="n1", ip="10.244.0.2", sa="web"))
            write_yaml(m.runtime / "Pod_shop_db.yaml",
                       pod("shop", "db", node_name="n2", ip="10.244.1.2", sa="db"))
            write_yaml(m.runtime / "Pod_shop_out.yaml",
                       pod("shop", "out", node_name="n1", ip="10.244.0.3", sa="out",
                           labels={"lacewing.dev/dataplane-mode": "none"}))
            pa, pb = free_port(), free_port()
            agent = NodeAgent(cluster="t", node="n1",
                              control_planes=[f"127.0.0.1:{pa}", f"127.0.0.1:{pb}"],
                              credentials=tmp_path / "nodes" / "n1", admin_port=0,
                              metrics_host="127.0.0.1", metrics_port=0, ready_port=0)
            seen = []
            agent.subscribe(seen.append)
            await agent.start()
            try:
                ports = agent.ports
                # No control plane yet: not ready.
                code, _ = await asyncio.to_thread(get, ports["ready"], "/healthz/ready")
                a, b = await m.start_plane(pa), await m.start_plane(pb)
                await eventually(lambda: agent.state.received_any, what="first snapshot")
                await eventually(lambda: [c for c in agent.certs.describe()
                                          if c["state"] == "valid"], what="a certificate")
                certs = agent.certs.describe()
                # Only the enrolled pod on this node: not db (other node), not out (opted out).
                assert [c["identity"] for c in certs] == ["spiffe://cluster.local/ns/shop/sa/web"]
                status, body = await asyncio.to_thread(get, ports["admin"], "/config_dump")
                dump = json.loads(body)
                assert status == 200 and dump["snapshot"]["node"] == "n1"
                assert set(dump["snapshot"]["workloads"]) == {"shop/web", "shop/db", "shop/out"}
                assert (await asyncio.to_thread(get, ports["ready"], "/healthz/ready"))[0] == 200
                # A part that is not ready (the tunnel draining, say) makes the node not ready.
                tunnel_ready = False
                agent.readiness["tunnel"] = lambda: tunnel_ready
                code, body = await asyncio.to_thread(get, ports["ready"], "/healthz/ready")
                assert (code, body) == (503, b"not ready: tunnel\n")
                tunnel_ready = True
                assert (await asyncio.to_thread(get, ports["ready"], "/healthz/ready"))[0] == 200
                metrics = (await asyncio.to_thread(get, ports["metrics"], "/metrics"))[1].decode()
                assert "lacewing_xds_client_connected 1.0" in metrics
                assert seen and seen[-1] is agent.snapshot
                # The first replica goes away: config stays, and the pod leaving the node is
                # followed through the second (its certificate is dropped).
                await m.stop_plane(a)
                (m.runtime / "Pod_shop_web.yaml").unlink()
                await eventually(lambda: "shop/web" not in agent.snapshot.workloads,
                                 what="the change through replica b", timeout=20)
                assert agent.xds.connected_to.endswith(f":{b.port}")
                await eventually(lambda: agent.certs.describe() == [], what="certificate dropped")
            finally:
                await agent.stop()
        return code
    assert run(go()) == 503  # not ready before the first snapshot
