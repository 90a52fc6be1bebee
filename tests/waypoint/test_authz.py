"""Tier 1: L7 AuthorizationPolicy evaluation, including the CVE bypass shapes."""

from __future__ import annotations

import pytest

from waypoint.authz import RequestAttributes, evaluate, principal_of
from waypoint.bootstrap import parse_resources
from waypoint.paths import normalize_target

ALICE = "cluster.local/ns/demo/sa/alice"
MALLORY = "cluster.local/ns/other/sa/mallory"


def policies(text: str):
    return parse_resources(text)


def req(path="/", *, method="GET", host="web.demo", principal=ALICE, headers=None, port=80,
        ip="10.0.0.1"):
    t = normalize_target(path)
    return RequestAttributes(method, host, t.path, port, principal, ip, headers or {})


ALLOW_ALICE_PUBLIC = policies("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-alice, namespace: demo}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/demo/sa/alice"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/public/*", "/status"]}}]
""")

DENY_ADMIN = policies("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: demo}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin", "/admin/*"]}}]
""")


def test_no_policy_allows():
    assert evaluate((), req()).allowed


def test_allow_by_principal_and_path():
    assert evaluate(ALLOW_ALICE_PUBLIC, req("/public/x")).allowed
    assert evaluate(ALLOW_ALICE_PUBLIC, req("/status")).allowed


@pytest.mark.parametrize("r", [
    req("/public/x", principal=MALLORY),       # wrong principal
    req("/public/x", principal=None),          # plaintext: no identity
    req("/private"),                           # path not allowed
    req("/public/x", method="POST"),           # method not allowed
])
def test_allow_policy_denies_everything_else(r):
    d = evaluate(ALLOW_ALICE_PUBLIC, r)
    assert not d.allowed and d.reason == "no ALLOW policy matched"


@pytest.mark.parametrize("raw", [
    "/admin", "/admin/x", "//admin", "/admin#", "/admin#/public", "/public/..%2Fadmin",
    "/public/..%2fadmin/x", "/public%5C..%5Cadmin", "/./admin", "/public/../admin",
    "/%61dmin",
])
def test_deny_cannot_be_bypassed_by_path_shapes(raw):
    d = evaluate(DENY_ADMIN, req(raw))
    assert not d.allowed, raw
    assert d.policy == "demo/deny-admin"


def test_deny_wins_over_allow():
    both = ALLOW_ALICE_PUBLIC + DENY_ADMIN + policies("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: demo}
spec:
  rules: [{}]
""")
    assert evaluate(both, req("/anything")).allowed
    assert not evaluate(both, req("/admin")).allowed


def test_empty_allow_policy_denies_all():
    deny_all = policies("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: nothing, namespace: demo}
spec: {}
""")
    assert not evaluate(deny_all, req("/")).allowed


HOSTS = policies("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-host, namespace: demo}
spec:
  action: DENY
  rules:
  - to: [{operation: {hosts: ["secret.example.com"]}}]
""")


@pytest.mark.parametrize("host", ["secret.example.com", "SECRET.example.COM",
                                  "Secret.Example.Com:8080", "secret.example.com:80"])
def test_hosts_match_case_insensitively_and_without_port(host):  # CVE-2021-39155
    assert not evaluate(HOSTS, req(host=host)).allowed


def test_other_hosts_pass():
    assert evaluate(HOSTS, req(host="public.example.com")).allowed


def test_namespaces_not_values_and_ports():
    pol = policies("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: demo}
spec:
  rules:
  - from: [{source: {namespaces: ["demo"], notPrincipals: ["cluster.local/ns/demo/sa/bob"]}}]
    to: [{operation: {ports: ["80"], notPaths: ["/secret*"]}}]
""")
    assert evaluate(pol, req("/x")).allowed
    assert not evaluate(pol, req("/x", principal="cluster.local/ns/demo/sa/bob")).allowed
    assert not evaluate(pol, req("/x", principal=MALLORY)).allowed
    assert not evaluate(pol, req("/secret/1")).allowed
    assert not evaluate(pol, req("/x", port=8080)).allowed


def test_conditions_on_headers_and_unknown_keys_fail_closed():
    allow = policies("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: demo}
spec:
  rules:
  - when:
    - {key: "request.headers[x-tenant]", values: ["blue"]}
""")
    assert evaluate(allow, req(headers={"x-tenant": "blue"})).allowed
    assert not evaluate(allow, req(headers={"x-tenant": "red"})).allowed
    assert not evaluate(allow, req()).allowed


def test_ip_blocks():
    pol = policies("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: demo}
spec:
  action: DENY
  rules:
  - from: [{source: {ipBlocks: ["192.168.0.0/16"]}}]
""")
    assert not evaluate(pol, req(ip="192.168.3.4")).allowed
    assert evaluate(pol, req(ip="10.1.1.1")).allowed


def test_principal_of():
    assert principal_of("spiffe://cluster.local/ns/a/sa/b") == "cluster.local/ns/a/sa/b"
    assert principal_of(None) is None


def test_conditions_on_unknown_keys_fail_closed():
    # control.config refuses unknown keys; a newer control plane might still send one.
    from control.config.model import (
        AuthorizationPolicy,
        AuthorizationPolicySpec,
        Condition,
        ObjectMeta,
        Rule,
    )

    def pol(action):
        rule = Rule(when=(Condition("request.auth.claims[iss]", ("https://issuer",)),))
        return (AuthorizationPolicy(ObjectMeta("p", "demo"),
                                    AuthorizationPolicySpec(action=action, rules=(rule,))),)

    assert not evaluate(pol("ALLOW"), req()).allowed
    assert not evaluate(pol("DENY"), req()).allowed


def test_service_accounts_without_a_namespace_are_the_policys_own():
    """`serviceAccounts: [alice]` in a policy of namespace demo names demo/alice: a DENY on
    it denies demo's alice (it matched nobody before) and not an alice of another namespace;
    `source.serviceAccount` conditions read the same way (they failed closed before)."""
    deny = policies("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-alice, namespace: demo}
spec:
  action: DENY
  rules:
  - from: [{source: {serviceAccounts: ["alice"]}}]
""")
    assert not evaluate(deny, req("/x")).allowed
    assert evaluate(deny, req("/x", principal="cluster.local/ns/other/sa/alice")).allowed
    allow = policies("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sa, namespace: demo}
spec:
  rules:
  - when: [{key: source.serviceAccount, values: ["alice", "other/mallory"]}]
""")
    assert evaluate(allow, req("/x")).allowed
    assert evaluate(allow, req("/x", principal=MALLORY)).allowed
    assert not evaluate(allow, req("/x", principal="cluster.local/ns/other/sa/alice")).allowed
    assert not evaluate(allow, req("/x", principal=None)).allowed
