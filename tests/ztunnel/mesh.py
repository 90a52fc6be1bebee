"""Tier-2 harness: two node tunnels in one process, the real CA served over gRPC on loopback,
real `CertificateManager`s, real TLS, real sockets on 127.0.0.0/8, and pods as small servers.

Addresses: node0's tunnel on 127.0.0.1, node1's on 127.0.0.2 (same port for both, as :15008 is
the same port on every node); node0 pods 127.0.10.x, node1 pods 127.0.11.x, Service VIPs
127.0.20.x. Loopback cannot capture, so a test client opens its connection to node0's outbound
listener from its pod's address and registers the original destination it meant, which the
tunnel reads through `TunnelConfig.original_destination` (the eBPF capture puts it in the local
address instead; tier 3 covers that).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
from pathlib import Path

from prometheus_client import CollectorRegistry

from node_agent.certs.manager import CertificateManager
from node_agent.ztunnel.proxy import Tunnel, TunnelConfig
from node_agent.ztunnel.telemetry import Telemetry
from tests.identity.helpers import Cluster


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def reserve_port(ips: tuple[str, ...]) -> tuple[int, list[socket.socket]]:
    """A port free on every one of `ips`, held by bound (not listening) SO_REUSEADDR sockets
    until the caller closes them: no connect() takes it as an ephemeral port meanwhile (a
    port merely found free can be, by the test's own client connections), and a listener
    with SO_REUSEADDR may still bind it (as the tunnels do)."""
    for _ in range(50):
        held: list[socket.socket] = []
        try:
            for ip in ips:
                s = socket.socket()
                held.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((ip, held[0].getsockname()[1] if len(held) > 1 else 0))
            return held[0].getsockname()[1], held
        except OSError:
            for s in held:
                s.close()
    raise RuntimeError(f"no port free on all of {ips}")


class Pod:
    """An echo server; the first line it sends is the peer address it sees."""

    def __init__(self, ip: str, port: int = 8080, *, greet: bool = True) -> None:
        self.ip, self.port, self.greet = ip, port, greet
        self.server: asyncio.AbstractServer | None = None
        self.peers: list[str] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, self.ip, self.port,
                                                 reuse_address=True)

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        peer = w.get_extra_info("peername")[0]
        self.peers.append(peer)
        try:
            if self.greet:
                w.write(f"{peer}\n".encode())
            while data := await r.read(1 << 16):
                w.write(data)
                await w.drain()
            w.write(b"<eof>")
            await w.drain()
            w.close()
        except (ConnectionError, OSError):
            w.close()

    async def stop(self) -> None:
        if self.server:
            self.server.close()


class Mesh:
    def __init__(self, tmp: Path, *, placements: dict, **config) -> None:
        self.cluster = Cluster(tmp, placements=placements)
        self.orig: dict[tuple[str, int], tuple[str, int]] = {}
        # the tunnel port both nodes listen on, held until they do (`start`)
        self.tunnel_port, self._held = reserve_port(("127.0.0.1", "127.0.0.2"))
        self.logs: dict[str, io.StringIO] = {}
        self.registries: dict[str, CollectorRegistry] = {}
        self.tunnels: dict[str, Tunnel] = {}
        self.managers: list[CertificateManager] = []
        self.per_node = config.pop("per_node", {})   # node -> TunnelConfig overrides
        self.config = config
        self.pods: list[Pod] = []

    def _orig(self, local, peer):
        return self.orig.get((peer[0], peer[1]), local)

    async def start(self) -> None:
        await self.cluster.start()
        for node, ip in (("node0", "127.0.0.1"), ("node1", "127.0.0.2")):
            mgr = CertificateManager(self.cluster.client_for(node), registry=CollectorRegistry())
            self.managers.append(mgr)
            self.logs[node] = io.StringIO()
            self.registries[node] = CollectorRegistry()
            cfg = TunnelConfig(outbound_addr=(ip, 0), inbound_addr=(ip, self.tunnel_port),
                               plaintext_addr=(ip, 0), readiness_addr=(ip, 0),
                               transparent=False, tunnel_port=self.tunnel_port,
                               original_destination=self._orig,
                               **{**self.config, **self.per_node.get(node, {})})
            t = Tunnel(mgr, config=cfg, telemetry=Telemetry(registry=self.registries[node],
                                                            access_log=self.logs[node]))
            await t.start()
            self.tunnels[node] = t
        self._release_port()

    def _release_port(self) -> None:
        for s in self._held:
            s.close()
        self._held = []

    async def pod(self, ip: str, port: int = 8080, **kw) -> Pod:
        p = Pod(ip, port, **kw)
        await p.start()
        self.pods.append(p)
        return p

    async def apply(self, make_snapshot) -> None:
        """make_snapshot(node) -> NodeSnapshot, applied to both tunnels."""
        for node, t in self.tunnels.items():
            await t.update(make_snapshot(node))

    async def connect(self, src_ip: str, dst: tuple[str, int], *, node: str = "node0",
                      listener: str = "outbound"):
        """Open a connection as if pod `src_ip` connected to `dst` and was captured."""
        t = self.tunnels[node]
        sock = socket.socket()
        sock.bind((src_ip, 0))
        self.orig[sock.getsockname()] = dst
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, t.addresses[listener])
        return await asyncio.open_connection(sock=sock)

    def access(self, node: str) -> list[dict]:
        return [json.loads(line) for line in self.logs[node].getvalue().splitlines()]

    def metric(self, node: str, name: str, **labels) -> float:
        reg = self.registries[node]
        total = 0.0
        for fam in reg.collect():
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    async def close(self) -> None:
        self._release_port()
        for t in self.tunnels.values():
            await t.close()
        for p in self.pods:
            await p.stop()
        for m in self.managers:
            with contextlib.suppress(Exception):
                await m.close()
        await self.cluster.close()


@contextlib.asynccontextmanager
async def running_mesh(tmp: Path, **kw):
    mesh = Mesh(tmp, **kw)
    try:
        await mesh.start()
        yield mesh
    finally:
        await mesh.close()


async def exchange(reader, writer, payload: bytes = b"hello", *, close: bool = True) -> bytes:
    """Send payload, half-close, read everything back."""
    writer.write(payload)
    await writer.drain()
    if close:
        writer.write_eof()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data
