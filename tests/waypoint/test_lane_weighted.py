"""Tier 2, differential: weighted routes (canary splits) in the fast lane.

A route with several destinations (no fault, no mirror) gets a plan per destination it can
draw and the lane draws one per request as `router.pick_weighted` does (`fastlane/plans.py`,
`Plan.draw` in `_lane.pyx`). Two waypoints — lane on, lane off — get the same client bytes
(`tests/waypoint/lane_diff.py`), the destinations being the side's two recording upstreams
(`UP` = subset v1, `UP2` = subset v2). Where the split draws nothing (100/0, 0/100, all 0)
or both sides draw from the same seeded `random` (no plan: everything in Python), everything
observable is compared byte for byte; where the lane draws, each side's split is compared
with the configured weights by an exact binomial bound, and a retry after the drawn
destination's 503 must stay with that destination's hosts. Each test also asserts what the
lane itself answered (`lacewing_waypoint_fast_lane_total`).
"""

from __future__ import annotations

import math
import re

import pytest

from tests.waypoint.lane_diff import DEAD, UP, UP2, Act, Pair, diff, ok, reply, web
from waypoint import fastlane

pytestmark = pytest.mark.skipif(fastlane.native is None, reason="fast lane not built")

CONFIG = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: demo}
spec:
  host: web
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /all-v1}}]
    headers:
      request: {set: {x-via: route, x-r: "1"}, remove: [x-secret]}
      response: {set: {x-route: r}, add: {x-ra: "1"}}
    route:
    - destination: {host: web, subset: v1}
      weight: 100
      headers:
        request: {set: {x-via: v1}, add: {x-d: v1}, remove: [x-r]}
        response: {remove: [x-route], add: {x-dest: v1}}
    - destination: {host: web, subset: v2}
      weight: 0
      headers: {request: {add: {x-d: v2}}}
  - match: [{uri: {prefix: /all-v2}}]
    route:
    - {destination: {host: web, subset: v1}, weight: 0}
    - destination: {host: web, subset: v2}
      weight: 100
      headers: {request: {add: {x-d: v2}}, response: {set: {x-dest: v2}}}
  - match: [{uri: {prefix: /zero-middle}}]
    route:
    - {destination: {host: web, subset: v1}, weight: 50}
    - {destination: {host: dead}, weight: 0}
    - {destination: {host: web, subset: v2}, weight: 50}
  - match: [{uri: {prefix: /half}}]
    route:
    - destination: {host: web, subset: v1}
      weight: 50
      headers:
        request: {set: {x-via: v1}, add: {x-d: v1}, remove: [x-r]}
        response: {add: {x-dest: v1}}
    - destination: {host: web, subset: v2}
      weight: 50
      headers:
        request: {add: {x-d: v2}}
        response: {set: {x-dest: v2}, remove: [x-up]}
    headers:
      request: {set: {x-via: route, x-r: "1"}}
  - match: [{uri: {prefix: /ninety}}]
    route:
    - {destination: {host: web, subset: v1}, weight: 90}
    - {destination: {host: web, subset: v2}, weight: 10}
  - match: [{uri: {prefix: /no-hosts}}]
    route:
    - {destination: {host: web, subset: v1}, weight: 50}
    - {destination: {host: web, subset: v3}, weight: 50}
  - match: [{uri: {prefix: /retry}}]
    retries: {attempts: 2, retryOn: "5xx"}
    route:
    - {destination: {host: web, subset: v1}, weight: 50}
    - {destination: {host: web, subset: v2}, weight: 50}
  - route: [{destination: {host: web, subset: v1}}]
