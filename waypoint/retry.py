"""Retry policy with Envoy's meanings: which outcomes are retried, how often, how long to wait.

Before: a VirtualService route's `retries` (or none: Istio's default policy). After: the proxy
asks `retriable(outcome)` after each try and sleeps `backoff_s(n)` before try n+1, while the
route's `timeout` (checked by the proxy) bounds all tries together and `per_try_timeout` each.

Outcomes: an HTTP status, or a failure with no response — `connect-failure` (could not
connect), `reset` (the connection broke before a full response), `timeout` (per-try timeout).
`retryOn` values (Envoy `x-envoy-retry-on`):
- `5xx`: any 5xx status, and every no-response failure (connect failure, reset, timeout);
- `gateway-error`: 502, 503, 504, and connect failure (and a per-try timeout, taken as 504);
- `reset`: disconnect, reset or per-try timeout before a response;
- `connect-failure`: the connection could not be made;
- `retriable-4xx`: 409;
- `retriable-status-codes`, and numeric items (Istio writes `503,connect-failure`): the listed
  statuses;
- `cancelled`, `deadline-exceeded`, `resource-exhausted`, `internal`, `unavailable`: the gRPC
  status in the answer's `grpc-status` (trailers, or headers of a trailers-only answer) —
  `retriable_grpc(code)`;
- `refused-stream`: an HTTP/2 REFUSED_STREAM (never produced by this proxy's upstreams).
Istio's default when a route sets no `retries`: 2 attempts on
`connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes` with 503.
`attempts: 0` turns retries off.

Backoff is Envoy's fully jittered exponential: before retry n (1-based) wait a uniform random
time in [0, min(base·2ⁿ⁻¹, max)), base 25 ms and max 250 ms unless set.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from control.config.model import HTTPRetry

CONNECT_FAILURE = "connect-failure"
RESET = "reset"
TIMEOUT = "timeout"
FAILURES = (CONNECT_FAILURE, RESET, TIMEOUT)

KNOWN = frozenset({"5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx",
                   "retriable-status-codes", "refused-stream", "cancelled", "unavailable",
                   "deadline-exceeded", "resource-exhausted", "internal", "envoy-ratelimited",
                   "retriable-headers", "http3-post-connect-failure"})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int                    # retries after the first try (Istio's `attempts`)
    on: frozenset[str]
    status_codes: frozenset[int]
    per_try_timeout_s: float | None = None
    base_s: float = 0.025
    max_s: float = 0.25

    @classmethod
    def from_istio(cls, r: HTTPRetry | None) -> RetryPolicy:
        if r is None:
            return ISTIO_DEFAULT
        on, codes = set(), set()
        for item in r.retry_on:
            item = item.strip()
            if item.isdigit():
                codes.add(int(item))
                on.add("retriable-status-codes")
            elif item:
                on.add(item)
        per_try = r.per_try_timeout.total_seconds() if r.per_try_timeout else None
        attempts = 2 if r.attempts is None else r.attempts
        if not r.retry_on:  # Istio keeps its default conditions when only attempts are set
            on, codes = set(ISTIO_DEFAULT.on), set(ISTIO_DEFAULT.status_codes)
        return cls(attempts=attempts, on=frozenset(on), status_codes=frozenset(codes),
                   per_try_timeout_s=per_try)

    def retriable(self, outcome: int | str) -> bool:
        on = self.on
        if isinstance(outcome, int):
            if outcome >= 500 and "5xx" in on:
                return True
            if outcome in (502, 503, 504) and "gateway-error" in on:
                return True
            if outcome == 409 and "retriable-4xx" in on:
                return True
            return outcome in self.status_codes and "retriable-status-codes" in on
        if "5xx" in on:
            return True
        if outcome == CONNECT_FAILURE:
            return bool(on & {"connect-failure", "gateway-error", "reset"})
        if outcome == RESET:
            return "reset" in on
        if outcome == TIMEOUT:
            return bool(on & {"reset", "gateway-error"})
        return False

    def retriable_grpc(self, code: int) -> bool:
        """A gRPC status (from `grpc-status`) against the gRPC retryOn conditions."""
        name = GRPC_CONDITIONS.get(code)
        return name is not None and name in self.on

    def backoff_s(self, retry: int, rng: random.Random | None = None) -> float:
        """Wait before retry number `retry` (1 for the first retry)."""
        ceiling = min(self.base_s * (2 ** (retry - 1)), self.max_s)
        return (rng or random).random() * ceiling


# Envoy's gRPC retry conditions, by status code.
GRPC_CONDITIONS = {1: "cancelled", 4: "deadline-exceeded", 8: "resource-exhausted",
                   13: "internal", 14: "unavailable"}

ISTIO_DEFAULT = RetryPolicy(
    attempts=2,
    on=frozenset({"connect-failure", "refused-stream", "unavailable", "cancelled",
                  "retriable-status-codes"}),
    status_codes=frozenset({503}),
)
NO_RETRIES = RetryPolicy(attempts=0, on=frozenset(), status_codes=frozenset())
