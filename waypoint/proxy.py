"""The waypoint proxy: the one module that does asyncio.

Before: a `WaypointSnapshot` (xDS client, or `bootstrap`), a listener address, optionally a
TLS context whose client certificates carry the peers' SPIFFE IDs. After: requests arriving on
the listener (HTTP/1.1, or HTTP/2 by prior knowledge or ALPN) go through the pipeline below and
are forwarded over keep-alive HTTP/1.1 connections to the chosen endpoints; answers come back
with the route's header operations; metrics and spans are recorded.

Pipeline per request (every decision is made by a sans-IO module; this one only waits):
  normalize the target (`paths`) → find the Service (`config`) → authorize (`authz`, 403)
  → rate-limit (`ratelimit`, 429) → route (`router`, 404 when nothing matches) → fault
  delay/abort → mirror (fire and forget) → admit (`pool`, 503 overflow) → tries: pick a
  host (`outlier` + `balancer`), workload-scoped authorization, send with the per-try timeout,
  report the outcome to outlier detection, retry per `retry` with jittered backoff — all
  within the route timeout (504) → response header operations → metrics and span.
Bad input is answered and counted (`http1`, `http2`), the connection closed, others untouched.

Bodies stream (`streaming.Body`): a request is routed as soon as its head is complete and its
body follows upstream as it arrives (HTTP/2 DATA within both sides' windows, HTTP/1.1 with its
Content-Length or chunked); a response goes downstream at its headers, then its body, then
trailers (`Waypoint.relay`). Bytes are acknowledged to their sender only once written to the
other side, so a slow reader back-pressures the writer. A request body is held for retries
and mirroring only while it fits the retry buffer; a reset on either side cancels the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from control.snapshot import Service, WaypointSnapshot
from waypoint import authz as authz_mod
from waypoint import http1, http2, retry
from waypoint.balancer import Balancer
from waypoint.config import Cluster, Host, WaypointConfig, fqdn
from waypoint.outlier import OutlierDetector, OutlierSettings
from waypoint.paths import BadTarget, Target, normalize_target, valid_authority
from waypoint.pool import PoolCounters, PoolLimits
from waypoint.ratelimit import TokenBucket
from waypoint.router import (
    NO_FAULT,
    RequestView,
    apply_header_ops,
    pick_weighted,
    select_route,
)
from waypoint.router import plan as make_plan
from waypoint.stream_idle import StreamIdle
from waypoint.streaming import HIGH_WATER_BYTES, RETRY_BUFFER_BYTES, Body
from waypoint.telemetry import TRACE_HEADERS, Metrics, Tracing

CONNECT_TIMEOUT_S = 5.0
HEADER_TIMEOUT_S = 15.0       # a client has this long to finish a request it started
IDLE_TIMEOUT_S = 300.0        # keep-alive connections idle this long are closed
STREAM_IDLE_TIMEOUT_S = 300.0  # a stream with no byte either way this long ends (Envoy's)
DROP_REQUEST_HEADERS = http1.HOP_BY_HOP | TRACE_HEADERS | {":method", ":path", ":scheme",
                                                            ":authority"}


class Overflow(Exception):
    def __init__(self, limit: str) -> None:
        super().__init__(limit)
        self.limit = limit


class UpstreamFailure(Exception):
    def __init__(self, outcome: str, detail: str = "", *, fresh: bool = True) -> None:
        super().__init__(f"{outcome}: {detail}")
        self.outcome = outcome
        self.fresh = fresh  # False: a reused keep-alive connection broke before any byte


@dataclass(slots=True)
class Incoming:
    method: str
    target: str
    authority: str
    headers: list[tuple[str, str]]
    body: bytes
    principal: str | None = None       # Istio form: cluster.local/ns/x/sa/y
    source_ip: str | None = None
    protocol: str = "http"             # "http", "http2" or "grpc" (metrics)
    service_target: tuple[str, int] | None = None  # (service uid, port) a tunnel named
    stream: Body | None = None         # the body, when it was still arriving (streaming)
    resume: object = None              # the fast lane's first try (`fastlane.plans.Resume`)


@dataclass(slots=True)
class Outgoing:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    flags: str = "-"
    trailers: list[tuple[str, str]] | None = None
    stream: Body | None = None         # a body still arriving from upstream: `Waypoint.relay`
    deadline: Deadline | None = None   # the route timeout, still running while it streams
    cleanup: list | None = None        # callables run with the final flags when it is over
    finish: tuple | None = None        # what `relay` needs to record metrics and the span
    idle: StreamIdle | None = None     # the stream idle timeout, still watching while it streams


async def wait_for_more(body: Body) -> None:
    """Until the body changes (a piece, its end, or its failure)."""
    fut = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    body.waiters.append(wake)
    try:
        await fut
    finally:
        with contextlib.suppress(ValueError):
            body.waiters.remove(wake)


# --- node tunnels ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TunnelHop:
    """How to reach one endpoint through its node's tunnel (mTLS to node_ip:15008)."""

    node_ip: str
    port: int
    sni: str
    expected_identity: str
    context: ssl.SSLContext
    source_ip: str
    source_port: int


class Tunnels:
    """The waypoint's side of the node tunnels' wire protocol (docs/tunnel.md).

    Inbound, the listener expects each connection to start with the tunnel header naming the
    Service address the client called (`accept_header`). Outbound, endpoints of enrolled
    workloads are reached through their node's tunnel with the waypoint's own SVID
    (`client_context`), the SNI asking for the workload's identity, and a header naming the
    endpoint. Endpoints of workloads outside the mesh are reached directly.
    """

    def __init__(self, *, client_context: ssl.SSLContext, source_ip: str,
                 port: int = 15008) -> None:
        self.client_context = client_context
        self.source_ip = source_ip
        self.port = port
        self.waypoint: Waypoint | None = None

    def hop(self, host: Host) -> TunnelHop | None:
        from node_agent.ztunnel import wire

        wl = self.waypoint.config.workload(host.workload) if self.waypoint else None
        if wl is None or not wl.enrolled or not wl.node_ip:
            return None
        return TunnelHop(wl.node_ip, self.port, wire.sni_for(wl.identity), wl.identity,
                         self.client_context, self.source_ip, 15008)

    def target_service(self, ip: str, port: int) -> tuple[str, int] | None:
        cfg = self.waypoint.config if self.waypoint else None
        if cfg is None:
            return None
        for svc in cfg.snapshot.services.values():
            if svc.vip == ip and any(p.port == port for p in svc.ports):
                return svc.uid, port
        return None


def peer_identity(transport) -> str | None:
    """The one SPIFFE URI SAN of a TLS peer's certificate, or None."""
    sslobj = transport.get_extra_info("ssl_object")
    if sslobj is None:
        return None
    der = sslobj.getpeercert(binary_form=True)
    if not der:
        return None
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = [u for u in sans.get_values_for_type(x509.UniformResourceIdentifier)
            if u.startswith("spiffe://")]
    return uris[0] if len(uris) == 1 else None


# --- upstream ---------------------------------------------------------------------------------


