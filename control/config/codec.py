"""Between Istio-shaped dicts and the typed model, driven by the model's own fields.

Before: a document that passed the schema (`control.config.schema`). After, three services:
- `field_problems` walks a document beside its schema and its model class and reports every
  key the schema allows but the model lacks (*unsupported*, naming the field) and every key
  the schema does not know either (*invalid*: unknown field). Nothing under an unsupported
  field is looked at further: the field as a whole is what Lacewing refuses.
- `decode` builds the frozen dataclasses from a document that has no problems left.
- `encode_resource` writes a model back as the canonical Istio-shaped dict.
`unsupported_fields` lists, for the documentation, every schema field the model lacks.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Iterator, Mapping
from datetime import timedelta
from types import NoneType, UnionType
from typing import Any

from control.config.durations import format_duration, parse_duration
from control.config.errors import INVALID, UNSUPPORTED
from control.config.model import FrozenMap, ObjectMeta, Resource, Source
from control.config.schema import format_path

TOP_LEVEL_KEYS = frozenset({"apiVersion", "kind", "status"})


def _json_key(f: dataclasses.Field) -> str:
    if "key" in f.metadata:
        return f.metadata["key"]
    head, *rest = f.name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@functools.cache
def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """{json key: (field, resolved type)} for a model dataclass."""
    hints = typing.get_type_hints(cls)
    return {
        _json_key(f): (f, hints[f.name])
        for f in dataclasses.fields(cls)
        if not f.metadata.get("skip")
    }


def _unwrap_optional(tp: Any) -> Any:
    if isinstance(tp, UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not NoneType]
        if len(args) == 1:
            return args[0]
    return tp


def _child_schema(schema: dict[str, Any], key: str) -> dict[str, Any] | None:
    props = schema.get("properties") or {}
    if key in props:
        return props[key]
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        return extra
    return None


def _schema_allows(schema: dict[str, Any], key: str) -> bool:
    return (
        key in (schema.get("properties") or {})
        or bool(schema.get("additionalProperties"))
        or bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    )


# --- checking ------------------------------------------------------------------------------------


def field_problems(obj: Any, cls: type, schema: dict[str, Any]) -> list[tuple[str, str, str]]:
    """[(path, kind, message)] for keys the model does not implement or nobody knows."""
    found: list[tuple[str, str, str]] = []
    _check(obj, cls, schema, [], found, top=True)
    return found


def _check(value: Any, tp: Any, schema: dict[str, Any], path: list[Any],
           found: list[tuple[str, str, str]], *, top: bool = False) -> None:
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            return  # the schema's type check reports it
        fields = _fields(tp)
        ignored = getattr(tp, "IGNORED_KEYS", frozenset())
        for key, child in value.items():
            if key in fields:
                sub = _child_schema(schema, key) or {}
                _check(child, fields[key][1], sub, [*path, key], found)
            elif key in ignored or (top and key in TOP_LEVEL_KEYS):
                continue
            elif _schema_allows(schema, key):
                found.append((format_path([*path, key]), UNSUPPORTED,
                              f"{key!r} is not supported by Lacewing yet; remove it"))
            else:
                found.append((format_path([*path, key]), INVALID, f"unknown field {key!r}"))
    elif origin is tuple and isinstance(value, list):
        item_tp = typing.get_args(tp)[0]
        sub = schema.get("items") or {}
        for i, child in enumerate(value):
            _check(child, item_tp, sub, [*path, i], found)
    elif origin in (Mapping, dict) and isinstance(value, dict):
        value_tp = typing.get_args(tp)[1]
        sub = schema.get("additionalProperties")
        sub = sub if isinstance(sub, dict) else {}
        for key, child in value.items():
            _check(child, value_tp, sub, [*path, key], found)
    elif tp is timedelta and isinstance(value, str) and not schema.get("x-kubernetes-validations"):
        try:
            parse_duration(value)
        except ValueError as exc:
            found.append((format_path(path), INVALID, str(exc)))


# --- decoding ------------------------------------------------------------------------------------


def decode(cls: type, value: Any) -> Any:
    tp = _unwrap_optional(cls)
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        kwargs = {}
        for key, (f, ftp) in _fields(tp).items():
            if key not in value:
                continue
            raw = value[key]
            codec = f.metadata.get("codec")
            if codec == "comma-list":
                kwargs[f.name] = tuple(p for p in raw.split(",") if p)
            elif codec == "envoy-literal-map":
                kwargs[f.name] = FrozenMap({k: v.replace("%%", "%") for k, v in raw.items()})
            else:
                kwargs[f.name] = decode(ftp, raw)
        return tp(**kwargs)
    if origin is tuple:
        item_tp = typing.get_args(tp)[0]
        return tuple(decode(item_tp, v) for v in value)
    if origin in (Mapping, dict):
        key_tp, value_tp = typing.get_args(tp)
        return FrozenMap({key_tp(k): decode(value_tp, v) for k, v in value.items()})
    if tp is timedelta:
        return parse_duration(value)
    if tp is float:
        return float(value)
    if tp is int:
        return int(value)
    return value


def decode_resource(cls: type[Resource], obj: dict[str, Any], *, source: Source | None) -> Resource:
    resource = decode(cls, obj)
    return dataclasses.replace(resource, source=source)


# --- encoding ------------------------------------------------------------------------------------


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, (tuple, Mapping)) and len(value) == 0)


def encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        out: dict[str, Any] = {}
        for key, (f, _tp) in _fields(type(value)).items():
            item = getattr(value, f.name)
            if _empty(item):
                continue
            codec = f.metadata.get("codec")
            if codec == "comma-list":
                out[key] = ",".join(item)
            elif codec == "envoy-literal-map":
                out[key] = {k: v.replace("%", "%%") for k, v in item.items()}
            else:
                out[key] = encode(item)
        return out
    if isinstance(value, tuple):
        return [encode(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, timedelta):
        return format_duration(value)
    return value


def encode_resource(resource: Resource) -> dict[str, Any]:
    body = encode(resource)
    out = {"apiVersion": resource.api_version, "kind": resource.KIND}
    out["metadata"] = body.get("metadata", {})
    out["spec"] = body.get("spec", {})
    return out


# --- documentation ------------------------------------------------------------------------------


def unsupported_fields(cls: type, schema: dict[str, Any]) -> Iterator[str]:
    """Every schema field under `cls` that the model does not implement, as `a.b[].c` paths."""
    yield from _unsupported(cls, schema, "")


def _unsupported(tp: Any, schema: dict[str, Any], prefix: str) -> Iterator[str]:
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if tp is ObjectMeta:
            return
        fields = _fields(tp)
        for key in sorted(schema.get("properties") or {}):
            path = f"{prefix}.{key}" if prefix else key
            if key in fields:
                yield from _unsupported(fields[key][1], schema["properties"][key], path)
            elif not (prefix == "" and key in TOP_LEVEL_KEYS):
                yield path
    elif origin is tuple:
        yield from _unsupported(typing.get_args(tp)[0], schema.get("items") or {}, prefix + "[]")
    elif origin in (Mapping, dict):
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            yield from _unsupported(typing.get_args(tp)[1], extra, prefix + "{}")


def supported_fields(cls: type) -> Iterator[str]:
    """Every field the model implements under `cls` (leaves and objects), as `a.b[].c` paths."""
    yield from _supported(cls, "")


def _supported(tp: Any, prefix: str) -> Iterator[str]:
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if tp is ObjectMeta:
            return
        for key, (f, ftp) in _fields(tp).items():
            path = f"{prefix}.{key}" if prefix else key
            if f.metadata.get("codec") == "comma-list":
                yield path
                continue
            if f.metadata.get("codec") == "envoy-literal-map":
                yield path + "{}"
                continue
            inner = _unwrap_optional(ftp)
            nested = dataclasses.is_dataclass(inner) or typing.get_origin(inner) in (tuple, Mapping, dict)
            if not nested or inner is ObjectMeta:
                yield path
            yield from _supported(ftp, path)
    elif origin is tuple:
        item = typing.get_args(tp)[0]
        if not dataclasses.is_dataclass(item):
            yield prefix + "[]"
        yield from _supported(item, prefix + "[]")
    elif origin in (Mapping, dict):
        value = typing.get_args(tp)[1]
        if not dataclasses.is_dataclass(value):
            yield prefix + "{}"
        yield from _supported(value, prefix + "{}")
