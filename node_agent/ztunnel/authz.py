"""L4 AuthorizationPolicy with Istio's semantics: who may open a connection to a workload.

Before: the inbound decision (`inbound.py`) knows the destination workload (namespace, labels),
the peer (its SPIFFE ID when it came over mTLS, else none) and the addresses. After: `decide`
returns an `AuthzDecision` — allowed or not, and which policy (or rule of thumb) decided.

Rules, as Istio applies them at L4 (ztunnel), CUSTOM/AUDIT aside:
- Scope: a policy in the root namespace (`istio-system`) without selector applies mesh-wide, with
  a selector to matching workloads of every namespace; elsewhere it applies to its namespace's
  workloads (all, or those its selector matches). Policies with `targetRef(s)` attach to a
  Service or waypoint and are enforced there, not by the node tunnel.
- DENY first: any matching DENY policy denies. Then, if any ALLOW policy selects the workload,
  the connection needs a matching ALLOW rule; otherwise it is allowed.
- A rule matches when every `from` (any of) and `to` (any of) and every `when` matches; inside a
  source or operation every field given must match one of its values and none of its `not`
  values. `principals`/`namespaces`/`serviceAccounts` never match a plaintext peer, their `not`
  forms always do. Values accept Istio's `*`, `prefix*` and `*suffix`.
- L7-only fields (hosts, methods, paths, `when` keys other than the L4 ones) cannot be checked
  here. Fail closed: in a DENY policy they are dropped, so the rule denies more; in an ALLOW
  policy a rule carrying them never matches, so the policy still denies what nothing else allows.
- An unknown action (CUSTOM without an extension provider here) denies.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from control.config.model import (
    AuthorizationPolicy,
    AuthzSource,
    Condition,
    Operation,
    Rule,
    qualified_service_account,
)

ROOT_NAMESPACE = "istio-system"
L4_WHEN_KEYS = frozenset({"source.ip", "remote.ip", "source.namespace", "source.principal",
                          "source.serviceAccount", "destination.ip", "destination.port"})


@dataclass(frozen=True)
class Peer:
    """The facts of one connection that policies may look at."""

    source_ip: str
    destination_ip: str
    destination_port: int
    principal: str | None = None     # "cluster.local/ns/x/sa/y" from a verified SVID, else None

    @property
    def namespace(self) -> str | None:
        parts = (self.principal or "").split("/")
        if len(parts) >= 5 and parts[1] == "ns" and parts[3] == "sa":
            return parts[2]
        return None

    @property
    def service_account(self) -> str | None:
        parts = (self.principal or "").split("/")
        if len(parts) >= 5 and parts[1] == "ns" and parts[3] == "sa":
            return f"{parts[2]}/{parts[4]}"
        return None


@dataclass(frozen=True)
class AuthzDecision:
    allowed: bool
    reason: str                      # "allow: no policies", "deny: policy ns/name", …
    policy: str | None = None        # "<namespace>/<name>" of the deciding policy


def principal_of(spiffe_id: str | None) -> str | None:
    """spiffe://td/ns/x/sa/y -> td/ns/x/sa/y (Istio's principal form)."""
    if not spiffe_id:
        return None
    return spiffe_id.removeprefix("spiffe://")


# -------------------------------------------------------------------------- matching primitives
def string_match(pattern: str, value: str | None) -> bool:
    if value is None:
        return False
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def _any_string(patterns: Iterable[str], value: str | None) -> bool:
    return any(string_match(p, value) for p in patterns)


