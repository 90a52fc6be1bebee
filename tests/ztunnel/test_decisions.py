"""Tier 1: the outbound Request and the inbound Verdict, computed without a network."""

from __future__ import annotations

from control.snapshot import Waypoint
from node_agent.ztunnel import inbound, outbound, wire
from node_agent.ztunnel.balancer import RoundRobin
from node_agent.ztunnel.state import NodeState
from tests.ztunnel.helpers import ident, resource, service, snapshot, workload

N0, N1 = "10.9.0.1", "10.9.0.2"
client = workload("client", "10.244.0.5", node="node0", node_ip=N0)
local_srv = workload("local", "10.244.0.6", node="node0", node_ip=N0)
srv_a = workload("srv-a", "10.244.1.5", node="node1", node_ip=N1, sa="srv")
srv_b = workload("srv-b", "10.244.1.6", node="node1", node_ip=N1, sa="srv")
srv_down = workload("srv-c", "10.244.1.7", node="node1", node_ip=N1, sa="srv", ready=False)
legacy = workload("legacy", "10.244.1.8", node="node1", node_ip=N1, enrolled=False)
behind_wp = workload("guarded", "10.244.1.9", node="node1", node_ip=N1, waypoint="default/wp")
unenrolled_client = workload("outsider", "10.244.0.7", node="node0", node_ip=N0, enrolled=False)
wp = Waypoint(namespace="default", name="wp", identity=ident("default", "wp"),
              addresses=("10.244.2.2",))
svc = service("srv", "10.96.0.10", [srv_a, srv_b, srv_down])
svc_wp = service("guarded", "10.96.0.11", [behind_wp], waypoint="default/wp")
empty = service("empty", "10.96.0.12", [srv_down])

STATE = NodeState.of(snapshot("node0", [client, local_srv, srv_a, srv_b, srv_down, legacy,
                                        behind_wp, unenrolled_client],
                              services=[svc, svc_wp, empty], waypoints=[wp]))


def out(dst_ip, port, src=client.ip, balancer=None):
    return outbound.decide(STATE, src, wire.Address(dst_ip, port), balancer=balancer)


def test_pod_to_enrolled_pod_on_other_node_is_a_tunnel():
    r = out(srv_a.ip, 8080)
    assert r.kind == "tunnel" and not r.same_node
    assert r.next_hop == wire.Address(N1, 15008)
    assert r.source_identity == client.identity
    assert r.expected_identity == srv_a.identity
    assert r.target == wire.Address(srv_a.ip, 8080)


def test_same_node_destination_is_marked():
    r = out(local_srv.ip, 8080)
    assert r.kind == "tunnel" and r.same_node and r.destination == local_srv


def test_service_vip_balances_over_ready_endpoints_and_maps_the_port():
    rr = RoundRobin()
    picks = [out(svc.vip, 80, balancer=rr) for _ in range(4)]
    assert {p.kind for p in picks} == {"tunnel"}
    assert [p.target.ip for p in picks] == [srv_a.ip, srv_b.ip, srv_a.ip, srv_b.ip]
    assert {p.target.port for p in picks} == {8080}
    assert all(p.service == svc for p in picks)


def test_service_without_ready_endpoint_or_port_is_denied():
    assert out(empty.vip, 80).kind == "deny"
    r = out(svc.vip, 81)
    assert r.kind == "deny" and "no port 81" in r.reason


def test_waypoint_for_service_and_for_workload():
    r = out(svc_wp.vip, 80)
    assert r.kind == "waypoint" and r.next_hop == wire.Address("10.244.2.2", 15008)
    assert r.expected_identity == wp.identity and r.target == wire.Address(svc_wp.vip, 80)
    assert out(behind_wp.ip, 8080).kind == "waypoint"


def test_unenrolled_or_unknown_destination_is_direct():
    assert out(legacy.ip, 8080).kind == "direct"
    r = out("192.0.2.1", 443)
    assert r.kind == "direct" and r.next_hop == wire.Address("192.0.2.1", 443)


