"""The Python side of the fast lane: plans, new connections, outcomes, spans, handovers.

Before: a `proxy.Waypoint` and its `WaypointServer` with the lane on (`fastlane.enabled`).
After: a native `Lane` whose callbacks land here — once per distinct request shape
(`decide` → a `Plan` or None, cached by the lane until the next snapshot), once per new
upstream connection (`connect`: `ClusterState._connect` does tunnels and TLS, then the
connection moves to the lane), on outlier-relevant outcomes (`record`), per metric series
(`series`), for sampled spans, and when the lane gives a request back (`resume` → a
`Resume` that `Waypoint._forward` takes as its first try). The steady request path makes
none of these calls.

A Plan exists only when the lane can do everything the Python pipeline would and the result
is deterministic or a weighted draw: a Service whose L7 authorization policies (its own,
and those of every host's workload) read only what the plan key holds (principal, method,
normalized path, Host, port — no source IP, no request header) and ALLOW the request (a
denial is Python's 403; the key holds the principal itself, so the decision is per
principal), no rate limit, no fault, no mirror, and for every destination the
route can draw (`router.drawable`: weight > 0, or the first when none has a weight) an
HTTP/1.1 cluster with hosts and header operations on ordinary names only. A route with
several such destinations gets a parent plan holding one plan per destination (each made
from `Waypoint._destination_decision`, as the pipeline makes its drawn one) and their
weights; the lane draws among them per request as `router.pick_weighted` does, and a
request it hands back after a try carries its draw (`Resume.drawn`), so Python retries
within the drawn destination. If any drawable destination has no plan, the route has none.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time

from waypoint import authz as authz_mod
from waypoint import http1, retry
from waypoint.fastlane import native
from waypoint.paths import BadTarget, normalize_target, valid_authority
from waypoint.router import apply_header_ops, drawable
from waypoint.telemetry import TRACE_HEADERS, LightSpan, Tracing

# Header names a plan's operations may not touch (the lane writes these itself).
RESERVED = http1.HOP_BY_HOP | TRACE_HEADERS | {"x-request-id", "x-forwarded-proto"}


class Resume:
    """A request the lane started and gives back before answering it: `_forward` takes
    its first try from here (same `tried`, retries, backoff and route deadline). With
    `host` None no try was made: only the weighted route's draw (`drawn`) goes back."""

    __slots__ = ("start", "span", "request_id", "host", "outcome", "response", "stale",
                 "route_timeout", "drawn")

    def __init__(self, *, start: float, span, request_id: str | None, host, outcome,
                 response, stale: bool, route_timeout: bool, drawn=None) -> None:
        self.start = start
        self.span = span
        self.request_id = request_id
        self.host = host
        self.outcome = outcome         # a status, or retry.CONNECT_FAILURE/RESET/TIMEOUT
        self.response = response       # (headers, body) of a retriable answer
        self.stale = stale             # a pooled connection had closed: try again, uncounted
        self.route_timeout = route_timeout
        self.drawn = drawn             # (route, destination) the lane drew: not drawn again

    async def replay(self, waypoint, state, host, payload, head_only: bool, stream):
        """The first try's result, as `Waypoint._try` would have returned or raised it."""
        from waypoint.proxy import UpstreamFailure

        if self.route_timeout:
            await asyncio.sleep(3600)  # the route deadline (already past) cancels this
        if self.stale:
            return await waypoint._try(state, host, payload, head_only, stream)
        if self.response is not None:
            headers, body = self.response
            return http1.Response(self.outcome, headers, body, True)
        if self.outcome == retry.TIMEOUT:
            raise TimeoutError
        raise UpstreamFailure(self.outcome, "first try (fast lane)")


