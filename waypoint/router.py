"""VirtualService routing for one request: which route, which destination, what changes.

Before: `config` found the request's Service and its HTTP routes; `paths` normalized the path.
After: a `RoutePlan` — the destination (host, subset, port), the URI and authority to send,
header operations, timeout, retry policy, fault and mirror decisions — or `None` when routes
exist and none matches (the proxy answers 404, as Envoy does).

Matching follows Istio: routes are tried in order, the first match wins; a route matches
when any of its `match` blocks does (none: everything), and a block when all its conditions
do — URI (exact/prefix/regex, on the path without query), method, headers (names
case-insensitive; a condition with no value means "present"), query parameters. Weighted
destinations are drawn at random per request (Envoy's weighted clusters); an unweighted single
destination takes everything. A `rewrite.uri` replaces the matched prefix when the match was
a prefix, else the whole path; the query string is kept.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from control.config.model import (
    Destination,
    HeaderOperations,
    HTTPFaultInjection,
    HTTPMatchRequest,
    HTTPRoute,
)
from waypoint.matching import string_match
from waypoint.retry import RetryPolicy


@dataclass(slots=True)
class RequestView:
    method: str
    authority: str
    path: str                        # normalized, no query
    query: str
    headers: Mapping[str, str]       # lower-case names

    def query_params(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in parse_qsl(self.query, keep_blank_values=True):
            out.setdefault(k, v)
        return out


def match_block(m: HTTPMatchRequest, r: RequestView, params: dict | None = None) -> bool:
    if m.uri is not None and not string_match(m.uri, r.path):
        return False
    if m.method is not None and not string_match(m.method, r.method):
        return False
    for name, sm in m.headers.items():
        if not string_match(sm, r.headers.get(name.lower())):
            return False
    if m.query_params:
        params = params if params is not None else r.query_params()
        for name, sm in m.query_params.items():
            if not string_match(sm, params.get(name)):
                return False
    return True


def select_route(routes: tuple[HTTPRoute, ...], r: RequestView
                 ) -> tuple[HTTPRoute, HTTPMatchRequest | None] | None:
    params = None
    for route in routes:
        if not route.match:
            return route, None
        for m in route.match:
            if m.query_params and params is None:
                params = r.query_params()
            if match_block(m, r, params):
                return route, m
    return None


def drawable(route: HTTPRoute) -> list[tuple[object, float]]:
    """The destinations a request of `route` can be sent to, with the weights they are drawn
    by: one (weight 1.0) when nothing is drawn (a single destination, or all weights 0 or
    unset), else every destination of weight > 0, in order. `pick_weighted` draws over this
    list, and the fast lane (`fastlane/plans.py`) makes one plan per entry and draws the same
    way natively."""
    dests = route.route
    total = sum(d.weight or 0 for d in dests)
    if len(dests) == 1 or total <= 0:
        return [(dests[0], 1.0)]
    return [(d, float(d.weight)) for d in dests if (d.weight or 0) > 0]


def pick_weighted(route: HTTPRoute, rng: random.Random):
    """Envoy's weighted clusters: x uniform in [0, total), the first destination whose
    running weight passes it."""
    choices = drawable(route)
    if len(choices) == 1:
        return choices[0][0]
    x = rng.random() * sum(w for _, w in choices)
    for d, w in choices:
        x -= w
        if x < 0:
            return d
    return choices[-1][0]


def rewrite_path(route: HTTPRoute, match: HTTPMatchRequest | None, path: str) -> str:
    rw = route.rewrite
    if rw is None or rw.uri is None:
        return path
    if match is not None and match.uri is not None and match.uri.prefix is not None:
        rest = path[len(match.uri.prefix):]
        new = rw.uri + rest
        return new.replace("//", "/") if rw.uri.endswith("/") and rest.startswith("/") else new
    return rw.uri


def percent_hit(pct: float, rng: random.Random) -> bool:
    if pct >= 100:
        return True
    if pct <= 0:
        return False
    return rng.random() * 100 < pct


@dataclass(frozen=True, slots=True)
class FaultDecision:
    delay_s: float = 0.0
    abort_status: int | None = None


NO_FAULT = FaultDecision()


def decide_fault(fault: HTTPFaultInjection | None, rng: random.Random) -> FaultDecision:
    """Delay and abort are drawn independently; an unset percentage means every request."""
    if fault is None:
        return NO_FAULT
    delay = 0.0
    if fault.delay is not None and fault.delay.fixed_delay is not None:
        pct = 100.0 if fault.delay.percentage is None else fault.delay.percentage.value
        if percent_hit(pct, rng):
            delay = fault.delay.fixed_delay.total_seconds()
    abort = None
    if fault.abort is not None and fault.abort.http_status is not None:
        pct = 100.0 if fault.abort.percentage is None else fault.abort.percentage.value
        if percent_hit(pct, rng):
            abort = fault.abort.http_status
    return FaultDecision(delay, abort)


def apply_header_ops(headers: list[tuple[str, str]], ops: HeaderOperations | None) -> None:
    """In place on a list of (lower-case name, value): remove, then set, then add."""
    if ops is None:
        return
    drop = {n.lower() for n in ops.remove} | {n.lower() for n in ops.set}
    if drop:
        headers[:] = [(n, v) for n, v in headers if n not in drop]
    for n, v in ops.set.items():
        headers.append((n.lower(), v))
    for n, v in ops.add.items():
        headers.append((n.lower(), v))


@dataclass(slots=True)
class RoutePlan:
    destination: Destination
    path: str
    authority: str | None            # a rewritten authority, or None to keep the client's
    request_ops: tuple[HeaderOperations, ...]
    response_ops: tuple[HeaderOperations, ...]
    timeout_s: float | None
    retry: RetryPolicy
    fault: FaultDecision
    mirror: Destination | None
    route_name: str


_RETRY_CACHE: dict[int, tuple[object, RetryPolicy]] = {}


def _retry_policy(route: HTTPRoute) -> RetryPolicy:
    """RetryPolicy per route, computed once (keyed by identity, checked against the route)."""
    hit = _RETRY_CACHE.get(id(route.retries))
    if hit is not None and hit[0] is route.retries:
        return hit[1]
    policy = RetryPolicy.from_istio(route.retries)
    if len(_RETRY_CACHE) > 10000:
        _RETRY_CACHE.clear()
    _RETRY_CACHE[id(route.retries)] = (route.retries, policy)
    return policy


def plan(route: HTTPRoute, match: HTTPMatchRequest | None, r: RequestView,
         rng: random.Random, *, dest=None) -> RoutePlan:
    """The route's plan for one of its destinations: `dest` when the caller drew it
    already (or builds a plan per destination), else drawn here (`pick_weighted`). The
    destination's header operations come after the route's."""
    if dest is None:
        dest = pick_weighted(route, rng)
    req_ops, resp_ops = [], []
    for h in (route.headers, dest.headers):
        if h is not None:
            if h.request is not None:
                req_ops.append(h.request)
            if h.response is not None:
                resp_ops.append(h.response)
    mirror = None
    if route.mirror is not None:
        pct = 100.0 if route.mirror_percentage is None else route.mirror_percentage.value
        if percent_hit(pct, rng):
            mirror = route.mirror
    timeout = route.timeout.total_seconds() if route.timeout else None
    return RoutePlan(
        destination=dest.destination,
        path=rewrite_path(route, match, r.path),
        authority=route.rewrite.authority if route.rewrite and route.rewrite.authority else None,
        request_ops=tuple(req_ops), response_ops=tuple(resp_ops),
        timeout_s=timeout or None,  # Istio: 0 means no timeout
        retry=_retry_policy(route),
        fault=decide_fault(route.fault, rng),
        mirror=mirror,
        route_name=route.name or "",
    )
