"""VirtualService rules (Istio: ValidateVirtualService and validateHTTPRoute)."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from control.config.rules.common import (
    DNS1123_LABEL,
    Report,
    as_dict,
    check_header_name,
    check_header_value,
    check_percentage,
    check_port,
    check_string_match,
    check_wildcard_domain,
    dict_items,
    is_ip,
    items,
)

RETRY_POLICIES = frozenset({
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "retriable-4xx",
    "refused-stream", "retriable-status-codes",
    "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
})
RETRY_POLICIES_UNSUPPORTED = frozenset({"envoy-ratelimited", "retriable-headers", "http3-post-connect-failure"})
_STATUS_CODES = frozenset(int(s) for s in HTTPStatus)


def virtual_service(spec: dict[str, Any], path: list[Any], r: Report) -> None:
    hosts = spec.get("hosts")
    if not hosts:
        if spec.get("http") and not spec.get("gateways"):
            r.unsupported([*path, "hosts"], "a VirtualService without hosts is a delegate; "
                          "delegation is not supported by Lacewing yet")
        else:
            r.invalid([*path, "hosts"], "at least one host is required")
    valid_hosts = []
    for i, host in items(spec, "hosts"):
        if isinstance(host, str) and is_ip(host):
            valid_hosts.append(host)
        elif check_wildcard_domain(host, [*path, "hosts", i], r):
            if host == "*":
                r.invalid([*path, "hosts", i], "wildcard host * is not allowed for virtual services "
                          "bound to the mesh gateway")
            else:
                valid_hosts.append(host)
    for i, a in enumerate(valid_hosts):
        for b in valid_hosts[i + 1:]:
            if _hosts_overlap(a, b):
                r.invalid([*path, "hosts"], f"duplicate hosts in virtual service: {a} & {b}")
    for i, gateway in items(spec, "gateways"):
        if gateway != "mesh":
            r.unsupported([*path, "gateways", i], f"gateway {gateway!r} is not supported by "
                          "Lacewing yet (only 'mesh')")
    if not any(spec.get(k) for k in ("http", "tcp", "tls")):
        r.invalid(path, "http, tcp or tls must be provided in virtual service")
    routes = dict_items(spec, "http")
    for i, route in routes:
        http_route(route, [*path, "http", i], r)
    _unreachable_rules(routes, [*path, "http"], r)


def _hosts_overlap(a: str, b: str) -> bool:
    """Istio's host.Name.Matches: a leading `*` matches any prefix."""
    a, b = a.lower(), b.lower()
    if a.startswith("*") and b.startswith("*"):
        return a[1:].endswith(b[1:]) or b[1:].endswith(a[1:])
    if a.startswith("*"):
        return b.endswith(a[1:])
    if b.startswith("*"):
        return a.endswith(b[1:])
    return a == b