"""


def _endpoint(version: str, port: int) -> dict:
    return {"name": f"web-{version}-0", "ip": "127.0.0.1", "port": port,
            "serviceAccount": "web", "labels": {"app": "web", "version": version}}


SERVICES = [{"name": "web", "namespace": "demo", "ports": [{"port": 80}],
             "endpoints": [_endpoint("v1", UP), _endpoint("v2", UP2)]},
            web("dead", port=DEAD)]


def rq(path: str, *headers: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: web.demo\r\n" + "".join(h + "\r\n" for h in headers)
            + "\r\n").encode("latin-1")


def same(p: Pair, *, answered: int, handed: dict[str, int] | None = None) -> dict:
    a, b = p.compare()
    assert a == b, "fast lane and Python path differ:\n" + diff(a, b)
    counts = p.lane_counts()
    assert counts == {**({"answered": answered} if answered else {}), **(handed or {})}, counts
    return a


def statuses(p: Pair, side) -> list[int]:
    return [int(s) for t in side.transcripts
            for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", t.data)]


def binomial_bound(n: int, prob: float, alpha: float) -> int:
    """The smallest k with P(|X - n·prob| > k) <= alpha for X ~ Binomial(n, prob), summed
    exactly from the probability mass function (log-gamma, no normal approximation)."""
    mean = n * prob
    pmf = [math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                    + i * math.log(prob) + (n - i) * math.log1p(-prob)) for i in range(n + 1)]
    by_distance = sorted(range(n + 1), key=lambda i: -abs(i - mean))
    tail, k = 0.0, 0
    for i in by_distance:            # grow the tail from the far ends inwards
        if tail + pmf[i] > alpha:
            k = math.ceil(abs(i - mean))
            break
        tail += pmf[i]
    return k


# --- no draw, or the same draws: everything compared -----------------------------------------

@pytest.mark.parametrize("path,upstream", [("/all-v1", "UP"), ("/all-v2", "UP2")])
def test_split_without_a_draw_is_exact(path, upstream):
    """100/0 and 0/100 (destination-level header operations after the route's, in the
    order `router.plan` gives them) are the same bytes, metrics and spans with the lane on
    and off, and the lane answers them all. (All weights 0 is refused by validation.)"""
    with Pair(SERVICES, CONFIG) as p:
        p.run([rq(f"{path}/a", "X-Secret: s", "x-r: client", "X-Via: c")], ["GET"])
        p.run([rq(f"{path}/b?q=1") * 3], ["GET"] * 3)
        seen = same(p, answered=4)
    other = "upstream2" if upstream == "UP" else "upstream"
    assert seen[other] == [] and len(seen["upstream" if upstream == "UP" else "upstream2"]) >= 1
    if path == "/all-v1":
        sent = seen["upstream"][0].lower()
        assert "x-via: v1\r\n" in sent and "x-d: v1\r\n" in sent
        assert "x-r:" not in sent and "x-secret" not in sent and "x-d: v2" not in sent
        got = seen["client"][0][0].lower()
        assert "x-dest: v1\r\n" in got and "x-ra: 1\r\n" in got and "x-route" not in got


def test_weighted_route_with_a_destination_without_hosts_stays_in_python():
    """Subset v3 has no endpoint: the route has no plan at all (not one covering v1 only);
    the lane hands every request over, and its Python path — drawing from the same seeded
    `random` as the other side — answers exactly as the Python-only waypoint (200 from v1,
    503 UH for v3)."""
    n = 16
    with Pair(SERVICES, CONFIG) as p:
        for i in range(n):
            p.run([rq(f"/no-hosts/{i}")], ["GET"])
        seen = same(p, answered=0, handed={"no_plan": n})
        codes = statuses(p, p.lane)
    assert set(codes) == {200, 503}, codes     # both destinations drawn (p = 1 - 2^-15)
    assert len(seen["upstream"]) >= 1 and seen["upstream2"] == []


def test_zero_weight_middle_destination_is_never_drawn():
    """v1 50 / dead 0 / v2 50: nothing ever reaches the 0-weight Service (whose endpoint
    refuses connections), on either side; the lane answers every request."""
    n = 300
    with Pair(SERVICES, CONFIG) as p:
        for i in range(0, n, 50):
            p.run([b"".join(rq(f"/zero-middle/{i + j}") for j in range(50))], ["GET"] * 50)
        for side in p.sides:
            assert statuses(p, side) == [200] * n
            assert side.upstream.count + side.upstream2.count == n
            assert side.upstream.count > 0 and side.upstream2.count > 0
        counts = p.lane_counts()
    assert counts == {"answered": n}, counts


def test_destination_header_operations_follow_the_draw():
    """A 50/50 split with route- and destination-level header operations: every request
    v1 got carries v1's operations applied after the route's, every one v2 got v2's, and
    each answer carries its own destination's response operations; the lane's requests are
    byte for byte the Python path's for the same destination."""
    n = 60
    with Pair(SERVICES, CONFIG) as p:
        p.run([b"".join(rq("/half/x", "x-r: client", "x-up: 1") for _ in range(n))],
              ["GET"] * n)
        a, b = p.observed(p.lane), p.observed(p.python)
        counts = p.lane_counts()
    assert counts == {"answered": n}, counts
    for seen in (a, b):
        v1 = [r.lower() for r in seen["upstream"]]
        v2 = [r.lower() for r in seen["upstream2"]]
        assert v1 and v2
        assert all("x-via: v1\r\n" in r and "x-d: v1\r\n" in r and "x-r:" not in r for r in v1)
        assert all("x-via: route\r\n" in r and "x-r: 1\r\n" in r and "x-d: v2\r\n" in r
                   for r in v2)
        answers = seen["client"][0][0].lower().split("http/1.1 ")[1:]
        assert len(answers) == n
        assert all(("x-dest: v1\r\n" in x and "x-up: 1" in x) or
                   ("x-dest: v2\r\n" in x and "x-up" not in x) for x in answers)
        assert sum("x-dest: v1\r\n" in x for x in answers) == sum(r.count("get /half/x ")
                                                                  for r in v1)

    def one_request(raws: list[str]) -> set[str]:   # ids are placeholders numbered per side
        return {re.sub(r"<[a-z0-9-]+?\d+>", "<id>", r.split("\r\n\r\n")[0])
                for raw in raws for r in raw.split("GET ")[1:]}
    assert one_request(a["upstream"]) == one_request(b["upstream"])
    assert one_request(a["upstream2"]) == one_request(b["upstream2"])


