"""Tier 1: retry conditions and backoff, outlier detection, load balancing, pool limits and
token buckets — as pure functions and state machines driven by an explicit clock."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.config.model import (
    ConnectionPoolSettings,
    HTTPRetry,
    HTTPSettings,
    OutlierDetection,
    TCPSettings,
)
from waypoint import retry
from waypoint.balancer import Balancer
from waypoint.outlier import OutlierDetector, OutlierSettings
from waypoint.pool import UNLIMITED, PoolCounters, PoolLimits
from waypoint.ratelimit import TokenBucket

# --- retries ----------------------------------------------------------------------------------

CASES = [
    # retryOn, outcome, retried?
    ("5xx", 500, True), ("5xx", 503, True), ("5xx", 404, False),
    ("5xx", retry.RESET, True), ("5xx", retry.CONNECT_FAILURE, True), ("5xx", retry.TIMEOUT, True),
    ("gateway-error", 502, True), ("gateway-error", 504, True), ("gateway-error", 500, False),
    ("gateway-error", retry.CONNECT_FAILURE, True), ("gateway-error", retry.RESET, False),
    ("reset", retry.RESET, True), ("reset", 503, False), ("reset", retry.TIMEOUT, True),
    ("connect-failure", retry.CONNECT_FAILURE, True), ("connect-failure", retry.RESET, False),
    ("connect-failure", 503, False),
    ("retriable-4xx", 409, True), ("retriable-4xx", 404, False),
    ("503", 503, True), ("503", 500, False), ("503,connect-failure", retry.CONNECT_FAILURE, True),
    ("retriable-status-codes,418", 418, True),
]


@pytest.mark.parametrize("on,outcome,expected", CASES)
def test_retry_on_has_envoys_meaning(on, outcome, expected):
    p = retry.RetryPolicy.from_istio(HTTPRetry(attempts=3, retry_on=tuple(on.split(","))))
    assert p.retriable(outcome) is expected


def test_istio_default_policy():
    p = retry.RetryPolicy.from_istio(None)
    assert p.attempts == 2
    assert p.retriable(503) and p.retriable(retry.CONNECT_FAILURE)
    assert not p.retriable(500) and not p.retriable(retry.RESET)


def test_attempts_zero_disables_and_per_try_timeout_is_read():
    p = retry.RetryPolicy.from_istio(HTTPRetry(attempts=0, retry_on=("5xx",)))
    assert p.attempts == 0
    p = retry.RetryPolicy.from_istio(HTTPRetry(attempts=3, per_try_timeout=timedelta(
        milliseconds=250), retry_on=("5xx",)))
    assert p.per_try_timeout_s == 0.25


def test_only_attempts_keeps_default_conditions():
    p = retry.RetryPolicy.from_istio(HTTPRetry(attempts=5))
    assert p.attempts == 5 and p.retriable(503) and not p.retriable(500)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=20), st.integers(min_value=0, max_value=2**32))
def test_backoff_is_fully_jittered_and_capped(n, seed):
    p = retry.ISTIO_DEFAULT
    b = p.backoff_s(n, random.Random(seed))
    assert 0 <= b < min(0.025 * 2 ** (n - 1), 0.25) + 1e-12


def test_backoff_spreads():
    rng = random.Random(5)
    values = [retry.ISTIO_DEFAULT.backoff_s(3, rng) for _ in range(500)]
    assert max(values) > 0.08 and min(values) < 0.01


# --- outlier detection ------------------------------------------------------------------------

def detector(hosts=("a", "b", "c", "d"), **kw) -> OutlierDetector:
    od = OutlierDetector(OutlierSettings(**{"interval_s": 10, "base_ejection_s": 30,
                                           "max_ejection_percent": 100, **kw}), now=0.0)
    od.set_hosts(list(hosts))
    return od


def test_five_consecutive_5xx_eject_and_success_resets():
    od = detector()
    for _ in range(4):
        od.record("a", 503, 1.0)
    od.record("a", 200, 1.0)
    for _ in range(4):
        od.record("a", 500, 1.0)
    assert not od.ejected("a")
    od.record("a", retry.RESET, 1.0)   # a failure with no answer counts as a 5xx
    assert od.ejected("a")
    assert od.usable(["a", "b"], 1.0) == ["b"]


def test_gateway_errors_threshold():
    od = detector(consecutive_5xx=0, consecutive_gateway=2)
    od.record("a", 500, 1)
    od.record("a", 500, 1)
    assert not od.ejected("a")
    od.record("a", 502, 1)
    od.record("a", retry.CONNECT_FAILURE, 1)
    assert od.ejected("a")


def test_host_returns_after_base_times_ejections_at_a_sweep():
    od = detector(consecutive_5xx=1)
    od.record("a", 500, 1.0)
    assert od.ejected("a")
    od.maybe_sweep(30.0)                # the sweep at 30 s: 1 + 30 > 30, still out
    assert od.ejected("a")
    od.maybe_sweep(40.0)                # the sweep at 40 s: returned
    assert not od.ejected("a")
    od.record("a", 500, 41.0)           # ejected again: now 2 × 30 s
    assert od.hosts["a"].ejections == 2
    od.maybe_sweep(100.0)
    assert od.ejected("a")              # 41 + 60 > 100
    od.maybe_sweep(110.0)
    assert not od.ejected("a")


def test_healthy_sweeps_lower_the_multiplier():
    od = detector(consecutive_5xx=1)
    od.record("a", 500, 1.0)
    od.maybe_sweep(40.0)
    assert not od.ejected("a") and od.hosts["a"].ejections == 1
    od.maybe_sweep(50.0)
    assert od.hosts["a"].ejections == 0


def test_max_ejection_percent_but_always_one():
    od = detector(consecutive_5xx=1, max_ejection_percent=10)
    od.record("a", 500, 1)
    od.record("b", 500, 1)
    assert od.ejected("a") and not od.ejected("b")
    od = detector(consecutive_5xx=1, max_ejection_percent=50)
    for h in "abc":
        od.record(h, 500, 1)
    assert [od.ejected(h) for h in "abc"] == [True, True, False]


def test_panic_below_min_health_uses_every_host():
    od = detector(hosts=("a", "b"), consecutive_5xx=1, min_health_percent=60)
    od.record("a", 500, 1)
    assert od.ejected("a")
    assert od.usable(["a", "b"], 1) == ["a", "b"]     # 50 % healthy < 60 %: panic
    od2 = detector(hosts=("a", "b"), consecutive_5xx=1, min_health_percent=0)
    od2.record("a", 500, 1)
    assert od2.usable(["a", "b"], 1) == ["b"]


def test_settings_from_istio_defaults():
    s = OutlierSettings.from_istio(OutlierDetection(consecutive_5xx_errors=3,
                                                    interval=timedelta(seconds=1)))
    assert (s.consecutive_5xx, s.consecutive_gateway, s.interval_s, s.base_ejection_s,
            s.max_ejection_percent) == (3, 0, 1.0, 30.0, 10)


# --- load balancing ---------------------------------------------------------------------------

def test_round_robin_cycles():
    b = Balancer("ROUND_ROBIN")
    picks = [b.pick(["a", "b", "c"], lambda h: 0) for _ in range(6)]
    assert sorted(picks) == ["a", "a", "b", "b", "c", "c"]


def test_least_request_prefers_the_idle_host():
    load = {"a": 10, "b": 0}
    b = Balancer("LEAST_REQUEST", rng=random.Random(1))
    assert all(b.pick(["a", "b"], load.get) == "b" for _ in range(50))


def test_random_and_retry_avoidance():
    b = Balancer("RANDOM", rng=random.Random(2))
    assert {b.pick(["a", "b", "c"], lambda h: 0) for _ in range(100)} == {"a", "b", "c"}
    assert all(b.pick(["a", "b"], lambda h: 0, avoid=["a"]) == "b" for _ in range(20))
    assert b.pick(["a"], lambda h: 0, avoid=["a"]) == "a"     # nothing else: reuse
    assert b.pick([], lambda h: 0) is None


def test_unsupported_balancer_is_refused():
    with pytest.raises(ValueError, match="not supported"):
        Balancer("PASSTHROUGH")


# --- pool limits ------------------------------------------------------------------------------

def test_pool_limits_from_istio():
    lim = PoolLimits.from_istio(ConnectionPoolSettings(
        tcp=TCPSettings(max_connections=1),
        http=HTTPSettings(http1_max_pending_requests=2, http2_max_requests=3, max_retries=4,
                          max_requests_per_connection=5)))
    assert (lim.max_connections, lim.max_pending, lim.max_requests, lim.max_retries,
            lim.max_requests_per_connection) == (1, 2, 3, 4, 5)
    assert PoolLimits.from_istio(None).max_requests == UNLIMITED


def test_pool_counters_overflow():
    c = PoolCounters(PoolLimits(max_requests=2, max_retries=1, max_pending=0))
    assert c.admit_request() and c.admit_request() and not c.admit_request()
    assert c.admit_retry() and not c.admit_retry()
    assert not c.may_queue()
    assert c.overflows == {"requests": 1, "pending": 1, "retries": 1, "connections": 0}


# --- token bucket -----------------------------------------------------------------------------

def test_token_bucket_counts_exactly():
    tb = TokenBucket(max_tokens=10, tokens_per_fill=5, fill_interval_s=1.0, now=100.0)
    allowed = sum(tb.take(100.0 + i * 0.01).allowed for i in range(50))   # 0.49 s: no refill
    assert allowed == 10
    assert tb.take(101.0).allowed            # one fill of 5
    assert tb.take(101.0).remaining == 3
    assert sum(tb.take(110.0).allowed for _ in range(20)) == 10   # capped at max_tokens


def test_token_bucket_rejects_nonsense():
    with pytest.raises(ValueError):
        TokenBucket(max_tokens=0, tokens_per_fill=1, fill_interval_s=1, now=0)