def test_unknown_or_unenrolled_source_fails_closed():
    assert out(srv_a.ip, 8080, src="10.244.0.99").kind == "deny"
    assert out(srv_a.ip, 8080, src=unenrolled_client.ip).kind == "deny"


# ---------------------------------------------------------------- inbound
STATE1 = NodeState.of(snapshot(
    "node1", [client, srv_a, legacy],
    policies=[resource("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-client, namespace: default}
spec:
  selector: {matchLabels: {app: srv-a}}
  rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/client"]}}]}]
""")],
    peer_auth=[resource("""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: default}
spec: {selector: {matchLabels: {app: srv-a}}, mtls: {mode: STRICT}}
""")]))


def inb(target_ip, port=8080, *, peer=client.identity, presented=srv_a.identity, tls=True):
    return inbound.decide(STATE1, target=wire.Address(target_ip, port), source_ip=client.ip,
                          peer_identity=peer, presented_identity=presented, tls=tls)


def test_inbound_allows_the_allowed_caller():
    v = inb(srv_a.ip)
    assert v.allowed and v.status == wire.OK and v.security_policy == "mutual_tls"


def test_inbound_denies_another_caller():
    v = inb(srv_a.ip, peer=ident("default", "intruder"))
    assert not v.allowed and v.status == wire.DENIED and "only-client" in v.reason


def test_inbound_refuses_a_target_of_another_identity():
    v = inb(srv_a.ip, presented=ident("default", "legacy"))
    assert not v.allowed and v.status == wire.UNKNOWN_TARGET


def test_inbound_refuses_addresses_that_are_not_local_enrolled_workloads():
    assert inb("10.244.1.200").status == wire.UNKNOWN_TARGET
    assert inb(client.ip, presented=client.identity).status == wire.UNKNOWN_TARGET  # other node
    assert inb(legacy.ip, presented=legacy.identity).status == wire.UNKNOWN_TARGET  # unenrolled


def test_plaintext_strict_refused_permissive_labelled_none():
    v = inb(srv_a.ip, tls=False, peer=None, presented=None)
    assert not v.allowed and "STRICT" in v.reason
    permissive = NodeState.of(snapshot("node1", [srv_a]))
    v = inbound.decide(permissive, target=wire.Address(srv_a.ip, 8080), source_ip="10.0.0.1",
                       peer_identity=None, presented_identity=None, tls=False)
    assert v.allowed and v.security_policy == "none"


# A sidecar-style policy: a workload selector plus L7 rules (paths). The node tunnel cannot
# judge paths, so it fails closed — except for connections from the workload's own waypoint,
# which enforced the policy already.
_L7_POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: %s, namespace: default}
spec:
  selector: {matchLabels: {app: %s}}
  action: ALLOW
  rules: [{to: [{operation: {paths: [/public/*]}}]}]
"""
STATE_L7 = NodeState.of(snapshot("node1", [srv_a, behind_wp, client], waypoints=[wp],
                                 policies=[resource(_L7_POLICY % ("paths", "guarded")),
                                           resource(_L7_POLICY % ("paths-a", "srv-a"))]))


def _inb_l7(target, peer):
    return inbound.decide(STATE_L7, target=wire.Address(target.ip, 8080), source_ip="10.244.2.2",
                          peer_identity=peer, presented_identity=target.identity, tls=True)


def test_l7_policy_behind_a_waypoint_is_left_to_the_waypoint():
    assert _inb_l7(behind_wp, wp.identity).allowed


def test_l7_policy_fails_closed_for_anyone_else():
    # The client itself (bypassing the waypoint) is refused ...
    assert not _inb_l7(behind_wp, client.identity).allowed
    # ... and a workload with no waypoint is refused even to a peer with the waypoint's identity.
    assert not _inb_l7(srv_a, wp.identity).allowed