def http_route(route: dict[str, Any], path: list[Any], r: Report) -> None:
    has_route = bool(route.get("route"))
    if route.get("redirect"):
        for other in ("route", "fault", "rewrite"):
            if route.get(other):
                r.invalid(path, f"HTTP route cannot contain both {other} and redirect")
    elif not has_route and not route.get("directResponse") and not route.get("delegate"):
        r.invalid(path, "HTTP route or redirect is required")
    for i, match in dict_items(route, "match"):
        mpath = [*path, "match", i]
        for key in ("uri", "scheme", "method", "authority"):
            check_string_match(match.get(key), [*mpath, key], r)
        for name, sm in as_dict(match, "headers").items():
            check_header_name(name, [*mpath, "headers", name], r)
            if name.startswith("@request.auth.claims"):
                r.invalid([*mpath, "headers", name], "JWT claim based routing is only supported for gateways")
            check_string_match(sm, [*mpath, "headers", name], r)
        for name, sm in as_dict(match, "queryParams").items():
            check_string_match(sm, [*mpath, "queryParams", name], r)
        if isinstance(match.get("port"), int) and match["port"] != 0:
            check_port(match["port"], [*mpath, "port"], r)
    _destinations(route, path, r)
    _header_operations(as_dict(route, "headers"), [*path, "headers"], r)
    _retries(as_dict(route, "retries"), "retries" in route, [*path, "retries"], r)
    rewrite = route.get("rewrite")
    if isinstance(rewrite, dict):
        if rewrite.get("uri") and rewrite.get("uriRegexRewrite"):
            r.invalid([*path, "rewrite"], "rewrite may only contain one of uri or uriRegexRewrite")
        if not (rewrite.get("uri") or rewrite.get("uriRegexRewrite") or rewrite.get("authority")):
            r.invalid([*path, "rewrite"], "rewrite must specify at least one of uri, uriRegexRewrite or authority")
        _authority_once(rewrite, as_dict(route, "headers"), path, r)
    fault = route.get("fault")
    if isinstance(fault, dict):
        _fault(fault, [*path, "fault"], r)
    if isinstance(route.get("mirror"), dict):
        destination(route["mirror"], [*path, "mirror"], r)
    value = as_dict(route, "mirrorPercentage").get("value")
    if isinstance(value, (int, float)) and not 0 <= value <= 100:
        r.invalid([*path, "mirrorPercentage", "value"], f"must be between 0 and 100, not {value}")


def _destinations(route: dict[str, Any], path: list[Any], r: Report) -> None:
    dests = dict_items(route, "route")
    total = 0
    negative = False
    for i, dest in dests:
        dpath = [*path, "route", i]
        if isinstance(dest.get("destination"), dict):
            destination(dest["destination"], [*dpath, "destination"], r)
        weight = dest.get("weight")
        if isinstance(weight, int) and not isinstance(weight, bool):
            if weight < 0:
                r.invalid([*dpath, "weight"], f"weight {weight} < 0")
                negative = True
            else:
                total += weight
        _header_operations(as_dict(dest, "headers"), [*dpath, "headers"], r)
    if len(dests) > 1 and not negative:
        if total == 0:
            r.invalid([*path, "route"], "total destination weight = 0")
        elif total != 100:
            r.unsupported([*path, "route"], f"route weights sum to {total}: Istio reads them as relative "
                          "proportions, Lacewing needs percentages that sum to 100")


def destination(dest: dict[str, Any], path: list[Any], r: Report) -> None:
    host = dest.get("host")
    if host == "*":
        r.invalid([*path, "host"], "invalid destination host *")
    elif check_wildcard_domain(host, [*path, "host"], r, what="destination host") and host.startswith("*"):
        r.unsupported([*path, "host"], f"wildcard destination host {host!r} is not supported by Lacewing yet")
    subset = dest.get("subset")
    if isinstance(subset, str) and not DNS1123_LABEL.match(subset):
        r.invalid([*path, "subset"], f"subset name is invalid: {subset!r} (a DNS label)")
    check_port(as_dict(dest, "port").get("number"), [*path, "port", "number"], r)


def _header_operations(headers: dict[str, Any], path: list[Any], r: Report) -> None:
    request, response = as_dict(headers, "request"), as_dict(headers, "response")
    for op in ("set", "add"):
        for name, value in as_dict(request, op).items():
            npath = [*path, "request", op, name]
            if name == "":
                r.invalid(npath, "header name cannot be empty")
            elif name.startswith(":") and name.lower() != ":authority":
                r.invalid(npath, f"invalid header {name!r}: header cannot have ':' prefix")
            check_header_value(value, npath, r)
        for name, value in as_dict(response, op).items():
            npath = [*path, "response", op, name]
            _operation_name(name, npath, r)
            check_header_value(value, npath, r)
    for side, ops in (("request", request), ("response", response)):
        for i, name in items(ops, "remove"):
            _operation_name(name, [*path, side, "remove", i], r)


def _operation_name(name: Any, path: list[Any], r: Report) -> None:
    if not isinstance(name, str):
        return
    if name == "":
        r.invalid(path, "header name cannot be empty")
    elif name.lower() == "host":
        r.invalid(path, "invalid header 'host': cannot set Host header")
    elif name.startswith(":"):
        r.invalid(path, f"invalid header {name!r}: header cannot have ':' prefix")