class Glue:
    """One per waypoint server: owns the native `Lane` and answers its calls."""

    def __init__(self, waypoint, server) -> None:
        self.wp = waypoint
        self.server = server
        native.set_reasons(http1.REASONS)
        tracing = waypoint.tracing
        self.lane = native.Lane(self, server, sample_ratio=tracing.sample_ratio,
                                random=tracing._random,
                                clock=None if waypoint.clock is time.monotonic
                                else waypoint.clock)
        self.lane.idle_s = getattr(waypoint, "stream_idle_timeout_s", 0.0) or 0.0
        waypoint.lane_glue = self
        waypoint.metrics.registry.register(_LaneCollector(self.lane))
        self.clear()

    def clear(self) -> None:
        """A new snapshot: plans go; the header names any route reads are the key's."""
        from waypoint.proxy import _route_inputs

        names: set[str] = set()
        for routes in self.wp.config.routes.values():
            names.update(_route_inputs(routes)[0])
        self.lane.clear(tuple(n.encode("latin-1") for n in sorted(names)))

    def describe(self) -> dict:
        return self.lane.describe()

    # --- decisions ------------------------------------------------------------------------
    def decide(self, down, fields):
        method, raw_target, authority, headers = fields
        try:
            return self._decide(method, raw_target, authority, headers, down.principal,
                                down.target)
        except Exception:  # noqa: BLE001 - no plan: the Python path answers (and reports)
            return None

    def _decide(self, method: str, raw_target: str, authority: str,
                header_list: list[tuple[str, str]], principal, service_target):
        wp = self.wp
        cfg = wp.config
        try:
            target = normalize_target(raw_target)
        except BadTarget:
            return None
        if not valid_authority(authority):   # Python answers 400
            return None
        headers = dict(header_list)
        if service_target is not None:
            svc = cfg.snapshot.services.get(service_target[0])
            port = service_target[1]
        else:
            svc = cfg.service_for(authority)
            port = wp._find_service_port(svc, authority) if svc is not None else 0
        if svc is None:
            return None
        _, uid, policies, ratelimits, routes, inputs = wp._describe_service(svc)
        if ratelimits:
            return None
        # L7 authorization as the pipeline asks it (`_pipeline`, and `_forward` per host):
        # a plan only when it allows and reads nothing the plan key does not hold
        attrs = authz_mod.RequestAttributes(method, authority, target.path, port, principal)
        if policies and not _allows(policies, attrs):
            return None
        if routes is None:
            return self._plan(method, authority, target, principal, svc,
                              wp._direct_decision(svc, port, target), None, attrs)
        selected = wp._select_route(routes, method, authority, target, headers)
        if selected is None:
            return None
        route, match, view = selected
        if route.fault is not None or route.mirror is not None:
            return None
        # One plan per destination the route can draw, each from the pipeline's own
        # per-destination decision; any of them without a plan: none at all.
        subs = []
        for dest, weight in drawable(route):
            decided = wp._destination_decision(uid, port, route, match, view, dest)
            if not isinstance(decided, tuple):
                return None
            plan = self._plan(method, authority, target, principal, svc, decided,
                              (route, dest), attrs)
            if plan is None:
                return None
            subs.append((plan, weight))
        if len(subs) == 1:
            return subs[0][0]
        parent = native.Plan()            # the lane draws one of `subs` per request
        parent.subs = [p for p, _ in subs]
        parent.weights = [w for _, w in subs]
        parent.total = sum(parent.weights)
        return parent

    def _plan(self, method: str, authority: str, target, principal, svc, decided, drawn,
              attrs):
        """The plan of one destination (`decided` as `Waypoint._destination_decision` gives
        it), or None when the lane cannot do exactly what the pipeline would."""
        wp = self.wp
        cfg = wp.config
        (_, _, _, _, path, rewritten, req_ops, resp_ops, timeout_s, policy, mirror, fault,
         cluster) = decided
        if mirror is not None or fault.delay_s or fault.abort_status is not None:
            return None
        if cluster is None or not cluster.hosts or cluster.h2:
            return None
        for h in cluster.hosts:          # whichever host is picked must allow it
            wl_policies = cfg.authz_for_workload(h.workload)
            if wl_policies and not _allows(wl_policies, attrs):
                return None
        for ops in (*req_ops, *resp_ops):
            touched = {n.lower() for n in (*ops.remove, *ops.set, *ops.add)}
            if touched & RESERVED:
                return None
        state = wp.state_for(cluster)
        if state.lane is None:
            state.lane = native.ClusterLane(self.lane, state)
        plan = native.Plan()
        plan.cluster = state.lane
        uri = f"{path}?{target.query}" if target.query else path
        plan.head = (f"{method} {uri} HTTP/1.1\r\nhost: {rewritten or authority}\r\n"
                     ).encode("latin-1")
        add, dropped = _ops(req_ops)
        from waypoint.proxy import DROP_REQUEST_HEADERS

        plan.drop = sorted(n.encode("latin-1") for n in (set(DROP_REQUEST_HEADERS) | dropped)
                           if not n.startswith(":"))
        plan.add = add
        plan.xfp = f"x-forwarded-proto: {'https' if principal else 'http'}\r\n".encode()
        resp_add, resp_dropped = _ops(resp_ops)
        plan.resp_drop = sorted(n.encode("latin-1") for n in resp_dropped)
        plan.resp_add = resp_add
        plan.timeout_s = timeout_s or 0.0
        plan.per_try_s = policy.per_try_timeout_s or 0.0
        plan.attempts = policy.attempts
        plan.retriable_status = bytes(49 if s >= 100 and policy.retriable(s) else 48
                                      for s in range(600))
        plan.send_length = method in ("POST", "PUT", "PATCH")
        plan.context = (svc, principal)
        plan.drawn = drawn
        return plan

    # --- connections and outcomes ---------------------------------------------------------
    def connect(self, cluster_lane, index: int, lane_down) -> None:
        """A new upstream connection for the lane (its slot is already counted)."""
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._connect(cluster_lane, index, lane_down))
        self.wp._tasks.add(task)
        task.add_done_callback(self.wp._tasks.discard)

    async def _connect(self, cl, index: int, lane_down) -> None:
        from waypoint.proxy import CONNECT_TIMEOUT_S

        state = cl.state
        host = cl.hosts[index]
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                conn = await state._connect(asyncio.get_running_loop(), host)
        except (OSError, TimeoutError, ssl.SSLError):
            state.counters.connections -= 1
            state._wake()
            lane_down.connect_failed()
            return
        except BaseException:
            state.counters.connections -= 1
            state._wake()
            with contextlib.suppress(Exception):
                lane_down.connect_failed()
            raise
        if conn.closed:                    # closed already (its slot is given back)
            lane_down.connect_failed()
            return
        up = native.LaneUp(cl, index)
        transport = conn.transport
        conn.closed = True                 # the Python object no longer owns it
        transport.set_protocol(up)
        up.connection_made(transport)
        lane_down.connected(up)

    def record(self, cl, host, outcome) -> None:
        cl.state.record(host, outcome, self.wp.clock())

    def series(self, plan, host, status: int, flags: str):
        """The metric series of (plan, host, status, flags) — the same object
        `Waypoint._observe` finds for such a request; False beyond the series limit."""
        from waypoint.proxy import Incoming, Outgoing

        wp = self.wp
        svc, principal = plan.context
        rq = Incoming("", "", "", [], b"", principal, None, "http")
        out = Outgoing(status, [], b"", flags)
        key = (principal, wp.config.uid_of(svc), host.address, status, flags, "http", "-")
        hit = wp._labels.get(key)
        if hit is None:
            if len(wp._labels) >= 20000:
                wp._labels.clear()
            labels = wp._make_labels(rq, svc, host, out, "-")
            hit = wp._labels[key] = (labels, wp.metrics.series_for(labels))
        return hit[1] if hit[1] is not None else False

    def stream_idle_answer(self, plan):
        """What the Python path answers when a request's stream idles out before anything
        was sent (408 SI, the connection closed), and its metric series: the pipeline was
        cancelled, so the series names no Service or host."""
        hit = plan.series.get("idle")
        if hit is None:
            from waypoint.proxy import Incoming

            wp = self.wp
            _, principal = plan.context
            out = wp._local(408, "SI", body=b"stream timeout")
            payload = http1.serialize_response(out.status, out.headers, out.body,
                                               keep_alive=False)
            rq = Incoming("", "", "", [], b"", principal, None, "http")
            key = (principal, None, None, 408, "SI", "http", "-")
            got = wp._labels.get(key)
            if got is None:
                got = wp._labels[key] = (labels := wp._make_labels(rq, None, None, out, "-"),
                                         wp.metrics.series_for(labels))
            hit = plan.series["idle"] = (payload, got[1] if got[1] is not None else False)
        return hit

    # --- spans ----------------------------------------------------------------------------
    def span_start(self, down, fields):
        """A sampled request: its SDK span, and the trace header lines for it."""
        method, _, authority, headers = fields
        hd = dict(headers)
        span = self.wp.tracing.start_sampled(f"{method} {authority}", hd)
        lines = "".join(f"{n}: {v}\r\n" for n, v in Tracing.propagation_headers(span, {}))
        return span, lines.encode("latin-1")

    def span_end(self, span, status: int) -> None:
        span.set_attribute("http.response.status_code", status)
        span.end()

    # --- handing back -----------------------------------------------------------------------
    def drawn(self, drawn) -> Resume:
        """A weighted route's request handed back before any try (its destination's pool is
        full, no host to pick, ...): only its draw goes with it (`host` None)."""
        return Resume(start=self.wp.clock(), span=None, request_id=None, host=None,
                      outcome=None, response=None, stale=False, route_timeout=False,
                      drawn=drawn)

    def resume(self, cl, host, outcome, response, start: float, span, rid,
               stale: bool, route_timeout: bool, ids=None, drawn=None) -> Resume:
        if span is None and ids is not None:      # the unsampled span the first try carried
            tid, sid, parent = ids
            span = LightSpan(tid.decode("ascii"), sid.decode("ascii"),
                             int(parent, 16) if parent is not None else None)
        return Resume(start=start, span=span,
                      request_id=rid.decode("latin-1") if rid is not None else None,
                      host=host, outcome=outcome, response=response, stale=stale,
                      route_timeout=route_timeout, drawn=drawn)


