"""Semantic rules: what the schema cannot say, per kind, on a document's raw mapping.

Before: `control.config.schema` has checked structure (its problems are reported, and these
rules still run: they tolerate wrong types, so one pass reports everything). After: a list of
`(path, kind, message)`:
- `invalid` where Istio's own validation (istio/istio `pkg/config/validation`) refuses the
  configuration: bad hosts, negative weights, unknown `retryOn` conditions, regexes that do not
  compile, bad IP blocks or ports, DENY without rules, …;
- `unsupported` for *values* Istio accepts but Lacewing does not implement yet (`action: CUSTOM`,
  `simple: PASSTHROUGH`, path templates, relative weights, …; listed in `UNSUPPORTED_VALUES`
  for the documentation — unsupported *fields* come from the model, in `control.config.codec`);
- `warning` where Istio warns (a selector without labels, unreachable routes, …).

One module per kind family; pure functions of a dict: no I/O, no state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from control.config.rules.common import Found, Report, as_dict, metadata_rules
from control.config.rules.destination_rule import destination_rule
from control.config.rules.gateway import gateway, gateway_metadata
from control.config.rules.rate_limit import rate_limit_policy
from control.config.rules.security import authorization_policy, peer_authentication
from control.config.rules.virtual_service import virtual_service

# Istio-accepted values Lacewing does not implement yet: (where, value, why). Documented.
UNSUPPORTED_VALUES: tuple[tuple[str, str, str], ...] = (
    ("VirtualService spec.gateways[]", "any gateway but `mesh`", "only mesh (east-west) traffic is routed"),
    ("VirtualService spec.hosts", "absent (a delegate VirtualService)", "delegation is not implemented"),
    ("VirtualService ...route[].weight", "weights of several destinations that do not sum to 100", "Istio reads them as relative proportions; Lacewing takes percentages"),
    ("VirtualService ...destination.host, mirror.host", "a wildcard (`*.example.com`)", "a route needs one concrete Service"),
    ("VirtualService ...headers.*.set/add values", "Envoy command operators (`%HOSTNAME%`, `%REQ(...)%`)", "values are sent literally (`%%` is a literal `%`)"),
    ("VirtualService spec.http[].retries.retryOn", "envoy-ratelimited, retriable-headers, http3-post-connect-failure", "the waypoint does not implement these retry conditions"),
    ("DestinationRule ...loadBalancer.simple", "PASSTHROUGH", "the waypoint always picks an endpoint itself"),
    ("AuthorizationPolicy spec.action", "CUSTOM, AUDIT", "no external authorization or audit provider"),
    ("AuthorizationPolicy spec.targetRef(s).kind", "ServiceEntry", "policies attach to workloads, Services or waypoints (Gateway) only"),
    ("AuthorizationPolicy ...operation.paths / notPaths", "path templates `{*}`, `{**}`", "template matching is not implemented"),
    ("AuthorizationPolicy spec.rules[].when[].key", "remote.ip, request.auth.*, connection.sni, source.trustDomain, request.experimental.*, experimental.*", "no JWT authentication, no SNI or original-client-address attributes"),
    ("AuthorizationPolicy metadata.annotations", "istio.io/dry-run: \"true\"", "dry-run policies are not implemented; enforcing one would be wrong"),
    ("Gateway spec.gatewayClassName", "any class but `lacewing-waypoint` (e.g. `istio`, `istio-waypoint`)", "Lacewing is not an ingress gateway; a Gateway declares a waypoint only"),
    ("Gateway spec.listeners[].protocol, port", "any protocol but HBONE; HBONE on any port but 15008", "a waypoint listens only for the mesh's tunnel, on 15008"),
)

_KIND_RULES: dict[str, Callable[[dict[str, Any], list[Any], Report], None]] = {
    "VirtualService": virtual_service,
    "DestinationRule": destination_rule,
    "PeerAuthentication": peer_authentication,
    "AuthorizationPolicy": authorization_policy,
    "RateLimitPolicy": rate_limit_policy,
    "Gateway": gateway,
}


def semantic_problems(kind: str, obj: dict[str, Any]) -> Found:
    report = Report()
    metadata_rules(kind, obj, report)
    if kind == "Gateway":
        gateway_metadata(obj, report)
    check = _KIND_RULES.get(kind)
    if check is not None:
        check(as_dict(obj, "spec"), ["spec"], report)
    return report.found
