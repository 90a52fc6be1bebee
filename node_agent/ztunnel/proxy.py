"""The node tunnel's listeners and connection handlers (the only module here that does I/O
beyond the byte relay).

Before: the node agent made a `Tunnel` with its certificate source (`await certs.get(id)`) and
calls `await tunnel.update(snapshot)` for each accepted NodeSnapshot. After `start()`:
  :15001 outbound — captured pod connections: `outbound.decide` → deny (RST), direct (plain TCP),
         same node (inbound policy decided here, then plain to the pod), or tunnel/waypoint
         (mutual TLS to :15008 presenting the source SVID, requiring the destination's SPIFFE ID,
         tunnel header, reply, then bytes).
  :15008 inbound mTLS — SNI picks the identity to present; the client's SVID verified; the
         header's target checked and policy enforced (`inbound.decide`); then to the pod,
         keeping the client's source address when `transparent` is on.
  :15006 inbound plaintext — PeerAuthentication decides (STRICT refuses); then to the pod.
         A Service VIP (captured from an unenrolled pod before the node's DNAT) is balanced
         here first (`inbound.decide_service`): an enrolled endpoint of this node is decided
         as above, any other endpoint is connected to in plaintext, the client's address kept.
  :15021 readiness — `GET /healthz/ready`: 200 once a snapshot is in and listeners are up,
         503 while draining.
`drain()` stops accepting, reports not ready and waits for open connections (up to a deadline).

Tunnel reuse (`TunnelConfig.reuse`, docs/tunnel.md "Reusing tunnel connections"): toward node
tunnels that selected the framed mode in the TLS handshake (ALPN wire.ALPN_FRAMED; others are
spoken to unframed) the client asks for it (wire.FLAG_FRAMED); an inner connection that
ends cleanly leaves its TLS connection idle — on the client in `pool.IdlePool`, keyed by
(source identity, expected identity, next hop, TLS context), on the server waiting for the next
header, which is decided afresh exactly like a first one. A reused connection that ends before
the reply (the server closed it while idle) is retried once on a new TLS connection.

Timeouts and limits bound what a bad peer can hold: a handshake (and header) must finish within
`handshake_timeout`; at most `max_pending` connections may be in setup and `max_connections`
open; connections idle (no byte either way) for `idle_timeout` are closed. Everything refused is
counted in `lacewing_tunnel_refused_connections{listener,reason}` and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from control.ca.spiffe_id import SpiffeIdError, parse_workload
from control.snapshot import NodeSnapshot
from node_agent.certs.manager import CertificateUnavailable
from node_agent.ztunnel import inbound, outbound, wire
from node_agent.ztunnel.balancer import RoundRobin
from node_agent.ztunnel.pool import IdlePool
from node_agent.ztunnel.relay import Side, join, join_framed
from node_agent.ztunnel.state import EMPTY, NodeState
from node_agent.ztunnel.telemetry import ConnRecord, Telemetry
from node_agent.ztunnel.tls import CertSource, Contexts, TlsConnection

log = logging.getLogger("lacewing.ztunnel")
IP_TRANSPARENT = 19
IP_FREEBIND = 15
IP_BIND_ADDRESS_NO_PORT = 24
CERT_REFRESH_SECONDS = 30.0
EARLY_LIMIT = 64 << 10       # bytes sent ahead of the reply (kept for a retry) on a framed tunnel


@dataclass(frozen=True, kw_only=True)
class TunnelConfig:
    outbound_addr: tuple[str, int] | None = ("0.0.0.0", 15001)
    inbound_addr: tuple[str, int] | None = ("0.0.0.0", 15008)
    plaintext_addr: tuple[str, int] | None = ("0.0.0.0", 15006)
    readiness_addr: tuple[str, int] | None = ("0.0.0.0", 15021)
    transparent: bool = True          # IP_TRANSPARENT listeners, keep client source addresses
    tunnel_port: int = outbound.TUNNEL_PORT   # where peers' :15008 is (tests move it)
    handshake_timeout: float = 10.0
    connect_timeout: float = 10.0
    idle_timeout: float = 3600.0
    max_connections: int = 20000
    max_pending: int = 1024
    backlog: int = 4096
    resumption: bool = True
    # Reuse TLS connections between node tunnels (framed protocol, docs/tunnel.md). The server
    # side always accepts it; this decides whether this tunnel asks for it as a client.
    reuse: bool = True
    reuse_max_idle: int = 32                # idle connections kept per key (client)
    reuse_idle_timeout: float = 20.0        # client: an idle connection older is not reused
    reuse_server_idle_timeout: float = 30.0  # server: no next header that long closes it
    # a TLS connection carries no new inner connection once this old (both sides), so that
    # connections follow certificate renewals and trust-bundle changes without waiting for them
    reuse_max_lifetime: float = 900.0
    # Same-node connections: let the kernel forward the bytes (node_agent/ztunnel/splice.py)
    # instead of copying them through this process. Needs BCC for a short-lived loader.
    splice: bool = False
    # How the original destination of a captured connection is recovered, from (local address,
    # peer address). None: the local address (eBPF sk_assign / TPROXY keep it there).
    original_destination: Callable[[tuple, tuple], tuple] | None = None


def _sockname(addr) -> tuple[str, int]:
    return addr[0], addr[1]


def _fmt(addr) -> str:
    return f"{addr[0]}:{addr[1]}" if addr else ""


class Tunnel:
    def __init__(self, certs: CertSource, *, config: TunnelConfig | None = None,
                 telemetry: Telemetry | None = None) -> None:
        self.config = config or TunnelConfig()
        self.telemetry = telemetry or Telemetry()
        self.contexts = Contexts(certs, on_sni_refused=self._sni_refused,
                                 alpn=(wire.ALPN_FRAMED,) if self.config.reuse else ())
        self.state: NodeState = EMPTY
        self.balancer = RoundRobin()
        self._servers: dict[str, asyncio.AbstractServer] = {}
        self._pending = 0
        self._open: set = set()           # (ConnRecord, Side, Side) of relayed connections
        self._tasks: set[asyncio.Task] = set()
        self._draining = False
        self._sweeper: asyncio.Task | None = None
        self.addresses: dict[str, tuple[str, int]] = {}
        self.pool: IdlePool[Side] = IdlePool(
            max_idle_per_key=self.config.reuse_max_idle,
            idle_timeout=self.config.reuse_idle_timeout,
            usable=self._reusable, discard=_close_idle)
        self._idle_tunnels: set[Side] = set()     # server: waiting for the next header
        idle = self.telemetry.idle_tunnels
        idle.labels("client").set_function(lambda: len(self.pool))
        idle.labels("server").set_function(lambda: len(self._idle_tunnels))

    # ------------------------------------------------------------------ lifecycle
    async def update(self, snapshot: NodeSnapshot) -> None:
        """Apply a snapshot (the one writer); certificates of local identities are fetched
        before the state is swapped, so the SNI callback finds them."""
        state = NodeState.of(snapshot)
        await self.contexts.prepare(state.local_identities)
        self.state = state

    @property
    def ready(self) -> bool:
        return bool(self.state.version) and bool(self._servers) and not self._draining

    def listening_fds(self) -> dict[str, int]:
        """Listener name (outbound, inbound, inbound_plaintext) -> its listening socket's fd,
        for the datapath's listener map. Valid until `close()`."""
        return {name: server.sockets[0].fileno() for name, server in self._servers.items()
                if name != "readiness" and server.sockets}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        c = self.config
        specs = [("outbound", c.outbound_addr, self._accept_outbound, c.transparent),
                 ("inbound", c.inbound_addr, self._accept_inbound, False),
                 ("inbound_plaintext", c.plaintext_addr, self._accept_plaintext, c.transparent)]
        for name, addr, handler, transparent in specs:
            if addr is None:
                continue
            sock = self._listen_socket(addr, transparent=transparent)
            server = await loop.create_server(lambda h=handler: _Accepted(self, h), sock=sock)
            self._servers[name] = server
            self.addresses[name] = _sockname(sock.getsockname())
        if c.readiness_addr is not None:
            server = await asyncio.start_server(self._readiness, *c.readiness_addr,
                                                reuse_address=True)
            self._servers["readiness"] = server
            self.addresses["readiness"] = _sockname(server.sockets[0].getsockname())
        self._sweeper = loop.create_task(self._sweep())
        if c.splice:
            self.splicer = await loop.run_in_executor(None, _load_splicer)

    splicer = None

    def _listen_socket(self, addr, *, transparent: bool) -> socket.socket:
        fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if transparent:
            s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.bind(addr)
        s.listen(self.config.backlog)
        s.setblocking(False)
        return s

    async def drain(self, *, timeout: float = 10.0) -> None:
        """Stop accepting, report not ready, let open connections finish, then close the rest."""
        self._draining = True
        for name, server in list(self._servers.items()):
            if name != "readiness":
                server.close()
        self._close_idle_tunnels()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self._open or self._pending) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for rec, a, b in list(self._open):
            rec.reason = (rec.reason + "; " if rec.reason else "") + "closed by drain"
            a.abort()
            b.abort()
        await self.close()

    def _reusable(self, side: Side) -> bool:
        return (_idle_usable(side) and time.monotonic() - side.born
                < self.config.reuse_max_lifetime)

    def _close_idle_tunnels(self) -> None:
        self.pool.clear()
        for side in list(self._idle_tunnels):
            side.close()

    async def close(self) -> None:
        self._draining = True
        self._close_idle_tunnels()
        if self.splicer is not None:
            self.splicer.close()
            self.splicer = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for server in self._servers.values():
            server.close()
        for task in list(self._tasks):
            task.cancel()
        for _rec, a, b in list(self._open):
            a.abort()
            b.abort()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._servers.clear()

    # ------------------------------------------------------------------ admission
    def _sni_refused(self, reason: str) -> None:
        self.telemetry.refused_count("inbound", f"sni_{reason}")

    def _admit(self, listener: str, side: Side) -> bool:
        if self._draining:
            reason = "draining"
        elif (len(self._open) + self._pending + len(self._idle_tunnels)
              >= self.config.max_connections):
            reason = "connection_limit"
        elif self._pending >= self.config.max_pending:
            reason = "pending_limit"
        else:
            return True
        self.telemetry.refused_count(listener, reason)
        log.warning("%s: refused a connection from %s: %s", listener,
                    _fmt(side.transport.get_extra_info("peername")), reason)
        side.abort(reset=True)
        return False

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _accept_outbound(self, side: Side) -> None:
        if self._admit("outbound", side):
            self._spawn(self._setup(self._outbound, side, "outbound"))

    def _accept_inbound(self, side: Side) -> None:
        if self._admit("inbound", side):
            try:
                ctx = self.contexts.server_context
            except CertificateUnavailable:
                self.telemetry.refused_count("inbound", "no_certificate")
                side.abort(reset=True)
                return
            side.tls = TlsConnection(ctx, server_side=True)
            side.handshake = asyncio.get_running_loop().create_future()
            self._spawn(self._setup(self._inbound_tls, side, "inbound"))

    def _accept_plaintext(self, side: Side) -> None:
        if self._admit("inbound_plaintext", side):
            self._spawn(self._setup(self._inbound_plain, side, "inbound_plaintext"))

    async def _setup(self, handler, side: Side, listener: str) -> None:
        rec = ConnRecord(listener=listener, src=_fmt(side.transport.get_extra_info("peername")),
                         dst=_fmt(side.transport.get_extra_info("sockname")))
        self._pending += 1
        up: list[Side] = []
        try:
            await handler(side, rec, up)
        except (asyncio.CancelledError, Exception) as exc:  # noqa: BLE001 - logged and counted
            if isinstance(exc, asyncio.CancelledError) and not self._draining:
                raise
            reason = _describe(exc)
            self._refuse(listener, rec, side, "error", reason)
            for u in up:
                u.abort()
            if not isinstance(exc, (OSError, ssl.SSLError, TimeoutError, wire.ProtocolError,
                                    CertificateUnavailable, asyncio.CancelledError)):
                log.exception("%s: unexpected error", listener)
        finally:
            self._pending -= 1

    def _refuse(self, listener: str, rec: ConnRecord, side: Side, counter_reason: str,
                reason: str, *, reset: bool = True) -> None:
        rec.decision = "deny" if counter_reason != "error" else "error"
        rec.reason = reason
        self.telemetry.refused_count(listener, counter_reason if counter_reason != "error"
                                     else _reason_label(reason))
        log.info("%s %s -> %s refused: %s", listener, rec.src, rec.dst, reason)
        if reset:
            side.abort(reset=True)
        else:
            side.close()
        self.telemetry.closed(rec)

    def _relay(self, rec: ConnRecord, down: Side, up: Side, *, splice: bool = False) -> None:
        self.telemetry.opened(rec, down, up)
        entry = (rec, down, up)
        self._open.add(entry)

        def closed() -> None:
            self._open.discard(entry)
            rec.sent, rec.received = down.received, up.received
            if down.splice is not None:
                rec.sent = down.splice.kernel_bytes.get(down, rec.sent)
                rec.received = down.splice.kernel_bytes.get(up, rec.received)
            self.telemetry.closed(rec)

        join(down, up, on_close=closed, splicer=self.splicer if splice else None)
        if down.splice is not None:
            rec.kind = "same_node_spliced"

    def _relay_framed(self, rec: ConnRecord, down: Side, up: Side, *, tun: Side,
                      on_release: Callable[[Side], None]) -> None:
        """Like `_relay`, over a framed tunnel side that outlives the inner connection."""
        self.telemetry.opened(rec, down, up)
        entry = (rec, down, up)
        self._open.add(entry)

        def released(side: Side) -> None:
            self._open.discard(entry)       # its counts are final; the TLS side goes on
            on_release(side)

        def closed(plain_received: int, tun_received: int) -> None:
            self._open.discard(entry)
            if tun is down:
                rec.sent, rec.received = tun_received, plain_received
            else:
                rec.sent, rec.received = plain_received, tun_received
            self.telemetry.closed(rec)

        def bad_frame(exc: Exception) -> None:
            rec.decision = "error"
            rec.reason = (rec.reason + "; " if rec.reason else "") + f"bad frame: {exc}"
            self.telemetry.refused_count(rec.listener, "bad_frame")
            log.info("%s %s -> %s closed: bad frame from the peer tunnel: %s", rec.listener,
                     rec.src, rec.dst, exc)

        plain = up if tun is down else down
        join_framed(plain, tun, on_close=closed, on_release=released, on_bad_frame=bad_frame)

    def _orig_dst(self, side: Side, peer) -> tuple[str, int]:
        local = side.transport.get_extra_info("sockname")
        if self.config.original_destination is None:
            return local[0], local[1]
        return tuple(self.config.original_destination(local, peer))[:2]

    # ------------------------------------------------------------------ connecting
    async def _connect_plain(self, target: wire.Address, *, source_ip: str | None,
                             up: list[Side]) -> Side:
        loop = asyncio.get_running_loop()
        fam = socket.AF_INET6 if ":" in target.ip else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if source_ip is not None and self.config.transparent:
                sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
                # the port is chosen at connect() by the 4-tuple, not here by a bind-table scan
                sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((source_ip, 0))
            async with asyncio.timeout(self.config.connect_timeout):
                await loop.sock_connect(sock, (target.ip, target.port))
            side = Side()
            up.append(side)
            await loop.create_connection(lambda: side, sock=sock)
            side.transport.pause_reading()
            return side
        except BaseException:
            sock.close()
            raise

    def _hop(self, req: outbound.Request) -> wire.Address:
        hop = req.next_hop
        if self.config.tunnel_port != outbound.TUNNEL_PORT and hop.port == outbound.TUNNEL_PORT:
            hop = wire.Address(hop.ip, self.config.tunnel_port)
        return hop

    async def _connect_tunnel(self, req: outbound.Request, rec: ConnRecord,
                              up: list[Side], *, ctx=None) -> Side:
        loop = asyncio.get_running_loop()
        if ctx is None:
            ctx = await self.contexts.client(req.source_identity)
        hop = self._hop(req)
        key = (req.source_identity, hop, req.expected_identity)
        session = self.contexts.session(key, ctx) if self.config.resumption else None
        side = Side(tls=TlsConnection(ctx, server_side=False,
                                      server_hostname=wire.sni_for(req.expected_identity),
                                      session=session))
        up.append(side)
        async with asyncio.timeout(self.config.connect_timeout + self.config.handshake_timeout):
            await loop.create_connection(lambda: side, hop.ip, hop.port)
            await side.handshake
        peer = side.tls.peer_spiffe_id()
        rec.tls_resumed = side.tls.resumed
        rec.tunnel_reused = False
        self.telemetry.handshakes.labels("client", str(side.tls.resumed).lower()).inc()
        if peer != req.expected_identity:
            self.contexts.forget(key)
            raise PeerIdentityError(f"{_fmt((hop.ip, hop.port))} presented {peer}, "
                                    f"expected {req.expected_identity}")
        side.session_key = (key, ctx)
        return side

    # ------------------------------------------------------------------ handlers
    async def _outbound(self, down: Side, rec: ConnRecord, up: list[Side]) -> None:
        src = down.transport.get_extra_info("peername")
        dst = self._orig_dst(down, src)
        rec.dst = _fmt(dst)
        state = self.state
        req = outbound.decide(state, src[0], wire.Address(dst[0], dst[1]),
                              balancer=self.balancer)
        spliced = self.splicer is not None and req.same_node and req.kind == outbound.TUNNEL
        if not spliced and not down.lost:
            down.transport.resume_reading()
        rec.kind = req.kind
        rec.reason = req.reason
        rec.src_identity = req.source_identity
        rec.src_workload = req.source.uid if req.source else None
        rec.dst_identity = req.expected_identity
        rec.dst_workload = req.destination.uid if req.destination else None
        rec.service = req.service.uid if req.service else None
        rec.target = _fmt((req.target.ip, req.target.port)) if req.target else ""
        rec.next_hop = _fmt((req.next_hop.ip, req.next_hop.port)) if req.next_hop else ""
        if req.kind == outbound.DENY:
            self._refuse("outbound", rec, down, "no_route", req.reason)
            return
        if req.kind == outbound.DIRECT:
            rec.security_policy = "none"
            upside = await self._connect_plain(req.next_hop, source_ip=None, up=up)
            self._relay(rec, down, upside)
            return
        rec.security_policy = "mutual_tls"
        if req.same_node and req.kind == outbound.TUNNEL:
            rec.kind = "same_node"
            v = inbound.decide(state, target=req.target, source_ip=src[0],
                               peer_identity=req.source_identity,
                               presented_identity=req.expected_identity, tls=True)
            rec.reason = v.reason
            if not v.allowed:
                self._refuse("outbound", rec, down, "policy", v.reason)
                return
            upside = await self._connect_plain(req.target, source_ip=src[0], up=up)
            self._relay(rec, down, upside, splice=spliced)
            if down.splice is None and not down.lost:
                down.transport.resume_reading()
            return
        if self.config.reuse and req.kind == outbound.TUNNEL:
            await self._outbound_framed(req, rec, down, up, src)
            return
        upside = await self._connect_tunnel(req, rec, up)
        await self._outbound_unframed(req, rec, down, upside, src)

    async def _outbound_unframed(self, req: outbound.Request, rec: ConnRecord, down: Side,
                                 upside: Side, src) -> None:
        """Over a new TLS connection to a node tunnel or waypoint that is not framed (reuse off,
        a waypoint, or a peer tunnel that did not select ALPN_FRAMED): one connection each."""
        upside.send(wire.encode_header(wire.TunnelHeader(req.target,
                                                         wire.Address(src[0], src[1]))))
        if down.buffer:
            upside.send(down.take())
        got = await self._reply(upside)
        if got is None:
            raise ConnectionResetError("the peer tunnel closed before replying")
        if req.kind == outbound.TUNNEL:         # unframed (reuse off): always a new one
            self.telemetry.tunnel_connections.labels("client", "new").inc()
        rest = self._replied(rec, down, upside, got, new_tls=True)
        if rest is None:
            return
        upside.received = len(rest) + upside.buffered   # application bytes only
        if rest:
            upside.buffer.insert(0, rest)
        self._relay(rec, down, upside)

    async def _outbound_framed(self, req: outbound.Request, rec: ConnRecord, down: Side,
                               up: list[Side], src) -> None:
        """To a node tunnel over a reused TLS connection when one is idle, else a new one;
        framed, so the TLS connection can carry the next connection of the pair."""
        ctx = await self.contexts.client(req.source_identity)
        key = (req.source_identity, req.expected_identity, self._hop(req), ctx)
        upside = None if self._draining else self.pool.take(key)
        reused = upside is not None
        if reused:
            up.append(upside)
            upside.transport.resume_reading()
            rec.tls_resumed = upside.tls.resumed
            rec.tunnel_reused = True
        else:
            upside = await self._connect_tunnel(req, rec, up, ctx=ctx)
            if not _framed(upside):         # a peer of an older version: one connection each
                await self._outbound_unframed(req, rec, down, upside, src)
                return
        first = down.take()
        if len(first) > EARLY_LIMIT:        # the rest waits in the buffer for the reply
            down.buffer.insert(0, first[EARLY_LIMIT:])
            down.buffered = len(first) - EARLY_LIMIT
            first = first[:EARLY_LIMIT]
        early = wire.encode_header(wire.TunnelHeader(req.target, wire.Address(src[0], src[1]),
                                                     flags=wire.FLAG_FRAMED))
        if first:
            early += wire.frame_data(first)
        while True:
            upside.send(early)
            got = await self._reply(upside)
            if got is not None:
                break
            if not reused:
                raise ConnectionResetError("the peer tunnel closed before replying")
            # the server closed it while idle, before it read our header: once more, anew
            upside.abort()
            self.telemetry.reuse_retries.inc()
            upside = await self._connect_tunnel(req, rec, up, ctx=ctx)
            reused = False
            if not _framed(upside):         # the peer was replaced by an older version
                if first:
                    down.buffer.insert(0, first)
                    down.buffered += len(first)
                await self._outbound_unframed(req, rec, down, upside, src)
                return
        self.telemetry.tunnel_connections.labels("client",
                                                 "reused" if reused else "new").inc()
        rest = self._replied(rec, down, upside, got, new_tls=not reused)
        if rest is None:
            return
        if rest:
            upside.buffer.insert(0, rest)

        def release(side: Side) -> None:
            if not self._reusable(side) or self._draining or not self.pool.put(key, side):
                side.close()        # bytes after the server's FIN, draining, or enough idle

        self._relay_framed(rec, down, upside, tun=upside, on_release=release)

    def _replied(self, rec: ConnRecord, down: Side, upside: Side, got: tuple[int, str, bytes],
                 *, new_tls: bool) -> bytes | None:
        """After the peer tunnel's reply `got`: a new TLS connection that took a full handshake
        leaves its ticket for resumption (reading `session` costs; resumed ones keep the ticket
        they used, which stays valid); a refusal is passed on to the client. Returns the bytes
        that followed the reply, or None when refused."""
        status, why, rest = got
        if self.config.resumption and new_tls and not upside.tls.resumed:
            key, ctx = upside.session_key
            self.contexts.remember(key, upside.tls.obj.session, ctx)
        if status != wire.OK:
            upside.close()
            self._refuse("outbound", rec, down,
                         f"peer_{wire.STATUS_NAMES.get(status, 'unknown')}",
                         f"destination tunnel refused: {why}")
            return None
        return rest

    async def _reply(self, upside: Side) -> tuple[int, str, bytes] | None:
        """The peer tunnel's reply; None if the connection ended before any byte of it."""
        reader = wire.ReplyReader()
        seen = False
        async with asyncio.timeout(self.config.handshake_timeout + self.config.connect_timeout):
            while True:
                await upside.wait_data()
                if upside.buffer:
                    seen = True
                    got = reader.feed(upside.take())
                    if got is not None:
                        return got
                if upside.eof or upside.lost:
                    if not seen:
                        return None
                    raise ConnectionResetError("the peer tunnel closed inside its reply")

    async def _inbound_tls(self, down: Side, rec: ConnRecord, up: list[Side]) -> None:
        tls = down.tls
        try:
            async with asyncio.timeout(self.config.handshake_timeout):
                if down.buffer:     # bytes that arrived before the TLS layer was attached
                    down.data_received(down.take())
                await down.handshake
        except TimeoutError:
            self._refuse("inbound", rec, down, "handshake_timeout",
                         "TLS handshake not finished in time")
            return
        except (ssl.SSLError, ConnectionError, ValueError) as exc:
            self._refuse("inbound", rec, down, "handshake_failed:" + _reason_label(exc),
                         f"TLS handshake failed: {_describe(exc)}")
            return
        rec.security_policy = "mutual_tls"
        rec.tls_resumed = tls.resumed
        self.telemetry.handshakes.labels("server", str(tls.resumed).lower()).inc()
        peer = tls.peer_spiffe_id()
        presented = getattr(tls.obj, "lw_identity", None)
        rec.src_identity, rec.dst_identity = peer, presented
        if peer is None:
            self._refuse("inbound", rec, down, "bad_peer_certificate",
                         "the client certificate does not carry exactly one SPIFFE ID")
            return
        try:
            pid = parse_workload(peer)
        except SpiffeIdError as exc:
            self._refuse("inbound", rec, down, "bad_peer_certificate",
                         f"the client is not a workload identity: {exc}")
            return
        if pid.trust_domain != self.state.snapshot.trust_domain:
            self._refuse("inbound", rec, down, "bad_peer_certificate",
                         f"the client is in trust domain {pid.trust_domain}")
            return
        rec.src_workload = f"{pid.namespace}/unknown"
        rec.tunnel_reused = False
        await self._inbound_header(down, rec, up, peer=peer, presented=presented,
                                   namespace=pid.namespace)

    async def _inbound_again(self, down: Side, rec: ConnRecord, up: list[Side], *,
                             peer: str, presented: str, namespace: str) -> None:
        """The next inner connection on a reused TLS connection: the same identities, every
        decision made afresh."""
        rec.security_policy = "mutual_tls"
        rec.tls_resumed = down.tls.resumed
        rec.tunnel_reused = True
        rec.src_identity, rec.dst_identity = peer, presented
        rec.src_workload = f"{namespace}/unknown"
        await self._inbound_header(down, rec, up, peer=peer, presented=presented,
                                   namespace=namespace)

    async def _inbound_header(self, down: Side, rec: ConnRecord, up: list[Side], *,
                              peer: str, presented: str, namespace: str) -> None:
        reader = wire.HeaderReader()
        try:
            async with asyncio.timeout(self.config.handshake_timeout):
                while True:
                    await down.wait_data()
                    got = reader.feed(down.take()) if down.buffer else None
                    if got is not None:
                        break
                    if down.eof or down.lost:
                        raise ConnectionResetError("closed before the tunnel header")
        except TimeoutError:
            self._refuse("inbound", rec, down, "header_timeout", "no tunnel header in time")
            return
        except wire.ProtocolError as exc:
            down.send(wire.encode_reply(wire.BAD_REQUEST, str(exc)))
            self._refuse("inbound", rec, down, "bad_header", f"bad tunnel header: {exc}",
                         reset=False)
            return
        header, rest = got
        self.telemetry.tunnel_connections.labels(
            "server", "reused" if rec.tunnel_reused else "new").inc()
        down.received = len(rest) + down.buffered        # application bytes only
        rec.src = _fmt((header.source.ip, header.source.port))
        rec.target = rec.dst = _fmt((header.target.ip, header.target.port))
        rec.kind = "inbound"
        src_w = self.state.workloads_by_ip.get(header.source.ip)
        if src_w is not None and src_w.identity == peer:
            rec.src_workload = src_w.uid
        v = inbound.decide(self.state, target=header.target, source_ip=header.source.ip,
                           peer_identity=peer, presented_identity=presented, tls=True)
        rec.dst_workload = v.workload.uid if v.workload else None
        rec.reason = v.reason
        if not v.allowed:
            down.send(wire.encode_reply(v.status, v.reason))
            self._refuse("inbound", rec, down,
                         "policy" if v.status == wire.DENIED else "unknown_target", v.reason,
                         reset=False)
            down.close()
            return
        try:
            upside = await self._connect_plain(header.target, source_ip=header.source.ip, up=up)
        except (OSError, TimeoutError) as exc:
            down.send(wire.encode_reply(wire.UPSTREAM_FAILED, _describe(exc)))
            self._refuse("inbound", rec, down, "upstream_failed",
                         f"cannot reach {rec.target}: {_describe(exc)}", reset=False)
            down.close()
            return
        down.send(wire.encode_reply(wire.OK))
        if rest:
            down.buffer.insert(0, rest)
        if not header.framed:
            self._relay(rec, down, upside)
            return
        ids = {"peer": peer, "presented": presented, "namespace": namespace}
        self._relay_framed(rec, down, upside, tun=down,
                           on_release=lambda side: self._spawn(self._inbound_next(side, ids)))

    async def _inbound_next(self, down: Side, ids: dict) -> None:
        """A released server-side tunnel: wait (idle) for the next header, then set it up as
        a new inbound connection, or close it when it stays idle or the client ends it."""
        if (self._draining or time.monotonic() - down.born
                >= self.config.reuse_max_lifetime):
            down.close()        # draining, or old enough (the client will not pick it either)
            return
        self._idle_tunnels.add(down)
        try:
            async with asyncio.timeout(self.config.reuse_server_idle_timeout):
                await down.wait_data()
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            down.close()
            raise
        finally:
            self._idle_tunnels.discard(down)
        if not down.buffer or down.eof or down.lost or self._draining:
            down.close()        # idle too long, ended by the client, or draining: quietly
            return
        if self._admit("inbound", down):
            await self._setup(functools.partial(self._inbound_again, **ids), down, "inbound")

    async def _inbound_plain(self, down: Side, rec: ConnRecord, up: list[Side]) -> None:
        src = down.transport.get_extra_info("peername")
        dst = self._orig_dst(down, src)
        rec.dst = _fmt(dst)
        target = wire.Address(dst[0], dst[1])
        if target.ip in self.state.services_by_vip:
            await self._inbound_service(down, rec, up, src, target)
            return
        v = inbound.decide(self.state, target=target, source_ip=src[0], peer_identity=None,
                           presented_identity=None, tls=False)
        rec.kind = "inbound"
        rec.security_policy = "none"
        rec.target = _fmt(dst)
        rec.reason = v.reason
        rec.dst_workload = v.workload.uid if v.workload else None
        rec.dst_identity = v.workload.identity if v.workload else None
        src_w = self.state.workloads_by_ip.get(src[0])
        rec.src_workload = src_w.uid if src_w else None
        if not v.allowed:
            self._refuse("inbound_plaintext", rec, down,
                         "policy" if v.status == wire.DENIED else "unknown_target", v.reason)
            return
        upside = await self._connect_plain(target, source_ip=src[0], up=up)
        self._relay(rec, down, upside)

    async def _inbound_service(self, down: Side, rec: ConnRecord, up: list[Side], src,
                               vip: wire.Address) -> None:
        """Plaintext to a Service VIP, captured before the node's DNAT (docs/tunnel.md,
        "Service VIPs from unenrolled pods"): balance it here, then decide as for a direct
        connection to the endpoint, or relay to an endpoint that is not ours to decide."""
        state = self.state
        sv = inbound.decide_service(state, vip=vip, source_ip=src[0], balancer=self.balancer)
        rec.kind = "inbound" if sv.how != inbound.RELAY else "service_relay"
        rec.security_policy = "none"
        rec.reason = sv.reason
        rec.service = sv.service.uid if sv.service else None
        rec.target = _fmt((sv.target.ip, sv.target.port)) if sv.target else ""
        rec.dst_workload = sv.workload.uid if sv.workload else None
        rec.dst_identity = sv.workload.identity if sv.workload and sv.workload.enrolled else None
        src_w = state.workloads_by_ip.get(src[0])
        rec.src_workload = src_w.uid if src_w else None
        if not sv.allowed:
            self._refuse("inbound_plaintext", rec, down,
                         "policy" if sv.status == wire.DENIED else "unknown_target", sv.reason)
            return
        upside = await self._connect_plain(sv.target, source_ip=src[0], up=up)
        self._relay(rec, down, upside)

    # ------------------------------------------------------------------ housekeeping
    async def _sweep(self) -> None:
        seen: dict[int, tuple[int, float]] = {}
        loop = asyncio.get_running_loop()
        period = max(0.05, min(5.0, self.config.idle_timeout / 4))
        last_refresh = loop.time()
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            if now - last_refresh > CERT_REFRESH_SECONDS:
                last_refresh = now     # renewed certificates of the identities served here
                with contextlib.suppress(Exception):
                    await self.contexts.prepare(self.state.local_identities)
            self.pool.expired()
            live = {}
            for entry in list(self._open):
                rec, a, b = entry
                activity = a.activity + b.activity
                if a.splice is not None:
                    activity += a.splice.received(a) + a.splice.received(b)
                key = id(entry)
                last = seen.get(key)
                since = now if last is None or last[0] != activity else last[1]
                live[key] = (activity, since)
                rec.sent, rec.received = a.received, b.received
                self.telemetry.flush_bytes(rec)
                if now - since >= self.config.idle_timeout:
                    rec.reason = (rec.reason + "; " if rec.reason else "") + "idle timeout"
                    self.telemetry.refused_count(rec.listener, "idle_timeout")
                    log.info("%s %s -> %s closed: idle for %.0fs", rec.listener, rec.src,
                             rec.dst, now - since)
                    a.close()
                    b.close()
            seen = live

    async def _readiness(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            async with asyncio.timeout(5):
                line = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
            path = line.split(b" ")[1] if line.count(b" ") >= 2 else b""
            if path.startswith(b"/healthz/ready"):
                ok = self.ready
                body = b"ready\n" if ok else b"not ready\n"
                status = b"200 OK" if ok else b"503 Service Unavailable"
            else:
                body, status = b"not found\n", b"404 Not Found"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\n"
                         b"Content-Length: " + str(len(body)).encode() +
                         b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (TimeoutError, OSError, IndexError, ValueError):
            pass                    # garbage, a line too long, a peer gone: just close
        finally:
            writer.close()


def _load_splicer():
    """Run the short-lived loader (BCC stays out of this process), open what it pinned, unpin."""
    import subprocess
    import sys
    import tempfile

    from node_agent.bpf.pins import ensure_bpffs
    from node_agent.ztunnel import splice
    pin_dir = None
    try:
        ensure_bpffs()
        pin_dir = tempfile.mkdtemp(prefix="lw-splice-", dir="/sys/fs/bpf")
        proc = subprocess.run([sys.executable, "-m", "node_agent.ztunnel.splice", "load",
                               "--pin-dir", pin_dir], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip()[-500:])
        return splice.Splicer.open(pin_dir)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log.warning("same-node splice unavailable, copying instead: %s", exc)
        return None
    finally:
        if pin_dir is not None:
            splice.unload(pin_dir)


def _idle_usable(side: Side) -> bool:
    """An idle tunnel connection the peer has not closed, failed, or written to."""
    return not (side.lost or side.eof or side.buffer or side.error is not None
                or side.transport is None or side.transport.is_closing())


def _close_idle(side: Side) -> None:
    side.close()


def _framed(side: Side) -> bool:
    """The new TLS connection's peer agreed to the framed mode (ALPN, wire.ALPN_FRAMED)."""
    return side.tls.obj.selected_alpn_protocol() == wire.ALPN_FRAMED


class PeerIdentityError(ConnectionError):
    """The destination tunnel presented another identity than the one expected."""


class _Accepted(Side):
    """An accepted socket: hands itself to the listener's handler once connected."""

    __slots__ = ("_tunnel", "_handler")

    def __init__(self, tunnel: Tunnel, handler: Callable[[Side], None]) -> None:
        super().__init__()
        self._tunnel = tunnel
        self._handler = handler

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if self._tunnel.splicer is not None and self._handler == self._tunnel._accept_outbound:
            # read nothing before the decision: a same-node connection may be spliced, and the
            # kernel must then see every byte (relay._SpliceState)
            transport.pause_reading()
        self._handler(self)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.strerror or str(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno:
        return f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _reason_label(exc_or_text) -> str:
    if isinstance(exc_or_text, ssl.SSLError):
        text = exc_or_text.reason or "ssl_error"
    elif isinstance(exc_or_text, BaseException):
        text = _describe(exc_or_text)
    else:
        text = str(exc_or_text)
    text = text.lower().split(":")[0]
    return "".join(ch if ch.isalnum() else "_" for ch in text)[:40] or "error"
