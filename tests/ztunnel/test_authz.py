"""Tier 1: L4 AuthorizationPolicy with Istio's semantics, as pure decisions."""

from __future__ import annotations

from node_agent.ztunnel import authz
from tests.ztunnel.helpers import resource

WL = dict(namespace="shop", labels={"app": "db", "tier": "data"})


def peer(principal=None, ip="10.0.0.5", port=5432):
    return authz.Peer(source_ip=ip, destination_ip="10.1.0.9", destination_port=port,
                      principal=principal)


def pol(body: str, *, name="p", ns="shop"):
    return resource(f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: {ns}}}
spec:
{body}
""")


API = "cluster.local/ns/shop/sa/api"
WEB = "cluster.local/ns/front/sa/web"


def decide(policies, p, **wl):
    return authz.decide(policies, peer=p, **{**WL, **wl})


def test_no_policies_allow():
    d = decide([], peer(API))
    assert d.allowed and "no ALLOW" in d.reason


def test_allow_principal_only_that_caller():
    allow = pol("""
  action: ALLOW
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/api"]}}]}]""")
    assert decide([allow], peer(API)).allowed
    d = decide([allow], peer(WEB))
    assert not d.allowed and "shop/p" in d.reason
    assert not decide([allow], peer(None)).allowed  # plaintext never matches principals


def test_deny_wins_over_allow():
    allow = pol("""
  rules: [{}]""", name="all")
    deny = pol("""
  action: DENY
  rules: [{from: [{source: {namespaces: ["front"]}}]}]""", name="nofront")
    assert decide([allow, deny], peer(API)).allowed
    d = decide([allow, deny], peer(WEB))
    assert not d.allowed and d.policy == "shop/nofront"


def test_allow_with_no_rules_denies_everything():
    assert not decide([pol("  action: ALLOW")], peer(API)).allowed


def test_deny_with_no_rules_denies_nothing():
    # The validator refuses this; the tunnel still must not treat it as deny-all.
    from control.config.model import AuthorizationPolicy, AuthorizationPolicySpec, ObjectMeta
    p = AuthorizationPolicy(meta=ObjectMeta(name="d", namespace="shop"),
                            spec=AuthorizationPolicySpec(action="DENY"))
    assert decide([p], peer(API)).allowed


def test_not_forms_and_wildcards():
    allow = pol("""
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/*"], notPrincipals: ["*/sa/batch"]}}]""")
    assert decide([allow], peer(API)).allowed
    assert not decide([allow], peer("cluster.local/ns/shop/sa/batch")).allowed
    assert not decide([allow], peer(WEB)).allowed


def test_not_namespaces_matches_plaintext():
    deny = pol("""
  action: DENY
  rules: [{from: [{source: {notNamespaces: ["shop"]}}]}]""")
    assert decide([deny], peer(API)).allowed
    assert not decide([deny], peer(WEB)).allowed
    assert not decide([deny], peer(None)).allowed   # no namespace is "not shop"


def test_ip_blocks_and_not_ip_blocks():
    allow = pol("""
  rules: [{from: [{source: {ipBlocks: ["10.0.0.0/24"], notIpBlocks: ["10.0.0.7"]}}]}]""")
    assert decide([allow], peer(None, ip="10.0.0.5")).allowed
    assert not decide([allow], peer(None, ip="10.0.0.7")).allowed
    assert not decide([allow], peer(None, ip="10.0.1.5")).allowed


def test_ports_and_not_ports():
    allow = pol("""
  rules: [{to: [{operation: {ports: ["5432", "8080"]}}]}]""")
    assert decide([allow], peer(API, port=5432)).allowed
    assert not decide([allow], peer(API, port=22)).allowed
    deny = pol("""
  action: DENY
  rules: [{to: [{operation: {notPorts: ["5432"]}}]}]""", name="d")
    assert decide([deny], peer(API, port=5432)).allowed
    assert not decide([deny], peer(API, port=9000)).allowed


