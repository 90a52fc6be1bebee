"""Tier 2: the control plane and node clients in one process over loopback gRPC, real mTLS with
the real CA, the directory source reading YAML as local mode writes it.

What a user relies on: a YAML change reaches every node; a rejected resource is reported and
kept out while the rest applies; a node that reconnects gets only the difference; data planes
keep their configuration while the control plane is down and converge when it returns; a
second replica takes over; only node agents may subscribe; the CA signs only for local pods.
"""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from control.api import mesh_pb2
from control.catalog import Entry
from control.xds import resources as r
from control.xds.resources import Packed
from node_agent.certs.ca_client import CaRefused, GrpcCaClient
from node_agent.certs.csr import make_csr
from node_agent.xds.state import XdsState
from tests.control.helpers import (
    authz,
    converged,
    eventually,
    free_port,
    mesh,
    namespace,
    pod,
    run,
    service,
    write_yaml,
)

AMBIENT = {"lacewing.dev/dataplane-mode": "ambient"}


def seed(m) -> None:
    write_yaml(m.config / "Namespace_shop.yaml", namespace("shop", AMBIENT))
    write_yaml(m.config / "Service_shop_web.yaml",
               service("shop", "web", ip="10.96.0.10", selector={"app": "web"}))
    for i, n in enumerate(m.nodes):
        write_yaml(m.runtime / f"Pod_shop_web-{i}.yaml",
                   pod("shop", f"web-{i}", node_name=n, ip=f"10.244.{i}.2", labels={"app": "web"},
                       sa="web", host_ip=m.node_ip(n)))


def test_a_yaml_change_reaches_every_node(tmp_path):
    async def go():
        async with mesh(tmp_path, ["n1", "n2", "n3"]) as m:
            seed(m)
            plane = await m.start_plane()
            clients = [m.client(n, [plane.port]) for n in m.nodes]
            for c in clients:
                m.start_client(c)
            await eventually(lambda: all(c.state.snapshot.workloads and converged(c, plane)
                                         for c in clients), what="first sync")
            snap = clients[0].state.snapshot
            assert set(snap.workloads) == {"shop/web-0", "shop/web-1", "shop/web-2"}
            assert [e.ip for e in snap.services["shop/web"].endpoints] == \
                ["10.244.0.2", "10.244.1.2", "10.244.2.2"]
            assert [w.name for w in clients[1].state.snapshot.local_workloads()] == ["web-1"]

            # A policy, a new pod and an endpoint leaving, in one burst of writes.
            write_yaml(m.config / "AuthorizationPolicy_shop_allow.yaml",
                       authz("shop", "allow", app="web", principals=["cluster.local/ns/shop/sa/x"]))
            write_yaml(m.runtime / "Pod_shop_web-9.yaml",
                       pod("shop", "web-9", node_name="n2", ip="10.244.1.9", labels={"app": "web"},
                           sa="web"))
            write_yaml(m.runtime / "Pod_shop_web-0.yaml",
                       pod("shop", "web-0", node_name="n1", ip="10.244.0.2", labels={"app": "web"},
                           sa="web", ready=False))
            await eventually(lambda: all(converged(c, plane) and "shop/web-9" in
                                         c.state.snapshot.workloads for c in clients),
                             what="the change on every node")
            for c in clients:
                snap = c.state.snapshot
                assert [p.name for p in snap.authorization_policies] == ["allow"]
                assert sorted(e.ip for e in snap.services["shop/web"].endpoints) == \
                    ["10.244.1.2", "10.244.1.9", "10.244.2.2"]
                assert not snap.workloads["shop/web-0"].ready
            # Removal reaches them too.
            (m.config / "AuthorizationPolicy_shop_allow.yaml").unlink()
            await eventually(lambda: all(c.state.snapshot.authorization_policies == ()
                                         for c in clients), what="the policy removed")
            # No key material ever travels in the push: certificates come from the CA only.
            for entries in plane.catalog.entries.values():
                assert not any(b"-----BEGIN" in e.packed.payload for e in entries.values())
            status = plane.status()
            assert {c["node"] for c in status["clients"]} == {"n1", "n2", "n3"}
            # A client applies a response before its ACK reaches the server: wait for the ACKs.
            await eventually(lambda: all(c["ackedVersion"] == plane.status()["version"]
                                         for c in plane.status()["clients"]),
                             what="every client's ACK of the last version")
            hist = plane.registry.get_sample_value("lacewing_xds_convergence_seconds_count")
            assert hist and hist >= 3
    run(go())


