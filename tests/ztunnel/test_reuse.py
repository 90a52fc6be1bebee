"""Tier 2: reuse of TLS connections between node tunnels (framed protocol, client pool), with two
real tunnels, the real CA and certificate managers, and real TLS on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import struct

import pytest

from node_agent.certs.tls import ssl_context
from node_agent.ztunnel import wire
from tests.ztunnel.helpers import resource, service, snapshot, workload
from tests.ztunnel.mesh import exchange, running_mesh

pytestmark = pytest.mark.timeout(60)

CLIENT = workload("client", "127.0.10.5", node="node0", node_ip="127.0.0.1")
OTHER = workload("other", "127.0.10.6", node="node0", node_ip="127.0.0.1")
SRV = workload("srv", "127.0.11.5", node="node1", node_ip="127.0.0.2")
PLACEMENTS = {"node0": {("default", "client"), ("default", "other")},
              "node1": {("default", "srv")}}
SVC = service("srv", "127.0.20.1", [SRV], port=80, target_port=8080)
DENY_CLIENT = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: default}
spec:
  selector: {matchLabels: {app: srv}}
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/client"]}}]}]
"""


def snap(policies=()):
    def make(node):
        return snapshot(node, [CLIENT, OTHER, SRV], services=[SVC],
                        policies=[resource(p) for p in policies])
    return make


def handshakes(mesh, node="node1", side="server") -> float:
    return mesh.metric(node, "lacewing_tunnel_tls_handshakes_total", side=side)


def inner(mesh, node, side, tunnel) -> float:
    return mesh.metric(node, "lacewing_tunnel_inner_connections_total", side=side, tunnel=tunnel)


