"""Property tests: parse → serialize → parse is the identity, and random mutations of valid
documents never crash the validator (every outcome is a resource or located problems)."""

from __future__ import annotations

import copy
import math
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control.config.errors import INVALID, UNSUPPORTED, WARNING, Problem
from control.config.loader import Document
from control.config.validate import validate_document

from .helpers import conformance_docs, valid_files

# LACEWING_FUZZ_EXAMPLES=5000 runs every property much longer (by hand, not in CI).
FUZZ = int(os.environ.get("LACEWING_FUZZ_EXAMPLES", "0"))
SETTINGS = settings(max_examples=FUZZ or 120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

label = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)
host = st.one_of(label, st.builds(lambda a, b: f"{a}.{b}.svc.cluster.local", label, label))
header = st.from_regex(r"x-[a-z]{1,8}", fullmatch=True)
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters="%"), max_size=12)
duration = st.builds(lambda n, u: f"{n}{u}", st.integers(1, 5000), st.sampled_from(["ms", "s", "m", "h"]))
percent = st.floats(0, 100, allow_nan=False).map(lambda v: round(v, 3))
labels = st.dictionaries(label, label, max_size=3)
string_match = st.one_of(
    st.builds(lambda v: {"exact": v}, text), st.builds(lambda v: {"prefix": "/" + v}, text),
    st.sampled_from([{"regex": "/a.*"}, {"regex": "^v[0-9]+$"}, {}]),
)
header_ops = st.fixed_dictionaries({}, optional={
    "set": st.dictionaries(header, text, max_size=2), "add": st.dictionaries(header, text, max_size=2),
    "remove": st.lists(header, max_size=2)})
headers = st.fixed_dictionaries({}, optional={"request": header_ops, "response": header_ops})
destination = st.fixed_dictionaries({"host": host}, optional={
    "subset": label, "port": st.fixed_dictionaries({"number": st.integers(1, 65535)})})


@st.composite
def weighted_routes(draw):
    n = draw(st.integers(1, 3))
    if n == 1:
        weights = [draw(st.sampled_from([None, 100]))]
    else:
        cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=n - 1, max_size=n - 1)))
        weights = [b - a for a, b in zip([0, *cuts], [*cuts, 100], strict=True)]
    out = []
    for w in weights:
        d = {"destination": draw(destination)}
        if w is not None:
            d["weight"] = w
        if draw(st.booleans()):
            d["headers"] = draw(headers)
        out.append(d)
    return out


http_route = st.fixed_dictionaries({"route": weighted_routes()}, optional={
    "name": label,
    "match": st.lists(st.fixed_dictionaries({}, optional={
        "name": label, "uri": string_match, "method": string_match,
        "headers": st.dictionaries(header, string_match, max_size=2),
        "queryParams": st.dictionaries(label, string_match, max_size=2)}), max_size=2),
    "rewrite": st.fixed_dictionaries({"uri": st.just("/x")}, optional={"authority": host}),
    "headers": headers,
    "timeout": duration,
    "retries": st.fixed_dictionaries({"attempts": st.integers(1, 5)}, optional={
        "perTryTimeout": duration,
        "retryOn": st.lists(st.sampled_from(["5xx", "reset", "connect-failure", "503", "gateway-error"]),
                            min_size=1, max_size=3).map(",".join)}),
    "fault": st.one_of(
        st.fixed_dictionaries({"delay": st.fixed_dictionaries({"fixedDelay": duration},
                                                              optional={"percentage": st.fixed_dictionaries({"value": percent})})}),
        st.fixed_dictionaries({"abort": st.fixed_dictionaries({"httpStatus": st.integers(200, 599)},
                                                              optional={"percentage": st.fixed_dictionaries({"value": percent})})})),
    "mirror": destination,
    "mirrorPercentage": st.fixed_dictionaries({"value": percent}),
})

