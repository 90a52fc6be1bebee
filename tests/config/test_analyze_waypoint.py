"""`lacewing analyze` warns about L7 AuthorizationPolicies no waypoint can enforce
(`waypoint.placement.unenforceable`), from files and from a local cluster's applied config, and
stays quiet once the workloads pass a waypoint (Namespace or Service label)."""

from __future__ import annotations

import json

import pytest

import control.config.analyze as analyzer
import waypoint.placement as placement
from lacewing.cli import main

CODE = "waypoint.placement.unenforceable"

L7_POLICY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: cart-api, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  rules:
  - to: [{operation: {methods: [GET], paths: ["/api/*"]}}]
"""
L4_POLICY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: cart-l4, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]
    to: [{operation: {ports: ["8080"]}}]
"""
GATEWAY_POLICY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: at-waypoint, namespace: shop}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  rules:
  - to: [{operation: {methods: [GET]}}]
"""


def namespace(labels: str = "{}") -> str:
    return f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, labels: {labels}}}\n"


def service(labels: str = "{}", selector: str = "{app: cart}") -> str:
    return (f"apiVersion: v1\nkind: Service\nmetadata: {{name: cart, namespace: shop, labels: {labels}}}\n"
            f"spec: {{selector: {selector}, ports: [{{port: 8080}}]}}\n")


DEPLOYMENT = """apiVersion: apps/v1
kind: Deployment
metadata: {name: cart, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  template:
    metadata: {labels: {app: cart}}
    spec: {containers: [{name: c, command: [sleep, "1000"]}]}
"""
POD = """apiVersion: v1
kind: Pod
metadata: {name: cart-debug, namespace: shop, labels: {app: cart}}
spec: {containers: [{name: c, command: [sleep, "1000"]}]}
"""


def files(tmp_path, *docs: str) -> str:
    path = tmp_path / "in.yaml"
    path.write_text("---\n".join(docs))
    return str(path)


def analyze_json(path: str, capsys) -> tuple[int, dict]:
    rc = main(["analyze", "-f", path, "-o", "json"])
    return rc, json.loads(capsys.readouterr().out)


def unenforceable(report: dict) -> list[dict]:
    return [p for p in report["problems"] if p["message"].startswith(CODE)]


def test_l7_policy_on_workloads_without_a_waypoint_is_a_located_warning(tmp_path, capsys):
    path = files(tmp_path, namespace(), service(), DEPLOYMENT, L7_POLICY)
    rc = main(["analyze", "-f", path])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0, "a warning alone does not fail analyze"
    assert out == [
        f"{path}: document 3: spec.selector: warning: {CODE}: uses L7 attributes (methods, paths) "
        "but shop/cart's traffic passes no waypoint, so the node tunnel refuses the connections "
        "this policy would judge; fix: `lacewing waypoint apply -n shop --enroll-namespace` (or "
        "label its Service lacewing.dev/use-waypoint=<name>)"]


def test_every_selected_workload_is_named_pods_and_deployments(tmp_path, capsys):
    rc, report = analyze_json(files(tmp_path, namespace(), DEPLOYMENT, POD, L7_POLICY), capsys)
    assert rc == 0
    found = unenforceable(report)
    assert [p["kind"] for p in found] == ["warning", "warning"]
    assert {"shop/cart's", "shop/cart-debug's"} <= {w for p in found for w in p["message"].split()}


@pytest.mark.parametrize("docs", [
    pytest.param((namespace("{lacewing.dev/use-waypoint: waypoint}"), service()), id="namespace-label"),
    pytest.param((namespace(), service("{lacewing.dev/use-waypoint: waypoint}")), id="service-label"),
    pytest.param((namespace(), service("{lacewing.dev/use-waypoint: shop/other}")), id="service-label-qualified"),
])
def test_workloads_behind_a_waypoint_raise_no_warning(tmp_path, capsys, docs):
    rc, report = analyze_json(files(tmp_path, *docs, DEPLOYMENT, L7_POLICY), capsys)
    assert rc == 0 and unenforceable(report) == []


@pytest.mark.parametrize("docs", [
    pytest.param((namespace("{lacewing.dev/use-waypoint: none}"), service()), id="namespace-none"),
    pytest.param((namespace(), service("{lacewing.dev/use-waypoint: none}")), id="service-none"),
    pytest.param((namespace(), service("{lacewing.dev/use-waypoint: waypoint}", "{app: other}")),
                 id="service-selects-other-pods"),
])
def test_labels_that_send_nothing_through_a_waypoint_still_warn(tmp_path, capsys, docs):
    rc, report = analyze_json(files(tmp_path, *docs, DEPLOYMENT, L7_POLICY), capsys)
    assert rc == 0 and len(unenforceable(report)) == 1


def test_l4_policies_and_policies_attached_to_the_waypoint_raise_no_warning(tmp_path, capsys):
    rc, report = analyze_json(files(tmp_path, namespace(), service(), DEPLOYMENT, L4_POLICY,
                                    GATEWAY_POLICY), capsys)
    assert rc == 0 and unenforceable(report) == []


def test_without_workloads_the_check_is_skipped_and_said_so(tmp_path, capsys):
    rc, report = analyze_json(files(tmp_path, L7_POLICY), capsys)
    assert rc == 0 and unenforceable(report) == []
    assert any("no Deployment, Pod" in s for s in report["summary"]["skipped_checks"])


def test_the_gateway_in_the_same_files_is_accepted(tmp_path, capsys):
    gateway = ("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n"
               "metadata: {name: waypoint, namespace: shop}\n"
               "spec: {gatewayClassName: lacewing-waypoint, "
               "listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n")
    rc, report = analyze_json(files(tmp_path, namespace("{lacewing.dev/use-waypoint: waypoint}"),
                                    gateway, DEPLOYMENT, L7_POLICY, GATEWAY_POLICY), capsys)
    assert rc == 0 and report["problems"] == []
    assert report["summary"]["accepted"] == 3


def test_reads_the_local_clusters_applied_config_without_files(tmp_path, monkeypatch, capsys):
    from lacewing.local import names

    monkeypatch.setattr(names, "STATE_ROOT", tmp_path)
    config = tmp_path / "lw-demo" / "config"
    config.mkdir(parents=True)
    for i, text in enumerate((namespace(), DEPLOYMENT, L7_POLICY)):
        (config / f"obj{i}.yaml").write_text(text)
    assert main(["analyze", "--name", "demo"]) == 0
    assert CODE in capsys.readouterr().out
    (config / "obj0.yaml").write_text(namespace("{lacewing.dev/use-waypoint: waypoint}"))
    assert main(["analyze", "--name", "demo"]) == 0
    assert CODE not in capsys.readouterr().out


def test_one_copy_of_the_check():
    assert placement.unenforceable is analyzer.unenforceable
    assert placement.l7_fields is analyzer.l7_fields