class UpstreamConn(asyncio.Protocol):
    __slots__ = ("state", "host", "transport", "reader", "future", "closed", "served",
                 "tunnel", "ready", "_reply", "write_paused", "drainers", "read_paused", "loop")

    def __init__(self, state: ClusterState, host: Host, tunnel: TunnelHop | None = None
                 ) -> None:
        self.state = state
        self.host = host
        self.transport: asyncio.Transport | None = None
        self.reader: http1.ResponseReader | None = None
        self.future: asyncio.Future | None = None
        self.closed = False
        self.served = 0
        self.tunnel = tunnel
        self.ready: asyncio.Future | None = None
        self._reply = None
        self.write_paused = False
        self.read_paused = False
        self.drainers: list[asyncio.Future] = []

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_drainers()

    def _wake_drainers(self) -> None:
        drainers, self.drainers = self.drainers, []
        for f in drainers:
            if not f.done():
                f.set_result(None)

    async def drain(self) -> None:
        """Until the transport's write buffer is below its high-water mark (or it closed)."""
        if self.write_paused and not self.closed:
            fut = asyncio.get_running_loop().create_future()
            self.drainers.append(fut)
            await fut
        if self.closed:
            raise UpstreamFailure(retry.RESET, "upstream connection closed")

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        # Kept: in CPython 3.11 every asyncio.get_running_loop() is a getpid() system call.
        self.loop = asyncio.get_running_loop()
        if self.tunnel is None:
            return
        # Through the destination's node tunnel: check who answered, send the header, and
        # wait for its reply before any HTTP byte (docs/tunnel.md, "The wire protocol").
        from node_agent.ztunnel import wire

        self.ready = asyncio.get_running_loop().create_future()
        peer = peer_identity(transport)
        if peer != self.tunnel.expected_identity:
            self.ready.set_exception(UpstreamFailure(
                retry.CONNECT_FAILURE, f"node tunnel presented {peer}, expected "
                f"{self.tunnel.expected_identity}"))
            transport.abort()
            return
        self._reply = wire.ReplyReader()
        # The source is this connection's own address (unique per connection), as a node
        # tunnel's would be for a pod: the waypoint's IP and the local port of this socket.
        local = transport.get_extra_info("sockname")
        port = local[1] if local else self.tunnel.source_port
        transport.write(wire.encode_header(wire.TunnelHeader(
            wire.Address(self.host.ip, self.host.port),
            wire.Address(self.tunnel.source_ip, port))))

    def _tunnel_reply(self, data: bytes) -> None:
        from node_agent.ztunnel import wire

        try:
            got = self._reply.feed(data)
        except wire.ProtocolError as e:
            self.ready.set_exception(UpstreamFailure(retry.CONNECT_FAILURE, str(e)))
            self.abort()
            return
        if got is None:
            return
        status, reason, rest = got
        self._reply = None
        if status != wire.OK:
            self.ready.set_exception(UpstreamFailure(
                retry.CONNECT_FAILURE, f"node tunnel refused: {wire.STATUS_NAMES.get(status)} "
                f"{reason}"))
            self.abort()
            return
        self.ready.set_result(None)
        self.tunnel_ready()
        if rest:
            self.close()  # the pod spoke before it was asked: out of step

    def tunnel_ready(self) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        if self._reply is not None:
            self._tunnel_reply(data)
            return
        reader, fut = self.reader, self.future
        if reader is not None and reader.stream is not None and not reader.done:
            self._stream_data(reader, data)  # the body of a response already forwarded
            return
        if reader is None or fut is None or fut.done():
            self.close()  # bytes nobody asked for: this connection is out of step
            return
        try:
            reader.feed(data)
        except http1.ProtocolError as e:
            fut.set_exception(UpstreamFailure(retry.RESET, e.kind))
            self.close()
            return
        if reader.done:
            fut.set_result(reader.response())
        elif reader.head_complete:
            # Status and headers are in, the body is still coming: forward them now.
            resp = reader.start_stream()
            resp.stream.on_consumed = self._consumed
            fut.set_result(resp)

    def _stream_data(self, reader: http1.ResponseReader, data: bytes) -> None:
        body = reader.stream
        try:
            reader.feed(data)
        except http1.ProtocolError as e:
            body.fail(e.kind)
            self.abort()
            return
        if not reader.done and body.unconsumed > HIGH_WATER_BYTES and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def _consumed(self, _n: int) -> None:
        reader = self.reader
        if self.read_paused and not self.closed and (
                reader is None or reader.stream is None
                or reader.stream.unconsumed <= HIGH_WATER_BYTES // 2):
            self.read_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    def connection_lost(self, exc) -> None:
        if not self.closed:
            self.closed = True
        self._wake_drainers()
        if self.reader is not None and self.reader.stream is not None and not self.reader.done:
            self.reader.feed_eof()     # ends a close-delimited body, else fails it
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(UpstreamFailure(retry.CONNECT_FAILURE,
                                                     "node tunnel closed the connection"))
        fut, reader = self.future, self.reader
        if fut is not None and not fut.done():
            if reader is not None and reader.feed_eof():
                fut.set_result(reader.response())
            else:
                started = reader is not None and reader.started
                fut.set_exception(UpstreamFailure(
                    retry.RESET, "upstream connection closed before a full response",
                    fresh=self.served == 0 or started))
        self.state.connection_closed(self)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    async def exchange(self, payload: bytes, *, head_only: bool,
                       body: Body | None = None) -> http1.Response:
        """Send a request (`payload`; with `body`, only its head — the body follows as it
        arrives) and wait for the response: whole, or with its body streaming in."""
        reader = self.reader
        if reader is None or head_only or reader.head_only or not reader.done:
            self.reader = http1.ResponseReader(head_only=head_only)
        else:
            reader.reset()
        loop = self.loop
        self.future = fut = loop.create_future()
        self.transport.write(payload)  # type: ignore[union-attr]
        pump = loop.create_task(self._send_body(body)) if body is not None else None
        try:
            resp = await fut
        except BaseException:
            if pump is not None:
                pump.cancel()
            raise
        finally:
            self.future = None
            self.served += 1
        if pump is not None and not pump.done():
            # Answered before the request body was all sent: the connection cannot be
            # reused; stop sending when the answer is over (or now, if it is whole).
            resp.keep_alive = False
            if resp.stream is None:
                pump.cancel()
            else:
                resp.stream.when_done(lambda _ok: pump.cancel())
        return resp

    async def _send_body(self, body: Body) -> None:
        """Copy a request body upstream as it arrives (chunked when its length is unknown),
        acknowledging each piece downstream only once it is written here."""
        chunked = body.length is None
        pos = 0
        write = self.transport.write  # type: ignore[union-attr]
        try:
            while True:
                chunks, new = body.read(pos)
                if chunks:
                    for c in chunks:
                        write(http1.chunk(c) if chunked else c)
                    pos = new
                    await self.drain()
                    body.consumed(pos)
                elif body.ended:
                    if chunked:
                        write(http1.last_chunk(body.trailers))
                    return
                elif body.error is not None:
                    self.abort()         # the client went away mid-body: so does this request
                    return
                else:
                    await wait_for_more(body)
        except UpstreamFailure:
            return


class UpstreamH2Conn(UpstreamConn):
    """One HTTP/2 connection to an endpoint (gRPC): each request is a stream on it."""

    __slots__ = ("h2", "waiting", "window_waiters")

    def __init__(self, state: ClusterState, host: Host, tunnel: TunnelHop | None = None
                 ) -> None:
        super().__init__(state, host, tunnel)
        self.h2 = http2.H2Client()
        self.waiting: dict[int, asyncio.Future] = {}
        self.window_waiters: list[asyncio.Future] = []

    def _write(self) -> None:
        out = self.h2.data_to_send()
        if out and not self.closed:
            self.transport.write(out)  # type: ignore[union-attr]

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.tunnel is None:
            transport.write(self.h2.data_to_send())

    def tunnel_ready(self) -> None:
        self.transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        if self._reply is not None:
            self._tunnel_reply(data)
            return
        for ev in self.h2.feed(data):
            if isinstance(ev, int):
                fut = self.waiting.pop(ev, None)
                if fut is not None and not fut.done():
                    fut.set_exception(UpstreamFailure(retry.RESET, "stream reset by upstream"))
            else:
                fut = self.waiting.pop(ev.stream_id, None)
                if fut is not None and not fut.done():
                    if ev.stream is not None:
                        ack = ev.stream.on_consumed

                        def consumed(n: int, ack=ack) -> None:
                            ack(n)
                            self._write()
                        ev.stream.on_consumed = consumed
                    fut.set_result(http1.Response(ev.status, ev.headers, ev.body, True,
                                                  ev.trailers, ev.stream))
                elif ev.stream is not None:
                    self.h2.cancel(ev.stream_id)   # nobody waits for it any more
        out = self.h2.data_to_send()
        if out:
            self.transport.write(out)
        self._wake_windows()
        if self.h2.closed:
            self.close()

    def _wake_windows(self) -> None:
        waiters, self.window_waiters = self.window_waiters, []
        for f in waiters:
            if not f.done():
                f.set_result(None)

    def connection_lost(self, exc) -> None:
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(UpstreamFailure(retry.RESET, "upstream connection closed"))
        self.waiting.clear()
        self.h2.fail_all("closed")
        self._wake_windows()
        super().connection_lost(exc)

    async def _send_stream_body(self, sid: int, body: Body) -> None:
        """Copy a request body onto its stream as it arrives, within the upstream's flow
        control windows; a piece is acknowledged downstream once it is written here."""
        loop = asyncio.get_running_loop()
        pos = 0
        h2c = self.h2
        while not self.closed:
            chunks, new = body.read(pos)
            if chunks:
                for c in chunks:
                    h2c.send(sid, c)
                self._write()
                pos = new
                while (h2c.unsent(sid) or 0) > 0 and not self.closed:
                    fut = loop.create_future()
                    self.window_waiters.append(fut)
                    await fut
                if h2c.unsent(sid) is None and not body.finished:
                    return               # the stream is gone (reset, or answered and over)
                body.consumed(pos)
            elif body.ended:
                h2c.end(sid, body.trailers)
                self._write()
                return
            elif body.error is not None:
                h2c.cancel(sid)          # the client cancelled: so does this stream
                self._write()
                return
            else:
                await wait_for_more(body)

    async def exchange_h2(self, request: tuple[list, bytes],
                          stream: Body | None = None) -> http1.Response:
        """One request as a stream; with `stream`, its body follows as it arrives (and may
        still be flowing while the response streams back: bidirectional gRPC)."""
        if self.closed:
            raise UpstreamFailure(retry.RESET, "upstream connection closed", fresh=False)
        headers, body = request
        sid = self.h2.request(headers, body, end=stream is None)
        loop = asyncio.get_running_loop()
        fut = self.waiting[sid] = loop.create_future()
        self.transport.write(self.h2.data_to_send())  # type: ignore[union-attr]
        pump = loop.create_task(self._send_stream_body(sid, stream)) if stream is not None else None
        try:
            resp = await fut
        except BaseException as e:
            if pump is not None:
                pump.cancel()
            if isinstance(e, asyncio.CancelledError) or pump is not None:
                self.waiting.pop(sid, None)
                self.h2.cancel(sid)
                self._write()
            raise
        finally:
            self.served += 1
        if resp.stream is not None:
            def over(ok: bool) -> None:
                if pump is not None and not pump.done():
                    pump.cancel()
                if not ok:
                    self.h2.cancel(sid)    # RST_STREAM: the other side's cancel, passed on
                    self._write()
            resp.stream.when_done(over)
        elif pump is not None and not pump.done():
            pump.cancel()                  # answered whole before the request ended
            self.h2.cancel(sid)
            self._write()
        return resp


class ClusterState:
    """Live state of one cluster: balancer, outlier detector, pool limits and connections."""

    def __init__(self, cluster: Cluster, *, rng: random.Random, now: float,
                 metrics: Metrics, tunnels: Tunnels | None = None) -> None:
        self.metrics = metrics
        self.tunnels = tunnels
        self.cluster = cluster
        self.idle: dict[str, list[UpstreamConn]] = {}
        self.h2conns: dict[str, UpstreamH2Conn] = {}
        self.h2connecting: dict[str, asyncio.Future] = {}
        self.waiters: deque[asyncio.Future] = deque()
        self.in_flight: dict[str, int] = {}
        self.rng = rng
        self.outlier: OutlierDetector | None = None
        self.lane = None     # the fast lane's side of this cluster (`fastlane.ClusterLane`)
        self._configure(cluster, now)

    def _configure(self, cluster: Cluster, now: float) -> None:
        p = cluster.policy
        self.cluster = cluster
        self.balancer = Balancer(p.load_balancer.simple if p.load_balancer else None,
                                 rng=self.rng)
        limits = PoolLimits.from_istio(p.connection_pool)
        if getattr(self, "counters", None) is None:
            self.counters = PoolCounters(limits)
        else:
            self.counters.limits = limits
        if p.outlier_detection is not None:
            settings = OutlierSettings.from_istio(p.outlier_detection)
            if self.outlier is None or self.outlier.settings != settings:
                self.outlier = OutlierDetector(settings, now=now)
        else:
            self.outlier = None
        self.addresses = [h.address for h in cluster.hosts]
        self.by_address = {h.address: h for h in cluster.hosts}
        if self.outlier is not None:
            self.outlier.set_hosts(self.addresses)
        if self.lane is not None:
            self.lane.configure()

    def update(self, cluster: Cluster, now: float) -> None:
        if cluster != self.cluster:
            self._configure(cluster, now)

    def pick(self, now: float, avoid: list[str]) -> Host | None:
        candidates = self.addresses
        od = self.outlier
        if od is not None:
            seen, sweep = len(od.events), od.next_sweep
            candidates = od.usable(candidates, now)
            if self.lane is not None and (len(od.events) != seen or od.next_sweep != sweep):
                self.lane.sync()      # the sweep ran: a host may have returned
        address = self.balancer.pick(candidates, lambda a: self.in_flight.get(a, 0), avoid=avoid)
        return None if address is None else self.by_address[address]

    def record(self, host: Host, outcome: int | str, now: float) -> None:
        if self.outlier is not None:
            od = self.outlier
            before, sweep = len(od.events), od.next_sweep
            od.record(host.address, outcome, now)
            for kind, _ in od.events[before:]:
                if kind == "eject":
                    self.metrics.ejections.labels(self.cluster.name).inc()
            if self.lane is not None:   # what the lane reads of the detector: kept current
                if len(od.events) != before or od.next_sweep != sweep:
                    self.lane.sync()
                else:
                    self.lane.note(host.address)
            del od.events[:-100]

    # --- connections --------------------------------------------------------------------
    def idle_connection(self, host: Host) -> UpstreamConn | None:
        """A pooled keep-alive connection to `host` that is still open, if there is one
        (no coroutine: the common case of `acquire`)."""
        idle = self.idle.get(host.address)
        while idle:
            conn = idle.pop()
            if not conn.closed and not conn.transport.is_closing():  # type: ignore[union-attr]
                return conn
        return self._from_lane(host) if self.lane is not None else None

    def _from_lane(self, host: Host) -> UpstreamConn | None:
        """An idle fast-lane connection to `host`, moved to the Python path (one pool of
        connection slots for both)."""
        got = self.lane.take_idle(host.address)
        if got is None:
            return None
        transport, served = got
        conn = UpstreamConn(self, host)
        conn.connection_made(transport)
        conn.served = served
        transport.set_protocol(conn)
        return conn

    async def acquire(self, host: Host) -> UpstreamConn:
        loop = asyncio.get_running_loop()
        counters = self.counters
        while True:
            idle = self.idle.get(host.address)
            while idle:
                conn = idle.pop()
                if not conn.closed and not conn.transport.is_closing():  # type: ignore[union-attr]
                    return conn
            if self.lane is not None:
                conn = self._from_lane(host)
                if conn is not None:
                    return conn
            if counters.connections < counters.limits.max_connections:
                counters.connections += 1
                try:
                    async with asyncio.timeout(CONNECT_TIMEOUT_S):
                        conn = await self._connect(loop, host)
                except (OSError, TimeoutError, ssl.SSLError) as e:
                    counters.connections -= 1
                    self._wake()
                    raise UpstreamFailure(retry.CONNECT_FAILURE, str(e)) from None
                except BaseException:
                    counters.connections -= 1
                    self._wake()
                    raise
                return conn
            if self._close_an_idle_connection():
                continue
            if not counters.may_queue():
                raise Overflow("pending")
            fut = loop.create_future()
            self.waiters.append(fut)
            counters.pending += 1
            try:
                await fut
            finally:
                counters.pending -= 1
                if not fut.done():
                    fut.cancel()
                with contextlib.suppress(ValueError):
                    self.waiters.remove(fut)

    async def acquire_h2(self, host: Host) -> UpstreamH2Conn:
        """The one HTTP/2 connection to `host`, made on first use (concurrent callers share it)."""
        conn = self.h2conns.get(host.address)
        if conn is not None and not conn.closed:
            return conn
        connecting = self.h2connecting.get(host.address)
        if connecting is not None:
            return await asyncio.shield(connecting)
        loop = asyncio.get_running_loop()
        fut = self.h2connecting[host.address] = loop.create_future()
        counters = self.counters
        try:
            if not counters.may_connect():
                raise Overflow("connections")
            counters.connections += 1
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    conn = await self._connect(loop, host, UpstreamH2Conn)
            except (OSError, TimeoutError, ssl.SSLError) as e:
                counters.connections -= 1
                raise UpstreamFailure(retry.CONNECT_FAILURE, str(e)) from None
            except BaseException:
                counters.connections -= 1
                raise
            self.h2conns[host.address] = conn
            fut.set_result(conn)
            return conn
        except BaseException as e:
            if not fut.done():
                fut.set_exception(e)
                fut.exception()  # retrieved: no "never retrieved" warning
            raise
        finally:
            self.h2connecting.pop(host.address, None)

    async def _connect(self, loop, host: Host, kind: type[UpstreamConn] = UpstreamConn
                       ) -> UpstreamConn:
        hop = self.tunnels.hop(host) if self.tunnels is not None else None
        if hop is None:
            _, conn = await loop.create_connection(lambda: kind(self, host), host.ip,
                                                   host.port)
            return conn
        _, conn = await loop.create_connection(
            lambda: kind(self, host, hop), hop.node_ip, hop.port,
            ssl=hop.context, server_hostname=hop.sni)
        try:
            await conn.ready
        except BaseException:
            conn.abort()
            raise
        return conn

    def _close_an_idle_connection(self) -> bool:
        for conns in self.idle.values():
            while conns:
                conn = conns.pop()
                if not conn.closed:
                    conn.close()
                    return False  # its slot frees when it is closed; wait for that
        if self.lane is not None:
            self.lane.close_idle_one()   # (the same: a fast-lane connection's slot)
        return False

    def release(self, conn: UpstreamConn, *, reuse: bool) -> None:
        limit = self.counters.limits.max_requests_per_connection
        if reuse and not conn.closed and not (limit and conn.served >= limit):
            self.idle.setdefault(conn.host.address, []).append(conn)
            self._wake()
        else:
            conn.close()

    def connection_closed(self, conn: UpstreamConn) -> None:
        self.counters.connections -= 1
        if self.h2conns.get(conn.host.address) is conn:
            del self.h2conns[conn.host.address]
        idle = self.idle.get(conn.host.address)
        if idle and conn in idle:
            idle.remove(conn)
        self._wake()

    def _wake(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def close_all(self) -> None:
        for conns in self.idle.values():
            for c in conns:
                c.close()
        self.idle.clear()
        for c in list(self.h2conns.values()):
            c.close()
        if self.lane is not None:
            self.lane.close_all()


# --- timeouts -------------------------------------------------------------------------------


class Deadline:
    """One armed timeout: when it passes, its task is cancelled and `fired` is set."""

    __slots__ = ("when", "seq", "task", "fired")

    def __init__(self, when: float, seq: int, task: asyncio.Task) -> None:
        self.when, self.seq, self.task, self.fired = when, seq, task, False

    def __lt__(self, other: Deadline) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)



class Deadlines:
    """Route and per-try timeouts for every request, on one loop timer.

    `asyncio.timeout`/`wait_for` cost a timer (and `wait_for` a task) per request; here an
    armed deadline is a heap entry, disarming it is clearing a field, and one timer runs at
    the earliest deadline (at most every `resolution_s`). Equal route timeouts arrive in
    deadline order, so the timer is rarely moved.
    """

    def __init__(self, *, resolution_s: float = 0.001) -> None:
        self.heap: list[Deadline] = []
        self.seq = 0
        self.handle: asyncio.TimerHandle | None = None
        self.armed_at = float("inf")
        self.resolution_s = resolution_s
        self.dead = 0        # disarmed entries still in the heap
        self.loop: asyncio.AbstractEventLoop | None = None   # the loop the timer runs on

    def disarm(self, d: Deadline) -> None:
        if d.task is None:
            return
        d.task = None
        self.dead += 1
        # Keep memory proportional to live deadlines, not to rate × timeout.
        if self.dead > 4096 and self.dead * 2 > len(self.heap):
            self.heap = [x for x in self.heap if x.task is not None]
            heapq.heapify(self.heap)
            self.dead = 0

    def arm(self, delay_s: float, task=None) -> Deadline:
        """Cancel `task` (default: the current one) in `delay_s`, unless disarmed first."""
        loop = self.loop
        if loop is None or loop.is_closed():
            # (Looked up once: in CPython 3.11 each lookup is a getpid() system call.)
            loop = self.loop = asyncio.get_running_loop()
        self.seq += 1
        d = Deadline(loop.time() + delay_s, self.seq, task or asyncio.current_task(loop))
        heapq.heappush(self.heap, d)
        if d.when < self.armed_at:
            self._schedule(loop, d.when)
        return d

    def _schedule(self, loop, when: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.armed_at = when
        self.handle = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self.handle = None
        self.armed_at = float("inf")
        loop = self.loop
        now = loop.time()
        heap = self.heap
        while heap and heap[0].when <= now:
            d = heapq.heappop(heap)
            if d.task is not None:
                d.fired = True
                d.task.cancel()
                d.task = None
            else:
                self.dead -= 1
        while heap and heap[0].task is None:   # drop disarmed ones at the front
            heapq.heappop(heap)
            self.dead -= 1
        if heap:
            self._schedule(loop, max(heap[0].when, now + self.resolution_s))

    def expired(self, d: Deadline) -> bool:
        """After a CancelledError: was it this deadline? (Then the cancel is ours; undo it.)"""
        if d.fired:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return True
        return False


# --- the request pipeline -------------------------------------------------------------------

def _route_inputs(routes) -> tuple[tuple[str, ...], bool]:
    """What route matching reads besides method and path: the header names, and whether
    any match looks at query parameters."""
    names: dict[str, None] = {}
    by_query = False
    for route in routes:
        for m in route.match:
            for name in m.headers:
                names[name.lower()] = None
            by_query = by_query or bool(m.query_params)
    return tuple(names), by_query


_REASON_BODY = {
    "NR": b"route not found", "UH": b"no healthy upstream", "UO": b"upstream overflow",
    "UF": b"upstream connect error or disconnect/reset before headers. reset reason: "
          b"connection failure",
    "UC": b"upstream connect error or disconnect/reset before headers. reset reason: "
          b"connection termination",
    "UT": b"upstream request timeout", "FI": b"fault filter abort",
    "RL": b"local_rate_limited", "RBAC": authz_mod.DENY_BODY,
}


def h2_request(method: str, uri: str, authority: str, headers: list[tuple[str, str]],
               body: bytes, te_trailers: bool) -> tuple[list[tuple[str, str]], bytes]:
    hs = [(":method", method), (":scheme", "http"), (":path", uri), (":authority", authority)]
    hs += headers
    if te_trailers:
        hs.append(("te", "trailers"))  # gRPC needs it; hop-by-hop otherwise
    return hs, body


# Envoy's mapping for local replies to gRPC clients: HTTP status → grpc-status.
GRPC_STATUS = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}


def grpc_local_reply(out: Outgoing) -> Outgoing:
    code = GRPC_STATUS.get(out.status, 2)
    message = out.body.decode("utf-8", "replace")
    return Outgoing(200, [("content-type", "application/grpc"), ("grpc-status", str(code)),
                          ("grpc-message", message)], b"", out.flags)


class Waypoint:
    def __init__(self, snapshot: WaypointSnapshot, *, default_service: str | None = None,
                 metrics: Metrics | None = None, tracing: Tracing | None = None,
                 rng: random.Random | None = None, clock=time.monotonic,
                 tunnels: Tunnels | None = None) -> None:
        self.tunnels = tunnels
        if tunnels is not None:
            tunnels.waypoint = self
        self.metrics = metrics or Metrics()
        self.tracing = tracing or Tracing(service_name=f"waypoint.{snapshot.waypoint.namespace}")
        self.rng = rng or random.Random()
        self.clock = clock
        self.default_service = default_service
        self.clusters: dict[tuple[str, int, str], ClusterState] = {}
        self.buckets: dict[tuple[str, str], TokenBucket] = {}
        self._retry_cache: dict[int, retry.RetryPolicy] = {}
        self._tasks: set[asyncio.Task] = set()
        self._targets: dict[str, Target] = {}   # raw request target → normalized
        self.deadlines = Deadlines()
        self.lane_glue = None    # `fastlane.plans.Glue`, when a server runs the fast lane
        self.update(snapshot)

    def update(self, snapshot: WaypointSnapshot) -> None:
        """Apply a new snapshot atomically; cluster state (ejections, connections) survives."""
        self.config = WaypointConfig.compile(snapshot, default_service=self.default_service)
        self._authorities: dict[str, tuple[Service | None, int]] = {}  # → (service, port)
        self._service_info: dict[int, tuple] = {}      # id(service) → `_describe_service`
        self._labels: dict[tuple, tuple[tuple[str, ...], object]] = {}   # → (labels, series)
        self._decisions: dict[tuple, tuple] = {}
        self._sources: dict[str, tuple[str, str, str, str]] = {}
        for wl in snapshot.workloads.values():
            self._sources.setdefault(
                authz_mod.principal_of(wl.identity) or "",
                (wl.labels.get("app", wl.name), wl.namespace, wl.labels.get("app", ""),
                 wl.labels.get("version", "")))
        now = self.clock()
        for key, state in list(self.clusters.items()):
            svc = snapshot.services.get(key[0])
            cluster = self.config.cluster(svc, key[1], key[2]) if svc else None
            if cluster is None:
                state.close_all()
                del self.clusters[key]
            else:
                state.update(cluster, now)
        live = {(p.namespace, p.name) for p in snapshot.rate_limit_policies}
        for key in list(self.buckets):
            if tuple(key[0].split("/", 1)) not in live:
                del self.buckets[key]
        if self.lane_glue is not None:
            self.lane_glue.clear()      # the fast lane's cached plans go with the snapshot

    certificate = None   # the SVID's facts for the admin view (`renewal.attach` sets it)

    def not_ready(self) -> str | None:
        """Why `/healthz/ready` should fail, or None: a waypoint whose SVID has expired (and
        could not be renewed) refuses every node tunnel's handshake."""
        cert = self.certificate() if self.certificate is not None else None
        if cert is not None and cert.get("state") != "valid":
            return (f"the waypoint's certificate is {cert.get('state')}"
                    f" (last renewal error: {cert.get('last_error')})")
        return None
    stream_idle_timeout_s = 0.0   # set by `WaypointServer` (Envoy's stream_idle_timeout)

    def describe(self) -> dict:
        """What this waypoint serves now (the admin view, `/debug/snapshot`)."""
        snap = self.config.snapshot
        return {
            "version": snap.version,
            "certificate": self.certificate() if self.certificate is not None else None,
            "waypoint": {"namespace": snap.waypoint.namespace, "name": snap.waypoint.name,
                         "identity": snap.waypoint.identity},
            "services": {uid: {"vip": s.vip, "ports": [p.port for p in s.ports],
                               "endpoints": [e.workload for e in s.endpoints],
                               "routes": len(self.config.routes.get(uid, ()))}
                         for uid, s in sorted(snap.services.items())},
            "virtualServices": [f"{r.namespace}/{r.name}" for r in snap.virtual_services],
            "destinationRules": [f"{r.namespace}/{r.name}" for r in snap.destination_rules],
            "authorizationPolicies": [f"{r.namespace}/{r.name}"
                                      for r in snap.authorization_policies],
            "rateLimitPolicies": [f"{r.namespace}/{r.name}" for r in snap.rate_limit_policies],
            "clusters": {st.cluster.name: {
                "hosts": [h.address for h in st.cluster.hosts],
                "ejected": [a for a in st.addresses if st.outlier and st.outlier.ejected(a)],
                "connections": st.counters.connections, "requests": st.counters.requests,
                "overflows": dict(st.counters.overflows)} for st in self.clusters.values()},
            "fastLane": (self.lane_glue.describe() if self.lane_glue is not None else None),
        }

    def state_for(self, cluster: Cluster) -> ClusterState:
        st = self.clusters.get(cluster.key)
        if st is None:
            st = self.clusters[cluster.key] = ClusterState(
                cluster, rng=self.rng, now=self.clock(), metrics=self.metrics,
                tunnels=self.tunnels)
        elif st.cluster is not cluster:
            st.update(cluster, self.clock())
        return st

    def close(self) -> None:
        for st in self.clusters.values():
            st.close_all()
        for t in list(self._tasks):
            t.cancel()

    # -------------------------------------------------------------------------------------
    async def handle(self, rq: Incoming) -> Outgoing:
        resume = rq.resume   # (the fast lane began this request: its start and span)
        start = self.clock() if resume is None else resume.start
        headers = dict(rq.headers)
        if len(headers) != len(rq.headers):   # a repeated field: its values, comma-joined
            headers = {}
            for n, v in rq.headers:
                headers[n] = f"{headers[n]}, {v}" if n in headers else v
        span = self.tracing.start(f"{rq.method} {rq.authority}", headers) if (
            resume is None or resume.span is None) else resume.span
        svc: Service | None = None
        host: Host | None = None
        idle = StreamIdle(self.deadlines, self.stream_idle_timeout_s, None, rq.stream).start() \
            if self.stream_idle_timeout_s else None
        try:
            svc, host, out = await self._pipeline(rq, headers, span, start)
        except Exception as e:  # a bug must cost one request, never the connection
            out = Outgoing(500, [("content-type", "text/plain")],
                           f"waypoint error: {type(e).__name__}".encode(), "-")
        except asyncio.CancelledError:
            if idle is None or not idle.fired:
                if idle is not None:
                    idle.stop()
                raise
            idle.task.uncancel()       # no byte either way for the stream idle timeout
            out = self._local(408, "SI", body=b"stream timeout")
        if idle is not None:
            if out.stream is not None:
                out.idle, idle.response = idle, out.stream    # `relay` watches on
            else:
                idle.stop()
        if rq.protocol == "grpc" and out.status != 200 and (out.flags != "-" or host is None):
            out = grpc_local_reply(out)
        span.set_attribute("http.response.status_code", out.status)
        if out.stream is not None:      # metrics and span when the stream is over (`relay`)
            out.finish = (rq, svc, host, span, start)
            return out
        span.end()
        self._observe(rq, svc, host, out, start)
        return out

    async def relay(self, out: Outgoing, sink) -> bool:
        """Forward a streamed response body downstream as it arrives, then its trailers.

        `sink` is the downstream side: `start(status, headers, length) -> bool`,
        `await data(bytes)` (returns once the bytes are written there, so a slow client
        back-pressures the upstream), `end(trailers)`, `reset()`. The route timeout still
        runs (Envoy's: it covers the whole stream); when it fires, or the upstream resets,
        the downstream stream is reset (headers are gone: no 504 any more). When the client
        goes away the upstream stream is cancelled. Metrics and the span are recorded at the
        end, with the bytes that went through. True when the response was complete."""
        body = out.stream
        pos = sent = 0
        ok = False
        try:
            if sink.start(out.status, out.headers, body.length):
                while True:
                    chunks, new = body.read(pos)
                    if chunks:
                        for c in chunks:
                            await sink.data(c)
                            sent += len(c)
                        pos = new
                        body.consumed(pos)
                    elif body.ended:
                        out.trailers = body.trailers
                        sink.end(body.trailers)
                        ok = True
                        break
                    elif body.error is not None:
                        out.flags = "UR"       # upstream reset mid-stream
                        sink.reset()
                        break
                    else:
                        await wait_for_more(body)
            else:
                out.flags = "DC"
        except asyncio.CancelledError:
            if out.deadline is not None and self.deadlines.expired(out.deadline):
                out.flags = "UT"
                sink.reset()
            elif out.idle is not None and out.idle.fired:
                out.idle.task.uncancel()   # no byte either way for the stream idle timeout
                out.flags = "SI"
                sink.reset()
            else:
                out.flags = "DC"           # the client went away (or reset its stream)
                raise
        except (ConnectionError, UpstreamFailure):
            out.flags = "DC"
            sink.reset()
        finally:
            if not body.finished:
                body.fail("cancelled")    # cancels the upstream stream / connection
            if out.deadline is not None:
                self.deadlines.disarm(out.deadline)
            if out.idle is not None:
                out.idle.stop()
            for cb in out.cleanup or ():
                cb(out.flags)
            if out.finish is not None:
                rq, svc, host, span, start = out.finish
                out.finish = None
                span.end()
                self._observe(rq, svc, host, out, start, resp_bytes=sent)
        return ok

    def _local(self, status: int, flags: str, extra: list[tuple[str, str]] | None = None,
               body: bytes | None = None) -> Outgoing:
        b = _REASON_BODY.get(flags, b"") if body is None else body
        return Outgoing(status, [("content-type", "text/plain")] + (extra or []), b, flags)

    async def _pipeline(self, rq: Incoming, headers: dict, span, start: float):
        cfg = self.config
        target = self._targets.get(rq.target)
        if target is None:
            try:
                target = normalize_target(rq.target)
            except BadTarget as e:
                return None, None, self._local(400, "-", body=f"bad request: {e}".encode())
            if len(self._targets) >= 10000:
                self._targets.clear()
            self._targets[rq.target] = target
        if rq.authority not in self._authorities and not valid_authority(rq.authority):
            return None, None, self._local(400, "-", body=b"bad request: invalid host")
        if rq.service_target is not None:   # the node tunnel said which Service was called
            svc = cfg.snapshot.services.get(rq.service_target[0])
            port = rq.service_target[1]
        else:
            found = self._authorities.get(rq.authority)
            if found is None:
                svc = cfg.service_for(rq.authority)
                found = (svc, self._find_service_port(svc, rq.authority) if svc is not None else 0)
                if len(self._authorities) >= 10000:
                    self._authorities.clear()
                self._authorities[rq.authority] = found
            svc, port = found
        if svc is None:
            return None, None, self._local(404, "NR", body=b"no service for this host")
        # What the request path needs to know of its Service, looked up once per snapshot.
        info = self._service_info.get(id(svc))
        if info is None or info[0] is not svc:
            info = self._service_info[id(svc)] = self._describe_service(svc)
        _, uid, policies, ratelimits, routes, inputs = info
        attrs = None
        if policies:
            attrs = authz_mod.RequestAttributes(rq.method, rq.authority, target.path, port,
                                                rq.principal, rq.source_ip, headers)
            if not authz_mod.evaluate(policies, attrs).allowed:
                return svc, None, self._local(403, "RBAC")
        rl_headers: list[tuple[str, str]] = []
        for policy in ratelimits:
            key = (f"{policy.namespace}/{policy.name}", uid)
            bucket = self.buckets.get(key)
            if bucket is None:
                bucket = self.buckets[key] = TokenBucket.for_policy(policy, now=start)
            verdict = bucket.take(start)
            if policy.spec.remaining_tokens_header:
                rl_headers.append((policy.spec.remaining_tokens_header.lower(),
                                   str(verdict.remaining)))
            if not verdict.allowed:
                self.metrics.ratelimited.labels(key[0]).inc()
                return svc, None, self._local(policy.spec.status, "RL", rl_headers)
        namespace = svc.namespace
        drawn = None
        if rq.resume is not None:       # the fast lane drew this request's destination
            drawn = rq.resume.drawn
            if rq.resume.host is None:
                rq.resume = None        # ... and made no try: `_forward` starts afresh
        if routes is None:
            decided = self._direct_decision(svc, port, target)
        else:
            decided = self._route_decision(uid, port, routes, inputs, rq.method,
                                           rq.authority, target, headers, drawn=drawn)
            if isinstance(decided, Outgoing):
                return svc, None, decided
        (namespace, dest_svc, dest_port, subset, path, authority, req_ops, resp_ops,
         timeout_s, policy, mirror, fault, cluster) = decided
        authority = authority or rq.authority
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault.abort_status is not None:
            return svc, None, self._local(fault.abort_status, "FI")
        if cluster is None or not cluster.hosts:
            return svc, None, self._local(503, "UH")
        state = self.state_for(cluster)
        # The upstream request.
        out_headers = [(n, v) for n, v in rq.headers if n not in DROP_REQUEST_HEADERS]
        for ops in req_ops:
            apply_header_ops(out_headers, ops)
        if "x-request-id" not in headers:
            rid = rq.resume.request_id if rq.resume is not None else None
            out_headers.append(("x-request-id", rid or self.tracing.request_id()))
        out_headers.append(("x-forwarded-proto", "https" if rq.principal else "http"))
        out_headers += Tracing.propagation_headers(span, headers)
        uri = f"{path}?{target.query}" if target.query else path
        if mirror is not None:
            self._start_mirror(mirror, namespace, dest_port, rq.method, uri, authority,
                               out_headers, rq.body, rq.stream)
        host, out = await self._forward(state, policy, timeout_s, rq, uri, authority,
                                        out_headers, attrs, target.path, port, headers)
        for ops in resp_ops:
            apply_header_ops(out.headers, ops)
        out.headers += rl_headers
        return svc, host, out

    def _route_decision(self, uid: str, port: int, routes, inputs, method: str,
                        authority: str, target: Target, headers: dict, *, drawn=None
                        ) -> tuple | Outgoing:
        """Route, plan and destination for a request of a Service with routes (the Python
        pipeline), or an `Outgoing` local answer (404 NR, 503 UH). `drawn`: the (route, destination) the fast lane drew for this
        request before handing it back (`fastlane.plans.Resume.drawn`): taken instead of
        drawing again when that route is still the one selected.

        A route decision that draws no random number (one destination, no fault, no
        mirror) depends only on what the matches read: it is cached per those inputs."""
        names, by_query = inputs
        rkey = (uid, port, method, target.path, target.query if by_query else None,
                tuple(map(headers.get, names)) if names else ())
        decided = self._decisions.get(rkey)
        if decided is not None:
            return decided
        selected = self._select_route(routes, method, authority, target, headers)
        if selected is None:
            return self._local(404, "NR")
        route, match, view = selected
        dest = drawn[1] if drawn is not None and drawn[0] is route else \
            pick_weighted(route, self.rng)
        decided = self._destination_decision(uid, port, route, match, view, dest)
        if isinstance(decided, Outgoing):
            return decided
        if len(route.route) == 1 and route.fault is None and route.mirror is None:
            if len(self._decisions) >= 10000:      # nothing drawn: the same for these inputs
                self._decisions.clear()
            self._decisions[rkey] = decided
        return decided

    def _direct_decision(self, svc: Service, port: int, target: Target) -> tuple:
        """The decision for a Service without routes, shaped as `_destination_decision`'s:
        the Service itself, no rewrite, no header operations, Istio's default retries."""
        return (svc.namespace, svc, port, "", target.path, None, (), (), None,
                retry.ISTIO_DEFAULT, None, NO_FAULT, self.config.cluster(svc, port, ""))

    @staticmethod
    def _select_route(routes, method: str, authority: str, target: Target, headers: dict):
        """(route, match, view) of the first route that matches, or None."""
        view = RequestView(method, authority, target.path, target.query, headers)
        selected = select_route(routes, view)
        return None if selected is None else (selected[0], selected[1], view)

    def _destination_decision(self, uid: str, port: int, route, match, view: RequestView,
                              dest) -> tuple | Outgoing:
        """One destination of a selected route (`dest`, an HTTPRouteDestination, already
        drawn): its Service, port, subset and cluster, the route's and then the
        destination's header operations, and the route's rewrite, timeout, retry policy,
        fault and mirror — or a 503 UH when the destination names no Service. The Python
        pipeline calls it for the destination it drew; the fast lane's plans
        (`fastlane/plans.py`) once for each destination a weighted route can draw."""
        cfg = self.config
        p = make_plan(route, match, view, self.rng, dest=dest)
        namespace = cfg.route_owner[uid].namespace
        dest_svc = cfg.service_by_fqdn(p.destination.host, namespace)
        if dest_svc is None:
            return self._local(503, "UH", body=b"no such destination service")
        dest_port = p.destination.port.number if p.destination.port else (
            port if any(sp.port == port for sp in dest_svc.ports)
            else (dest_svc.ports[0].port if dest_svc.ports else port))
        subset = p.destination.subset or ""
        return (namespace, dest_svc, dest_port, subset, p.path, p.authority,
                p.request_ops, p.response_ops, p.timeout_s, p.retry, p.mirror,
                p.fault, cfg.cluster(dest_svc, dest_port, subset))

    def _describe_service(self, svc: Service) -> tuple:
        cfg = self.config
        uid = cfg.uid_of(svc)
        routes = cfg.routes.get(uid)
        return (svc, uid, cfg.authz_for_service(svc), cfg.ratelimits_for(svc), routes,
                _route_inputs(routes) if routes is not None else None)

    @staticmethod
    def _find_service_port(svc: Service, authority: str) -> int:
        if authority.count(":") == 1:
            try:
                p = int(authority.rsplit(":", 1)[1])
                if any(sp.port == p for sp in svc.ports):
                    return p
            except ValueError:
                pass
        return svc.ports[0].port if svc.ports else 80

    async def _forward(self, state: ClusterState, policy: retry.RetryPolicy,
                       timeout_s: float | None, rq: Incoming, uri: str, authority: str,
                       headers: list[tuple[str, str]], attrs, path: str, port: int,
                       req_headers: dict) -> tuple[Host | None, Outgoing]:
        counters = state.counters
        if not counters.admit_request():
            self.metrics.overflow.labels(state.cluster.name, "requests").inc()
            return None, self._local(503, "UO", [("x-envoy-overloaded", "true")])
        stream = rq.stream
        if state.cluster.h2:
            payload = h2_request(rq.method, uri, authority, headers, rq.body,
                                 req_headers.get("te") == "trailers")
        elif stream is not None:
            payload = http1.serialize_request_head(rq.method, uri, authority, headers,
                                                   stream.length)
        else:
            payload = http1.serialize_request(rq.method, uri, authority, headers, rq.body)
        head_only = rq.method == "HEAD"
        resume = rq.resume    # the fast lane made the first try: it is the first outcome here
        if resume is not None and timeout_s:
            timeout_s = max(timeout_s - (self.clock() - resume.start), 1e-6)
        handed = False
        tried: list[str] = []
        host: Host | None = None
        last: Outgoing | None = None
        retries = 0
        holding_retry = False
        route_deadline = self.deadlines.arm(timeout_s) if timeout_s else None
        try:
            if True:  # the route timeout covers everything below, retries and backoff included
                while True:
                    now = self.clock()
                    host = state.pick(now, tried) if resume is None else resume.host
                    if host is None:
                        return None, self._local(503, "UH")
                    wl_policies = self.config.authz_for_workload(host.workload)
                    if wl_policies:
                        a = attrs or authz_mod.RequestAttributes(
                            rq.method, rq.authority, path, port, rq.principal, rq.source_ip,
                            req_headers)
                        if not authz_mod.evaluate(wl_policies, a).allowed:
                            return host, self._local(403, "RBAC")
                    tried.append(host.address)
                    try_deadline = (self.deadlines.arm(policy.per_try_timeout_s)
                                    if policy.per_try_timeout_s else None)
                    try:
                        try:
                            if resume is not None:
                                first, resume = resume, None
                                resp = await first.replay(self, state, host, payload,
                                                          head_only, stream)
                            else:
                                resp = await self._try(state, host, payload, head_only, stream)
                        except asyncio.CancelledError:
                            if try_deadline is not None and self.deadlines.expired(try_deadline):
                                raise TimeoutError from None
                            raise
                        finally:
                            if try_deadline is not None:
                                self.deadlines.disarm(try_deadline)
                        outcome: int | str = resp.status
                        last = Outgoing(resp.status, [(n, v) for n, v in resp.headers
                                                      if n not in http1.HOP_BY_HOP
                                                      or (head_only and n == "content-length")],
                                        resp.body, "-", resp.trailers or None, resp.stream)
                        grpc_code = _grpc_status(last) if state.cluster.h2 else "-"
                    except TimeoutError:
                        outcome, last, grpc_code = retry.TIMEOUT, self._local(504, "UT"), "-"
                    except UpstreamFailure as e:
                        outcome, grpc_code = e.outcome, "-"
                        last = self._local(503, "UF" if outcome == retry.CONNECT_FAILURE
                                           else "UC")
                    except Overflow as e:
                        self.metrics.overflow.labels(state.cluster.name, e.limit).inc()
                        return host, self._local(503, "UO", [("x-envoy-overloaded", "true")])
                    state.record(host, outcome, self.clock())
                    if holding_retry:
                        counters.retries -= 1
                        holding_retry = False
                    retriable = policy.retriable(outcome) or (
                        grpc_code.isdigit() and policy.retriable_grpc(int(grpc_code)))
                    if stream is not None and not stream.replayable:
                        retriable = False      # Envoy: retry buffer overflow, no retry
                    if retries >= policy.attempts or not retriable or \
                            not counters.admit_retry():
                        if retries < policy.attempts and retriable:
                            self.metrics.overflow.labels(state.cluster.name, "retries").inc()
                        if last.stream is not None:   # goes downstream as it arrives
                            handed = True
                            last.deadline = route_deadline
                            last.cleanup = [self._stream_over(state, host)]
                        return host, last
                    if last.stream is not None:
                        last.stream.fail("discarded")  # this answer is replaced by a retry
                    holding_retry = True
                    retries += 1
                    await asyncio.sleep(policy.backoff_s(retries, self.rng))
        except asyncio.CancelledError:
            if route_deadline is not None and self.deadlines.expired(route_deadline):
                return host, self._local(504, "UT")
            raise
        finally:
            if not handed:
                if route_deadline is not None:
                    self.deadlines.disarm(route_deadline)
                counters.requests -= 1
            if holding_retry:
                counters.retries -= 1

    def _stream_over(self, state: ClusterState, host: Host):
        """When a streamed answer is over: the request leaves the pool's count, and an
        upstream reset mid-stream counts against the host (outlier detection)."""
        def over(flags: str) -> None:
            state.counters.requests -= 1
            if flags == "UR":
                state.record(host, retry.RESET, self.clock())
        return over

    async def _try(self, state: ClusterState, host: Host, payload,
                   head_only: bool, stream: Body | None = None) -> http1.Response:
        in_flight = state.in_flight
        address = host.address
        if state.cluster.h2:
            for _ in range(2):
                conn2 = await state.acquire_h2(host)
                in_flight[address] = in_flight.get(address, 0) + 1
                resp = None
                try:
                    resp = await conn2.exchange_h2(payload, stream)
                    return resp
                except UpstreamFailure as e:
                    if not e.fresh:
                        continue  # the shared connection had just closed: make a new one
                    raise
                finally:
                    if resp is not None and resp.stream is not None:
                        # a streamed answer counts for LEAST_REQUEST until it is over
                        resp.stream.when_done(lambda _ok: self._landed(state, address))
                    else:
                        in_flight[address] -= 1
            raise UpstreamFailure(retry.RESET, "HTTP/2 connections kept failing")
        for _ in range(2):
            conn = state.idle_connection(host)
            if conn is None:
                conn = await state.acquire(host)
            in_flight[address] = in_flight.get(address, 0) + 1
            try:
                resp = await conn.exchange(payload, head_only=head_only, body=stream)
            except UpstreamFailure as e:
                in_flight[address] -= 1
                conn.abort()
                if not e.fresh and (stream is None or stream.replayable):
                    continue  # a pooled connection the upstream had closed: use a new one
                raise
            except BaseException:
                in_flight[address] -= 1
                conn.abort()
                raise
            if resp.stream is not None:
                # The connection carries the rest of the body: back to the pool at its end
                # (and the request counts for LEAST_REQUEST until then).
                def over(ok: bool, conn=conn, resp=resp) -> None:
                    self._landed(state, address)
                    reuse = ok and resp.keep_alive and conn.reader is not None and \
                        conn.reader.keep_alive
                    state.release(conn, reuse=reuse)
                resp.stream.when_done(over)
                return resp
            in_flight[address] -= 1
            state.release(conn, reuse=resp.keep_alive)
            return resp
        raise UpstreamFailure(retry.RESET, "pooled connections kept failing")

    @staticmethod
    def _landed(state: ClusterState, address: str) -> None:
        state.in_flight[address] = state.in_flight.get(address, 1) - 1

    def _start_mirror(self, dest, namespace: str, port: int, method: str, uri: str,
                      authority: str, headers: list[tuple[str, str]], body: bytes,
                      stream: Body | None = None) -> None:
        svc = self.config.service_by_fqdn(dest.host, namespace)
        if svc is None:
            return
        cluster = self.config.cluster(svc, dest.port.number if dest.port else port,
                                      dest.subset or "")
        if cluster is None or not cluster.hosts:
            return
        state = self.state_for(cluster)
        host_part, sep, port_part = authority.partition(":")
        shadow = f"{host_part}-shadow{sep}{port_part}"

        async def run() -> None:
            data = body
            with contextlib.suppress(Exception):
                async with asyncio.timeout(30):
                    if stream is not None:
                        # A streamed body is mirrored once it has ended, and only if the
                        # retry buffer still holds all of it (Envoy: no shadow after a
                        # buffer overflow).
                        while not stream.finished:
                            await wait_for_more(stream)
                        whole = stream.whole()
                        if whole is None:
                            return
                        data = whole
                    if state.cluster.h2:
                        payload = h2_request(method, uri, shadow, headers, data, False)
                    else:
                        payload = http1.serialize_request(method, uri, shadow, headers, data)
                    h = state.pick(self.clock(), [])
                    if h is None:
                        return
                    resp = await self._try(state, h, payload, method == "HEAD")
                    if resp.stream is not None:
                        resp.stream.fail("discarded")   # a mirror's answer is dropped

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _observe(self, rq: Incoming, svc: Service | None, host: Host | None, out: Outgoing,
                 start: float, resp_bytes: int | None = None) -> None:
        key = (rq.principal, self.config.uid_of(svc) if svc is not None else None,
               host.address if host is not None else None, out.status, out.flags, rq.protocol,
               _grpc_status(out) if rq.protocol == "grpc" else "-")
        hit = self._labels.get(key)
        if hit is None:
            if len(self._labels) >= 20000:
                self._labels.clear()
            labels = self._make_labels(rq, svc, host, out, key[6])
            hit = self._labels[key] = (labels, self.metrics.series_for(labels))
        labels, series = hit
        duration_ms = (self.clock() - start) * 1000.0
        req_bytes = rq.stream.size if rq.stream is not None else len(rq.body)
        resp_bytes = len(out.body) if resp_bytes is None else resp_bytes
        if series is not None:   # kept with its labels: no hashing of 19 labels per request
            self.metrics.observe_series(series, duration_ms, req_bytes, resp_bytes)
        else:                    # beyond the series limit: counted as dropped
            self.metrics.observe(labels, duration_ms, req_bytes, resp_bytes)

    def _make_labels(self, rq: Incoming, svc: Service | None, host: Host | None,
                     out: Outgoing, grpc_status: str) -> tuple[str, ...]:
        src = self._sources.get(rq.principal or "", ("unknown", "unknown", "unknown", "unknown"))
        if svc is not None:
            dsvc, dname, dns = svc.hostname, svc.name, svc.namespace
        else:
            dsvc = dname = dns = "unknown"
        if host is not None:
            wl = self.config.workload(host.workload)
            dwl = wl.labels.get("app", wl.name) if wl else host.workload
            dwns = wl.namespace if wl else dns
            dprin = authz_mod.principal_of(wl.identity) if wl else "unknown"
            dapp = wl.labels.get("app", "unknown") if wl else "unknown"
            dver = host.version
        else:
            dwl = dwns = dprin = dapp = dver = "unknown"
        return ("waypoint", src[0], src[1], rq.principal or "unknown", src[2] or "unknown",
                src[3] or "unknown", dwl, dwns, dprin or "unknown", dapp, dver, dsvc, dname,
                dns, rq.protocol, str(out.status), grpc_status, out.flags,
                "mutual_tls" if rq.principal else "none")


def _grpc_status(out: Outgoing) -> str:
    for n, v in (out.trailers or ()):
        if n == "grpc-status":
            return v
    for n, v in out.headers:
        if n == "grpc-status":
            return v
    return "-"


# --- downstream -------------------------------------------------------------------------------


def peer_principal(transport) -> str | None:
    """The Istio principal of a TLS peer: its certificate's one SPIFFE URI SAN."""
    return authz_mod.principal_of(peer_identity(transport))


class Downstream(asyncio.Protocol):
    """One client connection: HTTP/1.1 until the HTTP/2 preface or ALPN says otherwise."""

    def __init__(self, server: WaypointServer) -> None:
        self.server = server
        self.waypoint = server.waypoint
        self.metrics = server.waypoint.metrics
        self.queue: deque[http1.Request] = deque()
        self.task: asyncio.Task | None = None      # `_serve`, once a request came
        self.idle: asyncio.Future | None = None     # `_serve` waits here for the next one
        self.h2: http2.H2Server | None = None
        self.h2_tasks: dict[int, asyncio.Task] = {}
        self.transport = None
        self.principal: str | None = None
        self.source_ip: str | None = None
        self.sniff = b""
        self.closed = False
        self.timer: asyncio.TimerHandle | None = None
        self.target: tuple[str, int] | None = None
        self.write_paused = False
        self.drainers: list[asyncio.Future] = []
        self.body_paused = False                    # reading paused: a request body backs up
        self.discarding = False                     # lingering before a close: input dropped
        self.h2_waiters: list[asyncio.Future] = []  # streams waiting for HTTP/2 windows
        self.header_reader = None
        self.lane_ok = server.lane is not None   # HTTP/1.1 goes to the fast lane (once)
        self.laned = None                        # the lane's protocol while it serves us
        self.resume = None                       # a request it gave back, with its first try
        self.lane_back = False                   # ... after which the lane takes us back
        if server.tunnel_header:
            from node_agent.ztunnel import wire

            self.header_reader = wire.HeaderReader()

    def __getattr__(self, name: str):
        """`reader` is made at its first use: a connection the fast lane serves never needs
        one (and its parser's callbacks would make a cycle only the GC frees: a new
        connection cost ~5 µs more CPU with it, most of that in gen-0 collections)."""
        if name == "reader":
            server = self.server
            r = self.reader = http1.RequestReader(max_head=server.max_head,
                                                  retain=server.retry_buffer_bytes)
            return r
        raise AttributeError(name)

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.server.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.source_ip = peer[0] if peer else None
        self.principal = peer_principal(transport)
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None and sslobj.selected_alpn_protocol() == "h2":
            self._start_h2()
        self._arm(self.server.idle_timeout_s, "idle")

    def _arm(self, delay: float, why: str) -> None:
        """Move the connection's one deadline; a timer is rescheduled only to fire earlier."""
        loop = self.loop
        deadline = loop.time() + delay
        self.deadline, self.timer_why = deadline, why
        t = self.timer
        if t is None or t.when() > deadline:
            if t is not None:
                t.cancel()
            self.timer = loop.call_at(deadline, self._timeout)

    def _timeout(self) -> None:
        self.timer = None
        if self.closed:
            return
        if self.loop.time() < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._timeout)
            return
        if self.timer_why == "idle" and ((self.task is not None and self.idle is None)
                                         or self.h2_tasks):
            self._arm(self.server.idle_timeout_s, "idle")  # busy, not idle
            return
        laned = self.laned
        if laned is not None and self.timer_why == "idle":   # the fast lane serves it
            quiet = time.monotonic() - laned.last_active
            if laned.state != 0 or quiet < self.server.idle_timeout_s:
                self._arm(max(self.server.idle_timeout_s - quiet, 0.001), "idle")
                return
        if self.timer_why == "slow" and self.h2 is None:
            self.metrics.protocol_error("http1", "slow_client")
            self.transport.write(http1.error_response(408, b"request timeout"))
        self._close()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        reader = self.__dict__.get("reader")
        if reader is not None:
            reader.fail("closed")
        if self.h2 is not None:
            self.h2.fail_all("closed")
        for t in self.h2_tasks.values():
            t.cancel()
        if self.task is not None:
            self.task.cancel()
        self._wake(self.drainers)
        self._wake(self.h2_waiters)

    # --- back-pressure ----------------------------------------------------------------------
    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake(self.drainers)

    @staticmethod
    def _wake(waiters: list[asyncio.Future]) -> None:
        ws = waiters[:]
        waiters.clear()
        for f in ws:
            if not f.done():
                f.set_result(None)

    async def drain(self) -> None:
        if self.write_paused and not self.closed:
            fut = self.loop.create_future()
            self.drainers.append(fut)
            await fut
        if self.closed:
            raise ConnectionResetError("client connection closed")

    def _continue(self, req: http1.Request):
        """`Expect: 100-continue`: ask for the body only when it is wanted upstream (the
        request was authorized, routed and admitted: `http1.ContinueBody`). A request refused
        before that gets its final answer alone, with `connection: close`, and what the client
        sends after it is read and dropped until the connection closes (`_linger_close`), so
        a body sent anyway is never parsed as a next request (RFC 9110 §10.1.1)."""
        def wanted() -> None:
            body = req.stream
            if req.version == "1.1" and not self.closed and not self.discarding \
                    and body is not None and body.size == 0 and not body.finished:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return wanted

    def _body_consumed(self, body: Body):
        def consumed(_n: int) -> None:
            if self.body_paused and not self.closed and body.unconsumed <= HIGH_WATER_BYTES // 2:
                self.body_paused = False
                self.transport.resume_reading()
        return consumed

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    LINGER_S = 1.0   # Envoy's delayed_close_timeout

    def _linger_close(self) -> None:
        """Close after an answer that came before the request body ended: closing a socket
        with unread bytes would send a reset that can destroy the answer in flight, so (as
        Envoy's delayed close does) stop writing, read and drop what still comes for up to
        `LINGER_S`, then close."""
        if self.closed:
            return
        self.reader.fail("answered")
        self.discarding = True
        self.queue.clear()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        if self.body_paused:
            self.body_paused = False
            self.transport.resume_reading()
        self._arm(self.LINGER_S, "linger")

    def _start_h2(self) -> None:
        self.h2 = http2.H2Server(max_head=self.server.max_head,
                                 retain=self.server.retry_buffer_bytes)
        self.transport.write(self.h2.data_to_send())

    def _tunnel_header(self, data: bytes) -> bytes | None:
        """The node tunnel's header: which Service the client called, and who the client is."""
        from node_agent.ztunnel import wire

        try:
            got = self.header_reader.feed(data)
        except wire.ProtocolError as e:
            self.metrics.protocol_error("tunnel", "bad_header")
            self.transport.write(wire.encode_reply(wire.BAD_REQUEST, str(e)))
            self._close()
            return None
        if got is None:
            return None
        header, rest = got
        self.header_reader = None
        tunnels = self.waypoint.tunnels
        target = tunnels.target_service(header.target.ip, header.target.port) if tunnels else None
        if target is None:
            self.metrics.protocol_error("tunnel", "unknown_target")
            self.transport.write(wire.encode_reply(
                wire.UNKNOWN_TARGET, f"{header.target.ip}:{header.target.port} is not a Service "
                "of this waypoint"))
            self._close()
            return None
        self.target = target
        self.source_ip = header.source.ip
        self.transport.write(wire.encode_reply(wire.OK))
        return rest

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            return
        if self.header_reader is not None:
            data = self._tunnel_header(data)
            if not data:
                return
        if self.h2 is not None:
            self._h2_data(data)
            return
        if self.sniff is not None:
            buf = self.sniff + data
            if len(buf) < len(http2.PREFACE) and http2.PREFACE.startswith(buf):
                self.sniff = buf
                return
            self.sniff = None  # type: ignore[assignment]
            data = buf
            if buf.startswith(http2.PREFACE):
                self._start_h2()
                self._h2_data(data)
                return
            if self.lane_ok:     # HTTP/1.1: the compiled fast lane takes the connection
                self.server.lane.adopt(self, data)
                return
        try:
            requests = self.reader.feed(data)
        except http1.ProtocolError as e:
            self._bad_input(e)
            return
        if requests:
            for r in requests:
                if r.stream is not None:
                    r.stream.on_consumed = self._body_consumed(r.stream)
                    if r.expect_continue:
                        r.stream.on_wanted = self._continue(r)
            self.queue.extend(requests)
            if self.task is None:
                self.task = self.loop.create_task(self._serve())
            elif self.idle is not None and not self.idle.done():
                self.idle.set_result(None)
            if len(self.queue) > 32:
                self.transport.pause_reading()
        streaming = self.reader.streaming
        if streaming is not None and streaming.unconsumed > HIGH_WATER_BYTES \
                and not self.body_paused:
            self.body_paused = True          # resumed as the body is written upstream
            self.transport.pause_reading()
        if self.reader.in_head:
            if self.timer_why != "slow":
                self._arm(self.server.header_timeout_s, "slow")
        elif streaming is not None or not self.queue:
            self._arm(self.server.idle_timeout_s, "idle")

    def _bad_input(self, e: http1.ProtocolError) -> None:
        """The client broke HTTP/1.1. Requests that arrived whole before the bad bytes (and
        any being answered) are answered first, in order; then the error answer (`_serve`),
        and the connection closes. Nothing after the bad bytes is read. A request whose
        body was still arriving is broken itself: the error is answered at once."""
        self.metrics.protocol_error("http1", e.kind)
        broken = self.reader.streaming is not None
        self.reader.fail("malformed")
        busy = self.task is not None and self.idle is None
        if broken or not (e.ready or self.queue or busy):
            if e.status:
                self.transport.write(http1.error_response(e.status, e.kind.encode()))
            self._close()
            return
        self.failed = e
        self.discarding = True           # input after the bad bytes is dropped
        for r in e.ready:
            if r.stream is not None:
                r.stream.on_consumed = self._body_consumed(r.stream)
        self.queue.extend(e.ready)
        self._arm(self.server.idle_timeout_s, "idle")    # (not a slow client any more)
        if self.task is None:
            self.task = self.loop.create_task(self._serve())
        elif self.idle is not None and not self.idle.done():
            self.idle.set_result(None)

    def _answer_failed(self) -> None:
        """Every request before the bad bytes is answered: now the error, then close."""
        e, self.failed = self.failed, None
        if e.status:
            self.transport.write(http1.error_response(e.status, e.kind.encode()))
        self._close()

    timer_why = "idle"
    deadline = 0.0
    failed: http1.ProtocolError | None = None   # answered once the queue before it is

    async def _serve(self) -> None:
        """Answer queued requests in order. Between requests the task waits for the next
        one (`idle`) instead of ending, so a keep-alive connection costs one task, not one
        per request."""
        try:
            while not self.closed:
                if not self.queue:
                    if self.failed is not None:
                        self._answer_failed()
                        return
                    if not self.discarding and not self.reader.mid_request:
                        self._arm(self.server.idle_timeout_s, "idle")
                    self.idle = fut = self.loop.create_future()
                    try:
                        await fut
                    finally:
                        self.idle = None
                    continue
                req = self.queue.popleft()
                if len(self.queue) <= 8 and not self.body_paused:
                    try:
                        self.transport.resume_reading()
                    except Exception:  # noqa: BLE001, S110 - closing: nothing to resume
                        pass
                resume, self.resume = self.resume, None
                out = await self.waypoint.handle(Incoming(
                    req.method, req.target, req.authority, req.headers, req.body,
                    self.principal, self.source_ip, "http", self.target, req.stream, resume))
                keep = req.keep_alive and not self.server.draining
                if self.closed:
                    if out.stream is not None:
                        await self.waypoint.relay(out, _Gone())
                    return
                if out.stream is not None:
                    chunked = out.stream.length is None and req.version == "1.1"
                    keep = keep and (out.stream.length is not None or chunked)
                    if not await self.waypoint.relay(out, _H1Sink(self, keep, chunked)):
                        self.transport.abort()     # cut short: the client must see it
                        self.closed = True
                        return
                else:
                    if out.flags == "SI":
                        keep = False   # 408 stream timeout: the connection closes (RFC 9110)
                    if req.stream is not None and not req.stream.finished:
                        keep = False   # answered before the body ended: no next request
                    self.transport.write(http1.serialize_response(
                        out.status, out.headers, out.body, keep_alive=keep,
                        head=req.method == "HEAD"))
                if req.stream is not None and not req.stream.finished:
                    self._linger_close()    # the client may still be sending its body
                    return
                if not keep:
                    self._close()
                    return
                if self.lane_back and not self.queue and not self.reader.mid_request \
                        and not self.discarding:
                    # the fast lane gave this request back for a passing reason (its
                    # retries, a pool limit): the next ones go to the lane again
                    self.lane_back = False
                    self.server.lane.adopt(self, b"")
                    return
        finally:
            self.task = None

    # --- HTTP/2 ---------------------------------------------------------------------------
    def _h2_data(self, data: bytes) -> None:
        h2c = self.h2
        events = h2c.feed(data, time.monotonic())
        for kind in h2c.errors:
            self.metrics.protocol_error("http2", kind)
        h2c.errors.clear()
        loop = asyncio.get_running_loop()
        for ev in events:
            if isinstance(ev, int):
                t = self.h2_tasks.pop(ev, None)
                if t is not None:
                    t.cancel()
                continue
            if ev.stream is not None:
                ack = ev.stream.on_consumed

                def consumed(n: int, ack=ack) -> None:
                    ack(n)
                    self._h2_flush()
                ev.stream.on_consumed = consumed
            self.h2_tasks[ev.stream_id] = loop.create_task(self._h2_stream(ev))
        out = h2c.data_to_send()
        if out:
            self.transport.write(out)
        if self.h2_waiters:
            self._wake(self.h2_waiters)
        if h2c.closed:
            self._close()
        else:
            self._arm(self.server.idle_timeout_s, "idle")

    async def _h2_stream(self, ev: http2.RequestReady) -> None:
        try:
            method, path = ev.pseudo(":method"), ev.pseudo(":path")
            authority = ev.pseudo(":authority") or next(
                (v for n, v in ev.headers if n == "host"), "")
            headers = [(n, v) for n, v in ev.headers if not n.startswith(":")]
            ctype = next((v for n, v in headers if n == "content-type"), "")
            out = await self.waypoint.handle(Incoming(
                method, path, authority, headers, ev.body, self.principal, self.source_ip,
                "grpc" if ctype.startswith("application/grpc") else "http2", self.target,
                ev.stream))
            if self.closed or self.h2 is None:
                if out.stream is not None:
                    await self.waypoint.relay(out, _Gone())
                return
            if out.stream is not None:
                await self.waypoint.relay(out, _H2Sink(self, ev.stream_id))
            else:
                self.h2.respond(ev.stream_id, out.status, out.headers, out.body, out.trailers)
            if ev.stream is not None and not ev.stream.finished and not self.closed:
                self.h2.abandon(ev.stream_id)   # answered while the client still sends
            self._h2_flush()
        finally:
            self.h2_tasks.pop(ev.stream_id, None)

    def _h2_flush(self) -> None:
        if self.h2 is not None and not self.closed:
            data = self.h2.data_to_send()
            if data:
                self.transport.write(data)


