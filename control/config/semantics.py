"""Semantic rules: what the schema cannot say, per kind, on a schema-valid document.

Before: `control.config.schema` found no structural problem in the document. After: a list of
`(path, kind, message)` — `invalid` for configuration Istio itself would refuse (weights that do
not sum to 100, bad durations, unknown `retryOn` policies, regexes that do not compile, bad IP
blocks, …) and `unsupported` for *values* Istio accepts but Lacewing does not implement yet
(`action: CUSTOM`, `simple: PASSTHROUGH`, path templates, …). Unsupported *fields* are found by
the codec, from the model; the value-level list lives here in `UNSUPPORTED_VALUES` so the
documentation can show it.

Pure functions of a dict: no I/O, no state.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from typing import Any

from control.config.errors import INVALID, UNSUPPORTED, WARNING
from control.config.schema import format_path

Found = list[tuple[str, str, str]]

# Istio-accepted values Lacewing does not implement yet: (where, value, why). Documented.
UNSUPPORTED_VALUES: tuple[tuple[str, str, str], ...] = (
    ("VirtualService spec.gateways[]", "any gateway but `mesh`", "only mesh (east-west) traffic is routed"),
    ("VirtualService spec.hosts", "absent (a delegate VirtualService)", "delegation is not implemented"),
    ("VirtualService spec.http[].retries.retryOn", "envoy-ratelimited, retriable-headers, http3-post-connect-failure", "the waypoint does not implement these retry conditions"),
    ("DestinationRule ...loadBalancer.simple", "PASSTHROUGH", "the waypoint always picks an endpoint itself"),
    ("AuthorizationPolicy spec.action", "CUSTOM, AUDIT", "no external authorization or audit provider"),
    ("AuthorizationPolicy spec.targetRef(s).kind", "anything but Service", "policies attach to workloads or Services only"),
    ("AuthorizationPolicy ...operation.paths / notPaths", "path templates `{*}`, `{**}`", "template matching is not implemented"),
    ("AuthorizationPolicy spec.rules[].when[].key", "remote.ip, request.auth.*, connection.sni, source.trustDomain, experimental.*", "no JWT authentication, no SNI or original-client-address attributes"),
    ("any kind metadata.annotations", "istio.io/dry-run: \"true\"", "dry-run policies are not implemented; enforcing one would be wrong"),
)

RETRY_POLICIES = frozenset({
    "5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream",
    "retriable-status-codes", "reset-before-request",
    "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
})
RETRY_POLICIES_UNSUPPORTED = frozenset({"envoy-ratelimited", "retriable-headers", "http3-post-connect-failure"})
LB_SUPPORTED = frozenset({"UNSPECIFIED", "ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN", "RANDOM"})
CONDITION_KEYS_SUPPORTED = ("source.ip", "source.namespace", "source.principal", "destination.ip",
                            "destination.port")
CONDITION_KEYS_UNSUPPORTED = ("remote.ip", "request.auth.principal", "request.auth.audiences",
                              "request.auth.presenter", "connection.sni", "source.trustDomain")

_HOST_LABEL = r"[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"^(\*\.)?{_HOST_LABEL}(\.{_HOST_LABEL})*\.?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_HEADER_NAME = re.compile(r"^:?[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _list(obj: Any, key: str) -> list[tuple[int, Any]]:
    value = obj.get(key) if isinstance(obj, dict) else None
    return list(enumerate(value)) if isinstance(value, list) else []


def _dict(obj: Any, key: str) -> dict[str, Any]:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else {}


class _Report:
    def __init__(self) -> None:
        self.found: Found = []

    def invalid(self, path: list[Any], message: str) -> None:
        self.found.append((format_path(path), INVALID, message))

    def unsupported(self, path: list[Any], message: str) -> None:
        self.found.append((format_path(path), UNSUPPORTED, message))

    def warning(self, path: list[Any], message: str) -> None:
        self.found.append((format_path(path), WARNING, message))


def semantic_problems(kind: str, obj: dict[str, Any]) -> Found:
    report = _Report()
    _metadata(obj, report)
    check = _KIND_RULES.get(kind)
    if check is not None:
        check(_dict(obj, "spec"), ["spec"], report)
    return report.found


def _metadata(obj: dict[str, Any], r: _Report) -> None:
    namespace = _dict(obj, "metadata").get("namespace")
    if isinstance(namespace, str) and namespace != namespace.lower():
        r.warning(["metadata", "namespace"], f"namespace {namespace!r} has capital letters: "
                  "Kubernetes refuses such names; use lowercase")
    annotations = _dict(_dict(obj, "metadata"), "annotations")
    if str(annotations.get("istio.io/dry-run", "")).lower() == "true":
        r.unsupported(["metadata", "annotations", "istio.io/dry-run"],
                      "dry-run policies are not supported by Lacewing yet; remove the annotation "
                      "only if the policy should be enforced")


# --- shared checks -------------------------------------------------------------------------------


def _check_host(host: Any, path: list[Any], r: _Report, *, wildcard: bool, what: str) -> None:
    if not isinstance(host, str):
        return
    if host == "*":
        if not wildcard:
            r.invalid(path, f"{what} cannot be the wildcard '*'")
        return
    if len(host) > 255 or not _HOST.match(host):
        r.invalid(path, f"invalid {what} {host!r}: must be a DNS name, optionally starting with '*.'")
    elif host.startswith("*") and not wildcard:
        r.invalid(path, f"{what} {host!r} cannot be a wildcard")


def _check_port(number: Any, path: list[Any], r: _Report) -> None:
    if isinstance(number, int) and not 1 <= number <= 65535:
        r.invalid(path, f"port must be between 1 and 65535, not {number}")


def _check_percent(value: Any, path: list[Any], r: _Report) -> None:
    if isinstance(value, (int, float)) and not 0 <= value <= 100:
        r.invalid(path, f"must be between 0 and 100, not {value}")


def _check_regex(pattern: Any, path: list[Any], r: _Report) -> None:
    if not isinstance(pattern, str):
        return
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        r.invalid(path, f"regex does not compile: {exc}")


def _check_string_match(match: Any, path: list[Any], r: _Report) -> None:
    if isinstance(match, dict) and "regex" in match:
        _check_regex(match["regex"], [*path, "regex"], r)


def _check_header_name(name: Any, path: list[Any], r: _Report) -> None:
    if isinstance(name, str) and not _HEADER_NAME.match(name):
        r.invalid(path, f"invalid header name {name!r}")


def _check_non_negative(obj: dict[str, Any], keys: tuple[str, ...], path: list[Any], r: _Report) -> None:
    for key in keys:
        value = obj.get(key)
        if isinstance(value, int) and value < 0:
            r.invalid([*path, key], f"must not be negative, not {value}")


# --- VirtualService ------------------------------------------------------------------------------


def _virtual_service(spec: dict[str, Any], path: list[Any], r: _Report) -> None:
    hosts = spec.get("hosts")
    if not hosts:
        if spec.get("http") and not spec.get("gateways"):
            r.unsupported([*path, "hosts"], "a VirtualService without hosts is a delegate; "
                          "delegation is not supported by Lacewing yet")
        else:
            r.invalid([*path, "hosts"], "at least one host is required")
    for i, host in _list(spec, "hosts"):
        _check_host(host, [*path, "hosts", i], r, wildcard=True, what="host")
        if host == "*":
            r.invalid([*path, "hosts", i], "the wildcard host '*' is not allowed for mesh routing")
    for i, gateway in _list(spec, "gateways"):
        if gateway != "mesh":
            r.unsupported([*path, "gateways", i], f"gateway {gateway!r} is not supported by "
                          "Lacewing yet (only 'mesh')")
    if not any(spec.get(k) for k in ("http", "tcp", "tls")):
        r.invalid(path, "at least one of http, tcp or tls routes is required")
    for i, route in _list(spec, "http"):
        if isinstance(route, dict):
            _http_route(route, [*path, "http", i], r)


def _http_route(route: dict[str, Any], path: list[Any], r: _Report) -> None:
    actions = [k for k in ("route", "redirect", "directResponse", "delegate") if route.get(k)]
    if not actions:
        r.invalid(path, "an HTTP route needs one of route, redirect, directResponse or delegate")
    elif len(actions) > 1:
        r.invalid(path, f"an HTTP route can have only one of {', '.join(actions)}")
    for i, match in _list(route, "match"):
        mpath = [*path, "match", i]
        for key in ("uri", "method", "authority", "scheme"):
            _check_string_match(match.get(key) if isinstance(match, dict) else None, [*mpath, key], r)
        for key in ("headers", "queryParams"):
            for name, sm in _dict(match, key).items():
                if key == "headers":
                    _check_header_name(name, [*mpath, key, name], r)
                _check_string_match(sm, [*mpath, key, name], r)
    destinations = [(i, d) for i, d in _list(route, "route") if isinstance(d, dict)]
    weights = [d.get("weight") for _, d in destinations if isinstance(d, dict)]
    for i, dest in destinations:
        dpath = [*path, "route", i]
        _destination(_dict(dest, "destination"), [*dpath, "destination"], r)
        weight = dest.get("weight")
        if isinstance(weight, int) and not 0 <= weight <= 100:
            r.invalid([*dpath, "weight"], f"weight must be between 0 and 100, not {weight}")
        _headers(_dict(dest, "headers"), [*dpath, "headers"], r)
    total = sum(w for w in weights if isinstance(w, int))
    if len(destinations) > 1 and total != 100:
        r.invalid([*path, "route"], f"route weights must sum to 100, not {total}")
    elif len(destinations) == 1 and isinstance(weights[0], int) and 0 < weights[0] < 100:
        r.invalid([*path, "route", 0, "weight"],
                  f"a single destination takes all traffic: weight must be 100 or omitted, not {weights[0]}")
    rewrite = route.get("rewrite")
    if isinstance(rewrite, dict) and not rewrite:
        r.invalid([*path, "rewrite"], "rewrite needs uri or authority")
    for key in ("uri", "authority"):
        if isinstance(rewrite, dict) and rewrite.get(key) == "":
            r.invalid([*path, "rewrite", key], "must not be empty")
    _headers(_dict(route, "headers"), [*path, "headers"], r)
    retries = _dict(route, "retries")
    if isinstance(retries.get("attempts"), int) and retries["attempts"] < 0:
        r.invalid([*path, "retries", "attempts"], "must not be negative")
    retry_on = retries.get("retryOn")
    if isinstance(retry_on, str):
        _retry_on(retry_on, [*path, "retries", "retryOn"], r)
    fault = route.get("fault")
    if isinstance(fault, dict):
        _fault(fault, [*path, "fault"], r)
    if "mirror" in route:
        _destination(_dict(route, "mirror"), [*path, "mirror"], r)
    _check_percent(_dict(route, "mirrorPercentage").get("value"), [*path, "mirrorPercentage", "value"], r)


def _destination(dest: dict[str, Any], path: list[Any], r: _Report) -> None:
    _check_host(dest.get("host"), [*path, "host"], r, wildcard=False, what="destination host")
    subset = dest.get("subset")
    if isinstance(subset, str) and not _DNS_LABEL.match(subset):
        r.invalid([*path, "subset"], f"invalid subset name {subset!r}: must be a DNS label")
    _check_port(_dict(dest, "port").get("number"), [*path, "port", "number"], r)


def _headers(headers: dict[str, Any], path: list[Any], r: _Report) -> None:
    for side in ("request", "response"):
        ops = _dict(headers, side)
        for op in ("set", "add"):
            for name in _dict(ops, op):
                _check_header_name(name, [*path, side, op, name], r)
        for i, name in _list(ops, "remove"):
            _check_header_name(name, [*path, side, "remove", i], r)


def _retry_on(value: str, path: list[Any], r: _Report) -> None:
    for item in (p.strip() for p in value.split(",")):
        if not item:
            r.invalid(path, f"empty retry condition in {value!r}")
        elif item.isdigit():
            if not 100 <= int(item) <= 599:
                r.invalid(path, f"retry status code {item} is not between 100 and 599")
        elif item in RETRY_POLICIES_UNSUPPORTED:
            r.unsupported(path, f"retry condition {item!r} is not supported by Lacewing yet")
        elif item not in RETRY_POLICIES:
            known = ", ".join(sorted(RETRY_POLICIES | RETRY_POLICIES_UNSUPPORTED))
            r.invalid(path, f"unknown retry condition {item!r}: use an HTTP status code or one of {known}")


def _fault(fault: dict[str, Any], path: list[Any], r: _Report) -> None:
    if not fault:
        r.invalid(path, "fault needs delay or abort")
    delay = fault.get("delay")
    if isinstance(delay, dict):
        if not any(k in delay for k in ("fixedDelay", "exponentialDelay")):
            r.invalid([*path, "delay"], "delay needs fixedDelay")
        _check_percent(_dict(delay, "percentage").get("value"), [*path, "delay", "percentage", "value"], r)
    abort = fault.get("abort")
    if isinstance(abort, dict):
        if not any(k in abort for k in ("httpStatus", "grpcStatus", "http2Error")):
            r.invalid([*path, "abort"], "abort needs httpStatus")
        status = abort.get("httpStatus")
        if isinstance(status, int) and not 200 <= status <= 599:
            r.invalid([*path, "abort", "httpStatus"], f"must be between 200 and 599, not {status}")
        _check_percent(_dict(abort, "percentage").get("value"), [*path, "abort", "percentage", "value"], r)


# --- DestinationRule -----------------------------------------------------------------------------


def _destination_rule(spec: dict[str, Any], path: list[Any], r: _Report) -> None:
    host = spec.get("host")
    if not host:
        r.invalid([*path, "host"], "host is required")
    _check_host(host, [*path, "host"], r, wildcard=True, what="host")
    _traffic_policy(_dict(spec, "trafficPolicy"), [*path, "trafficPolicy"], r)
    seen: set[str] = set()
    for i, subset in _list(spec, "subsets"):
        spath = [*path, "subsets", i]
        name = subset.get("name") if isinstance(subset, dict) else None
        if not name:
            r.invalid([*spath, "name"], "subset name is required")
        elif isinstance(name, str):
            if not _DNS_LABEL.match(name):
                r.invalid([*spath, "name"], f"invalid subset name {name!r}: must be a DNS label")
            if name in seen:
                r.invalid([*spath, "name"], f"duplicate subset name {name!r}")
            seen.add(name)
        _traffic_policy(_dict(subset, "trafficPolicy"), [*spath, "trafficPolicy"], r)


def _traffic_policy(policy: dict[str, Any], path: list[Any], r: _Report) -> None:
    simple = _dict(policy, "loadBalancer").get("simple")
    if simple == "PASSTHROUGH":
        r.unsupported([*path, "loadBalancer", "simple"], "load balancer PASSTHROUGH is not supported by Lacewing yet")
    pool = _dict(policy, "connectionPool")
    _check_non_negative(_dict(pool, "tcp"), ("maxConnections",), [*path, "connectionPool", "tcp"], r)
    _check_non_negative(
        _dict(pool, "http"),
        ("http1MaxPendingRequests", "http2MaxRequests", "maxRequestsPerConnection", "maxRetries"),
        [*path, "connectionPool", "http"], r,
    )
    outlier = _dict(policy, "outlierDetection")
    opath = [*path, "outlierDetection"]
    _check_non_negative(outlier, ("consecutive5xxErrors", "consecutiveGatewayErrors"), opath, r)
    for key in ("maxEjectionPercent", "minHealthPercent"):
        _check_percent(outlier.get(key), [*opath, key], r)
    for i, settings in _list(policy, "portLevelSettings"):
        if isinstance(settings, dict):
            _traffic_policy(settings, [*path, "portLevelSettings", i], r)


# --- PeerAuthentication --------------------------------------------------------------------------


def _peer_authentication(spec: dict[str, Any], path: list[Any], r: _Report) -> None:
    # Modes, port keys and "portLevelMtls requires selector" are schema (CEL) rules.
    return None


# --- AuthorizationPolicy -------------------------------------------------------------------------


def _authorization_policy(spec: dict[str, Any], path: list[Any], r: _Report) -> None:
    action = spec.get("action", "ALLOW")
    if action in ("CUSTOM", "AUDIT"):
        r.unsupported([*path, "action"], f"action {action} is not supported by Lacewing yet (ALLOW and DENY are)")
    if action == "CUSTOM" and not _dict(spec, "provider").get("name"):
        r.invalid([*path, "provider"], "action CUSTOM needs a provider name")
    if "provider" in spec and action != "CUSTOM":
        r.invalid([*path, "provider"], "provider can only be set with action CUSTOM")
    refs = [([*path, "targetRef"], spec["targetRef"])] if isinstance(spec.get("targetRef"), dict) else []
    refs += [([*path, "targetRefs", i], ref) for i, ref in _list(spec, "targetRefs")]
    for rpath, ref in refs:
        if isinstance(ref, dict) and (ref.get("kind"), ref.get("group", "")) not in (("Service", ""), ("Service", "core")):
            r.unsupported([*rpath, "kind"], f"targetRef to {ref.get('group') or 'core'}/{ref.get('kind')} "
                          "is not supported by Lacewing yet (only Service)")
    for i, rule in _list(spec, "rules"):
        if isinstance(rule, dict):
            _authz_rule(rule, [*path, "rules", i], r)


def _authz_rule(rule: dict[str, Any], path: list[Any], r: _Report) -> None:
    if "from" in rule and not rule["from"]:
        r.invalid([*path, "from"], "must not be empty when present")
    for i, item in _list(rule, "from"):
        source = item.get("source") if isinstance(item, dict) else None
        spath = [*path, "from", i, "source"]
        if not isinstance(source, dict) or not any(source.values()):
            r.invalid(spath, "from needs a source with at least one non-empty field")
            continue
        for key, values in source.items():
            if not isinstance(values, list):
                continue
            for j, value in enumerate(values):
                vpath = [*spath, key, j]
                if value == "":
                    r.invalid(vpath, "empty value")
                elif key in ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"):
                    _check_ip_block(value, vpath, r)
                elif key in ("serviceAccounts", "notServiceAccounts") and isinstance(value, str):
                    parts = value.split("/")
                    if len(parts) > 2 or not all(parts):
                        r.invalid(vpath, f"invalid service account {value!r}: use NAME or NAMESPACE/NAME")
    if "to" in rule and not rule["to"]:
        r.invalid([*path, "to"], "must not be empty when present")
    for i, item in _list(rule, "to"):
        operation = item.get("operation") if isinstance(item, dict) else None
        opath = [*path, "to", i, "operation"]
        if not isinstance(operation, dict) or not any(operation.values()):
            r.invalid(opath, "to needs an operation with at least one non-empty field")
            continue
        for key, values in operation.items():
            if not isinstance(values, list):
                continue
            for j, value in enumerate(values):
                vpath = [*opath, key, j]
                if value == "":
                    r.invalid(vpath, "empty value")
                elif key in ("ports", "notPorts"):
                    _check_port_string(value, vpath, r)
                elif key in ("paths", "notPaths") and isinstance(value, str) and "{" in value:
                    r.unsupported(vpath, f"path template {value!r} is not supported by Lacewing yet")
    for i, cond in _list(rule, "when"):
        if isinstance(cond, dict):
            _condition(cond, [*path, "when", i], r)


def _check_ip_block(value: Any, path: list[Any], r: _Report) -> None:
    if not isinstance(value, str):
        return
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        r.invalid(path, f"invalid IP address or CIDR block {value!r}")


def _check_port_string(value: Any, path: list[Any], r: _Report) -> None:
    if isinstance(value, str) and (not value.isdigit() or not 1 <= int(value) <= 65535):
        r.invalid(path, f"invalid port {value!r}: must be a number between 1 and 65535")


def _condition(cond: dict[str, Any], path: list[Any], r: _Report) -> None:
    key = cond.get("key")
    if not isinstance(key, str):
        return
    values = [("values", i, v) for i, v in _list(cond, "values")]
    values += [("notValues", i, v) for i, v in _list(cond, "notValues")]
    if not values:
        r.invalid(path, f"condition {key!r} needs values or notValues")
    header = re.fullmatch(r"request\.headers\[([^\]]+)\]", key)
    claims = re.fullmatch(r"request\.auth\.claims(\[[^\[\]]+\])+", key)
    if header:
        _check_header_name(header.group(1), [*path, "key"], r)
    elif claims or key in CONDITION_KEYS_UNSUPPORTED or key.startswith("experimental.envoy.filters."):
        r.unsupported([*path, "key"], f"condition key {key!r} is not supported by Lacewing yet")
    elif key not in CONDITION_KEYS_SUPPORTED:
        known = ", ".join(("request.headers[NAME]", *CONDITION_KEYS_SUPPORTED, *CONDITION_KEYS_UNSUPPORTED))
        r.invalid([*path, "key"], f"unknown condition key {key!r}: use one of {known}")
    for field, i, value in values:
        vpath = [*path, field, i]
        if key in ("source.ip", "destination.ip", "remote.ip"):
            _check_ip_block(value, vpath, r)
        elif key == "destination.port":
            _check_port_string(value, vpath, r)


# --- RateLimitPolicy -----------------------------------------------------------------------------


def _rate_limit_policy(spec: dict[str, Any], path: list[Any], r: _Report) -> None:
    bucket = _dict(spec, "tokenBucket")
    per_fill, capacity = bucket.get("tokensPerFill"), bucket.get("maxTokens")
    if isinstance(per_fill, int) and isinstance(capacity, int) and per_fill > capacity:
        r.invalid([*path, "tokenBucket", "tokensPerFill"],
                  f"tokensPerFill ({per_fill}) cannot exceed maxTokens ({capacity})")


_KIND_RULES: dict[str, Callable[[dict[str, Any], list[Any], _Report], None]] = {
    "VirtualService": _virtual_service,
    "DestinationRule": _destination_rule,
    "PeerAuthentication": _peer_authentication,
    "AuthorizationPolicy": _authorization_policy,
    "RateLimitPolicy": _rate_limit_policy,
}


def iter_unsupported_values() -> Iterator[tuple[str, str, str]]:
    yield from UNSUPPORTED_VALUES