async def eventually(predicate, timeout: float = 10.0) -> None:
    """Counters and log lines move in the tunnels' own tasks, a moment after the client saw
    its outcome."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def call(mesh, payload=b"ping", *, src=CLIENT.ip):
    r, w = await mesh.connect(src, (SVC.vip, 80))
    return await exchange(r, w, payload)


async def settled(mesh, n: int) -> None:
    """Both tunnels have logged `n` connections (so the tunnel is released and idle again)."""
    await eventually(lambda: len(mesh.access("node0")) >= n and len(mesh.access("node1")) >= n)


def test_sequential_connections_of_one_pair_share_one_tls_connection(tmp_path):
    async def go():
        async with running_mesh(tmp_path, placements=PLACEMENTS, reuse=True) as mesh:
            await mesh.pod(SRV.ip, greet=False)
            await mesh.apply(snap())
            for i in range(5):
                payload = f"request {i}".encode()
                assert await call(mesh, payload) == payload + b"<eof>"
                await settled(mesh, i + 1)
            assert handshakes(mesh) == 1                      # one TLS accept on the server
            assert handshakes(mesh, "node0", "client") == 1
            assert inner(mesh, "node0", "client", "new") == 1
            assert inner(mesh, "node0", "client", "reused") == 4
            assert inner(mesh, "node1", "server", "reused") == 4
            out, inb = mesh.access("node0"), mesh.access("node1")
            assert [e["tunnel_reused"] for e in out] == [False] + [True] * 4
            assert [e["tunnel_reused"] for e in inb] == [False] + [True] * 4
            for i, (o, n) in enumerate(zip(out, inb, strict=True)):   # one line each, exact
                assert o["decision"] == n["decision"] == "allow"
                assert o["bytes_sent"] == n["bytes_sent"] == len(f"request {i}")
                assert o["bytes_received"] == n["bytes_received"] == len(f"request {i}") + 5
                assert n["src_identity"] == CLIENT.identity
                assert n["dst_identity"] == SRV.identity
            assert mesh.metric("node1", "istio_tcp_connections_opened_total",
                               reporter="destination") == 5
            assert mesh.metric("node1", "istio_tcp_connections_closed_total",
                               reporter="destination") == 5
            assert mesh.metric("node0", "istio_tcp_received_bytes_total",
                               reporter="source") == sum(len(f"request {i}") for i in range(5))
            assert len(mesh.tunnels["node0"].pool) == 1
            assert mesh.metric("node0", "lacewing_tunnel_idle_tunnel_connections",
                               side="client") == 1
            await eventually(lambda: mesh.metric(
                "node1", "lacewing_tunnel_idle_tunnel_connections", side="server") == 1)
    asyncio.run(go())


def test_a_peer_tunnel_without_the_framed_mode_is_spoken_to_unframed(tmp_path):
    """A destination tunnel that does not select ALPN_FRAMED (an older version, or reuse off
    there) gets the unframed protocol: every connection works, each on its own TLS
    connection, nothing is misread as frames."""
    async def go():
        async with running_mesh(tmp_path, placements=PLACEMENTS, reuse=True,
                                per_node={"node1": {"reuse": False}}) as mesh:
            await mesh.pod(SRV.ip, greet=False)
            await mesh.apply(snap())
            for i in range(3):
                payload = f"request {i}".encode() * 1000
                assert await call(mesh, payload) == payload + b"<eof>"
                await settled(mesh, i + 1)
            assert handshakes(mesh) == 3                      # one TLS accept each
            assert inner(mesh, "node0", "client", "new") == 3
            assert inner(mesh, "node0", "client", "reused") == 0
            assert len(mesh.tunnels["node0"].pool) == 0
            assert [e["tunnel_reused"] for e in mesh.access("node0")] == [False] * 3
            assert all(e["decision"] == "allow" for e in mesh.access("node1"))
            assert mesh.metric("node1", "lacewing_tunnel_refused_connections_total",
                               listener="inbound", reason="bad_frame") == 0
    asyncio.run(go())


def test_connections_past_their_max_lifetime_are_not_reused(tmp_path):
    async def go():
        async with running_mesh(tmp_path, placements=PLACEMENTS, reuse=True,
                                reuse_max_lifetime=0.0) as mesh:
            await mesh.pod(SRV.ip, greet=False)
            await mesh.apply(snap())
            for i in range(3):
                assert await call(mesh) == b"ping<eof>"
                await settled(mesh, i + 1)
            assert handshakes(mesh) == 3
            assert [e["tunnel_reused"] for e in mesh.access("node0")] == [False] * 3
            assert mesh.metric("node0", "lacewing_tunnel_reuse_retries_total") == 0
    asyncio.run(go())


@pytest.mark.parametrize("side", ["client", "server"])
def test_idle_connections_are_closed_after_their_idle_timeout(tmp_path, side):
    timeouts = ({"reuse_idle_timeout": 0.2} if side == "client"
                else {"reuse_server_idle_timeout": 0.2})

    async def go():
        async with running_mesh(tmp_path, placements=PLACEMENTS, reuse=True,
                                **timeouts) as mesh:
            await mesh.pod(SRV.ip, greet=False)
            await mesh.apply(snap())
            assert await call(mesh) == b"ping<eof>"
            await settled(mesh, 1)
            assert await call(mesh) == b"ping<eof>"        # at once: reused
            await settled(mesh, 2)
            await asyncio.sleep(0.6)
            if side == "server":      # the client saw the server's close while idle
                assert mesh.tunnels["node1"]._idle_tunnels == set()
            assert await call(mesh) == b"ping<eof>"
            await settled(mesh, 3)
            assert [e["tunnel_reused"] for e in mesh.access("node0")] == [False, True, False]
            assert handshakes(mesh) == 2
            assert mesh.metric("node0", "lacewing_tunnel_reuse_retries_total") == 0
    asyncio.run(go())


def test_different_source_identities_never_share_a_tunnel(tmp_path):
    async def go():
        async with running_mesh(tmp_path, placements=PLACEMENTS, reuse=True) as mesh:
            await mesh.pod(SRV.ip, greet=False)
            await mesh.apply(snap())
            for i, src in enumerate([CLIENT, OTHER, CLIENT, OTHER, OTHER, CLIENT]):
                assert await call(mesh, b"x", src=src.ip) == b"x<eof>"
                await settled(mesh, i + 1)
            assert handshakes(mesh) == 2                      # one per source identity
            inb = mesh.access("node1")
            assert [e["src_identity"] for e in inb] == [
                CLIENT.identity, OTHER.identity, CLIENT.identity, OTHER.identity,
                OTHER.identity, CLIENT.identity]
            assert [e["tunnel_reused"] for e in inb] == [False, False, True, True, True, True]
            assert len(mesh.tunnels["node0"].pool) == 2
    asyncio.run(go())


def test_a_policy_change_applies_to_the_next_connection_on_a_reused_tunnel(tmp_path):
    async def go():
        async with running_mesh(tmp_path, placements=PLACEMENTS, reuse=True) as mesh:
            await mesh.pod(SRV.ip, greet=False)
            await mesh.apply(snap())
            assert await call(mesh) == b"ping<eof>"
            await settled(mesh, 1)
            await mesh.apply(snap([DENY_CLIENT]))
            r, w = await mesh.connect(CLIENT.ip, (SVC.vip, 80))
            try:
                got = await exchange(r, w, b"ping")
            except ConnectionError:
                got = b""
            assert got == b""                                 # refused: a reset, no answer
            await settled(mesh, 2)
            inb = mesh.access("node1")[1]
            assert inb["decision"] == "deny" and inb["tunnel_reused"] is True
            out = mesh.access("node0")[1]
            assert out["decision"] == "deny" and out["tunnel_reused"] is True
            assert mesh.metric("node0", "lacewing_tunnel_refused_connections_total",
                               listener="outbound", reason="peer_denied") == 1
            assert handshakes(mesh) == 1      # decided on the reused connection, not a new one
            assert mesh.metric("node1", "lacewing_tunnel_refused_connections_total",
                               listener="inbound", reason="policy") == 1
            # the refusal closed that TLS connection; the caller still allowed gets a new one
            assert await call(mesh, b"y", src=OTHER.ip) == b"y<eof>"
    asyncio.run(go())


class FinFirst:
    """A pod that sends `n` bytes, half-closes, then reads to EOF and records what came."""

    def __init__(self, ip: str, n: int) -> None:
        self.ip, self.n = ip, n
        self.got: list[tuple[int, str]] = []
        self.server = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, self.ip, 8080, reuse_address=True)

    async def _serve(self, r, w) -> None:
        w.write(pattern(self.n))
        await w.drain()
        w.write_eof()
        data = await r.read()
        self.got.append((len(data), hashlib.sha256(data).hexdigest()))
        w.close()


def pattern(n: int, seed: int = 0) -> bytes:
    block = bytes((i * 7 + seed) % 251 for i in range(4096))
    return (block * (n // 4096 + 1))[:n]


def test_half_close_both_orders_and_5_mib_each_way_over_a_reused_tunnel(tmp_path):
    big = 5 << 20

    async def go():
        async with running_mesh(tmp_path, placements=PLACEMENTS, reuse=True) as mesh:
            await mesh.pod(SRV.ip, greet=False)
            await mesh.apply(snap())
            assert await call(mesh, b"warm") == b"warm<eof>"
            await settled(mesh, 1)
            # the client half-closes first: 5 MiB up, echoed back, then the pod's EOF
            data = pattern(big, 1)
            assert await call(mesh, data) == data + b"<eof>"
            await settled(mesh, 2)
            for pod in mesh.pods:
                await pod.stop()
            await asyncio.sleep(0.05)
            fin_first = FinFirst(SRV.ip, big)
            await fin_first.start()
            try:
                # the pod half-closes first: 5 MiB down, then the client's 5 MiB up
                r, w = await mesh.connect(CLIENT.ip, (SVC.vip, 80))
                down = await asyncio.wait_for(r.read(), 20)
                assert down == pattern(big)
                up = pattern(big, 2)
                w.write(up)
                await w.drain()
                w.write_eof()
                await eventually(lambda: fin_first.got)
                assert fin_first.got == [(big, hashlib.sha256(up).hexdigest())]
                w.close()
                await settled(mesh, 3)
                # still clean after both orders: one more connection reuses it
                r, w = await mesh.connect(CLIENT.ip, (SVC.vip, 80))
                assert await asyncio.wait_for(r.read(), 10) == pattern(big)
                w.write(b"z")
                w.write_eof()
                await eventually(lambda: len(fin_first.got) == 2)
                w.close()
                await settled(mesh, 4)
            finally:
                fin_first.server.close()
            out, inb = mesh.access("node0"), mesh.access("node1")
            assert [e["tunnel_reused"] for e in out] == [False, True, True, True]
            assert [(e["bytes_sent"], e["bytes_received"]) for e in out[1:3]] == [
                (big, big + 5), (big, big)]
            assert [(e["bytes_sent"], e["bytes_received"]) for e in inb[1:3]] == [
                (big, big + 5), (big, big)]
            assert handshakes(mesh) == 1
    asyncio.run(go())


class Resetter:
    """A pod that reads a little and then resets the connection (RST)."""

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.server = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, self.ip, 8080, reuse_address=True)

    async def _serve(self, r, w) -> None:
        await r.read(1)
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()


def test_a_pod_reset_closes_the_tunnel_and_it_is_not_reused(tmp_path):
    async def go():
        async with running_mesh(tmp_path, placements=PLACEMENTS, reuse=True) as mesh:
            resetter = Resetter(SRV.ip)
            await resetter.start()
            try:
                await mesh.apply(snap())
                for i in range(2):
                    r, w = await mesh.connect(CLIENT.ip, (SVC.vip, 80))
                    w.write(b"hello")
                    await w.drain()
                    with pytest.raises(ConnectionError):
                        data = await asyncio.wait_for(r.read(), 10)
                        if not data:
                            raise ConnectionResetError("empty")     # closed, no answer
                    w.close()
                    await settled(mesh, i + 1)
                await eventually(lambda: handshakes(mesh) == 2)
                assert inner(mesh, "node0", "client", "reused") == 0
                assert [e["tunnel_reused"] for e in mesh.access("node0")] == [False, False]
                assert len(mesh.tunnels["node0"].pool) == 0
            finally:
                resetter.server.close()
            # a client pod's reset too: the next connection needs a new tunnel
            await mesh.pod(SRV.ip, greet=False)
            r, w = await mesh.connect(CLIENT.ip, (SVC.vip, 80))
            w.write(b"abc")
            await w.drain()
            assert await asyncio.wait_for(r.readexactly(3), 10) == b"abc"
            sock = w.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()
            await settled(mesh, 3)
            assert await call(mesh) == b"ping<eof>"
            await settled(mesh, 4)
            assert [e["tunnel_reused"] for e in mesh.access("node0")][2:] == [False, False]
            assert handshakes(mesh) == 4
    asyncio.run(go())


def test_a_tunnel_the_server_closed_while_idle_is_retried_transparently(tmp_path):
    async def go():
        # the server closes idle connections almost at once (0.3 s: time enough for this
        # test to make the client's idle connection deaf, as a slow network would, so that it
        # picks it before it learns of the close)
        async with running_mesh(tmp_path, placements=PLACEMENTS, reuse=True,
                                reuse_server_idle_timeout=0.3) as mesh:
            await mesh.pod(SRV.ip, greet=False)
            await mesh.apply(snap())
            pool = mesh.tunnels["node0"].pool
            server_idle = mesh.tunnels["node1"]._idle_tunnels
            assert await call(mesh, b"one") == b"one<eof>"
            await eventually(lambda: len(pool) == 1)
            for side in pool.idle():
                side.transport.pause_reading()
            await settled(mesh, 1)
            await eventually(lambda: len(server_idle) == 0)   # the server closed it
            await asyncio.sleep(0.1)                           # and its close is on its way
            assert await call(mesh, b"two") == b"two<eof>"
            await settled(mesh, 2)
            assert mesh.metric("node0", "lacewing_tunnel_reuse_retries_total") == 1
            out = mesh.access("node0")
            assert [e["decision"] for e in out] == ["allow", "allow"]
            assert out[1]["tunnel_reused"] is False and out[1]["bytes_sent"] == 3
            assert handshakes(mesh) == 2
            assert mesh.metric("node1", "lacewing_tunnel_refused_connections_total") == 0
    asyncio.run(go())


async def framed_client(mesh, tmp_path):
    """A hand-made framed client of node1's :15008 (the real CA's certificate for CLIENT)."""
    cert = await mesh.managers[0].get(CLIENT.identity)
    ctx = ssl_context(cert, server=False)
    host, port = mesh.tunnels["node1"].addresses["inbound"]
    r, w = await asyncio.open_connection(host, port, ssl=ctx,
                                         server_hostname=wire.sni_for(SRV.identity))
    w.write(wire.encode_header(wire.TunnelHeader(wire.Address(SRV.ip, 8080),
                                                 wire.Address(CLIENT.ip, 5555),
                                                 flags=wire.FLAG_FRAMED)))
    await w.drain()
    status, _why, rest = wire.ReplyReader().feed(await r.readexactly(4))
    assert status == wire.OK and rest == b""
    return r, w


@pytest.mark.parametrize("garbage", [
    struct.pack("!BI", 7, 3) + b"abc",                                  # unknown type
    struct.pack("!BI", wire.FRAME_DATA, wire.MAX_FRAME + 1),            # oversized
    struct.pack("!BI", wire.FRAME_DATA, 0),                             # empty DATA
    wire.FIN_FRAME + b"after the FIN",                                  # bytes after FIN
], ids=["type", "oversized", "empty", "after-fin"])
def test_an_unparsable_frame_closes_the_tunnel_and_is_counted(tmp_path, garbage):
    async def go():
        async with running_mesh(tmp_path, placements=PLACEMENTS, reuse=True) as mesh:
            await mesh.pod(SRV.ip, greet=False)
            await mesh.apply(snap())
            r, w = await framed_client(mesh, tmp_path)
            w.write(wire.frame_data(b"fine") + garbage)
            await w.drain()
            try:
                rest = await asyncio.wait_for(r.read(), 10)
            except (ConnectionError, ssl.SSLError):
                rest = b""
            assert wire.FIN_FRAME not in rest      # never a clean end: the TLS connection died
            w.close()
            await eventually(lambda: mesh.metric(
                "node1", "lacewing_tunnel_refused_connections_total", listener="inbound",
                reason="bad_frame") == 1)
            await eventually(lambda: len(mesh.access("node1")) == 1)
            line = mesh.access("node1")[0]
            assert line["decision"] == "error" and "bad frame" in line["reason"]
            assert mesh.tunnels["node1"]._idle_tunnels == set()
            # the tunnel serves others as before
            assert await call(mesh) == b"ping<eof>"
    asyncio.run(go())


def test_drain_closes_idle_tunnel_connections_on_both_sides(tmp_path):
    async def go():
        async with running_mesh(tmp_path, placements=PLACEMENTS, reuse=True) as mesh:
            await mesh.pod(SRV.ip, greet=False)
            await mesh.apply(snap())
            assert await call(mesh) == b"ping<eof>"
            await settled(mesh, 1)
            server_idle = mesh.tunnels["node1"]._idle_tunnels
            await eventually(lambda: len(server_idle) == 1)
            await mesh.tunnels["node0"].drain(timeout=1.0)
            assert len(mesh.tunnels["node0"].pool) == 0
            await eventually(lambda: len(server_idle) == 0)     # it saw the client's close
            assert mesh.metric("node1", "lacewing_tunnel_refused_connections_total") == 0
    asyncio.run(go())
