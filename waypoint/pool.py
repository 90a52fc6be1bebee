"""Connection-pool limits per cluster (Envoy's circuit breakers), as counters and decisions.

Before: a DestinationRule's `connectionPool` (Istio defaults: every limit 2³²−1). After: the
proxy asks before each step and answers 503 with `x-envoy-overloaded: true` on overflow:

- `http2MaxRequests` (Envoy max_requests): requests in flight to the cluster, whatever the
  protocol; one more is an overflow.
- `maxConnections` (max_connections): upstream connections open to the cluster. A request
  that needs a new connection beyond it waits for one to become free ...
- `http1MaxPendingRequests` (max_pending_requests): ... in a queue of at most this many;
  beyond it, overflow.
- `maxRetries` (max_retries): retries in flight in the cluster; beyond it a retry is not
  made and the last answer stands.
- `maxRequestsPerConnection`: a connection is closed after serving this many requests.
"""

from __future__ import annotations

from dataclasses import dataclass

from control.config.model import ConnectionPoolSettings
from waypoint.fastlane import native as _native

UNLIMITED = 2**32 - 1


@dataclass(frozen=True, slots=True)
class PoolLimits:
    max_connections: int = UNLIMITED
    max_pending: int = UNLIMITED
    max_requests: int = UNLIMITED
    max_retries: int = UNLIMITED
    max_requests_per_connection: int = 0  # 0: unlimited

    @classmethod
    def from_istio(cls, cp: ConnectionPoolSettings | None) -> PoolLimits:
        if cp is None:
            return cls()
        tcp, http = cp.tcp, cp.http

        def lim(v: int | None) -> int:
            return UNLIMITED if not v else v

        return cls(
            max_connections=lim(tcp.max_connections if tcp else None),
            max_pending=lim(http.http1_max_pending_requests if http else None),
            max_requests=lim(http.http2_max_requests if http else None),
            max_retries=lim(http.max_retries if http else None),
            max_requests_per_connection=(http.max_requests_per_connection or 0) if http else 0,
        )


class _PyPoolCounters:
    """Live counts for one cluster; the proxy increments and decrements them."""

    __slots__ = ("limits", "connections", "pending", "requests", "retries", "overflows")

    def __init__(self, limits: PoolLimits) -> None:
        self.limits = limits
        self.connections = 0
        self.pending = 0
        self.requests = 0
        self.retries = 0
        self.overflows = {"requests": 0, "pending": 0, "retries": 0, "connections": 0}

    def admit_request(self) -> bool:
        if self.requests >= self.limits.max_requests:
            self.overflows["requests"] += 1
            return False
        self.requests += 1
        return True

    def may_connect(self) -> bool:
        if self.connections >= self.limits.max_connections:
            self.overflows["connections"] += 1
            return False
        return True

    def may_queue(self) -> bool:
        if self.pending >= self.limits.max_pending:
            self.overflows["pending"] += 1
            return False
        return True

    def admit_retry(self) -> bool:
        if self.retries >= self.limits.max_retries:
            self.overflows["retries"] += 1
            return False
        self.retries += 1
        return True


# With the fast lane built, the counters are its native object (the same attributes and
# methods), so the lane counts in the same copy without Python attribute calls.
PoolCounters = _native.Counters if _native is not None else _PyPoolCounters