traffic_policy = st.fixed_dictionaries({}, optional={
    "loadBalancer": st.fixed_dictionaries({"simple": st.sampled_from(["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"])}),
    "connectionPool": st.fixed_dictionaries({}, optional={
        "tcp": st.fixed_dictionaries({"maxConnections": st.integers(0, 10_000)}),
        "http": st.fixed_dictionaries({}, optional={k: st.integers(0, 1000) for k in (
            "http1MaxPendingRequests", "http2MaxRequests", "maxRequestsPerConnection", "maxRetries")})}).filter(bool),
    "outlierDetection": st.fixed_dictionaries({}, optional={
        "consecutive5xxErrors": st.integers(0, 100), "consecutiveGatewayErrors": st.integers(0, 100),
        "interval": duration, "baseEjectionTime": duration,
        "maxEjectionPercent": st.integers(0, 100), "minHealthPercent": st.integers(0, 100)}),
}).filter(bool)

source = st.fixed_dictionaries({}, optional={k: st.lists(label, min_size=1, max_size=2) for k in (
    "principals", "notPrincipals", "namespaces", "notNamespaces")} | {
    "ipBlocks": st.lists(st.sampled_from(["10.0.0.0/8", "1.2.3.4", "::1/128"]), min_size=1, max_size=2)})
operation = st.fixed_dictionaries({}, optional={
    "methods": st.lists(st.sampled_from(["GET", "POST"]), min_size=1, max_size=2),
    "paths": st.lists(st.sampled_from(["/a", "/b/*", "*"]), min_size=1, max_size=2),
    "ports": st.lists(st.integers(1, 65535).map(str), min_size=1, max_size=2),
    "notHosts": st.lists(host, min_size=1, max_size=2)})
condition = st.fixed_dictionaries({"key": st.sampled_from(["source.namespace", "request.headers[x-a]",
                                                            "source.principal", "source.serviceAccount"]),
                                   "values": st.lists(label, min_size=1, max_size=2)})
rule = st.fixed_dictionaries({}, optional={
    "from": st.lists(st.fixed_dictionaries({"source": source}).filter(lambda s: s["source"]), min_size=1, max_size=2),
    "to": st.lists(st.fixed_dictionaries({"operation": operation}).filter(lambda o: o["operation"]), min_size=1, max_size=2),
    "when": st.lists(condition, min_size=1, max_size=2)})


def _resource(api_version, kind, spec):
    versions = api_version if isinstance(api_version, st.SearchStrategy) else st.just(api_version)
    meta = st.fixed_dictionaries({"name": label}, optional={"namespace": label, "labels": labels})
    return st.builds(lambda v, m, s: {"apiVersion": v, "kind": kind, "metadata": m, "spec": s},
                     versions, meta, spec)


valid_documents = st.one_of(
    _resource(st.sampled_from(["networking.istio.io/v1", "networking.istio.io/v1beta1",
                               "networking.istio.io/v1alpha3"]), "VirtualService",
              st.fixed_dictionaries({"hosts": st.lists(host, min_size=1, max_size=2, unique=True),
                                     "http": st.lists(http_route, min_size=1, max_size=2)})),
    _resource("networking.istio.io/v1beta1", "DestinationRule",
              st.fixed_dictionaries({"host": host}, optional={
                  "trafficPolicy": traffic_policy,
                  "subsets": st.lists(st.fixed_dictionaries({"name": label}, optional={
                      "labels": labels, "trafficPolicy": traffic_policy}), max_size=3, unique_by=lambda s: s["name"])})),
    _resource("security.istio.io/v1beta1", "PeerAuthentication",
              st.one_of(
                  st.fixed_dictionaries({}, optional={"mtls": st.fixed_dictionaries({"mode": st.sampled_from(["STRICT", "PERMISSIVE", "DISABLE", "UNSET"])})}),
                  st.fixed_dictionaries({"selector": st.fixed_dictionaries({"matchLabels": st.dictionaries(label, label, min_size=1, max_size=2)}),
                                         "portLevelMtls": st.dictionaries(st.integers(1, 65535).map(str),
                                                                          st.fixed_dictionaries({"mode": st.sampled_from(["STRICT", "DISABLE"])}),
                                                                          min_size=1, max_size=2)}))),
    _resource("security.istio.io/v1", "AuthorizationPolicy",
              st.one_of(
                  st.fixed_dictionaries({}, optional={
                      "action": st.just("ALLOW"), "selector": st.fixed_dictionaries({"matchLabels": labels}),
                      "rules": st.lists(rule, max_size=2)}),
                  st.fixed_dictionaries({"action": st.just("DENY"), "rules": st.lists(rule, min_size=1, max_size=2)},
                                        optional={"selector": st.fixed_dictionaries({"matchLabels": labels})}))),
    _resource("lacewing.dev/v1alpha1", "RateLimitPolicy",
              st.fixed_dictionaries({"tokenBucket": st.fixed_dictionaries(
                  {"maxTokens": st.integers(10, 1000), "fillInterval": duration},
                  optional={"tokensPerFill": st.integers(1, 10)})}, optional={
                  "targetRef": st.fixed_dictionaries({"kind": st.just("Service"), "name": label}),
                  "remainingTokensHeader": header, "statusCode": st.integers(400, 599)})),
)


