"""Helpers shared by the semantic rules: tolerant accessors, the report, and checks on hosts,
ports, percentages, regexes, header names and values, labels and IP blocks as Istio makes them."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from control.config.errors import INVALID, UNSUPPORTED, WARNING
from control.config.schema import format_path

Found = list[tuple[str, str, str]]

# Istio's pkg/config/labels: DNS-1123 labels (either case), and a first label that may be `*`,
# `*foo`, `*-foo` or a plain label.
_DNS_LABEL_RX = r"[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?"
_DNS_LABEL = re.compile(rf"^{_DNS_LABEL_RX}$")
_WILDCARD_LABEL = re.compile(rf"^(\*|(\*|\*-)?{_DNS_LABEL_RX})$")
_ALL_NUMERIC = re.compile(r"^[+-]?[0-9]+$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Istio's ValidateHTTPHeaderName.
HEADER_NAME = re.compile(r"^[-_A-Za-z0-9]+$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def items(obj: Any, key: str) -> list[tuple[int, Any]]:
    value = obj.get(key) if isinstance(obj, dict) else None
    return list(enumerate(value)) if isinstance(value, list) else []


def dict_items(obj: Any, key: str) -> list[tuple[int, dict[str, Any]]]:
    return [(i, v) for i, v in items(obj, key) if isinstance(v, dict)]


def as_dict(obj: Any, key: str) -> dict[str, Any]:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else {}


class Report:
    def __init__(self) -> None:
        self.found: Found = []

    def invalid(self, path: list[Any], message: str) -> None:
        self.found.append((format_path(path), INVALID, message))

    def unsupported(self, path: list[Any], message: str) -> None:
        self.found.append((format_path(path), UNSUPPORTED, message))

    def warning(self, path: list[Any], message: str) -> None:
        self.found.append((format_path(path), WARNING, message))


def metadata_rules(kind: str, obj: dict[str, Any], r: Report) -> None:
    meta = as_dict(obj, "metadata")
    namespace = meta.get("namespace")
    if isinstance(namespace, str) and namespace != namespace.lower():
        r.warning(["metadata", "namespace"], f"namespace {namespace!r} has capital letters: "
                  "Kubernetes refuses such names; use lowercase")
    annotations = as_dict(meta, "annotations")
    if "istio.io/dry-run" in annotations:
        path = ["metadata", "annotations", "istio.io/dry-run"]
        value = annotations["istio.io/dry-run"]
        if kind != "AuthorizationPolicy":
            r.invalid(path, "only an AuthorizationPolicy may carry this annotation; remove it")
        elif str(value).lower() not in ("true", "false", "1", "0", "t", "f"):
            r.invalid(path, f"invalid value {value!r}: use \"true\" or \"false\"")
        elif str(value).lower() in ("true", "1", "t"):
            r.unsupported(path, "dry-run policies are not supported by Lacewing yet; remove the "
                          "annotation only if the policy should be enforced")


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def domain_error(domain: str) -> str | None:
    """Istio's ValidateWildcardDomain, rule for rule; None when the domain is valid."""
    if len(domain) > 255:
        return "too long (max 255)"
    if domain == "":
        return "empty domain name not allowed"
    first, _, rest = domain.partition(".")
    if len(first) > 63 or not _WILDCARD_LABEL.match(first):
        return f"label {first!r} invalid"
    if "." not in domain:
        return None
    labels = rest.split(".")
    if _ALL_NUMERIC.match(labels[-1]):
        return f"top level domain {labels[-1]!r} cannot be all-numeric"
    for i, label in enumerate(labels):
        if i == len(labels) - 1 and label == "":
            return None  # a trailing dot: `istio.io.`
        if len(label) > 63 or not _DNS_LABEL.match(label):
            return f"label {label!r} invalid"
    return None


def check_wildcard_domain(host: Any, path: list[Any], r: Report, *, what: str = "host") -> bool:
    if not isinstance(host, str):
        return False
    if host == "":
        r.invalid(path, f"{what} is required")
        return False
    error = domain_error(host)
    if error:
        r.invalid(path, f"invalid {what} {host!r}: {error}")
        return False
    return True


def check_port(number: Any, path: list[Any], r: Report) -> None:
    if isinstance(number, int) and not 1 <= number <= 65535:
        r.invalid(path, f"port must be between 1 and 65535, not {number}")


def check_percentage(value: Any, path: list[Any], r: Report) -> None:
    """Istio's validatePercentage: 0, or between 0.0001 and 100."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not (value == 0 or 0.0001 <= value <= 100):
            r.invalid(path, f"percentage {value} is neither 0 nor between 0.0001 and 100")


def check_regex(pattern: Any, path: list[Any], r: Report) -> None:
    if not isinstance(pattern, str):
        return
    if pattern == "":
        r.invalid(path, "regex must not be empty")
    elif len(pattern) > 1024:
        r.invalid(path, "regex is too large: at most 1024 characters")
    else:
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as exc:
            r.invalid(path, f"regex does not compile: {exc} (Istio uses RE2 syntax)")


def check_string_match(match: Any, path: list[Any], r: Report) -> None:
    if isinstance(match, dict) and "regex" in match:
        check_regex(match["regex"], [*path, "regex"], r)


def check_header_name(name: Any, path: list[Any], r: Report) -> None:
    if isinstance(name, str) and not HEADER_NAME.match(name):
        r.invalid(path, f"invalid header name {name!r}: use letters, digits, '-' and '_'")


def check_header_value(value: Any, path: list[Any], r: Report) -> None:
    if not isinstance(value, str):
        return
    if _CONTROL.search(value):
        r.invalid(path, "header value contains control characters")
        return
    rest = value.replace("%%", "")
    if rest.count("%") % 2:
        r.invalid(path, f"header value {value!r} has an unmatched '%': write '%%' for a literal '%'")
    elif "%" in rest:
        r.unsupported(path, f"header value {value!r} uses Envoy command operators (%...%), "
                      "which Lacewing does not support yet")


def check_labels(labels: Any, path: list[Any], r: Report) -> None:
    """Kubernetes label syntax (Istio's labels.Instance.Validate)."""
    if not isinstance(labels, dict):
        return
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if (not name or len(name) > 63 or not _LABEL_NAME.match(name)
                or (prefix and (len(prefix) > 253 or not _LABEL_PREFIX.match(prefix)))):
            r.invalid([*path, key], f"invalid label key {key!r}")
        if isinstance(value, str) and (len(value) > 63 or not _LABEL_VALUE.match(value)):
            r.invalid([*path, key], f"invalid label value {value!r}")


def check_ip_block(value: Any, path: list[Any], r: Report) -> None:
    """Istio's ValidateIPs: an address, or a CIDR prefix when it holds a '/'."""
    if not isinstance(value, str):
        return
    try:
        if "/" in value:
            ipaddress.ip_network(value, strict=False)
        else:
            ipaddress.ip_address(value)
    except ValueError:
        r.invalid(path, f"invalid IP address or CIDR block {value!r}")


def check_port_string(value: Any, path: list[Any], r: Report) -> None:
    """Istio's ValidatePorts: a decimal number up to 65535."""
    if isinstance(value, str) and (not value.isdigit() or not value.isascii() or int(value) > 65535):
        r.invalid(path, f"invalid port {value!r}: must be a number between 0 and 65535")


def selector_rules(spec: dict[str, Any], path: list[Any], r: Report) -> None:
    selector = spec.get("selector")
    if isinstance(selector, dict) and not as_dict(selector, "matchLabels"):
        r.warning([*path, "selector"], "workload selector specified without labels: it selects "
                  "every workload of the namespace")
