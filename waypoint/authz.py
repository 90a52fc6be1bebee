"""L7 AuthorizationPolicy: is this request allowed? A pure function of policies and a request.

Before: `config` has picked the policies that apply to the request's destination (policies
targeting the Service or this waypoint's Gateway, selector policies matching the chosen
workload, namespace-wide and root-namespace policies), and `paths` has normalized the path.
After: a `Decision`; the proxy answers a denial with 403 `RBAC: access denied`.

Istio's semantics: any matching DENY policy denies; otherwise, if any ALLOW policy applies, the
request must match one of them; with none, it is allowed. A policy matches when one of its
rules matches; a rule when every one of its `from`, `to` and `when` parts matches (a part that
is absent matches), each list of sources/operations matching when any element does, and each
field of an element matching when the value matches one of its values and none of its `not`
values. Hosts compare case-insensitively and without the port (CVE-2021-39155); paths are
compared after normalization, query excluded (CVE-2021-31920, CVE-2021-39156). Conditions on
keys this waypoint does not know fail closed: they never make an ALLOW rule match, and always
make a DENY rule match.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from control.config.model import (
    AuthorizationPolicy,
    AuthzSource,
    Condition,
    Operation,
    Rule,
    qualified_service_account,
)
from waypoint.matching import any_match

DENY_BODY = b"RBAC: access denied"


@dataclass(frozen=True, slots=True)
class RequestAttributes:
    method: str
    host: str                       # the authority as sent (port included or not)
    path: str                       # normalized, no query
    port: int                       # destination (service) port
    principal: str | None = None    # "cluster.local/ns/x/sa/y" from the mTLS peer, or None
    source_ip: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names

    @property
    def source_namespace(self) -> str | None:
        if not self.principal:
            return None
        parts = self.principal.split("/")
        try:
            return parts[parts.index("ns") + 1]
        except (ValueError, IndexError):
            return None

    @property
    def service_account(self) -> str | None:
        """`namespace/name` of the principal's service account, or None."""
        ns = self.source_namespace
        return f"{ns}/{self.principal.rsplit('/', 1)[-1]}" if self.principal and ns else None

    @property
    def host_without_port(self) -> str:
        host = self.host
        if host.startswith("["):  # [v6]:port
            return host[: host.find("]") + 1] if "]" in host else host
        return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    policy: str | None = None       # "<namespace>/<name>" that decided, if any
    reason: str = ""


def principal_of(spiffe_id: str | None) -> str | None:
    """`spiffe://cluster.local/ns/a/sa/b` → `cluster.local/ns/a/sa/b` (Istio's principal)."""
    if not spiffe_id:
        return None
    return spiffe_id[len("spiffe://"):] if spiffe_id.startswith("spiffe://") else spiffe_id


def _field(values: tuple[str, ...], not_values: tuple[str, ...], value: str | None, *,
           ignore_case: bool = False) -> bool:
    if values and not any_match(values, value, ignore_case=ignore_case):
        return False
    if not_values and any_match(not_values, value, ignore_case=ignore_case):
        return False
    return True


def _in_blocks(blocks: tuple[str, ...], ip: str | None) -> bool:
    if ip is None:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    for block in blocks:
        try:
            if addr in ipaddress.ip_network(block, strict=False):
                return True
        except ValueError:
            continue
    return False


def _source_matches(s: AuthzSource, r: RequestAttributes, namespace: str | None = None
                    ) -> bool:
    if not _field(s.principals, s.not_principals, r.principal):
        return False
    if not _field(s.namespaces, s.not_namespaces, r.source_namespace):
        return False
    if s.service_accounts or s.not_service_accounts:
        sa = r.service_account
        if not _field(tuple(qualified_service_account(v, namespace) for v in s.service_accounts),
                      tuple(qualified_service_account(v, namespace)
                            for v in s.not_service_accounts), sa):
            return False
    if s.ip_blocks and not _in_blocks(s.ip_blocks, r.source_ip):
        return False
    if s.not_ip_blocks and _in_blocks(s.not_ip_blocks, r.source_ip):
        return False
    return True


