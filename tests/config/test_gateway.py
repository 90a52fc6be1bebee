"""The waypoint's Gateway API `Gateway`: accepted as `lacewing waypoint generate` writes it (and as
Istio's waypoints are written, with Lacewing's class), refused where Lacewing does not implement
it, and attachable by AuthorizationPolicy targetRefs."""

from __future__ import annotations

import copy

import pytest
import yaml

from control.config import support
from control.config.errors import INVALID, UNSUPPORTED
from control.config.loader import load_documents
from control.config.model import CONFIG_KINDS, RESOURCE_KINDS, Gateway, Listener
from control.config.validate import parse, validate_document, validate_documents
from waypoint.manifest import gateway as generated_gateway

from .helpers import ap, doc

ISTIO_STYLE = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  labels: {istio.io/waypoint-for: service}
  name: waypoint
  namespace: shop
spec:
  gatewayClassName: lacewing-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE}
"""


def gw(**changes) -> dict:
    obj = generated_gateway("shop", "waypoint")
    spec = obj["spec"]
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return obj


def listener(**extra) -> dict:
    return {"name": "mesh", "port": 15008, "protocol": "HBONE", **extra}


def problems(obj: dict) -> list[tuple[str, str, str]]:
    d = load_documents(yaml.safe_dump(obj).encode(), name="gw.yaml")[0]
    resource, found = validate_document(d)
    if any(p.kind in (INVALID, UNSUPPORTED) for p in found):
        assert resource is None, "a refused Gateway must not be returned"
    return [(p.kind, p.path, p.message) for p in found]


def kinds_at(obj: dict) -> set[tuple[str, str]]:
    return {(k, p) for k, p, _ in problems(obj)}


# --- accepted -------------------------------------------------------------------------------------


def test_the_generated_gateway_is_accepted_into_the_typed_model():
    obj = generated_gateway("shop", "wp", traffic="workload")
    d = load_documents(yaml.safe_dump(obj).encode(), name="gw.yaml")[0]
    resource = parse(d)
    assert isinstance(resource, Gateway)
    assert (resource.namespace, resource.name, resource.waypoint_for) == ("shop", "wp", "workload")
    assert resource.spec.gateway_class_name == "lacewing-waypoint"
    assert resource.spec.listeners == (Listener("mesh", 15008, "HBONE"),)
    assert resource.to_dict() == obj


def test_istio_shaped_waypoint_gateway_and_both_api_versions_give_one_model():
    v1 = parse(doc(ISTIO_STYLE))
    v1beta1 = parse(doc(ISTIO_STYLE.replace("/v1\n", "/v1beta1\n", 1)))
    assert v1 == v1beta1 and v1.waypoint_for == "service"
    assert v1beta1.to_dict()["apiVersion"] == "gateway.networking.k8s.io/v1"


def test_gateway_is_validated_but_not_a_compiled_kind():
    assert Gateway in CONFIG_KINDS and Gateway not in RESOURCE_KINDS


# --- invalid --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("obj", "path"), [
    (gw(listeners=None), "spec.listeners"),
    (gw(listeners=[]), "spec.listeners"),
    (gw(gatewayClassName=None), "spec.gatewayClassName"),
    (gw(listeners=[listener(port=0)]), "spec.listeners[0].port"),
    (gw(listeners=[listener(port=70000)]), "spec.listeners[0].port"),
    (gw(listeners=[listener(port="15008")]), "spec.listeners[0].port"),
    (gw(listeners=[{"name": "mesh", "port": 15008}]), "spec.listeners[0].protocol"),
    (gw(listeners=[listener(name="Mesh_1")]), "spec.listeners[0].name"),
    (gw(listeners=[listener(colour="red")]), "spec.listeners[0].colour"),
    (gw(gatewayClass="lacewing-waypoint"), "spec.gatewayClass"),
])
def test_invalid_gateways_are_located(obj, path):
    assert (INVALID, path) in kinds_at(obj), problems(obj)


def test_listener_names_must_be_unique():
    found = problems(gw(listeners=[listener(), listener()]))
    assert [(k, p) for k, p, _ in found] == [(INVALID, "spec.listeners[1].name")]
    assert "already used by listeners[0]" in found[0][2]


def test_waypoint_for_label_values():
    obj = gw()
    obj["metadata"]["labels"] = {"istio.io/waypoint-for": "everything"}
    assert kinds_at(obj) == {(INVALID, "metadata.labels[istio.io/waypoint-for]")}
    for value in ("service", "workload", "all", "none"):
        obj["metadata"]["labels"] = {"istio.io/waypoint-for": value}
        assert problems(obj) == []


# --- unsupported ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ["istio", "istio-waypoint", "nginx"])
def test_a_class_other_than_lacewing_waypoint_is_unsupported_naming_the_field(cls):
    found = problems(gw(gatewayClassName=cls))
    assert [(k, p) for k, p, _ in found] == [(UNSUPPORTED, "spec.gatewayClassName")]
    assert "not an ingress gateway" in found[0][2] and "lacewing-waypoint" in found[0][2]


@pytest.mark.parametrize(("obj", "path"), [
    (gw(listeners=[listener(protocol="HTTP", port=80)]), "spec.listeners[0].protocol"),
    (gw(listeners=[listener(port=15009)]), "spec.listeners[0].port"),
    (gw(listeners=[listener(hostname="*.example.com")]), "spec.listeners[0].hostname"),
    (gw(listeners=[listener(tls={"mode": "Terminate"})]), "spec.listeners[0].tls"),
    (gw(listeners=[listener(allowedRoutes={"namespaces": {"from": "Same"}})]),
     "spec.listeners[0].allowedRoutes"),
    (gw(addresses=[{"type": "IPAddress", "value": "10.0.0.1"}]), "spec.addresses"),
    (gw(infrastructure={"labels": {"a": "b"}}), "spec.infrastructure"),
    (gw(backendTLS={"clientCertificateRef": {"name": "c"}}), "spec.backendTLS"),
])
def test_other_gateway_api_fields_and_values_are_unsupported(obj, path):
    assert kinds_at(obj) == {(UNSUPPORTED, path)}, problems(obj)


def test_the_generated_unsupported_list_names_the_gateway_fields():
    fields = support.unsupported_field_list()["Gateway"]
    assert "spec.addresses" in fields and "spec.listeners[].hostname" in fields
    assert "spec.listeners[].port" not in fields and "spec.gatewayClassName" not in fields
    assert "Gateway (gateway.networking.k8s.io)" not in support.unsupported_kinds()
    assert "HTTPRoute (gateway.networking.k8s.io)" in support.unsupported_kinds()


def test_other_gateway_api_kinds_stay_unsupported():
    d = doc("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec: {}\n")
    _, found = validate_document(d)
    assert [(p.kind, p.path) for p in found] == [(UNSUPPORTED, "kind")]


def test_unserved_gateway_version_is_invalid():
    d = doc(ISTIO_STYLE.replace("/v1\n", "/v1alpha2\n", 1))
    _, found = validate_document(d)
    assert [(p.kind, p.path) for p in found] == [(INVALID, "apiVersion")]
    assert "gateway.networking.k8s.io/v1, gateway.networking.k8s.io/v1beta1" in found[0].message


# --- AuthorizationPolicy attached to the waypoint -------------------------------------------------

GATEWAY_REF = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}
L7_RULES = [{"to": [{"operation": {"methods": ["GET"], "paths": ["/api/*"]}}]}]


@pytest.mark.parametrize("spec", [
    {"targetRef": GATEWAY_REF, "rules": L7_RULES},
    {"targetRefs": [GATEWAY_REF], "rules": L7_RULES},
    {"targetRefs": [GATEWAY_REF, {"kind": "Service", "name": "cart"}], "rules": L7_RULES},
])
def test_authorization_policy_target_ref_to_a_gateway_is_accepted(spec):
    resources, found = validate_documents([ap(copy.deepcopy(spec), namespace="shop")])
    assert found == []
    (policy,) = resources
    assert policy.spec.targets[0].kind == "Gateway"
    assert policy.spec.targets[0].group == "gateway.networking.k8s.io"


def test_gateway_target_ref_in_the_wrong_group_is_invalid_and_service_entry_unsupported():
    _, found = validate_document(ap({"targetRef": {"kind": "Gateway", "name": "w"}}))
    assert [(p.kind, p.path) for p in found] == [(INVALID, "spec.targetRef.kind")]
    _, found = validate_document(ap({"targetRef": {"group": "networking.istio.io",
                                                   "kind": "ServiceEntry", "name": "w"}}))
    assert [(p.kind, p.path) for p in found] == [(UNSUPPORTED, "spec.targetRef.kind")]