# What a policy may read for its decision to be the plan's: the principal (and the
# namespace and service account in it), method, normalized path, Host, and the Service's port
# — all in the plan key. Source IPs and request headers are not.
_KEY_CONDITIONS = frozenset({"source.principal", "source.namespace", "source.serviceAccount",
                             "destination.port"})


def _reads_only_the_key(policies) -> bool:
    for p in policies:
        for rule in p.spec.rules:
            for f in rule.from_:
                if f.source is not None and (f.source.ip_blocks or f.source.not_ip_blocks):
                    return False
            if any(c.key not in _KEY_CONDITIONS for c in rule.when):
                return False
    return True


def _allows(policies, attrs) -> bool:
    """Whether `policies` allow every request of this plan's shape: they read only what the
    plan key holds (so the decision is the same for all of them) and allow this one. A
    denial stays with the Python path (403 `RBAC: access denied`)."""
    return _reads_only_the_key(policies) and authz_mod.evaluate(policies, attrs).allowed


def _ops(ops_list) -> tuple[bytes, set[str]]:
    """Header operations as (lines the lane appends, names it drops from the message's own
    fields): applied to a one-line stand-in so that later operations act on earlier ones'
    lines exactly as `apply_header_ops` does."""
    stand_in = [("\0", "")]
    dropped: set[str] = set()
    for ops in ops_list:
        apply_header_ops(stand_in, ops)
        dropped |= {n.lower() for n in ops.remove} | {n.lower() for n in ops.set}
    lines = "".join(f"{n}: {v}\r\n" for n, v in stand_in[1:])
    return lines.encode("latin-1"), dropped


class _LaneCollector:
    """`lacewing_waypoint_fast_lane_total{outcome,reason}` from the lane's counters."""

    def __init__(self, lane) -> None:
        self.lane = lane

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        fam = CounterMetricFamily("lacewing_waypoint_fast_lane",
                                  "Requests the fast lane answered or handed to the Python path",
                                  labels=("outcome", "reason"))
        for (outcome, reason), n in sorted(self.lane.counts().items()):
            fam.add_metric([outcome, reason], n)
        yield fam