class _H1Sink:
    """An HTTP/1.1 client as the end of a streamed response (`Waypoint.relay`)."""

    __slots__ = ("down", "keep", "chunked")

    def __init__(self, down: Downstream, keep: bool, chunked: bool) -> None:
        self.down, self.keep, self.chunked = down, keep, chunked

    def start(self, status: int, headers: list[tuple[str, str]], length: int | None) -> bool:
        if self.down.closed:
            return False
        self.down.transport.write(http1.serialize_response_head(
            status, headers, length=length, keep_alive=self.keep, chunked=self.chunked))
        return True

    async def data(self, data: bytes) -> None:
        down = self.down
        if down.closed:
            raise ConnectionResetError("client connection closed")
        down.transport.write(http1.chunk(data) if self.chunked else data)
        if down.write_paused:
            await down.drain()

    def end(self, trailers: list[tuple[str, str]] | None) -> None:
        if self.chunked and not self.down.closed:
            self.down.transport.write(http1.last_chunk(trailers))

    def reset(self) -> None:
        pass   # the caller aborts the connection (a truncated body must not look whole)


class _H2Sink:
    """An HTTP/2 client stream as the end of a streamed response (`Waypoint.relay`)."""

    __slots__ = ("down", "sid")

    def __init__(self, down: Downstream, sid: int) -> None:
        self.down, self.sid = down, sid

    def start(self, status: int, headers: list[tuple[str, str]], length: int | None) -> bool:
        down = self.down
        if down.closed or down.h2 is None or not down.h2.respond_head(
                self.sid, status, headers, length):
            return False
        down._h2_flush()
        return True

    async def data(self, data: bytes) -> None:
        down, h2c = self.down, self.down.h2
        h2c.send(self.sid, data)
        down._h2_flush()
        while True:     # until flow control let it out: a slow client slows the upstream
            unsent = h2c.unsent(self.sid)
            if unsent is None:
                raise ConnectionResetError("client stream closed")
            if unsent == 0 or down.closed:
                break
            fut = down.loop.create_future()
            down.h2_waiters.append(fut)
            await fut
        if down.write_paused:
            await down.drain()

    def end(self, trailers: list[tuple[str, str]] | None) -> None:
        self.down.h2.end(self.sid, trailers)
        self.down._h2_flush()

    def reset(self) -> None:
        if self.down.h2 is not None and not self.down.closed:
            self.down.h2.reset(self.sid)
            self.down._h2_flush()


