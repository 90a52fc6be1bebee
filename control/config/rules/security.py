"""PeerAuthentication and AuthorizationPolicy rules (Istio: ValidatePeerAuthentication,
ValidateAuthorizationPolicy, security.ValidateAttribute)."""

from __future__ import annotations

import re
from typing import Any

from control.config.rules.common import (
    Report,
    as_dict,
    check_ip_block,
    check_port_string,
    dict_items,
    items,
    selector_rules,
)

CONDITION_KEYS_SUPPORTED = ("source.ip", "source.namespace", "source.principal",
                            "source.serviceAccount", "destination.ip", "destination.port")
CONDITION_KEYS_UNSUPPORTED = ("remote.ip", "request.auth.principal", "request.auth.audiences",
                              "request.auth.presenter", "connection.sni", "source.trustDomain")
_MAP_KEY = re.compile(r"^[^\[]+\[.+\]$")
_TARGET_KINDS = {("core", "Service"): True, ("networking.istio.io", "ServiceEntry"): False,
                 ("gateway.networking.k8s.io", "Gateway"): True}
_TEMPLATE_LITERAL = re.compile(r"^[a-zA-Z0-9-._~%!$&'()+,;:@=]+$")


def peer_authentication(spec: dict[str, Any], path: list[Any], r: Report) -> None:
    # Modes, port keys and "portLevelMtls requires selector" are schema (CEL) rules.
    selector_rules(spec, path, r)


def authorization_policy(spec: dict[str, Any], path: list[Any], r: Report) -> None:
    selector_rules(spec, path, r)
    action = spec.get("action", "ALLOW")
    rules_given = bool(spec.get("rules"))  # an empty list is no rules, as in protobuf
    if action in ("CUSTOM", "AUDIT"):
        r.unsupported([*path, "action"], f"action {action} is not supported by Lacewing yet (ALLOW and DENY are)")
    if action in ("CUSTOM", "DENY") and not rules_given:
        r.invalid([*path, "rules"], f"{action} action without rules is meaningless as it will never be "
                  "triggered; add an empty rule {} to apply it to every request")
    if action == "CUSTOM" and rules_given and not as_dict(spec, "provider").get("name"):
        r.invalid([*path, "provider", "name"], "provider.name must not be empty")
    if "provider" in spec and action != "CUSTOM":
        r.invalid([*path, "provider"], f"provider must not be set with a non CUSTOM action, found {action}")
    refs = [([*path, "targetRef"], spec["targetRef"])] if isinstance(spec.get("targetRef"), dict) else []
    refs += [([*path, "targetRefs", i], ref) for i, ref in dict_items(spec, "targetRefs")]
    for rpath, ref in refs:
        group = ref.get("group") or "core"
        supported = _TARGET_KINDS.get((group, ref.get("kind")))
        if supported is None:
            r.invalid([*rpath, "kind"], f"targetRef must be to a Service, ServiceEntry or Gateway, "
                      f"not {group}/{ref.get('kind')}")
        elif not supported:
            r.unsupported([*rpath, "kind"], f"targetRef to a {ref.get('kind')} is not supported by "
                          "Lacewing yet (only Service, and Gateway for a waypoint)")
    for i, rule in dict_items(spec, "rules"):
        _rule(rule, [*path, "rules", i], action, r)


def _rule(rule: dict[str, Any], path: list[Any], action: Any, r: Report) -> None:
    if "from" in rule and not rule["from"]:
        r.invalid([*path, "from"], "from must not be empty")
    tcp_from = has_from = tcp_to = has_to = False
    for i, item in items(rule, "from"):
        source = item.get("source") if isinstance(item, dict) else None
        spath = [*path, "from", i, "source"]
        if not isinstance(source, dict):
            r.invalid(spath, "from.source must not be nil")
            continue
        has_from = True
        if not any(source.values()):
            r.invalid(spath, "from.source must not be empty")
        for key, values in source.items():
            if not isinstance(values, list):
                continue
            if key not in ("requestPrincipals", "notRequestPrincipals"):
                tcp_from = True
            for j, value in enumerate(values):
                vpath = [*spath, key, j]
                if value == "":
                    r.invalid(vpath, f"empty value not allowed, found in {key}")
                elif key in ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"):
                    check_ip_block(value, vpath, r)
                elif key in ("serviceAccounts", "notServiceAccounts"):
                    _service_account(value, vpath, r)
    if "to" in rule and not rule["to"]:
        r.invalid([*path, "to"], "to must not be empty")
    for i, item in items(rule, "to"):
        operation = item.get("operation") if isinstance(item, dict) else None
        opath = [*path, "to", i, "operation"]
        if not isinstance(operation, dict):
            r.invalid(opath, "to.operation must not be nil")
            continue
        has_to = True
        if not any(operation.values()):
            r.invalid(opath, "to.operation must not be empty")
        for key, values in operation.items():
            if not isinstance(values, list):
                continue
            if key in ("ports", "notPorts"):
                tcp_to = True
            for j, value in enumerate(values):
                vpath = [*opath, key, j]
                if value == "":
                    r.invalid(vpath, f"empty value not allowed, found in {key}")
                elif key in ("ports", "notPorts"):
                    check_port_string(value, vpath, r)
                elif key in ("paths", "notPaths") and isinstance(value, str):
                    _path_template(value, vpath, r)
    for i, cond in dict_items(rule, "when"):
        _condition(cond, [*path, "when", i], r)
    if action == "DENY" and ((has_from and not has_to and not tcp_from) or (has_to and not tcp_to)):
        r.warning(path, "this DENY rule uses only HTTP attributes, so it denies all traffic to TCP "
                  "ports under its scope; name the ports explicitly")


