"""Tier 1: plaintext from an unenrolled pod to a Service VIP (captured before the node's DNAT) —
which VIPs the node must capture (`state.service_capture`) and what :15006 does with such a
connection (`inbound.decide_service`), computed without a network."""

from __future__ import annotations

from node_agent.ztunnel import inbound, wire
from node_agent.ztunnel.balancer import RoundRobin
from node_agent.ztunnel.state import NodeState, service_capture
from tests.ztunnel.helpers import resource, service, snapshot, workload

N0, N1 = "10.9.0.1", "10.9.0.2"
outsider = workload("outsider", "10.244.0.7", node="node0", node_ip=N0, enrolled=False)
near = workload("near", "10.244.0.6", node="node0", node_ip=N0, labels={"app": "srv"})
far = workload("far", "10.244.1.5", node="node1", node_ip=N1, labels={"app": "srv"})
legacy = workload("legacy", "10.244.0.8", node="node0", node_ip=N0, enrolled=False)
resting = workload("resting", "10.244.0.9", node="node0", node_ip=N0, ready=False)
opted_out = workload("opted-out", "10.244.0.10", node="node0", node_ip=N0,
                     exclude_inbound=frozenset({8080}))

only_near = service("only-near", "10.96.0.10", [near])
mixed = service("mixed", "10.96.0.11", [near, far, legacy])
plain = service("plain", "10.96.0.12", [legacy])
remote = service("remote", "10.96.0.13", [far])
not_ready = service("not-ready", "10.96.0.14", [resting])
excluded = service("excluded", "10.96.0.15", [opted_out])
SERVICES = [only_near, mixed, plain, remote, not_ready, excluded]
WORKLOADS = [outsider, near, far, legacy, resting, opted_out]

STRICT = resource("""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: default}
spec: {mtls: {mode: STRICT}}
""")
ONLY_10_244_0_99 = resource("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: from-one-ip, namespace: default}
spec:
  selector: {matchLabels: {app: srv}}
  rules: [{from: [{source: {ipBlocks: ["10.244.0.99/32"]}}]}]
""")


def state(*, peer_auth=(), policies=()) -> NodeState:
    return NodeState.of(snapshot("node0", WORKLOADS, services=SERVICES, peer_auth=list(peer_auth),
                                 policies=list(policies)))


def decide(st: NodeState, vip: str, port: int = 80, *, balancer: RoundRobin | None = None,
           source: str = outsider.ip) -> inbound.ServiceVerdict:
    return inbound.decide_service(st, vip=wire.Address(vip, port), source_ip=source,
                                  balancer=balancer or RoundRobin())


def test_capture_holds_vips_with_a_ready_enrolled_endpoint_on_this_node():
    cap = service_capture(state().snapshot)
    assert cap.vips == {(only_near.vip, 80), (mixed.vip, 80), (excluded.vip, 80)}
    # their endpoints: the tunnel may dial them with the client's address (the enrolled ones
    # of this node too: their entries take their replies to the tunnel should they leave)
    assert cap.backends == {(near.ip, 8080), (far.ip, 8080), (legacy.ip, 8080),
                            (opted_out.ip, 8080)}


def test_capture_differs_per_node():
    cap = service_capture(NodeState.of(snapshot("node1", WORKLOADS, services=SERVICES)).snapshot)
    assert cap.vips == {(mixed.vip, 80), (remote.vip, 80)}
    assert cap.backends == {(near.ip, 8080), (far.ip, 8080), (legacy.ip, 8080)}


def test_strict_refuses_through_the_vip():
    v = decide(state(peer_auth=[STRICT]), only_near.vip)
    assert not v.allowed and v.status == wire.DENIED and v.how == inbound.LOCAL
    assert "STRICT" in v.reason and "default/only-near" in v.reason
    assert v.target == wire.Address(near.ip, 8080) and v.workload == near


def test_permissive_passes_as_plaintext_to_the_target_port():
    v = decide(state(), only_near.vip)
    assert v.allowed and v.how == inbound.LOCAL and v.verdict.security_policy == "none"
    assert v.target == wire.Address(near.ip, 8080) and v.service == only_near


def test_l4_authorization_sees_the_original_client():
    st = state(policies=[ONLY_10_244_0_99])
    assert not decide(st, only_near.vip).allowed
    assert decide(st, only_near.vip, source="10.244.0.99").allowed


def test_other_endpoints_are_relayed_and_balanced_like_outbound():
    rr = RoundRobin()
    picks = [decide(state(peer_auth=[STRICT]), mixed.vip, balancer=rr) for _ in range(3)]
    assert [p.workload for p in picks] == [near, far, legacy]
    assert [p.how for p in picks] == [inbound.LOCAL, inbound.RELAY, inbound.RELAY]
    assert [p.allowed for p in picks] == [False, True, True]       # STRICT is near's own
    assert picks[1].target == wire.Address(far.ip, 8080) and "on node node1" in picks[1].reason
    assert "not enrolled" in picks[2].reason


def test_an_excluded_endpoint_port_passes_undecided():
    v = decide(state(peer_auth=[STRICT]), excluded.vip)
    assert v.allowed and v.how == inbound.EXCLUDED and v.verdict is None


def test_no_port_no_ready_endpoint_or_no_service_is_refused():
    st = state()
    no_port = decide(st, only_near.vip, 81)
    assert not no_port.allowed and "no port 81" in no_port.reason
    assert no_port.status == wire.UNKNOWN_TARGET
    none_ready = decide(st, not_ready.vip)
    assert not none_ready.allowed and "no ready endpoint" in none_ready.reason
    unknown = decide(st, "10.96.9.9")
    assert not unknown.allowed and unknown.service is None
