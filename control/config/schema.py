"""Structural validation against the published CustomResourceDefinition schemas.

Before: a document's mapping and its (group, version, kind). After: a list of `(path, message)`
for every place the document breaks the CRD's openAPIV3Schema — types, enums, ranges, "only one
of" groups — and its `x-kubernetes-validations` (CEL) rules. What comes next is the model
(`control.config.fields`), which knows which of the fields the schema allows Lacewing implements.

The schemas are Istio's own (`schemas/crd-all.gen.yaml`, Apache-2.0, see `schemas/LICENSE`)
plus Lacewing's (`schemas/lacewing-crds.yaml`) and the part of the Gateway API `Gateway` a
waypoint uses (`schemas/gateway-api-subset.yaml`); they are read once, on first use. The OpenAPI v3
subset in CRDs is checked with `jsonschema`'s Draft 4 validator (same `exclusiveMinimum`
rules). CEL is not evaluated by a general interpreter: the rules these schemas use are few,
and each has a Python equivalent in `_CEL_RULES`; a test checks that every rule in the shipped
schemas has one, so a schema update that brings a new rule fails loudly instead of being skipped.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any

import jsonschema
import yaml

from control.config.durations import parse_duration_ns

SCHEMA_FILES = ("crd-all.gen.yaml", "lacewing-crds.yaml", "gateway-api-subset.yaml")

# ObjectMeta as Kubernetes checks it; CRDs leave `metadata` to the API server.
_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Kubernetes wants lowercase; Istio's own validation does not check, so mixed case is a warning.
_LABEL = r"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"
METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 253, "pattern": _NAME},
        "namespace": {"type": "string", "minLength": 1, "maxLength": 63, "pattern": _LABEL},
        "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        # Written by the API server or by tools; carried, never acted on.
        "uid": {"type": "string"},
        "resourceVersion": {"type": "string"},
        "generation": {"type": "integer"},
        "creationTimestamp": {"type": ["string", "null"]},
        "managedFields": {"type": "array"},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array"},
        "deletionTimestamp": {"type": ["string", "null"]},
        "deletionGracePeriodSeconds": {"type": "integer"},
        "selfLink": {"type": "string"},
        # Known to Kubernetes, not implemented: refused as unsupported by the model.
        "generateName": {"type": "string"},
    },
    "required": ["name"],
}


def _rel(name: str) -> str:
    return resources.files("control.config").joinpath("schemas", name).read_text("utf-8")


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    """{(group, kind): {version: openAPIV3Schema}} for every CRD shipped in the package."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    found: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for name in SCHEMA_FILES:
        for crd in yaml.load_all(_rel(name), Loader=loader):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            versions = found.setdefault((spec["group"], spec["names"]["kind"]), {})
            for version in spec["versions"]:
                if version.get("served", True):
                    versions[version["name"]] = version["schema"]["openAPIV3Schema"]
    return found


_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1),
               "uint32": (0, 2**32 - 1), "uint64": (0, 2**64 - 1)}


def _openapi_to_draft4(node: Any) -> Any:
    """OpenAPI's `nullable` and integer formats, said in Draft 4 terms (as the API server reads them)."""
    if isinstance(node, dict):
        node = {k: _openapi_to_draft4(v) for k, v in node.items()}
        if node.get("nullable") is True and isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        if node.get("type") in ("integer", ["integer", "null"]) and node.get("format") in _INT_RANGES:
            low, high = _INT_RANGES[node["format"]]
            node.setdefault("minimum", low)
            node.setdefault("maximum", high)
        return node
    if isinstance(node, list):
        return [_openapi_to_draft4(v) for v in node]
    return node


@functools.cache
def document_schema(group: str, version: str, kind: str) -> dict[str, Any]:
    """The whole-document schema: the CRD's, with apiVersion, kind and metadata filled in."""
    schema = _openapi_to_draft4(copy.deepcopy(crd_schemas()[(group, kind)][version]))
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string"}
    props["kind"] = {"type": "string"}
    props["metadata"] = METADATA_SCHEMA
    props.setdefault("spec", {"type": "object"})
    # Istio does not require spec (an AuthorizationPolicy without one allows nothing).
    schema["required"] = sorted({"apiVersion", "kind", "metadata", *schema.get("required", [])})
    return schema