def test_a_rejected_resource_is_reported_and_kept_out_without_blocking_the_rest(tmp_path):
    async def go():
        async with mesh(tmp_path, ["n1", "n2"]) as m:
            seed(m)
            plane = await m.start_plane()
            clients = [m.client(n, [plane.port]) for n in m.nodes]
            for c in clients:
                m.start_client(c)
            await eventually(lambda: all(converged(c, plane) for c in clients), what="sync")
            # A resource the nodes cannot accept (a Workload without an address), pushed in the
            # same response as a good change.
            bad = Packed(r.WORKLOAD, "shop/broken", "bad1",
                         mesh_pb2.Workload(namespace="shop", name="broken").SerializeToString())
            good_obj = clients[0].state.snapshot.workloads["shop/web-0"]
            good = r.pack(dataclasses.replace(good_obj, node_ip="172.18.0.99"))
            plane.catalog.apply({(r.WORKLOAD, "shop/broken"): Entry(bad, None),
                                 (r.WORKLOAD, "shop/web-0"): Entry(good, None)}, set())
            await eventually(lambda: all(c.state.snapshot.workloads["shop/web-0"].node_ip ==
                                         "172.18.0.99" for c in clients), what="the good change")
            for c in clients:
                assert "shop/broken" not in c.state.snapshot.workloads
                assert ("type.googleapis.com/lacewing.mesh.v1.Workload", "shop/broken") in c.rejected
            await eventually(lambda: all(c["rejects"] for c in plane.status()["clients"]),
                             what="rejects in status")
            rej = plane.status()["clients"][0]["rejects"][0]
            assert rej["name"] == "shop/broken" and "needs namespace, name and ip" in rej["reason"]
            assert plane.registry.get_sample_value("lacewing_xds_rejects_total",
                                                   {"type": "Workload"}) == 2
            # Later changes still flow, and the rejected version is not sent again.
            pushes_before = sum(c.responses for c in clients)
            write_yaml(m.runtime / "Pod_shop_web-5.yaml",
                       pod("shop", "web-5", node_name="n1", ip="10.244.0.5", labels={"app": "web"}))
            await eventually(lambda: all("shop/web-5" in c.state.snapshot.workloads
                                         for c in clients), what="a later change")
            assert all("shop/broken" not in c.state.snapshot.workloads for c in clients)
            assert sum(c.responses for c in clients) > pushes_before
            # A fixed version replaces the rejection.
            fixed = r.pack(dataclasses.replace(good_obj, name="broken", ip="10.244.0.77"))
            plane.catalog.apply({(r.WORKLOAD, "shop/broken"): Entry(fixed, None)}, set())
            await eventually(lambda: all("shop/broken" in c.state.snapshot.workloads and
                                         not c.rejected for c in clients), what="the fix")
            await eventually(lambda: not any(c["rejects"] for c in plane.status()["clients"]),
                             what="rejects cleared")
    run(go())


def test_a_reconnecting_node_gets_only_the_difference(tmp_path):
    async def go():
        async with mesh(tmp_path, ["n1"]) as m:
            seed(m)
            for i in range(20):
                write_yaml(m.runtime / f"Pod_shop_extra-{i}.yaml",
                           pod("shop", f"extra-{i}", node_name="n1", ip=f"10.244.0.{100 + i}"))
            plane = await m.start_plane()
            state = XdsState.for_node("n1")
            first = m.client("n1", [plane.port], state=state)
            task = m.start_client(first)
            await eventually(lambda: converged(first, plane) and len(state.snapshot.workloads) == 21,
                             what="sync")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            # While it is away: one pod changes, one goes.
            write_yaml(m.runtime / "Pod_shop_extra-3.yaml",
                       pod("shop", "extra-3", node_name="n1", ip="10.244.0.103", ready=False))
            (m.runtime / "Pod_shop_extra-4.yaml").unlink()
            await eventually(lambda: "shop/extra-4" not in plane.compiler.workloads, what="compile")
            again = m.client("n1", [plane.port], state=state)
            got: list[discovery_pb2.DeltaDiscoveryResponse] = []
            orig = again.handle
            again.handle = lambda resp: (got.append(resp), orig(resp))[1]
            m.start_client(again)
            await eventually(lambda: converged(again, plane) and again.synced.is_set(),
                             what="resync")
            sent = {resp.type_url: ([x.name for x in resp.resources], list(resp.removed_resources))
                    for resp in got}
            assert sent[r.WORKLOAD] == (["shop/extra-3"], ["shop/extra-4"])
            assert all(sent[t] == ([], []) for t in sent if t != r.WORKLOAD)
            assert not state.snapshot.workloads["shop/extra-3"].ready
    run(go())