def _host_match(patterns: tuple[str, ...], r: RequestAttributes) -> bool:
    host, bare = r.host.lower(), r.host_without_port.lower()
    if len(bare) > 1 and bare.endswith("."):    # `web.demo.` is the same name as `web.demo`
        host, bare = bare[:-1] + host[len(bare):], bare[:-1]
    for p in patterns:
        p = p.lower()
        with_port = ":" in p and p.rsplit(":", 1)[1].isdigit()
        if any_match((p,), host if with_port else bare):
            return True
    return False


def _operation_matches(o: Operation, r: RequestAttributes) -> bool:
    if o.hosts and not _host_match(o.hosts, r):
        return False
    if o.not_hosts and _host_match(o.not_hosts, r):
        return False
    if not _field(o.ports, o.not_ports, str(r.port)):
        return False
    if not _field(o.methods, o.not_methods, r.method):
        return False
    if not _field(o.paths, o.not_paths, r.path):
        return False
    return True


_UNKNOWN = object()


def _condition_value(key: str, r: RequestAttributes) -> object:
    if key.startswith("request.headers[") and key.endswith("]"):
        return r.headers.get(key[len("request.headers["):-1].lower())
    return {
        "source.principal": r.principal,
        "source.namespace": r.source_namespace,
        "source.serviceAccount": r.service_account,
        "source.ip": r.source_ip,
        "remote.ip": r.source_ip,
        "destination.port": str(r.port),
    }.get(key, _UNKNOWN)


def _condition_matches(c: Condition, r: RequestAttributes, *, deny: bool,
                       namespace: str | None = None) -> bool:
    value = _condition_value(c.key, r)
    if value is _UNKNOWN:
        return deny  # fail closed
    if c.key == "source.serviceAccount":
        return _field(tuple(qualified_service_account(v, namespace) for v in c.values),
                      tuple(qualified_service_account(v, namespace) for v in c.not_values),
                      value)  # type: ignore[arg-type]
    if c.key in ("source.ip", "remote.ip"):
        if c.values and not _in_blocks(c.values, value):  # type: ignore[arg-type]
            return False
        return not (c.not_values and _in_blocks(c.not_values, value))  # type: ignore[arg-type]
    return _field(c.values, c.not_values, value)  # type: ignore[arg-type]


def rule_matches(rule: Rule, r: RequestAttributes, *, deny: bool = False,
                 namespace: str | None = None) -> bool:
    """`namespace`: the policy's, for service accounts named without one."""
    if rule.from_ and not any(f.source is None or _source_matches(f.source, r, namespace)
                              for f in rule.from_):
        return False
    if rule.to and not any(t.operation is None or _operation_matches(t.operation, r)
                           for t in rule.to):
        return False
    return all(_condition_matches(c, r, deny=deny, namespace=namespace) for c in rule.when)


def policy_matches(policy: AuthorizationPolicy, r: RequestAttributes) -> bool:
    deny = (policy.spec.action or "ALLOW") == "DENY"
    return any(rule_matches(rule, r, deny=deny, namespace=policy.namespace)
               for rule in policy.spec.rules)


def evaluate(policies: tuple[AuthorizationPolicy, ...] | list[AuthorizationPolicy],
             r: RequestAttributes) -> Decision:
    allows = []
    for p in policies:
        action = p.spec.action or "ALLOW"
        if action == "DENY":
            if policy_matches(p, r):
                return Decision(False, f"{p.namespace}/{p.name}", "denied by a DENY policy")
        elif action == "ALLOW":
            allows.append(p)
        else:  # AUDIT/CUSTOM are not implemented here: refuse rather than guess
            return Decision(False, f"{p.namespace}/{p.name}", f"unsupported action {action}")
    if not allows:
        return Decision(True)
    for p in allows:
        if policy_matches(p, r):
            return Decision(True, f"{p.namespace}/{p.name}")
    return Decision(False, None, "no ALLOW policy matched")