def _service_account(value: Any, path: list[Any], r: Report) -> None:
    if not isinstance(value, str):
        return
    if "*" in value:
        r.invalid(path, f"wildcard not allowed in service account {value!r}")
        return
    parts = value.split("/")
    if len(parts) > 2 or not all(parts):
        r.invalid(path, f"expected format 'serviceAccount' or 'namespace/serviceAccount', found {value!r}")


def _path_template(value: str, path: list[Any], r: Report) -> None:
    has_template = "{*}" in value or "{**}" in value
    any_seen = False
    for glob in value.strip("/").split("/"):
        if glob in ("{*}", "{**}"):
            if any_seen:
                r.invalid(path, f"invalid path {value!r}: {{**}} is not the last operator")
                return
            any_seen = glob == "{**}"
            continue
        if "{" in glob or "}" in glob:
            r.invalid(path, f"invalid path {value!r}: contains '{{' or '}}' beyond a supported path template")
            return
        if has_template and not _TEMPLATE_LITERAL.match(glob):
            r.invalid(path, f"invalid path {value!r}: segment {glob!r} is not a valid literal")
            return
    if has_template:
        r.unsupported(path, f"path template {value!r} is not supported by Lacewing yet")


def _condition(cond: dict[str, Any], path: list[Any], r: Report) -> None:
    key = cond.get("key")
    if not isinstance(key, str):
        return
    if key == "":
        r.invalid([*path, "key"], "key must not be empty")
        return
    values = [("values", i, v) for i, v in items(cond, "values")]
    values += [("notValues", i, v) for i, v in items(cond, "notValues")]
    if not values:
        r.invalid(path, f"at least one of values or notValues must be set for key {key}")
        return
    kpath = [*path, "key"]
    if key.startswith(("request.headers", "request.experimental.inline.headers", "request.auth.claims",
                       "experimental.envoy.filters.")):
        if not _MAP_KEY.match(key):
            r.invalid(kpath, f"bad key ({key}): should have format a[b]")
        elif not key.startswith("request.headers["):
            r.unsupported(kpath, f"condition key {key!r} is not supported by Lacewing yet")
    elif key in CONDITION_KEYS_UNSUPPORTED:
        r.unsupported(kpath, f"condition key {key!r} is not supported by Lacewing yet")
    elif key == "destination.namespace":
        r.invalid(kpath, f"attribute {key} is replaced by the metadata.namespace")
    elif key.startswith("destination.labels"):
        r.invalid(kpath, f"attribute {key} is replaced by the workload selector")
    elif key in ("destination.name", "destination.user"):
        r.invalid(kpath, f"deprecated attribute {key}: only supported in v1alpha1")
    elif key not in CONDITION_KEYS_SUPPORTED:
        known = ", ".join(("request.headers[NAME]", *CONDITION_KEYS_SUPPORTED))
        r.invalid(kpath, f"unknown attribute: {key} (Lacewing implements {known})")
    for field, i, value in values:
        vpath = [*path, field, i]
        if value == "":
            r.invalid(vpath, f"empty value not allowed, found in {key}")
        elif key in ("source.ip", "destination.ip", "remote.ip"):
            check_ip_block(value, vpath, r)
        elif key == "destination.port":
            check_port_string(value, vpath, r)
        elif key == "source.serviceAccount":
            _service_account(value, vpath, r)