@functools.cache
def _validator(group: str, version: str, kind: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(document_schema(group, version, kind))


def format_path(parts: Iterable[Any]) -> str:
    """`spec.http[0].route[1].weight`; map keys that are not identifiers go in brackets."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{part}]"
    return out


def structural_problems(obj: dict[str, Any], group: str, version: str, kind: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for error in _validator(group, version, kind).iter_errors(obj):
        path, message = _explain(error)
        if (path, message) not in seen:
            seen.add((path, message))
            found.append((path, message))
    found.extend(cel_problems(obj, document_schema(group, version, kind)))
    return sorted(found)


def _explain(error: jsonschema.ValidationError) -> tuple[str, str]:
    parts = list(error.absolute_path)
    value = error.instance
    v = error.validator
    if v == "required":
        missing = re.match(r"'(.*)' is a required property", error.message)
        if missing:
            return format_path([*parts, missing.group(1)]), "required field is missing"
    if v == "type":
        want = error.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        return format_path(parts), f"must be of type {want}, not {_json_type(value)}"
    if v == "enum":
        allowed = ", ".join(str(x) for x in error.validator_value)
        return format_path(parts), f"invalid value {value!r}: must be one of {allowed}"
    if v in ("minimum", "maximum"):
        word = "at least" if v == "minimum" else "at most"
        return format_path(parts), f"must be {word} {error.validator_value}, not {value!r}"
    if v == "oneOf":
        names = sorted({n for branch in error.validator_value for n in branch.get("required", [])})
        if names and isinstance(value, dict):
            present = [n for n in names if n in value]
            return format_path(parts), (
                f"only one of {', '.join(names)} may be set (found {', '.join(present)})"
            )
    if v in ("minProperties", "maxProperties", "minItems", "maxItems", "minLength", "maxLength"):
        what = {"Properties": "entries", "Items": "items", "Length": "characters"}[v[3:]]
        word = "at least" if v.startswith("min") else "at most"
        if word == "at least" and error.validator_value == 1:
            return format_path(parts), "must not be empty"
        return format_path(parts), f"must have {word} {error.validator_value} {what}"
    if v == "pattern":
        return format_path(parts), f"invalid value {value!r}: must match {error.validator_value}"
    return format_path(parts), error.message


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# --- CEL rules ---------------------------------------------------------------------------------
# Each function takes the value the rule is attached to and returns None when the rule holds,
# or an extra detail ("" for none) when it does not; the schema's own message is always shown.

def _duration_at_least_1ms(value: Any) -> str | None:
    if not isinstance(value, str):
        return None  # the type check reports it
    try:
        return None if parse_duration_ns(value) >= 1_000_000 else ""
    except ValueError as exc:
        return str(exc)


def _no_wildcard_keys(value: Any) -> str | None:
    return "" if isinstance(value, dict) and any("*" in k for k in value) else None


def _no_empty_keys(value: Any) -> str | None:
    return "" if isinstance(value, dict) and any(k == "" for k in value) else None


def _no_wildcard(value: Any) -> str | None:
    return "" if isinstance(value, str) and "*" in value else None


def _one_of_selector_target(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    return "" if sum(k in value for k in ("selector", "targetRef", "targetRefs")) > 1 else None


def _service_accounts_alone(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    if "serviceAccounts" in value or "notServiceAccounts" in value:
        if any(k in value for k in ("principals", "notPrincipals", "namespaces", "notNamespaces")):
            return ""
    return None


def _empty_string(value: Any) -> str | None:
    return "" if isinstance(value, str) and value != "" else None


def _port_level_needs_selector(value: Any) -> str | None:
    if not isinstance(value, dict) or "portLevelMtls" not in value:
        return None
    selector = value.get("selector")
    labels = selector.get("matchLabels") if isinstance(selector, dict) else None
    return None if isinstance(labels, dict) and labels else ""


def _port_keys(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    for key in value:
        if not re.fullmatch(r"[+-]?[0-9]+", key):  # CEL int(): no spaces, no underscores
            return f"type conversion error from string {key!r} to int"
        port = int(key)
        if not 0 < port <= 65535:
            return f"got {key}"
    return None


_CEL_RULES: dict[str, Callable[[Any], str | None]] = {
    "duration(self) >= duration('1ms')": _duration_at_least_1ms,
    'self.all(key, !key.contains("*"))': _no_wildcard_keys,
    "self.all(key, key.size() != 0)": _no_empty_keys,
    '!self.contains("*")': _no_wildcard,
    "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1": _one_of_selector_target,
    "(has(self.serviceAccounts) || has(self.notServiceAccounts)) ? (!has(self.principals) &&\n!has(self.notPrincipals) && !has(self.namespaces) && !has(self.notNamespaces)) : true": _service_accounts_alone,
    "self.size() == 0": _empty_string,
    "has(self.portLevelMtls) ? (((has(self.selector) && has(self.selector.matchLabels)) ? self.selector.matchLabels : {}).size() > 0) : true": _port_level_needs_selector,
    "self.all(key, 0 < int(key) && int(key) <= 65535)": _port_keys,
}


def known_cel_rules() -> frozenset[str]:
    return frozenset(_CEL_RULES)


def iter_cel_rules(schema: Any) -> Iterable[str]:
    """Every CEL rule text in a schema (for the coverage test)."""
    if isinstance(schema, dict):
        for rule in schema.get("x-kubernetes-validations", []) or []:
            yield rule["rule"]
        for value in schema.values():
            yield from iter_cel_rules(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from iter_cel_rules(value)


def cel_problems(obj: Any, schema: dict[str, Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    _walk_cel(obj, schema, [], found)
    return found


def _walk_cel(value: Any, schema: dict[str, Any], path: list[Any], found: list[tuple[str, str]]) -> None:
    for rule in schema.get("x-kubernetes-validations", []) or []:
        check = _CEL_RULES.get(rule["rule"])
        if check is None:
            continue
        detail = check(value)
        if detail is not None:
            message = rule.get("message") or f"failed rule: {rule['rule']}"
            found.append((format_path(path), f"{message} ({detail})" if detail else message))
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, child in value.items():
            sub = props.get(key)
            if sub is None and isinstance(extra, dict):
                sub = extra
            if isinstance(sub, dict):
                _walk_cel(child, sub, [*path, key], found)
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, child in enumerate(value):
                _walk_cel(child, items, [*path, i], found)
