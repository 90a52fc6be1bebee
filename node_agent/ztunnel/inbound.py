"""The inbound decision: may this connection reach that workload of this node, and as what?

Before: a connection arrived over the tunnel (:15008, the client's SVID verified, the server
having presented the identity the client asked for by SNI, the header naming the target), or in
plaintext (:15006, local address = the original destination), or from a pod of this node
(same-node fast path, both identities known). After: a `Verdict` — allowed or not, the wire
status to answer with, the reason to log, the workload, and `mutual_tls` or `none`.

Checks, in order: the target is an enrolled workload of this node; over mTLS, its identity is the
one the client expected (no tunnelling to arbitrary addresses); in plaintext, its
PeerAuthentication accepts plaintext on that port; then L4 AuthorizationPolicy (`authz`).

Plaintext to a Service VIP (:15006, captured before the node's DNAT because the Service has an
enrolled endpoint here) goes through `decide_service` first: it picks an endpoint as the
outbound path does (ready endpoints, round robin, service port -> target port). An enrolled
endpoint of this node gets the plaintext decision above (its excluded inbound ports pass
undecided, as they do when called directly); any other endpoint is relayed to in plaintext,
and its own node's capture decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from control.snapshot import Service, Workload
from node_agent.ztunnel import authz, peerauth, wire
from node_agent.ztunnel.balancer import RoundRobin, ready_endpoints
from node_agent.ztunnel.state import NodeState

MUTUAL_TLS, NONE = "mutual_tls", "none"


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    status: int                    # wire.OK / DENIED / UNKNOWN_TARGET
    reason: str
    workload: Workload | None = None
    security_policy: str = MUTUAL_TLS
    policy: str | None = None


def decide(state: NodeState, *, target: wire.Address, source_ip: str,
           peer_identity: str | None, presented_identity: str | None,
           tls: bool) -> Verdict:
    sp = MUTUAL_TLS if tls else NONE
    w = state.local_by_ip.get(target.ip)
    if w is None or not w.enrolled:
        return Verdict(False, wire.UNKNOWN_TARGET,
                       f"deny: {target.ip} is not an enrolled workload of node {state.node}",
                       security_policy=sp)
    if tls:
        if peer_identity is None:
            return Verdict(False, wire.DENIED, "deny: client presented no SPIFFE identity", w, sp)
        if presented_identity != w.identity:
            return Verdict(False, wire.UNKNOWN_TARGET,
                           f"deny: {w.uid} is {w.identity}, the client expected "
                           f"{presented_identity}", w, sp)
    else:
        mode = peerauth.mode_for(state.snapshot.peer_authentications, namespace=w.namespace,
                                 labels=w.labels, port=target.port)
        if not peerauth.accepts_plaintext(mode):
            return Verdict(False, wire.DENIED,
                           f"deny: PeerAuthentication STRICT for {w.uid}:{target.port} "
                           f"refuses plaintext", w, sp)
    peer = authz.Peer(source_ip=source_ip, destination_ip=target.ip,
                      destination_port=target.port,
                      principal=authz.principal_of(peer_identity) if tls else None)
    # A connection from the workload's own waypoint carries requests that passed its L7
    # policy already; the policies with L7 fields are the waypoint's to enforce.
    waypoint = state.snapshot.waypoints.get(w.waypoint) if w.waypoint else None
    from_waypoint = bool(tls and waypoint and peer_identity == waypoint.identity)
    d = authz.decide(state.snapshot.authorization_policies, namespace=w.namespace,
                     labels=w.labels, peer=peer, l7_enforced_by_waypoint=from_waypoint)
    return Verdict(d.allowed, wire.OK if d.allowed else wire.DENIED, d.reason, w, sp, d.policy)


LOCAL, RELAY, EXCLUDED = "local", "relay", "excluded"


@dataclass(frozen=True)
class ServiceVerdict:
    """What to do with a plaintext connection to a Service VIP."""

    allowed: bool
    reason: str
    how: str = ""                          # local | relay | excluded ("" when refused early)
    service: Service | None = None
    target: wire.Address | None = None     # the endpoint to connect to
    workload: Workload | None = None       # the endpoint's workload
    verdict: Verdict | None = None         # the plaintext decision (how == local)
    status: int = wire.OK                  # wire.OK / DENIED / UNKNOWN_TARGET


def decide_service(state: NodeState, *, vip: wire.Address, source_ip: str,
                   balancer: RoundRobin) -> ServiceVerdict:
    service = state.services_by_vip.get(vip.ip)
    if service is None:
        return ServiceVerdict(False, f"deny: {vip.ip} is not a Service cluster IP known to node "
                              f"{state.node}", status=wire.UNKNOWN_TARGET)
    if not any(sp.port == vip.port for sp in service.ports):
        return ServiceVerdict(False, f"deny: service {service.uid} has no port {vip.port}",
                              service=service, status=wire.UNKNOWN_TARGET)
    ready = ready_endpoints(service, vip.port, state.snapshot.workloads)
    if not ready:
        return ServiceVerdict(False, f"deny: service {service.uid} has no ready endpoint for "
                              f"port {vip.port}", service=service, status=wire.UNKNOWN_TARGET)
    w, target = balancer.pick(service.uid, ready)
    if not (w.enrolled and w.node == state.node):
        where = "not enrolled" if not w.enrolled else f"on node {w.node}"
        return ServiceVerdict(True, f"service {service.uid}: endpoint {w.uid} is {where}; "
                              f"plaintext to it", RELAY, service, target, w)
    if target.port in w.exclude_inbound_ports:
        return ServiceVerdict(True, f"service {service.uid}: port {target.port} of {w.uid} is "
                              f"excluded from the mesh", EXCLUDED, service, target, w)
    v = decide(state, target=target, source_ip=source_ip, peer_identity=None,
               presented_identity=None, tls=False)
    return ServiceVerdict(v.allowed, f"service {service.uid}: {v.reason}", LOCAL, service,
                          target, w, v, v.status)