def _authority_once(rewrite: dict[str, Any], headers: dict[str, Any], path: list[Any], r: Report) -> None:
    current = rewrite.get("authority") or ""
    request = as_dict(headers, "request")
    for op in ("set", "add"):
        for name in as_dict(request, op):
            if name.lower() in (":authority", "host"):
                if current:
                    r.invalid([*path, "headers", "request", op, name], "authority header cannot be set multiple times")
                current = "set"


def _retries(retries: dict[str, Any], present: bool, path: list[Any], r: Report) -> None:
    if not present:
        return
    attempts = retries.get("attempts", 0)
    if isinstance(attempts, int) and attempts < 0:
        r.invalid([*path, "attempts"], "attempts cannot be negative")
    if attempts == 0 and any(k in retries for k in ("perTryTimeout", "retryOn", "retryRemoteLocalities")):
        r.invalid(path, "http retry policy configured when attempts are set to 0 (disabled)")
    retry_on = retries.get("retryOn")
    if isinstance(retry_on, str) and retry_on:
        for item in retry_on.split(","):
            if item.isdigit() and item.isascii() and int(item) in _STATUS_CODES:
                continue
            if item in RETRY_POLICIES_UNSUPPORTED:
                r.unsupported([*path, "retryOn"], f"retry condition {item!r} is not supported by Lacewing yet")
            elif item not in RETRY_POLICIES:
                r.invalid([*path, "retryOn"], f"{item!r} is not a valid retryOn policy: use an HTTP status "
                          "code or one of " + ", ".join(sorted(RETRY_POLICIES | RETRY_POLICIES_UNSUPPORTED)))


def _fault(fault: dict[str, Any], path: list[Any], r: Report) -> None:
    delay, abort = fault.get("delay"), fault.get("abort")
    if not delay and not abort:
        r.invalid(path, "HTTP fault injection must have an abort and/or a delay")
    if isinstance(delay, dict):
        check_percentage(as_dict(delay, "percentage").get("value"), [*path, "delay", "percentage", "value"], r)
        if not any(k in delay for k in ("fixedDelay", "exponentialDelay")):
            r.warning([*path, "delay"], "delay configured without fixedDelay: it delays nothing")
    if isinstance(abort, dict):
        check_percentage(as_dict(abort, "percentage").get("value"), [*path, "abort", "percentage", "value"], r)
        status = abort.get("httpStatus")
        if isinstance(status, int) and not 200 <= status <= 600:
            r.invalid([*path, "abort", "httpStatus"], f"HTTP status {status} is not in range 200-599")
        if not any(k in abort for k in ("httpStatus", "grpcStatus", "http2Error")):
            r.warning([*path, "abort"], "abort configured, but error type not set: it aborts nothing")


def _unreachable_rules(routes: list[tuple[int, dict[str, Any]]], path: list[Any], r: Report) -> None:
    """Istio's analyzeUnreachableHTTPRules, reduced to its exact cases (warnings)."""
    seen: dict[str, int] = {}
    catch_all: int | None = None
    for i, route in routes:
        matches = [m for _, m in dict_items(route, "match")]
        if not matches:
            if catch_all is not None:
                r.warning([*path, i], f"rule {i} is not used: only the last rule can have no matches "
                          f"(rule {catch_all} already matches everything)")
            else:
                catch_all = i
            continue
        duplicates = 0
        for j, match in enumerate(matches):
            key = json.dumps({k: v for k, v in match.items() if k != "name"}, sort_keys=True, default=str)
            if key in seen:
                r.warning([*path, i, "match", j], f"match {j} of rule {i} is not used: rule {seen[key]} "
                          "has the same match")
                duplicates += 1
            else:
                seen[key] = i
        if duplicates == len(matches):
            r.warning([*path, i], f"rule {i} is not used: all its matches are used by prior rules")