def test_data_planes_keep_their_config_while_the_control_plane_is_down(tmp_path):
    async def go():
        async with mesh(tmp_path, ["n1", "n2"]) as m:
            seed(m)
            port = free_port()
            plane = await m.start_plane(port)
            clients = [m.client(n, [port]) for n in m.nodes]
            for c in clients:
                m.start_client(c)
            await eventually(lambda: all(converged(c, plane) and c.state.snapshot.workloads
                                         for c in clients), what="sync")
            before = [c.state.snapshot for c in clients]
            await m.stop_plane(plane)
            await eventually(lambda: all(c.connected_to is None and c.failures >= 2
                                         for c in clients), what="clients noticing")
            # Nothing was dropped: the same snapshots are served.
            assert [c.state.snapshot for c in clients] == before
            assert all(c.state.snapshot.workloads for c in clients)
            # Changes while it is down...
            write_yaml(m.runtime / "Pod_shop_late.yaml",
                       pod("shop", "late", node_name="n2", ip="10.244.1.50", labels={"app": "web"}))
            (m.runtime / "Pod_shop_web-0.yaml").unlink()
            await asyncio.sleep(0.2)
            assert all("shop/web-0" in c.state.snapshot.workloads for c in clients)
            # ...arrive when it is back, on the same address.
            plane2 = await m.start_plane(port)
            await eventually(lambda: all(converged(c, plane2) and "shop/late" in
                                         c.state.snapshot.workloads for c in clients),
                             what="convergence after the restart", timeout=20)
            assert all("shop/web-0" not in c.state.snapshot.workloads for c in clients)
    run(go())


def test_a_second_replica_takes_over_and_sends_only_the_difference(tmp_path):
    async def go():
        async with mesh(tmp_path, ["n1"]) as m:
            seed(m)
            a = await m.start_plane()
            b = await m.start_plane()
            client = m.client("n1", [a.port, b.port])
            m.start_client(client)
            await eventually(lambda: converged(client, a), what="sync with the first replica")
            assert client.connected_to.endswith(f":{a.port}")
            bytes_before = client.bytes_received
            await eventually(lambda: b.catalog.ready and converged(client, b), what="replica b")
            await m.stop_plane(a)
            await eventually(lambda: client.connected_to and client.connected_to.endswith(
                f":{b.port}") and client.synced.is_set(), what="failover")
            # Same content, same versions on both replicas: the resync carried no resource.
            assert client.bytes_received - bytes_before < 1000
            write_yaml(m.runtime / "Pod_shop_after.yaml",
                       pod("shop", "after", node_name="n1", ip="10.244.0.60"))
            await eventually(lambda: "shop/after" in client.state.snapshot.workloads,
                             what="changes through the second replica")
    run(go())


def test_only_node_agents_may_subscribe(tmp_path):
    async def go():
        async with mesh(tmp_path, ["n1"]) as m:
            seed(m)
            plane = await m.start_plane()
            # A workload SVID (not a node credential) is refused.
            key, cert = m.ca.issue_with_new_key(
                __import__("control.ca.spiffe_id", fromlist=["workload_id"]).workload_id(
                    "shop", "web"))
            creds = grpc.ssl_channel_credentials(
                root_certificates=b"".join(m.ca.trust_bundle), private_key=key,
                certificate_chain=b"".join(cert.cert_chain))
            async with grpc.aio.secure_channel(
                    f"127.0.0.1:{plane.port}", creds,
                    options=[("grpc.ssl_target_name_override",
                              "lacewing-control.lacewing-system.svc")]) as ch:
                call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).DeltaAggregatedResources()
                await call.write(discovery_pb2.DeltaDiscoveryRequest(
                    node=base_pb2.Node(id="intruder"), type_url=r.WORKLOAD))
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call.read()
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert plane.xds.clients == {}
    run(go())


def test_the_ca_signs_only_identities_of_pods_on_the_asking_node(tmp_path):
    async def go():
        async with mesh(tmp_path, ["n1", "n2"]) as m:
            seed(m)
            write_yaml(m.runtime / "Pod_shop_db.yaml",
                       pod("shop", "db", node_name="n2", ip="10.244.1.7", sa="db"))
            plane = await m.start_plane()
            await eventually(lambda: plane.catalog.ready and "shop/db" in plane.compiler.workloads,
                             what="compile")
            ca = GrpcCaClient.from_node_credential(f"127.0.0.1:{plane.port}",
                                                   tmp_path / "nodes" / "n1")
            try:
                _key, csr = make_csr("spiffe://cluster.local/ns/shop/sa/web")
                signed = await ca.sign(csr)
                assert signed.cert_chain
                _key, csr = make_csr("spiffe://cluster.local/ns/shop/sa/db")
                with pytest.raises(CaRefused):
                    await ca.sign(csr)  # db runs on n2, not n1
                # The pod moves: now n1 may have it.
                write_yaml(m.runtime / "Pod_shop_db.yaml",
                           pod("shop", "db", node_name="n1", ip="10.244.0.7", sa="db"))
                await eventually(lambda: plane.compiler.workloads["shop/db"].node == "n1",
                                 what="the move")
                assert (await ca.sign(csr)).cert_chain
            finally:
                await ca.close()
    run(go())