def _accepted(obj: dict[str, Any]):
    resource, problems = validate_document(Document("gen.yaml", 0, obj))
    return resource, problems


@SETTINGS
@given(valid_documents)
def test_generated_valid_documents_are_accepted_and_round_trip(obj):
    resource, problems = _accepted(obj)
    assert resource is not None, problems
    again, problems = _accepted(resource.to_dict())
    assert again == resource, problems
    assert again.to_dict() == resource.to_dict()


def test_accepted_conformance_documents_round_trip():
    count = 0
    for doc, _ in conformance_docs(valid_files()):
        resource, _ = validate_document(doc)
        if resource is None:
            continue
        again, problems = validate_document(Document("rt.yaml", 0, resource.to_dict()))
        assert again == resource, problems
        count += 1
    assert count >= 30


# --- mutations --------------------------------------------------------------------------------------

_SEEDS = [doc.obj for doc, _ in conformance_docs(valid_files())]

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
              text, st.sampled_from(["", "*", "5s", "-1s", "0", "/(", "1.2.3.4/99", "STRICT", "CUSTOM"])),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(text, children, max_size=3)),
    max_leaves=6,
)


def _paths(obj: Any, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated(draw, seeds):
    obj = copy.deepcopy(draw(seeds))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(obj) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = obj
        for part in path[:-1]:
            parent = parent[part]
        op = draw(st.sampled_from(["replace", "delete", "add", "duplicate"]))
        last = path[-1]
        if op == "replace":
            parent[last] = draw(json_values)
        elif op == "delete":
            del parent[last]
        elif op == "add" and isinstance(parent[last], dict):
            parent[last][draw(text)] = draw(json_values)
        elif op == "duplicate" and isinstance(parent[last], list) and parent[last]:
            parent[last].append(copy.deepcopy(parent[last][0]))
    return obj


def _check_outcome(obj):
    resource, problems = validate_document(Document("m.yaml", 3, obj))
    assert all(isinstance(p, Problem) and p.kind in (INVALID, UNSUPPORTED, WARNING) for p in problems)
    assert all(p.file == "m.yaml" and p.index == 3 and isinstance(p.path, str) and p.message for p in problems)
    if resource is None:
        assert any(p.kind in (INVALID, UNSUPPORTED) for p in problems) or obj.get("kind") in (
            "Deployment", "Service", "Pod", "Namespace", "ServiceAccount", "ConfigMap", "Secret", "Endpoints",
            "StatefulSet", "DaemonSet", "ReplicaSet", "EndpointSlice")
    else:
        assert not any(p.kind in (INVALID, UNSUPPORTED) for p in problems)
        again, _ = validate_document(Document("rt.yaml", 0, resource.to_dict()))
        assert again == resource


@settings(max_examples=FUZZ or 300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(st.sampled_from(_SEEDS)))
def test_mutations_of_conformance_documents_never_crash(obj):
    _check_outcome(obj)


@SETTINGS
@given(mutated(valid_documents))
def test_mutations_of_generated_documents_never_crash(obj):
    _check_outcome(obj)


def test_nan_and_infinite_numbers_are_refused_cleanly():
    for value in (math.nan, math.inf):
        obj = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "a"},
               "spec": {"hosts": ["a"], "http": [{"route": [{"destination": {"host": "a"}, "weight": value}]}]}}
        resource, problems = validate_document(Document("n.yaml", 0, obj))
        assert resource is None and any(p.path == "spec.http[0].route[0].weight" for p in problems)
