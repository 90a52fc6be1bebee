"""Tier 2: two node tunnels, the real CA and certificate managers, real TLS on loopback."""

from __future__ import annotations

import asyncio

import pytest

from control.snapshot import Workload
from tests.ztunnel.helpers import resource, service, snapshot, workload
from tests.ztunnel.mesh import exchange, running_mesh

pytestmark = pytest.mark.timeout(60)

CLIENT = workload("client", "127.0.10.5", node="node0", node_ip="127.0.0.1")
OTHER = workload("other", "127.0.10.6", node="node0", node_ip="127.0.0.1")
LOCAL_SRV = workload("local-srv", "127.0.10.7", node="node0", node_ip="127.0.0.1", sa="srv")
SRV_A = workload("srv-a", "127.0.11.5", node="node1", node_ip="127.0.0.2", sa="srv",
                 labels={"app": "srv"})
SRV_B = workload("srv-b", "127.0.11.6", node="node1", node_ip="127.0.0.2", sa="srv",
                 labels={"app": "srv"})
PLACEMENTS = {"node0": {("default", "client"), ("default", "other"), ("default", "srv")},
              "node1": {("default", "srv")}}
SVC = service("srv", "127.0.20.1", [SRV_A, SRV_B], port=80, target_port=8080)
LOCAL_SVC = service("local", "127.0.20.2", [LOCAL_SRV], port=80, target_port=8080)

ALLOW_CLIENT_ONLY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-client, namespace: default}
spec:
  selector: {matchLabels: {app: srv}}
  rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/client"]}}]}]
"""
STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: default}
spec: {mtls: {mode: STRICT}}
"""


def snap(policies=(), peer_auth=(), workloads=(CLIENT, OTHER, LOCAL_SRV, SRV_A, SRV_B),
         services=(SVC, LOCAL_SVC)):
    def make(node):
        return snapshot(node, list(workloads), services=list(services),
                        policies=[resource(p) for p in policies],
                        peer_auth=[resource(p) for p in peer_auth])
    return make


def run(coro):
    return asyncio.run(coro)


def test_cross_node_service_over_mtls_balanced_logged_and_counted(tmp_path):
    async def go():
        async with running_mesh(tmp_path, placements=PLACEMENTS) as mesh:
            a, b = await mesh.pod(SRV_A.ip), await mesh.pod(SRV_B.ip)
            await mesh.apply(snap())
            replies = []
            for _ in range(4):
                r, w = await mesh.connect(CLIENT.ip, (SVC.vip, 80))
                replies.append(await exchange(r, w, b"ping"))
            assert all(x.endswith(b"ping<eof>") for x in replies)
            assert len(a.peers) == 2 and len(b.peers) == 2       # round robin
            out = mesh.access("node0")
            assert len(out) == 4 and {e["kind"] for e in out} == {"tunnel"}
            e = out[0]
            assert e["src_identity"] == CLIENT.identity and e["dst_identity"] == SRV_A.identity
            assert e["connection_security_policy"] == "mutual_tls" and e["decision"] == "allow"
            assert e["bytes_sent"] == 4 and e["bytes_received"] == len(replies[0])
            assert e["service"] == "default/srv"
            # no full handshake after the first: a reused tunnel or a resumed session
            assert all(x["tls_resumed"] or x["tunnel_reused"] for x in out[1:])
            inb = mesh.access("node1")
            assert len(inb) == 4 and inb[0]["src_identity"] == CLIENT.identity
            assert mesh.metric("node1", "istio_tcp_connections_opened_total",
                               connection_security_policy="mutual_tls",
                               source_principal=CLIENT.identity, reporter="destination") == 4
            # Istio's directions: received = what the source sent, sent = what came back
            assert mesh.metric("node0", "istio_tcp_received_bytes_total", reporter="source") == 16
            assert mesh.metric("node0", "istio_tcp_sent_bytes_total",
                               reporter="source") == sum(len(x) for x in replies)
    run(go())


def test_half_close_keeps_the_reply_direction_open(tmp_path):
    async def go():
        async with running_mesh(tmp_path, placements=PLACEMENTS) as mesh:
            await mesh.pod(SRV_A.ip, greet=False)
            await mesh.apply(snap(services=(service("srv", "127.0.20.1", [SRV_A]),)))
            r, w = await mesh.connect(CLIENT.ip, ("127.0.20.1", 80))
            payload = bytes(range(256)) * 4096          # 1 MiB
            got = await exchange(r, w, payload)
            assert got == payload + b"<eof>"
    run(go())


def test_authorization_allows_one_caller_and_denies_another(tmp_path):
    async def go():
        async with running_mesh(tmp_path, placements=PLACEMENTS) as mesh:
            await mesh.pod(SRV_A.ip)
            await mesh.apply(snap(policies=[ALLOW_CLIENT_ONLY],
                                  services=(service("srv", "127.0.20.1", [SRV_A]),)))
            r, w = await mesh.connect(CLIENT.ip, ("127.0.20.1", 80))
            assert (await exchange(r, w)).endswith(b"hello<eof>")
            r, w = await mesh.connect(OTHER.ip, ("127.0.20.1", 80))
            with pytest.raises(ConnectionResetError):
                await exchange(r, w)
            denied = [e for e in mesh.access("node1") if e["decision"] == "deny"]
            assert len(denied) == 1 and denied[0]["src_identity"] == OTHER.identity
            assert "only-client" in denied[0]["reason"]
            assert mesh.metric("node1", "lacewing_tunnel_refused_connections_total",
                               listener="inbound", reason="policy") == 1
            out = [e for e in mesh.access("node0") if e["decision"] == "deny"]
            assert len(out) == 1 and "destination tunnel refused" in out[0]["reason"]
    run(go())


