"""Sans-IO tests of local mode: manifests, planning and rendering, no root needed."""

from __future__ import annotations

from control.config.loader import Document, load_documents
from lacewing.local import dataplane
from lacewing.local.apply import plan_apply
from lacewing.local.manifests import Deployment, parse_workload
from lacewing.local.supervisor import DesiredPod, PodRuntime, choose_node, desired_pods

DEPLOY = b"""
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, version: v1}}
    spec:
      containers:
      - name: web
        image: ignored:latest
        command: [lacewing, sample-app, serve]
        ports: [{containerPort: 8080, name: http}]
"""


def _doc(text: bytes) -> Document:
    return load_documents(text, name="f.yaml")[0]


def test_deployment_parses_and_warns_about_ignored_fields():
    problems = []
    d = parse_workload(_doc(DEPLOY), problems)
    assert isinstance(d, Deployment)
    assert d.replicas == 3 and d.labels == {"app": "web", "version": "v1"}
    assert d.spec.containers[0].argv == ["lacewing", "sample-app", "serve"]
    assert [(p.path, p.kind) for p in problems] == [("spec.template.spec.containers[0].image", "warning")]


def test_missing_command_names_the_field():
    problems = []
    text = DEPLOY.replace(b"        command: [lacewing, sample-app, serve]\n", b"")
    assert parse_workload(_doc(text), problems) is None
    errors = [p for p in problems if p.kind == "invalid"]
    assert [p.path for p in errors] == ["spec.template.spec.containers[0].command"]
    assert str(errors[0]).startswith("f.yaml: document 0: spec.template.spec.containers[0].command:")


def test_port_clash_between_containers():
    text = DEPLOY + b"""      - name: side
        command: [sleep, infinity]
        ports: [{containerPort: 8080}]
"""
    problems = []
    assert parse_workload(_doc(text), problems) is None
    assert any(p.path == "spec.template.spec.containers[1].ports[0].containerPort"
               and "clashes" in p.message for p in problems)


def test_unknown_field_and_bad_types():
    text = DEPLOY.replace(b"  replicas: 3", b"  replicas: three\n  paused: true")
    problems = []
    parse_workload(_doc(text), problems)
    assert {(p.path, p.message) for p in problems if p.kind == "invalid"} == {
        ("spec.replicas", "must be an integer, not str"), ("spec.paused", "unknown field")}


def test_plan_refuses_unknown_kind_and_writes_nothing():
    docs = load_documents(DEPLOY.replace(b"namespace: shop", b"namespace: default")
                          + b"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
                          name="mixed.yaml")
    plan = plan_apply(docs, {}, nodes=["node0"])
    assert [(p.file, p.index, p.path) for p in plan.errors] == [("mixed.yaml", 1, "kind")]
    assert plan.write == []


def test_plan_requires_namespace_and_service_account():
    docs = load_documents(DEPLOY.replace(b"      containers:", b"      serviceAccountName: api\n      containers:"),
                          name="d.yaml")
    plan = plan_apply(docs, {}, nodes=["node0"])
    assert {p.path for p in plan.errors} == {"metadata.namespace",
                                             "spec.template.spec.serviceAccountName"}


def test_plan_allocates_cluster_ips_and_refuses_a_taken_one():
    svc = b"apiVersion: v1\nkind: Service\nmetadata: {name: %s}\nspec:\n  ports: [{port: 80}]\n"
    plan = plan_apply(load_documents(svc % b"a" + b"---\n" + svc % b"b", name="s"), {}, nodes=["n"])
    assert [o["spec"]["clusterIP"] for o in plan.write] == ["10.96.0.10", "10.96.0.11"]
    existing = {"Service.core_default_a": plan.write[0]}
    clash = svc % b"c" + b"  clusterIP: 10.96.0.10\n"
    plan2 = plan_apply(load_documents(clash, name="c"), existing, nodes=["n"])
    assert [p.path for p in plan2.errors] == ["spec.clusterIP"]


def test_service_selecting_nothing_is_a_warning():
    svc = b"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  selector: {app: none}\n  ports: [{port: 80}]\n"
    plan = plan_apply(load_documents(svc, name="s"), {}, nodes=["n"])
    assert not plan.errors and [p.path for p in plan.warnings] == ["spec.selector"]
    assert len(plan.write) == 1


def test_deployment_pods_spread_over_nodes():
    d = parse_workload(_doc(DEPLOY), [])
    want = desired_pods([d])
    assert len(want) == 3
    placed: list[PodRuntime] = []
    for w in want.values():
        node = choose_node(w, placed, ["node0", "node1"])
        placed.append(PodRuntime(w.namespace, w.name, node, 0, "", "", "", w.owner, w.spec,
                                 w.spec_hash, w.labels, {}))
    assert sorted(p.node for p in placed) == ["node0", "node0", "node1"]


def test_template_change_renames_pods():
    d = parse_workload(_doc(DEPLOY), [])
    d2 = parse_workload(_doc(DEPLOY.replace(b"version: v1", b"version: v2")), [])
    assert set(desired_pods([d])).isdisjoint(desired_pods([d2]))
    assert isinstance(next(iter(desired_pods([d]).values())), DesiredPod)


def test_ruleset_balances_over_endpoints_and_skips_empty_services():
    rules = [
        dataplane.ServiceRule("default", "web", "10.96.0.10", 80,
                              (dataplane.Endpoint("10.244.0.2", 8080),
                               dataplane.Endpoint("10.244.1.2", 8080))),
        dataplane.ServiceRule("default", "empty", "10.96.0.11", 80, ()),
    ]
    text = dataplane.node_ruleset(rules, ["10.244.0.2"], "10.244.0.1")
    assert "numgen random mod 2 vmap" in text
    assert "dnat ip to 10.244.1.2:8080" in text
    assert "10.96.0.11" not in text
    assert "ip saddr 10.244.0.2 ip daddr 10.244.0.2 snat to 10.244.0.1" in text
    # Captured packets (marked by the eBPF programs) are never DNATed.
    pre = text[text.index("chain prerouting"):text.index("jump services")]
    assert f"meta mark {dataplane.CAPTURE_MARK:#x} accept" in pre


def test_hosts_file_short_names_only_in_own_namespace():
    entries = [dataplane.HostEntry("default", "web", "10.96.0.10"),
               dataplane.HostEntry("shop", "cart", "10.96.0.11")]
    text = dataplane.hosts_file(pod_name="p", pod_ip="10.244.0.2", pod_namespace="default",
                                services=entries)
    assert "10.96.0.10\tweb.default.svc.cluster.local web.default.svc web.default web\n" in text
    assert "10.96.0.11\tcart.shop.svc.cluster.local cart.shop.svc cart.shop\n" in text


VS = b"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [hello]
  http:
  - route:
    - destination: {host: hello, subset: v1}
      weight: 90
    - destination: {host: hello, subset: v2}
      weight: %d
"""


def test_mesh_config_is_validated_by_the_config_model():
    plan = plan_apply(load_documents(VS % 10, name="vs.yaml"), {}, nodes=["n"])
    assert not plan.errors
    assert plan.write[0]["metadata"]["namespace"] == "default"
    bad = plan_apply(load_documents(VS % 20, name="vs.yaml"), {}, nodes=["n"])
    assert [(p.file, p.index) for p in bad.errors] == [("vs.yaml", 0)]
    assert "spec.http[0].route" in bad.errors[0].path and bad.write == []
