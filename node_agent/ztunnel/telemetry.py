"""What the tunnel tells operators: one JSON access-log line per connection, `istio_tcp_*`
metrics with Istio's labels, and counters of what it refused and why.

Before: a connection handler filled a `ConnRecord` while it set the connection up and relayed
it. After: `Telemetry.opened(rec)` when bytes start flowing, `Telemetry.closed(rec)` once, when
it ends (or was refused): the log line, byte counters, closed counter. Long connections add
their bytes every sweep (`flush_bytes`), so counters move before they close.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge

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
    src_identity: str | None = None
    dst_identity: str | None = None
    src_workload: str | None = None     # namespace/name
    dst_workload: str | None = None
    service: str | None = None          # namespace/name
    decision: str = "allow"             # allow | deny | error
    reason: str = ""
    security_policy: str = "none"
    tls_resumed: bool | None = None
    start: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.monotonic)
    sent: int = 0                       # bytes toward the destination
    received: int = 0                   # bytes back to the source
    counted_sent: int = 0
    counted_received: int = 0
    opened: bool = False
    label_values: tuple[str, ...] | None = None   # fixed when the connection opens

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
                 access_log: TextIO | None = sys.stderr) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.access_log = access_log
        self.opened_total = Counter("istio_tcp_connections_opened", "TCP connections opened",
                                    LABELS, registry=r)
        self.closed_total = Counter("istio_tcp_connections_closed", "TCP connections closed",
                                    LABELS, registry=r)
        self.sent_bytes = Counter("istio_tcp_sent_bytes", "Bytes sent toward the destination",
                                  LABELS, registry=r)
        self.received_bytes = Counter("istio_tcp_received_bytes",
                                      "Bytes received from the destination", LABELS, registry=r)
        self.refused = Counter("lacewing_tunnel_refused_connections",
                               "Connections the tunnel refused, by listener and reason",
                               ("listener", "reason"), registry=r)
        self.handshakes = Counter("lacewing_tunnel_tls_handshakes",
                                  "Completed tunnel TLS handshakes", ("side", "resumed"),
                                  registry=r)
        self.active = Gauge("lacewing_tunnel_active_connections", "Connections being served",
                            ("listener",), registry=r)
        self._children: dict = {}

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

    def opened(self, rec: ConnRecord) -> None:
        rec.opened = True
        rec.label_values = tuple(rec.labels()[k] for k in LABELS)
        self._child(self.opened_total, rec.label_values).inc()
        self._child(self.active, (rec.listener,)).inc()

    def flush_bytes(self, rec: ConnRecord) -> None:
        ds, dr = rec.sent - rec.counted_sent, rec.received - rec.counted_received
        if ds or dr:
            values = rec.label_values or tuple(rec.labels()[k] for k in LABELS)
            if ds:
                self._child(self.sent_bytes, values).inc(ds)
            if dr:
                self._child(self.received_bytes, values).inc(dr)
            rec.counted_sent, rec.counted_received = rec.sent, rec.received

    def closed(self, rec: ConnRecord) -> None:
        if rec.opened:
            self.flush_bytes(rec)
            self._child(self.closed_total, rec.label_values).inc()
            self._child(self.active, (rec.listener,)).dec()
        if self.access_log is not None:
            line = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rec.start)),
                "listener": rec.listener, "kind": rec.kind, "decision": rec.decision,
                "reason": rec.reason, "src": rec.src, "dst": rec.dst, "target": rec.target,
                "next_hop": rec.next_hop, "src_identity": rec.src_identity,
                "dst_identity": rec.dst_identity, "src_workload": rec.src_workload,
                "dst_workload": rec.dst_workload, "service": rec.service,
                "connection_security_policy": rec.security_policy,
                "tls_resumed": rec.tls_resumed, "bytes_sent": rec.sent,
                "bytes_received": rec.received,
                "duration_ms": round((time.monotonic() - rec.t0) * 1000, 3),
            }
            try:
                self.access_log.write(json.dumps(line, separators=(",", ":")) + "\n")
                self.access_log.flush()
            except (OSError, ValueError):
                pass