def test_a_waypoint_gets_its_l7_snapshot_and_nodes_do_not(tmp_path):
    async def go():
        async with mesh(tmp_path, ["n1"]) as m:
            seed(m)
            write_yaml(m.runtime / "Pod_shop_wp-1.yaml",
                       pod("shop", "wp-1", node_name="n1", ip="10.244.0.40", sa="wp",
                           labels={"lacewing.dev/waypoint": "wp"}))
            write_yaml(m.config / "Service_shop_web.yaml",
                       service("shop", "web", ip="10.96.0.10", selector={"app": "web"},
                               labels={"lacewing.dev/use-waypoint": "wp"}))
            write_yaml(m.config / "VirtualService_shop_web.yaml", {
                "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"hosts": ["web"], "http": [{"timeout": "2s", "route": [
                    {"destination": {"host": "web"}}]}]}})
            plane = await m.start_plane()
            wp = m.client("n1", [plane.port], state=XdsState.for_waypoint("shop", "wp"),
                          role="waypoint", waypoint="shop/wp")
            node = m.client("n1", [plane.port])
            m.start_client(wp)
            m.start_client(node)
            await eventually(lambda: wp.synced.is_set() and wp.state.snapshot.virtual_services
                             and node.synced.is_set(), what="both synced")
            snap = wp.state.snapshot
            assert snap.waypoint.identity == "spiffe://cluster.local/ns/shop/sa/wp"
            assert snap.waypoint.addresses == ("10.244.0.40",)
            assert set(snap.services) == {"shop/web"}
            assert str(snap.virtual_services[0].spec.http[0].timeout) == "0:00:02"
            assert r.VIRTUAL_SERVICE not in node.state.system_versions
            assert node.state.snapshot.services["shop/web"].waypoint == "shop/wp"
            roles = {c["role"]: c["waypoint"] for c in plane.status()["clients"]}
            assert roles == {"node": "", "waypoint": "shop/wp"}
    run(go())


def test_a_client_that_stops_reading_is_caught_up_with_a_diff(tmp_path):
    async def go():
        async with mesh(tmp_path, ["n1"]) as m:
            seed(m)
            plane = await m.start_plane()
            slow = m.client("n1", [plane.port])
            creds = grpc.ssl_channel_credentials(
                root_certificates=(tmp_path / "nodes/n1/root-cert.pem").read_bytes(),
                private_key=(tmp_path / "nodes/n1/node-key.pem").read_bytes(),
                certificate_chain=(tmp_path / "nodes/n1/node-cert.pem").read_bytes())
            async with grpc.aio.secure_channel(
                    f"127.0.0.1:{plane.port}", creds,
                    options=[("grpc.ssl_target_name_override",
                              "lacewing-control.lacewing-system.svc")]) as ch:
                call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).DeltaAggregatedResources()
                await call.write(discovery_pb2.DeltaDiscoveryRequest(
                    node=base_pb2.Node(id="slow"), type_url=r.WORKLOAD))
                await eventually(lambda: plane.xds.clients, what="the stream")
                # 150 changes while the client reads nothing.
                for i in range(150):
                    w = plane.compiler.workloads["shop/web-0"]
                    new = dataclasses.replace(w, node_ip=f"172.18.1.{i}")
                    plane.catalog.apply({(r.WORKLOAD, "shop/web-0"): Entry(r.pack(new), new)},
                                        set())
                    await asyncio.sleep(0)
                [client] = plane.xds.clients.values()
                assert client.behind
                # Now it reads and ACKs everything: it ends with the latest value, having
                # received far fewer than 150 pushes.
                got = 0
                while True:
                    try:
                        resp = await asyncio.wait_for(call.read(), 2)
                    except TimeoutError:
                        break
                    got += 1
                    await call.write(slow.handle(resp))
                assert slow.state.snapshot.workloads["shop/web-0"].node_ip == "172.18.1.149"
                assert got < 150
                call.cancel()
    run(go())