class _Gone:
    """No client any more: `relay` only cleans up and records."""

    def start(self, status, headers, length) -> bool:
        return False

    async def data(self, data: bytes) -> None:  # pragma: no cover - never started
        raise ConnectionResetError

    def end(self, trailers) -> None:  # pragma: no cover
        pass

    def reset(self) -> None:
        pass


class _MetricsProtocol(asyncio.Protocol):
    """:15020 — `GET /metrics` (Prometheus text), `/healthz/ready`, `/debug/snapshot` (JSON)."""

    def __init__(self, server: WaypointServer) -> None:
        self.server = server
        self.reader = http1.RequestReader(max_head=8192)

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        try:
            reqs = self.reader.feed(data)
        except http1.ProtocolError:
            self.transport.close()
            return
        for req in reqs:
            path = req.target.split("?", 1)[0]
            if path == "/metrics":
                body = generate_latest(self.server.waypoint.metrics.registry)
                out = http1.serialize_response(200, [("content-type", CONTENT_TYPE_LATEST)],
                                               body, keep_alive=req.keep_alive)
            elif path == "/debug/snapshot":
                body = json.dumps(self.server.waypoint.describe(), indent=1).encode()
                out = http1.serialize_response(200, [("content-type", "application/json")],
                                               body, keep_alive=req.keep_alive)
            elif path in ("/healthz/ready", "/healthz"):
                problem = self.server.waypoint.not_ready()
                out = (http1.serialize_response(503, [], f"not ready: {problem}\n".encode(),
                                                keep_alive=req.keep_alive) if problem else
                       http1.serialize_response(200, [], b"ready\n", keep_alive=req.keep_alive))
            else:
                out = http1.serialize_response(404, [], b"not found\n",
                                               keep_alive=req.keep_alive)
            self.transport.write(out)
            if not req.keep_alive:
                self.transport.close()
                return