def ip_match(block: str, ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(block, strict=False)
    except ValueError:
        return False


def _any_ip(blocks: Iterable[str], ip: str) -> bool:
    return any(ip_match(b, ip) for b in blocks)


def _any_port(ports: Iterable[str], port: int) -> bool:
    return any(p.strip() == str(port) for p in ports)


def _field(values: tuple[str, ...], not_values: tuple[str, ...], test) -> bool:
    if values and not any(test(v) for v in values):
        return False
    return not (not_values and any(test(v) for v in not_values))


def source_matches(src: AuthzSource, peer: Peer, namespace: str | None = None) -> bool:
    """`namespace`: the policy's, for service accounts named without one."""
    principal, ns, sa = peer.principal, peer.namespace, peer.service_account
    return (
        _field(src.principals, src.not_principals, lambda p: string_match(p, principal))
        and _field(src.namespaces, src.not_namespaces, lambda p: string_match(p, ns))
        and _field(src.service_accounts, src.not_service_accounts,
                   lambda p: string_match(qualified_service_account(p, namespace), sa))
        and _field(src.ip_blocks, src.not_ip_blocks, lambda b: ip_match(b, peer.source_ip))
    )


def operation_matches(op: Operation, peer: Peer) -> bool:
    """L4 part only: ports. L7 fields are handled by `_strip_l7` before this is called."""
    return _field(op.ports, op.not_ports, lambda p: _any_port((p,), peer.destination_port))


def condition_matches(cond: Condition, peer: Peer, namespace: str | None = None) -> bool:
    key = cond.key
    if key in ("source.ip", "remote.ip"):
        test = lambda v: ip_match(v, peer.source_ip)  # noqa: E731
    elif key == "destination.ip":
        test = lambda v: ip_match(v, peer.destination_ip)  # noqa: E731
    elif key == "destination.port":
        test = lambda v: v.strip() == str(peer.destination_port)  # noqa: E731
    elif key == "source.namespace":
        test = lambda v: string_match(v, peer.namespace)  # noqa: E731
    elif key == "source.principal":
        test = lambda v: string_match(v, peer.principal)  # noqa: E731
    elif key == "source.serviceAccount":
        test = lambda v: qualified_service_account(v, namespace) == peer.service_account  # noqa: E731
    else:  # pragma: no cover - L7 keys are stripped before matching
        return False
    return _field(cond.values, cond.not_values, test)


# -------------------------------------------------------------------------- L7 fields at L4
def _op_has_l7(op: Operation | None) -> bool:
    return op is not None and bool(op.hosts or op.not_hosts or op.methods or op.not_methods
                                   or op.paths or op.not_paths)


def rule_has_l7(rule: Rule) -> bool:
    return (any(_op_has_l7(t.operation) for t in rule.to)
            or any(c.key not in L4_WHEN_KEYS for c in rule.when))


def policy_has_l7(policy: AuthorizationPolicy) -> bool:
    return any(rule_has_l7(r) for r in policy.spec.rules)


def rule_matches(rule: Rule, peer: Peer, *, deny: bool, namespace: str | None = None) -> bool:
    """Does `rule` match? L7 parts: dropped in DENY rules, make ALLOW rules never match.
    `namespace`: the policy's, for service accounts named without one."""
    if rule_has_l7(rule) and not deny:
        return False
    if rule.from_ and not any(f.source is None or source_matches(f.source, peer, namespace)
                              for f in rule.from_):
        return False
    if rule.to and not any(t.operation is None or operation_matches(t.operation, peer)
                           for t in rule.to):
        return False
    return all(condition_matches(c, peer, namespace) for c in rule.when
               if c.key in L4_WHEN_KEYS)


# -------------------------------------------------------------------------- scope and decision
def selects(policy: AuthorizationPolicy, *, namespace: str, labels: Mapping[str, str],
            root_namespace: str = ROOT_NAMESPACE) -> bool:
    spec = policy.spec
    if spec.targets:
        return False                      # enforced by the waypoint of the targeted Service
    if policy.namespace != namespace and policy.namespace != root_namespace:
        return False
    if spec.selector is None:
        return True
    return all(labels.get(k) == v for k, v in spec.selector.match_labels.items())


def _name(p: AuthorizationPolicy) -> str:
    return f"{p.namespace}/{p.name}"


def decide(policies: Iterable[AuthorizationPolicy], *, namespace: str, labels: Mapping[str, str],
           peer: Peer, root_namespace: str = ROOT_NAMESPACE,
           l7_enforced_by_waypoint: bool = False) -> AuthzDecision:
    """`l7_enforced_by_waypoint`: the peer is the destination's own waypoint, which has already
    enforced the policies with L7 fields for this workload (DESIGN: sidecar-style policies keep
    working behind a waypoint) — so those are left out here instead of failing closed."""
    applicable = [p for p in policies
                  if selects(p, namespace=namespace, labels=labels, root_namespace=root_namespace)
                  and not (l7_enforced_by_waypoint and policy_has_l7(p))]
    applicable.sort(key=_name)
    allows = []
    for p in applicable:
        action = (p.spec.action or "ALLOW").upper()
        if action == "AUDIT":
            continue
        if action == "DENY":
            if any(rule_matches(r, peer, deny=True, namespace=p.namespace) for r in p.spec.rules):
                return AuthzDecision(False, f"deny: matched DENY policy {_name(p)}", _name(p))
        elif action == "ALLOW":
            allows.append(p)
        else:
            return AuthzDecision(False, f"deny: {action} policy {_name(p)} cannot be enforced "
                                        f"by the node tunnel (fail closed)", _name(p))
    if not allows:
        return AuthzDecision(True, "allow: no ALLOW policy selects the workload")
    for p in allows:
        if any(rule_matches(r, peer, deny=False, namespace=p.namespace) for r in p.spec.rules):
            return AuthzDecision(True, f"allow: matched ALLOW policy {_name(p)}", _name(p))
    names = ",".join(_name(p) for p in allows)
    return AuthzDecision(False, f"deny: no rule of the ALLOW policies {names} matched")