def test_from_and_to_must_both_match():
    allow = pol("""
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/api"]}}]
    to: [{operation: {ports: ["5432"]}}]""")
    assert decide([allow], peer(API, port=5432)).allowed
    assert not decide([allow], peer(API, port=80)).allowed
    assert not decide([allow], peer(WEB, port=5432)).allowed


def test_when_conditions_l4():
    allow = pol("""
  rules:
  - when: [{key: source.namespace, values: ["shop"]}, {key: destination.port, notValues: ["22"]}]""")
    assert decide([allow], peer(API)).allowed
    assert not decide([allow], peer(API, port=22)).allowed
    assert not decide([allow], peer(WEB)).allowed


def test_l7_fields_in_allow_never_match_fail_closed():
    allow = pol("""
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/api"]}}]
    to: [{operation: {methods: ["GET"]}}]""")
    assert authz.policy_has_l7(allow)
    assert not decide([allow], peer(API)).allowed
    assert not decide([allow], peer(WEB)).allowed


def test_l7_fields_in_deny_are_dropped_so_it_denies_more():
    deny = pol("""
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/front/sa/web"]}}]
    to: [{operation: {paths: ["/admin"]}}]""")
    assert not decide([deny], peer(WEB)).allowed   # all of web's connections, not only /admin
    assert decide([deny], peer(API)).allowed


def test_scope_selector_namespace_and_root():
    other_ns = pol("  action: DENY\n  rules: [{}]", ns="elsewhere")
    assert decide([other_ns], peer(API)).allowed
    root = pol("  action: DENY\n  rules: [{}]", ns="istio-system", name="mesh")
    d = decide([root], peer(API))
    assert not d.allowed and d.policy == "istio-system/mesh"
    sel = pol("  selector: {matchLabels: {app: web}}\n  action: DENY\n  rules: [{}]")
    assert decide([sel], peer(API)).allowed
    sel_db = pol("  selector: {matchLabels: {app: db}}\n  action: DENY\n  rules: [{}]")
    assert not decide([sel_db], peer(API)).allowed
    root_sel = pol("  selector: {matchLabels: {tier: data}}\n  action: DENY\n  rules: [{}]",
                   ns="istio-system")
    assert not decide([root_sel], peer(API)).allowed


def test_target_ref_policies_are_for_the_waypoint():
    p = pol("""
  targetRefs: [{kind: Service, group: "", name: db}]
  action: DENY
  rules: [{}]""")
    assert decide([p], peer(API)).allowed


def test_any_allow_policy_matching_allows():
    a1 = pol("""
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/api"]}}]}]""", name="a1")
    a2 = pol("""
  rules: [{from: [{source: {namespaces: ["front"]}}]}]""", name="a2")
    assert decide([a1, a2], peer(WEB)).allowed
    assert not decide([a1, a2], peer("cluster.local/ns/ops/sa/x")).allowed


def test_service_accounts_without_a_namespace_are_the_policys_own():
    """`serviceAccounts: [api]` in a policy of namespace shop names shop/api (not an api of
    any namespace, and not nothing): a DENY on it must deny shop's api and nobody else."""
    deny = pol("""
  action: DENY
  rules: [{from: [{source: {serviceAccounts: ["api"]}}]}]""")
    assert not decide([deny], peer(API)).allowed
    assert decide([deny], peer("cluster.local/ns/front/sa/api")).allowed
    allow = pol("""
  action: ALLOW
  rules: [{from: [{source: {serviceAccounts: ["front/web", "api"]}}]}]""")
    assert decide([allow], peer(API)).allowed and decide([allow], peer(WEB)).allowed
    assert not decide([allow], peer("cluster.local/ns/front/sa/api")).allowed


def test_when_source_service_account():
    allow = pol("""
  action: ALLOW
  rules: [{when: [{key: source.serviceAccount, values: ["api", "front/web"]}]}]""")
    assert decide([allow], peer(API)).allowed and decide([allow], peer(WEB)).allowed
    assert not decide([allow], peer("cluster.local/ns/other/sa/api")).allowed
    assert not decide([allow], peer(None)).allowed