def test_same_node_decides_policy_in_process(tmp_path):
    async def go():
        async with running_mesh(tmp_path, placements=PLACEMENTS) as mesh:
            await mesh.pod(LOCAL_SRV.ip)
            lsrv = Workload(**{**LOCAL_SRV.__dict__, "labels": {"app": "srv"}})
            await mesh.apply(snap(policies=[ALLOW_CLIENT_ONLY],
                                  workloads=(CLIENT, OTHER, lsrv),
                                  services=(service("local", "127.0.20.2", [lsrv]),)))
            r, w = await mesh.connect(CLIENT.ip, ("127.0.20.2", 80))
            assert (await exchange(r, w)).endswith(b"hello<eof>")
            r, w = await mesh.connect(OTHER.ip, ("127.0.20.2", 80))
            with pytest.raises(ConnectionResetError):
                await exchange(r, w)
            kinds = [(e["kind"], e["decision"]) for e in mesh.access("node0")]
            assert kinds == [("same_node", "allow"), ("same_node", "deny")]
            assert mesh.access("node1") == []            # nothing went through node1
    run(go())


def test_plaintext_inbound_permissive_passes_strict_refuses(tmp_path):
    async def go():
        async with running_mesh(tmp_path, placements=PLACEMENTS) as mesh:
            await mesh.pod(SRV_A.ip)
            await mesh.apply(snap())
            r, w = await mesh.connect("127.0.30.1", (SRV_A.ip, 8080), node="node1",
                                      listener="inbound_plaintext")
            assert (await exchange(r, w)).endswith(b"hello<eof>")
            e = mesh.access("node1")[-1]
            assert e["connection_security_policy"] == "none" and e["decision"] == "allow"
            assert mesh.metric("node1", "istio_tcp_connections_opened_total",
                               connection_security_policy="none") == 1
            await mesh.apply(snap(peer_auth=[STRICT]))
            r, w = await mesh.connect("127.0.30.1", (SRV_A.ip, 8080), node="node1",
                                      listener="inbound_plaintext")
            with pytest.raises(ConnectionResetError):
                await exchange(r, w)
            assert "STRICT" in mesh.access("node1")[-1]["reason"]
    run(go())


def test_same_node_splice_forwards_in_the_kernel_without_losing_the_tail(tmp_path):
    async def go():
        async with running_mesh(tmp_path, placements=PLACEMENTS, splice=True) as mesh:
            assert mesh.tunnels["node0"].splicer is not None, "the splice loader failed"
            await mesh.pod(LOCAL_SRV.ip, greet=False)
            await mesh.apply(snap(services=(LOCAL_SVC,)))
            payload = bytes(range(256)) * 8192           # 2 MiB each way, then half-close
            for _ in range(3):
                r, w = await mesh.connect(CLIENT.ip, (LOCAL_SVC.vip, 80))
                got = await exchange(r, w, payload)
                assert got == payload + b"<eof>"
            logs = mesh.access("node0")
            assert [e["kind"] for e in logs] == ["same_node_spliced"] * 3
            assert logs[0]["bytes_sent"] == len(payload)
            assert logs[0]["bytes_received"] == len(payload) + 5
    run(go())


@pytest.mark.parametrize("reuse", [False, True], ids=["resumption", "reuse"])
def test_a_renewed_client_certificate_is_used_and_old_sessions_are_not(tmp_path, reuse):
    async def go():
        async with running_mesh(tmp_path, placements=PLACEMENTS, reuse=reuse) as mesh:
            await mesh.pod(SRV_A.ip)
            await mesh.apply(snap(services=(service("srv", "127.0.20.1", [SRV_A]),)))
            contexts = mesh.tunnels["node0"].contexts
            contexts.recheck = 0.0
            for _ in range(2):
                r, w = await mesh.connect(CLIENT.ip, ("127.0.20.1", 80))
                assert (await exchange(r, w)).endswith(b"hello<eof>")
            manager = mesh.managers[0]
            old = (await manager.get(CLIENT.identity)).serial
            manager.retain([OTHER.identity, LOCAL_SRV.identity])   # the client's cert dropped
            assert (await manager.get(CLIENT.identity)).serial != old  # and fetched anew
            r, w = await mesh.connect(CLIENT.ip, ("127.0.20.1", 80))
            assert (await exchange(r, w)).endswith(b"hello<eof>")
            out = mesh.access("node0")
            assert mesh.metric("node0", "lacewing_tunnel_inner_connections_total",
                               side="client", tunnel="new") == (2 if reuse else 3)
            if reuse:   # the renewed certificate's context never picks the old connection
                assert [e["tunnel_reused"] for e in out] == [False, True, False]
                assert [e["tls_resumed"] for e in out] == [False, False, False]
            else:
                assert [e["tls_resumed"] for e in out] == [False, True, False]
            assert {e["decision"] for e in out} == {"allow"}
    run(go())
