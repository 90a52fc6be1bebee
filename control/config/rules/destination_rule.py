"""DestinationRule rules (Istio: ValidateDestinationRule, validateTrafficPolicy)."""

from __future__ import annotations

from typing import Any

from control.config.rules.common import (
    DNS1123_LABEL,
    Report,
    as_dict,
    check_labels,
    check_wildcard_domain,
    dict_items,
)

_POLICY_FIELDS = ("outlierDetection", "connectionPool", "loadBalancer", "tls", "portLevelSettings",
                  "tunnel", "proxyProtocol")


def destination_rule(spec: dict[str, Any], path: list[Any], r: Report) -> None:
    host = spec.get("host")
    if host is None:
        r.invalid([*path, "host"], "host is required")
    check_wildcard_domain(host, [*path, "host"], r)
    if isinstance(spec.get("trafficPolicy"), dict):
        traffic_policy(spec["trafficPolicy"], [*path, "trafficPolicy"], r)
    seen: set[str] = set()
    for i, subset in dict_items(spec, "subsets"):
        spath = [*path, "subsets", i]
        name = subset.get("name")
        if not name:
            r.invalid([*spath, "name"], "subset name cannot be empty")
        elif isinstance(name, str):
            if not DNS1123_LABEL.match(name):
                r.invalid([*spath, "name"], f"subset name is invalid: {name!r} (a DNS label)")
            if name in seen:
                r.invalid([*spath, "name"], f"duplicate subset names: {name}")
            seen.add(name)
        check_labels(subset.get("labels"), [*spath, "labels"], r)
        if isinstance(subset.get("trafficPolicy"), dict):
            traffic_policy(subset["trafficPolicy"], [*spath, "trafficPolicy"], r)


def traffic_policy(policy: dict[str, Any], path: list[Any], r: Report, *, port_level: bool = False) -> None:
    fields = _POLICY_FIELDS[:4] if port_level else _POLICY_FIELDS
    if not any(policy.get(k) is not None for k in fields):
        r.invalid(path, f"{'port ' if port_level else ''}traffic policy must have at least one field")
    if policy.get("tunnel") is not None and policy.get("proxyProtocol") is not None:
        r.invalid(path, "tunnel and proxyProtocol must not be set together")
    if as_dict(policy, "loadBalancer").get("simple") == "PASSTHROUGH":
        r.unsupported([*path, "loadBalancer", "simple"], "load balancer PASSTHROUGH is not supported by Lacewing yet")
    pool = policy.get("connectionPool")
    if isinstance(pool, dict):
        ppath = [*path, "connectionPool"]
        if pool.get("http") is None and pool.get("tcp") is None:
            r.invalid(ppath, "connection pool must have at least one field")
        _non_negative(as_dict(pool, "tcp"), ("maxConnections",), [*ppath, "tcp"], r)
        _non_negative(as_dict(pool, "http"), ("http1MaxPendingRequests", "http2MaxRequests",
                                               "maxRequestsPerConnection", "maxRetries",
                                               "maxConcurrentStreams"), [*ppath, "http"], r)
    outlier = as_dict(policy, "outlierDetection")
    opath = [*path, "outlierDetection"]
    for key in ("maxEjectionPercent", "minHealthPercent"):
        value = outlier.get(key)
        if isinstance(value, int) and not 0 <= value <= 100:
            r.invalid([*opath, key], f"percentage {value} is not in range 0..100")
    if outlier.get("consecutiveErrors"):
        r.warning([*opath, "consecutiveErrors"], "deprecated: use consecutiveGatewayErrors or consecutive5xxErrors")
    for i, settings in dict_items(policy, "portLevelSettings"):
        spath = [*path, "portLevelSettings", i]
        if settings.get("port") is None:
            r.invalid(spath, "portTrafficPolicy must have valid port")
        traffic_policy(settings, spath, r, port_level=True)


def _non_negative(obj: dict[str, Any], keys: tuple[str, ...], path: list[Any], r: Report) -> None:
    for key in keys:
        value = obj.get(key)
        if isinstance(value, int) and value < 0:
            r.invalid([*path, key], f"must be non-negative, not {value}")
