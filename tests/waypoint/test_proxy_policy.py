"""Tier 2: L7 authorization on the mTLS listener — principals from client certificates issued
by Lacewing's CA, paths normalized before matching (the CVE shapes), 403 `RBAC: access
denied`, and sidecar-style selector policies enforced for the selected workload."""

from __future__ import annotations

import json
import ssl

import pytest

from control.ca.authority import CertificateAuthority
from control.ca.spiffe_id import workload_id
from lacewing.sample_app import Behaviour
from tests.waypoint.conftest import get, service_dict
from waypoint.tls import client_context, server_context

POLICIES = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-allow, namespace: demo}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/demo/sa/alice"]}}]
  - from: [{source: {principals: ["cluster.local/ns/demo/sa/bob"]}}]
    to: [{operation: {methods: [GET], paths: ["/public/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-deny-admin, namespace: demo}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin", "/admin/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: v2-readonly, namespace: demo}
spec:
  selector: {matchLabels: {version: v2}}
  action: DENY
  rules:
  - to: [{operation: {methods: [DELETE]}}]
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = CertificateAuthority.load_or_generate(tmp_path_factory.mktemp("ca"))
    bundle = b"".join(ca.trust_bundle)

    def issue(sa: str):
        key, chain = ca.issue_with_new_key(workload_id("demo", sa))
        return b"".join(chain.cert_chain), key

    wp_chain, wp_key = issue("waypoint")
    clients = {sa: client_context(*issue(sa), bundle) for sa in ("alice", "bob", "mallory")}
    alice_h2 = client_context(*issue("alice"), bundle, alpn=("h2",))
    return server_context(wp_chain, wp_key, bundle), clients, alice_h2


@pytest.fixture
def secured(backends, waypoint_for, pki):
    server_ctx, clients, _ = pki
    v1 = backends(("v1", Behaviour()))
    wp = waypoint_for([service_dict(v1)], POLICIES, ssl_context=server_ctx)
    return wp, clients


@pytest.mark.parametrize("who,method,path,status", [
    ("alice", "GET", "/anything", 200),
    ("alice", "DELETE", "/x", 200),
    ("bob", "GET", "/public/page", 200),
    ("bob", "GET", "/private", 403),
    ("bob", "POST", "/public/page", 403),
    ("mallory", "GET", "/public/page", 403),
])
def test_allow_and_deny_by_principal_and_path(secured, who, method, path, status):
    wp, clients = secured
    got, _, body = get(wp.port, path, host="web", method=method, context=clients[who])
    assert got == status
    if status == 403:
        assert body == b"RBAC: access denied"


@pytest.mark.parametrize("path", [
    "/admin", "/admin/users", "//admin", "/public/..%2Fadmin", "/public/..%2fadmin/x",
    "/public%5C..%5Cadmin", "/./admin", "/ADMIN/../admin", "/%61dmin", "/admin#fragment",
])
def test_deny_holds_for_every_normalization_shape(secured, path):
    wp, clients = secured
    status, _, body = get(wp.port, path, host="web", context=clients["alice"])
    assert (status, body) == (403, b"RBAC: access denied")


def test_the_backend_sees_the_path_policy_checked(secured):
    wp, clients = secured
    status, _, body = get(wp.port, "/public//a/./b/../c%2Fd", host="web",
                          context=clients["bob"])
    assert status == 200 and json.loads(body)["path"] == "/public/a/c/d"


def test_hosts_are_case_insensitive(secured):
    wp, clients = secured
    status, _, _ = get(wp.port, "/admin", host="WEB.Demo:80", context=clients["alice"])
    assert status == 403


def test_clients_without_a_mesh_certificate_are_refused(secured):
    wp, _ = secured
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        get(wp.port, "/", host="web", context=ctx)


def test_sidecar_selector_policy_is_enforced_for_its_workload(backends, waypoint_for, pki):
    server_ctx, clients, _ = pki
    v2 = backends(("v2", Behaviour()))
    wp = waypoint_for([service_dict(v2)], POLICIES, ssl_context=server_ctx)
    status, _, body = get(wp.port, "/x", host="web", method="DELETE", context=clients["alice"])
    assert (status, body) == (403, b"RBAC: access denied")
    assert v2[0].server.requests_served == 0
    assert get(wp.port, "/x", host="web", context=clients["alice"])[0] == 200


def test_metrics_label_mutual_tls_and_principals(secured):
    wp, clients = secured
    get(wp.port, "/ok", host="web", context=clients["alice"])
    text = get(wp.metrics_port, "/metrics", host="localhost")[2].decode()
    line = next(ln for ln in text.splitlines() if ln.startswith("istio_requests_total{")
                and 'response_code="200"' in ln)
    assert 'connection_security_policy="mutual_tls"' in line
    assert 'source_principal="cluster.local/ns/demo/sa/alice"' in line
    assert 'reporter="waypoint"' in line and 'destination_version="v1"' in line


def test_http2_over_mutual_tls_by_alpn_carries_the_principal(secured, pki):
    import socket

    import h2.config
    import h2.connection
    import h2.events

    wp, _ = secured
    ctx = pki[2]                      # alice, offering only h2 by ALPN
    raw = socket.create_connection(("127.0.0.1", wp.port), timeout=10)
    sock = ctx.wrap_socket(raw)
    assert sock.selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    statuses = {}
    for path in ("/ok", "/admin"):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "https"),
                                (":authority", "web")], end_stream=True)
        statuses[sid] = None
    sock.sendall(conn.data_to_send())
    ended = 0
    try:
        while ended < 2:
            data = sock.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    statuses[ev.stream_id] = dict(ev.headers)[b":status"]
                elif isinstance(ev, h2.events.StreamEnded):
                    ended += 1
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    assert sorted(statuses.values()) == [b"200", b"403"]   # /admin: the DENY policy