# --- the draw itself: distributions ----------------------------------------------------------

# Each side's count of requests that reached v2 is Binomial(N, w2/total). `binomial_bound`
# sums the exact two-sided tail; with alpha = 2.5e-7 per side, the test fails by chance with
# probability below 2 × 2.5e-7 = 5e-7 < 1e-6 (union bound over the two sides). For N = 3000:
# 50/50 → mean 1500, sd 27.4, bound ±141 (5.1 sd); 90/10 → mean 300, sd 16.4, bound ±86
# (5.2 sd).
# A lane that drew 50/50 for a 90/10 route, swapped the weights or always took one
# destination lands far outside (1200 away, or 1500 away).
@pytest.mark.parametrize("path,v2_share", [("/half", 0.5), ("/ninety", 0.1)])
def test_split_distribution(path, v2_share):
    n, batch = 3000, 100
    k = binomial_bound(n, v2_share, 2.5e-7)
    with Pair(SERVICES, CONFIG) as p:
        for i in range(0, n, batch):
            p.run([b"".join(rq(f"{path}/{i + j}") for j in range(batch))], ["GET"] * batch,
                  settle=0)
        counts = p.lane_counts()
        got = {side.lane: (side.upstream.count, side.upstream2.count) for side in p.sides}
    assert counts == {"answered": n}, counts        # the lane drew every one of them
    for lane, (v1, v2) in got.items():
        assert v1 + v2 == n
        assert abs(v2 - n * v2_share) <= k, (f"lane={lane}: {v2} of {n} to v2, expected "
                                              f"{n * v2_share:.0f} ± {k}")


# --- retries stay with the drawn destination -----------------------------------------------

def _fails_retry(rq) -> Act:
    return Act(reply(503, [("X-Up", "v1")], b"busy")) if rq.target.startswith("/retry") \
        else ok(rq)


def test_retry_after_a_drawn_destinations_503_stays_with_it():
    """v1 always answers 503, v2 200; the route retries 5xx twice. A request drawn to v1
    fails its first try in the lane, is handed to Python with that try and its draw
    (`Resume.drawn`), and Python retries v1's hosts only (3 tries, 503 to the client);
    one drawn to v2 is answered by the lane. A redraw after the handover would send some
    retries to v2 (200 after a 503 at v1)."""
    n = 24
    with Pair(SERVICES, CONFIG, script_factory=lambda: _fails_retry,
              script_factory2=lambda: ok) as p:
        for i in range(n):
            p.run([rq(f"/retry/{i}")], ["GET"])
        counts = p.lane_counts()
        result = {}
        for side in p.sides:
            codes = statuses(p, side)
            failed = codes.count(503)
            assert sorted(set(codes)) == [200, 503], codes   # both drawn: p = 1 - 2^-23
            assert side.upstream.count == 3 * failed, (side.lane, side.upstream.count, failed)
            assert side.upstream2.count == n - failed
            result[side.lane] = failed
    assert counts == {"answered": n - result[True], "retry": result[True]}, counts


# --- a full pool of the drawn destination ----------------------------------------------------

POOL_CONFIG = CONFIG.replace("  host: web\n  subsets:", "  host: web\n  trafficPolicy:\n"
                             "    connectionPool: {http: {http2MaxRequests: 1}}\n  subsets:")


def _holds(rq) -> Act:
    return Act(reply(200, body=b"slow"), delay=2.5) if rq.target == "/hold" else ok(rq)


def test_full_pool_of_the_drawn_destination_is_answered_for_it():
    """v1's only request slot is held by a slow request (the default route, v1) while 24
    requests of a 50/50 route come one after another: those drawn to v1 are handed over
    before any try (pool) with their draw, and Python answers 503 UO for v1 — it does not
    draw again (which would send about half of them to v2, 200, fewer 503s than
    handovers); those drawn to v2 the lane answers."""
    n = 24
    assert "http2MaxRequests" in POOL_CONFIG
    with Pair(SERVICES, POOL_CONFIG, script_factory=lambda: _holds) as p:
        p.run_staggered([(0, [rq("/hold")], ["GET"])] +
                        [(0.2 + 0.015 * i, [rq(f"/half/{i}")], ["GET"]) for i in range(n)])
        counts = p.lane_counts()
        failed = {}
        for side in p.sides:
            codes = [int(t.data[9:12]) for t in side.transcripts]
            assert codes[0] == 200 and len(codes) == n + 1
            failed[side.lane] = codes.count(503)
            assert all(b"x-envoy-overloaded: true" in t.data for t in side.transcripts[1:]
                       if t.data[9:12] == b"503")
            assert side.upstream.count == 1 and side.upstream2.count == n - failed[side.lane]
            assert 1 <= failed[side.lane] < n        # none to v1: p = 2^-24
        pools = p.observed(p.lane)["pools"]
    assert counts == {"answered": 1 + n - failed[True], "pool": failed[True]}, counts
    assert sum(c["overflows"].get("requests", 0) for c in pools.values()) == failed[True], pools