class WaypointServer:
    def __init__(self, waypoint: Waypoint, *, host: str = "127.0.0.1", port: int = 0,
                 ssl_context: ssl.SSLContext | None = None, metrics_port: int | None = None,
                 metrics_host: str | None = None, max_head: int = 65536,
                 header_timeout_s: float = HEADER_TIMEOUT_S,
                 idle_timeout_s: float = IDLE_TIMEOUT_S, tunnel_header: bool = False,
                 retry_buffer_bytes: int = RETRY_BUFFER_BYTES, fast_lane: bool = True,
                 stream_idle_timeout_s: float = STREAM_IDLE_TIMEOUT_S) -> None:
        self.tunnel_header = tunnel_header
        waypoint.stream_idle_timeout_s = stream_idle_timeout_s  # 0: off
        self.retry_buffer_bytes = retry_buffer_bytes
        self.header_timeout_s = header_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.waypoint = waypoint
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host or host
        self.max_head = max_head
        self.connections: set[Downstream] = set()
        self.draining = False
        self._servers: list[asyncio.AbstractServer] = []
        self.lane = None     # the compiled HTTP/1.1 fast lane (docs/waypoint.md "Fast lane")
        from waypoint import fastlane
        if fastlane.enabled(fast_lane):
            from waypoint.fastlane import plans

            self.lane = plans.Glue(waypoint, self).lane

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(lambda: Downstream(self), self.host, self.port,
                                       ssl=self.ssl_context, backlog=4096, reuse_address=True)
        self._servers.append(srv)
        self.port = srv.sockets[0].getsockname()[1]
        if self.metrics_port is not None:
            m = await loop.create_server(lambda: _MetricsProtocol(self), self.metrics_host,
                                         self.metrics_port, reuse_address=True)
            self._servers.append(m)
            self.metrics_port = m.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.draining = True
        for s in self._servers:
            s.close()
        for c in list(self.connections):
            c._close()
        self.waypoint.close()
        for s in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.wait_closed(), 2)


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class WaypointThread:
    """A waypoint on its own event loop in a background thread (tests, embedding).

    `with WaypointThread(snapshot, ...) as wp:` serves on `wp.port` (and `wp.metrics_port`);
    `wp.update(snapshot)` applies a new snapshot; leaving the block stops it and closes every
    connection.
    """

    def __init__(self, snapshot: WaypointSnapshot, *, host: str = "127.0.0.1", port: int = 0,
                 ssl_context: ssl.SSLContext | None = None, metrics_port: int | None = 0,
                 default_service: str | None = None, tracing: Tracing | None = None,
                 rng: random.Random | None = None, tunnels: Tunnels | None = None,
                 **server_options) -> None:
        self.loop = new_event_loop()
        self.waypoint = Waypoint(snapshot, default_service=default_service, tracing=tracing,
                                 rng=rng, tunnels=tunnels)
        self.server = WaypointServer(self.waypoint, host=host, port=port,
                                     ssl_context=ssl_context, metrics_port=metrics_port,
                                     **server_options)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="waypoint")

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def metrics_port(self) -> int | None:
        return self.server.metrics_port

    @property
    def metrics(self) -> Metrics:
        return self.waypoint.metrics

    def call(self, fn, *args):
        async def run():
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def update(self, snapshot: WaypointSnapshot) -> None:
        self.call(self.waypoint.update, snapshot)

    def start(self) -> WaypointThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> WaypointThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def running(snapshot: WaypointSnapshot, **options) -> Iterator[WaypointThread]:
    with WaypointThread(snapshot, **options) as wp:
        yield wp


__all__ = ["Waypoint", "WaypointServer", "WaypointThread", "Incoming", "Outgoing", "running",
           "fqdn"]
