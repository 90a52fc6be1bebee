"""Tier 2, differential: L7 AuthorizationPolicy in the fast lane.

A Service whose policies read only what the lane's plan key holds (principal, method,
normalized path, Host, port) gets a plan for a request they ALLOW; a denied request stays
with the Python path, which answers 403 `RBAC: access denied`. Two waypoints — lane on,
lane off, both terminating mutual TLS so that clients have principals (alice, bob) — get
the same client bytes (`tests/waypoint/lane_diff.py`) and everything observable is compared;
each test also asserts what the lane answered itself and what it handed over.
"""

from __future__ import annotations

import pathlib
import tempfile

import pytest

from tests.waypoint.lane_diff import Pair, diff, web
from waypoint import fastlane

pytestmark = pytest.mark.skipif(fastlane.native is None, reason="fast lane not built")

ALICE = "cluster.local/ns/demo/sa/alice"
BOB = "cluster.local/ns/demo/sa/bob"

POLICIES = f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: web-allow, namespace: demo}}
spec:
  targetRefs: [{{kind: Service, group: "", name: web}}]
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["{ALICE}"]}}}}]
    to: [{{operation: {{methods: [GET, HEAD], paths: ["/public/*", "/a/b"], hosts: [web.demo]}}}}]
  - from: [{{source: {{namespaces: [demo]}}}}]
    to: [{{operation: {{paths: ["/ns/*"]}}}}]
    when: [{{key: source.principal, notValues: ["{ALICE}"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: web-deny, namespace: demo}}
spec:
  targetRefs: [{{kind: Service, group: "", name: web}}]
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/public/admin", "/public/admin/*"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: by-header, namespace: demo}}
spec:
  targetRefs: [{{kind: Service, group: "", name: hdr}}]
  action: ALLOW
  rules:
  - when: [{{key: "request.headers[x-key]", values: ["open"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-by-header, namespace: demo}}
spec:
  targetRefs: [{{kind: Service, group: "", name: hdrdeny}}]
  action: DENY
  rules:
  - when: [{{key: "request.headers[x-key]", values: ["shut"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-by-ip, namespace: demo}}
spec:
  targetRefs: [{{kind: Service, group: "", name: ipdeny}}]
  action: DENY
  rules:
  - from: [{{source: {{ipBlocks: [127.0.0.0/8]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: wl, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: guarded}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["{BOB}"]}}}}]
"""


def _client_workload(sa: str) -> dict:
    return {"name": sa, "namespace": "demo", "ports": [{"port": 80}],
            "endpoints": [{"name": f"{sa}-0", "ip": "127.0.0.9", "port": 9,
                           "serviceAccount": sa, "labels": {"app": sa, "version": "v1"}}]}


SERVICES = [web(), web("hdr"), web("hdrdeny"), web("ipdeny"), web("guarded"), web("open"),
            _client_workload("alice"), _client_workload("bob")]


@pytest.fixture(scope="module")
def pki():
    from control.ca.authority import CertificateAuthority
    from control.ca.spiffe_id import workload_id
    from waypoint.tls import client_context, server_context

    with tempfile.TemporaryDirectory(prefix="lw-laneauthz-") as d:
        ca = CertificateAuthority.load_or_generate(pathlib.Path(d))
        bundle = b"".join(ca.trust_bundle)

        def issue(sa: str):
            key, chain = ca.issue_with_new_key(workload_id("demo", sa))
            return b"".join(chain.cert_chain), key

        yield (server_context(*issue("waypoint"), bundle),
               {sa: client_context(*issue(sa), bundle) for sa in ("alice", "bob")})


def rq(target: str, *headers: str, method: str = "GET", host: str = "web.demo") -> bytes:
    return (f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"
            + "".join(h + "\r\n" for h in headers) + "\r\n").encode("latin-1")


def same(p: Pair, *, answered: int, handed: int) -> dict:
    a, b = p.compare()
    assert a == b, "fast lane and Python path differ:\n" + diff(a, b)
    counts = p.lane_counts()
    want = {k: v for k, v in (("answered", answered), ("no_plan", handed)) if v}
    assert counts == want, counts
    return a


def status(seen: dict, i: int) -> int:
    return int(seen["client"][i][0][9:12])


# (id, client, request bytes, allowed) — each on its own connection, in this order
CASES = [
    ("alice-allowed", "alice", rq("/public/x"), True),
    ("alice-denied-by-deny-policy", "alice", rq("/public/admin"), False),
    ("alice-denied-by-method", "alice", rq("/public/x", method="POST"), False),
    ("alice-head", "alice", rq("/public/x", method="HEAD"), True),
    ("alice-exact-path", "alice", rq("/a/b?q=1"), True),
    ("alice-not-in-any-allow", "alice", rq("/private"), False),
    ("alice-ns-rule-excludes-her", "alice", rq("/ns/1"), False),
    ("bob-ns-rule", "bob", rq("/ns/1"), True),
    ("bob-denied-by-principal", "bob", rq("/public/x"), False),
    # normalization: the decision is on the normalized path, as the pipeline's
    ("merged-slashes-allowed", "alice", rq("//public///x"), True),
    ("merged-slashes-denied", "alice", rq("/public//admin"), False),
    ("escaped-slash-allowed", "alice", rq("/public%2Fx"), True),
    ("escaped-slash-denied", "alice", rq("/public%2fadmin"), False),
    ("escaped-backslash-denied", "alice", rq("/public%5Cadmin"), False),
    ("dot-segments-denied", "alice", rq("/public/x/../admin"), False),
    ("fragment-denied", "alice", rq("/public/admin#x"), False),
    ("fragment-allowed", "alice", rq("/public/x#admin"), True),
    ("host-case-allowed", "alice", rq("/public/x", host="WEB.Demo"), True),
    ("host-with-port-allowed", "alice", rq("/public/x", host="web.demo:80"), True),
    ("host-not-in-rule", "alice", rq("/public/x", host="web.demo.svc.cluster.local"), False),
    # a policy on a request header: no plan, whatever it decides
    ("header-policy-allowed", "alice", rq("/x", "x-key: open", host="hdr.demo"), None),
    ("header-policy-denied", "alice", rq("/x", "x-key: shut", host="hdr.demo"), None),
    ("header-deny-policy-allowed", "alice", rq("/x", "x-key: open", host="hdrdeny.demo"), None),
    ("header-deny-policy-denied", "alice", rq("/x", "x-key: shut", host="hdrdeny.demo"), None),
    # a policy on the source address: no plan either
    ("ip-deny-policy-denied", "alice", rq("/x", host="ipdeny.demo"), None),
    # a policy on the hosts' workload (selector): checked for every host of the cluster
    ("workload-policy-allowed", "bob", rq("/x", host="guarded.demo"), True),
    ("workload-policy-denied", "alice", rq("/x", host="guarded.demo"), False),
]


def test_allowed_requests_are_the_lanes_and_denied_ones_pythons(pki):
    server, clients = pki
    with Pair(SERVICES, POLICIES, ssl_context=server) as p:
        for _, who, data, _ in CASES:
            method = "HEAD" if data.startswith(b"HEAD") else "GET"
            p.run([data], [method], context=clients[who])
        lane = sum(1 for c in CASES if c[3])
        seen = same(p, answered=lane, handed=len(CASES) - lane)
    for i, (name, _, _, allowed) in enumerate(CASES):
        if allowed is None:
            want = 200 if "allowed" in name else 403
        else:
            want = 200 if allowed else 403
        assert status(seen, i) == want, (name, seen["client"][i])
        if want == 403:
            assert seen["client"][i][0].endswith("RBAC: access denied"), name


def test_same_shape_two_principals_two_decisions(pki):
    """The plan key holds the principal: alice's allowed plan is not bob's, on one shape."""
    server, clients = pki
    with Pair(SERVICES, POLICIES, ssl_context=server) as p:
        for who in ("alice", "bob", "alice", "bob"):
            p.run([rq("/public/x")], ["GET"], context=clients[who])
        seen = same(p, answered=2, handed=2)
    assert [status(seen, i) for i in range(4)] == [200, 403, 200, 403]


def test_policy_change_takes_effect_at_the_next_snapshot(pki):
    """Plans go at every snapshot: alice allowed (the lane), then a snapshot that denies
    her (Python's 403 at once), then one that allows her again (the lane again)."""
    server, clients = pki
    deny_alice = POLICIES + f"""---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-alice, namespace: demo}}
spec:
  targetRefs: [{{kind: Service, group: "", name: web}}]
  action: DENY
  rules:
  - from: [{{source: {{principals: ["{ALICE}"]}}}}]
"""

    with Pair(SERVICES, POLICIES, ssl_context=server) as p:
        p.run([rq("/public/x") * 2], ["GET"] * 2, context=clients["alice"])
        p.update(deny_alice, version="2")
        p.run([rq("/public/x") * 2], ["GET"] * 2, context=clients["alice"])
        p.update(POLICIES, version="3")
        p.run([rq("/public/x")], ["GET"], context=clients["alice"])
        # (the denied pair: the lane hands over the first; Python, holding the second
        # already, answers it too)
        seen = same(p, answered=3, handed=1)
    assert [c[0].count("HTTP/1.1 200 ") for c in seen["client"]] == [2, 0, 1]
    assert seen["client"][1][0].count("HTTP/1.1 403 ") == 2


def test_no_principal_is_denied_by_python():
    """Plaintext (no principal): the ALLOW policies match nothing — every request is
    Python's 403, and the lane still answers a Service without policies."""
    with Pair(SERVICES, POLICIES) as p:
        for data in (rq("/public/x"), rq("/ns/1"), rq("/x", host="hdr.demo"),
                     rq("/public/x", host="open.demo")):
            p.run([data], ["GET"])
        seen = same(p, answered=1, handed=3)
    assert [status(seen, i) for i in range(4)] == [403, 403, 403, 200]
