"""Tier 2: routing stays exact per request while the waypoint reuses its route decisions.

The waypoint caches a route decision that draws no random number, keyed by what the matches
read (method, normalized path, the matched header names' values, the query when a match looks
at it). These tests interleave requests that differ in exactly one of those inputs and check
each answer, so a decision reused for the wrong request would show; and a new snapshot must
replace every cached decision.
"""

from __future__ import annotations

import json

from lacewing.sample_app import Behaviour
from tests.waypoint.conftest import SUBSETS, get, make_snapshot, service_dict

ROUTES = SUBSETS + """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  http:
  - match: [{headers: {x-user: {exact: tester}}}]
    headers: {response: {set: {x-route: tester}}}
    route: [{destination: {host: web, subset: v2}}]
  - match: [{queryParams: {debug: {exact: "1"}}}]
    headers: {response: {set: {x-route: debug}}}
    route: [{destination: {host: web, subset: v2}}]
  - match: [{uri: {prefix: /api/}, method: {exact: POST}}]
    rewrite: {uri: /posted/}
    headers: {response: {set: {x-route: api-post}}}
    route: [{destination: {host: web, subset: v1}}]
  - match: [{uri: {prefix: /api/}}]
    rewrite: {uri: /v1api/}
    headers: {response: {set: {x-route: api}}}
    route: [{destination: {host: web, subset: v1}}]
  - headers: {response: {set: {x-route: default}}}
    route: [{destination: {host: web, subset: v1}}]
"""

# (method, path, headers) → (version, path the backend saw, x-route)
CASES = [
    (("GET", "/api/a", {}), ("v1", "/v1api/a", "api")),
    (("GET", "/api/a", {"x-user": "tester"}), ("v2", "/api/a", "tester")),
    (("GET", "/api/a", {"x-user": "Tester"}), ("v1", "/v1api/a", "api")),
    (("GET", "/api/a?debug=1", {}), ("v2", "/api/a?debug=1", "debug")),
    (("GET", "/api/a?debug=2", {}), ("v1", "/v1api/a?debug=2", "api")),
    (("POST", "/api/a", {}), ("v1", "/posted/a", "api-post")),
    (("GET", "/api//a", {}), ("v1", "/v1api/a", "api")),        # normalized first
    (("GET", "/other", {}), ("v1", "/other", "default")),
    (("GET", "/other", {"x-user": "tester"}), ("v2", "/other", "tester")),
]


def _ask(port: int, method: str, path: str, headers: dict) -> tuple[str, str, str]:
    status, resp_headers, body = get(port, path, method=method, headers=headers,
                                     body=b"" if method == "POST" else None)
    assert status == 200, (method, path, headers, status, body)
    doc = json.loads(body)
    return doc["version"], doc["path"], resp_headers.get("x-route")


def test_interleaved_requests_each_get_their_own_route(backends, waypoint_for):
    backs = backends(("v1", Behaviour()), ("v2", Behaviour()))
    wp = waypoint_for([service_dict(backs)], ROUTES)
    for order in (CASES, CASES[::-1], CASES[1::2] + CASES[0::2]):
        for (method, path, headers), expected in order:
            assert _ask(wp.port, method, path, headers) == expected, (method, path, headers)


def test_a_new_snapshot_replaces_cached_decisions(backends, waypoint_for):
    backs = backends(("v1", Behaviour()), ("v2", Behaviour()))
    wp = waypoint_for([service_dict(backs)], ROUTES)
    assert _ask(wp.port, "GET", "/other", {}) == ("v1", "/other", "default")
    assert _ask(wp.port, "GET", "/other", {}) == ("v1", "/other", "default")   # reused
    moved = ROUTES.replace("""  - headers: {response: {set: {x-route: default}}}
    route: [{destination: {host: web, subset: v1}}]""", """  - headers: {response: {set: {x-route: moved}}}
    route: [{destination: {host: web, subset: v2}}]""")
    assert moved != ROUTES
    wp.update(make_snapshot([service_dict(backs)], moved, version="2"))
    assert _ask(wp.port, "GET", "/other", {}) == ("v2", "/other", "moved")
