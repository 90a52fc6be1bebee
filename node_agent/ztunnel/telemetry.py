"""What the tunnel tells operators: one JSON access-log line per connection, `istio_tcp_*`
metrics with Istio's labels, and counters of what it refused and why.

Before: a connection handler filled a `ConnRecord` while it set the connection up and relayed
it. After: `Telemetry.opened(rec, down, up)` when bytes start flowing, `Telemetry.closed(rec)`
once, when it ends (or was refused): the log line, byte counters, closed counter. Long
connections add their bytes every sweep (`flush_bytes`), so counters move before they close.

Where the byte counts come from: with a datapath attached (`Telemetry.flows`, a
`node_agent.bpf.flows.FlowReader` that the node agent injects — node_agent/ztunnel/wiring.py),
from the kernel's per-connection record of the connection's pod-facing socket, found by its
socket cookie: the captured socket for :15001 and :15006, the tunnel's transparent connection
to the pod for :15008. Those counts are exact, spliced bytes included. At close the final read
waits (a few ms at most, `FINAL_WAIT` at worst) until the kernel socket is closed, so bytes in
flight are counted once acknowledged; then the record is deleted. Without a datapath
(a standalone tunnel) or without a record, the tunnel's own user-space counts are used.
`bytes_source` in the log line and `lacewing_tunnel_kernel_byte_counts` say which.

Directions follow Istio: istio_tcp_received_bytes_total counts the bytes the source sent
(the request side), istio_tcp_sent_bytes_total the bytes that went back to it. In the access
log, `bytes_sent` is source -> destination and `bytes_received` destination -> source.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge

SO_COOKIE = 57
FINAL_WAIT = 2.0        # s: longest wait at close for the pod-facing socket to finish in the kernel
FINAL_POLL = 0.002      # s: first re-check of records still closing (then doubling, to 0.25 s)

LABELS = ("reporter", "source_workload", "source_workload_namespace", "source_principal",
          "destination_workload", "destination_workload_namespace", "destination_principal",
          "destination_service", "destination_service_name", "destination_service_namespace",
          "request_protocol", "response_flags", "connection_security_policy")


@dataclass(eq=False)
class ConnRecord:
    listener: str                       # outbound | inbound | inbound_plaintext
    src: str = ""
    dst: str = ""
    target: str = ""                    # address actually connected to (endpoint / pod)
    next_hop: str = ""
    kind: str = ""                      # tunnel | waypoint | direct | same_node | inbound
    #                                     | service_relay (not a mesh endpoint here: logged,
    #                                     no istio_* series; the endpoint's node reports it)
    src_identity: str | None = None
    dst_identity: str | None = None
    src_workload: str | None = None     # namespace/name
    dst_workload: str | None = None
    service: str | None = None          # namespace/name
    decision: str = "allow"             # allow | deny | error
    reason: str = ""
    security_policy: str = "none"
    tls_resumed: bool | None = None
    tunnel_reused: bool | None = None   # carried over a TLS connection of an earlier one
    start: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.monotonic)
    t_end: float = 0.0                  # monotonic time it ended (the log may be written later)
    sent: int = 0                       # bytes source -> destination (Istio: received)
    received: int = 0                   # bytes destination -> source (Istio: sent)
    counted_sent: int = 0
    counted_received: int = 0
    opened: bool = False
    label_values: tuple[str, ...] | None = None   # fixed when the connection opens
    flow_cookie: int = 0                # the pod-facing socket's cookie (kernel counts)
    spare_cookie: int = 0               # a record to drop with it (the other socket's)
    bytes_source: str = "userspace"     # kernel | userspace

    @property
    def reported(self) -> bool:
        """In the istio_* series (a connection relayed for another node is only logged)."""
        return self.kind != "service_relay"

    def labels(self) -> dict[str, str]:
        sw_ns, _, sw = (self.src_workload or "unknown/unknown").partition("/")
        dw_ns, _, dw = (self.dst_workload or "unknown/unknown").partition("/")
        svc_ns, _, svc = (self.service or "/").partition("/")
        return {
            "reporter": "source" if self.listener == "outbound" else "destination",
            "source_workload": sw, "source_workload_namespace": sw_ns,
            "source_principal": self.src_identity or "unknown",
            "destination_workload": dw, "destination_workload_namespace": dw_ns,
            "destination_principal": self.dst_identity or "unknown",
            "destination_service": f"{svc}.{svc_ns}.svc.cluster.local" if svc else "unknown",
            "destination_service_name": svc or "unknown",
            "destination_service_namespace": svc_ns or "unknown",
            "request_protocol": "tcp",
            "response_flags": "-" if self.decision == "allow" else "UAEX",
            "connection_security_policy": self.security_policy,
        }


class Telemetry:
    def __init__(self, *, registry: CollectorRegistry | None = None,
                 access_log: TextIO | None = sys.stderr, flows=None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.access_log = access_log
        self.opened_total = Counter("istio_tcp_connections_opened", "TCP connections opened",
                                    LABELS, registry=r)
        self.closed_total = Counter("istio_tcp_connections_closed", "TCP connections closed",
                                    LABELS, registry=r)
        self.sent_bytes = Counter("istio_tcp_sent_bytes",
                                  "Bytes sent back to the source (the response side)",
                                  LABELS, registry=r)
        self.received_bytes = Counter("istio_tcp_received_bytes",
                                      "Bytes received from the source (the request side)",
                                      LABELS, registry=r)
        self.refused = Counter("lacewing_tunnel_refused_connections",
                               "Connections the tunnel refused, by listener and reason",
                               ("listener", "reason"), registry=r)
        self.handshakes = Counter("lacewing_tunnel_tls_handshakes",
                                  "Completed tunnel TLS handshakes", ("side", "resumed"),
                                  registry=r)
        self.tunnel_connections = Counter(
            "lacewing_tunnel_inner_connections",
            "Connections carried between node tunnels, by side and whether their TLS "
            "connection was new or reused from an earlier connection", ("side", "tunnel"),
            registry=r)
        self.idle_tunnels = Gauge(
            "lacewing_tunnel_idle_tunnel_connections",
            "TLS connections between node tunnels kept open for the next connection (client: "
            "the pool; server: waiting for the next header)", ("side",), registry=r)
        self.reuse_retries = Counter(
            "lacewing_tunnel_reuse_retries",
            "Connections retried on a new TLS connection because the reused one ended "
            "before the reply (the peer closed it while idle)", registry=r)
        self.active = Gauge("lacewing_tunnel_active_connections", "Connections being served",
                            ("listener",), registry=r)
        self.kernel_counts = Gauge("lacewing_tunnel_kernel_byte_counts",
                                   "1 when istio_tcp_*_bytes come from the kernel's "
                                   "per-connection counters (eBPF), 0 when from the tunnel's "
                                   "own user-space counts", registry=r)
        self.userspace_counted = Counter("lacewing_tunnel_userspace_byte_counts",
                                         "Connections counted in user space although the "
                                         "kernel's counters were attached (no record found)",
                                         registry=r)
        self._children: dict = {}
        self._flows = None
        self._closing: dict[ConnRecord, float] = {}     # waiting for the kernel's final count
        self._closing_delay = FINAL_POLL
        self._closing_timer: asyncio.TimerHandle | None = None
        self.flows = flows

    @property
    def flows(self):
        """The kernel's per-connection counters (`FlowReader`: read(cookie), consume(*cookies)),
        or None: user-space counts."""
        return self._flows

    @flows.setter
    def flows(self, reader) -> None:
        self._flows = reader
        self.kernel_counts.set(0 if reader is None else 1)

    def refused_count(self, listener: str, reason: str) -> None:
        self.refused.labels(listener, reason).inc()

    def _child(self, metric, values: tuple[str, ...]):
        """metric.labels(*values), cached: a connection touches four series twice or more."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            if len(self._children) > 50000:
                self._children.clear()
            child = self._children[key] = metric.labels(*values)
        return child

    def opened(self, rec: ConnRecord, down=None, up=None) -> None:
        """The connection relays from now on; `down` is the accepted side, `up` the one the
        tunnel opened (relay.Side objects), so the kernel's record can be found."""
        rec.opened = True
        rec.label_values = tuple(rec.labels()[k] for k in LABELS)
        if rec.reported:
            self._child(self.opened_total, rec.label_values).inc()
        self._child(self.active, (rec.listener,)).inc()
        if self._flows is not None and down is not None and up is not None:
            # the pod-facing socket: the captured one, except over :15008 where it is the
            # tunnel's own connection to the pod; for the listeners whose other socket may
            # carry a record too (15006: the connection to the pod), drop that one with it
            pod, other = (up, down) if rec.listener == "inbound" else (down, up)
            rec.flow_cookie = _cookie(pod)
            if rec.listener in ("inbound", "inbound_plaintext"):
                rec.spare_cookie = _cookie(other)

    def _read_kernel(self, rec: ConnRecord):
        """The kernel's counts into rec.sent/rec.received; None if there are none."""
        flows = self._flows
        if not rec.flow_cookie or flows is None:
            return None
        try:
            fb = flows.read(rec.flow_cookie)
        except (OSError, ValueError):
            return None
        if fb is not None:
            rec.sent, rec.received = fb.received, fb.sent
            rec.bytes_source = "kernel"
        return fb

    def flush_bytes(self, rec: ConnRecord) -> None:
        """Add what the connection moved since the last flush (at each sweep, and at close)."""
        self._read_kernel(rec)
        self._add_bytes(rec)

    def _add_bytes(self, rec: ConnRecord) -> None:
        # counters only grow: a count that went back (the record vanished and user space
        # counted less) adds nothing
        ds, dr = rec.sent - rec.counted_sent, rec.received - rec.counted_received
        if (ds > 0 or dr > 0) and rec.reported:
            values = rec.label_values or tuple(rec.labels()[k] for k in LABELS)
            if ds > 0:
                self._child(self.received_bytes, values).inc(ds)
                rec.counted_sent = rec.sent
            if dr > 0:
                self._child(self.sent_bytes, values).inc(dr)
                rec.counted_received = rec.received

    def closed(self, rec: ConnRecord) -> None:
        rec.t_end = time.monotonic()
        if rec.opened:
            if rec.reported:
                self._child(self.closed_total, rec.label_values).inc()
            self._child(self.active, (rec.listener,)).dec()
            fb = self._read_kernel(rec)
            if fb is not None and not fb.closed:
                # the pod-facing socket is still finishing (our FIN or last bytes not yet
                # acknowledged): count what is known now, the rest once it is closed
                self._add_bytes(rec)
                self._wait_final(rec)
                return
            self._final(rec, fb)
            return
        self._log(rec)

    def _final(self, rec: ConnRecord, fb) -> None:
        flows = self._flows     # once: the agent may detach it from another thread
        if fb is None:
            if rec.flow_cookie and flows is not None:
                self.userspace_counted.inc()
            rec.bytes_source = "userspace"
            # never report less than was already counted (a record that vanished midway)
            rec.sent = max(rec.sent, rec.counted_sent)
            rec.received = max(rec.received, rec.counted_received)
        elif rec.flow_cookie and flows is not None:
            try:
                flows.consume(rec.flow_cookie, rec.spare_cookie)
            except (OSError, ValueError):
                pass
        self._add_bytes(rec)
        self._log(rec)

    def _wait_final(self, rec: ConnRecord) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._final(rec, self._read_kernel(rec))    # no loop to wait on: what we have
            return
        self._closing[rec] = loop.time() + FINAL_WAIT
        if self._closing_timer is None:
            self._closing_delay = FINAL_POLL
            self._closing_timer = loop.call_later(self._closing_delay, self._check_closing)

    def _check_closing(self) -> None:
        """One timer for every connection still finishing in the kernel."""
        self._closing_timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for rec, deadline in list(self._closing.items()):
            fb = self._read_kernel(rec)
            if fb is None or fb.closed or now >= deadline:
                del self._closing[rec]
                self._final(rec, fb)
        if self._closing:
            self._closing_delay = min(self._closing_delay * 2, 0.25)
            self._closing_timer = loop.call_later(self._closing_delay, self._check_closing)

    def finish(self) -> None:
        """Count and log, with what the kernel says now, the connections still waiting for
        their final count (the tunnel is stopping)."""
        if self._closing_timer is not None:
            self._closing_timer.cancel()
            self._closing_timer = None
        for rec in list(self._closing):
            del self._closing[rec]
            self._final(rec, self._read_kernel(rec))

    def _log(self, rec: ConnRecord) -> None:
        if self.access_log is not None:
            line = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rec.start)),
                "listener": rec.listener, "kind": rec.kind, "decision": rec.decision,
                "reason": rec.reason, "src": rec.src, "dst": rec.dst, "target": rec.target,
                "next_hop": rec.next_hop, "src_identity": rec.src_identity,
                "dst_identity": rec.dst_identity, "src_workload": rec.src_workload,
                "dst_workload": rec.dst_workload, "service": rec.service,
                "connection_security_policy": rec.security_policy,
                "tls_resumed": rec.tls_resumed, "tunnel_reused": rec.tunnel_reused,
                "bytes_sent": rec.sent,
                "bytes_received": rec.received, "bytes_source": rec.bytes_source,
                "duration_ms": round(((rec.t_end or time.monotonic()) - rec.t0) * 1000, 3),
            }
            try:
                self.access_log.write(json.dumps(line, separators=(",", ":")) + "\n")
                self.access_log.flush()
            except (OSError, ValueError):
                pass


def _cookie(side) -> int:
    """The socket cookie (SO_COOKIE) of a relay side's socket; 0 if it cannot be had."""
    try:
        sock = side.transport.get_extra_info("socket")
        return struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]
    except (AttributeError, OSError, struct.error):
        return 0
