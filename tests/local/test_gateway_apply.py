"""End to end (root): what `lacewing waypoint generate -n NS` prints, `lacewing local apply`
stores — the Gateway is now a kind the configuration model accepts — and an ingress-class
Gateway is refused with nothing applied.

The cluster comes from the `make_cluster` fixture (no mesh: only the store is exercised), which
removes it even when the test fails.
"""

from __future__ import annotations

import yaml

from lacewing.cli import main


def test_local_apply_stores_the_generated_gateway(make_cluster, tmp_path, capsys):
    cluster = make_cluster(nodes=1, mesh=False)
    assert main(["waypoint", "generate", "-n", "shop"]) == 0
    generated = capsys.readouterr().out
    gateway = yaml.safe_load(generated)
    path = tmp_path / "waypoint.yaml"
    path.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n" + generated)

    assert main(["local", "apply", "--name", cluster.name, "--no-wait", "-f", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "nothing was applied" not in err, err

    stored = [o for o in cluster.store.objects().values() if o.get("kind") == "Gateway"]
    assert stored == [gateway]
    assert stored[0]["metadata"]["namespace"] == "shop"
    assert stored[0]["spec"]["gatewayClassName"] == "lacewing-waypoint"

    # What was applied analyzes clean: the Gateway is a mesh resource, not an unknown kind.
    assert main(["analyze", "--name", cluster.name, "-o", "json"]) == 0
    report = yaml.safe_load(capsys.readouterr().out)
    assert report["problems"] == [] and report["summary"]["accepted"] == 1


def test_local_apply_refuses_an_ingress_gateway_and_applies_nothing(make_cluster, tmp_path, capsys):
    cluster = make_cluster(nodes=1, mesh=False)
    path = tmp_path / "ingress.yaml"
    path.write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: edge}\n---\n"
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n"
        "metadata: {name: ingress, namespace: edge}\n"
        "spec: {gatewayClassName: istio, listeners: [{name: http, port: 80, protocol: HTTP}]}\n")
    before = cluster.store.objects()

    assert main(["local", "apply", "--name", cluster.name, "--no-wait", "-f", str(path)]) == 1
    err = capsys.readouterr().err
    assert "spec.gatewayClassName" in err and "not an ingress gateway" in err
    assert "nothing was applied" in err
    assert cluster.store.objects() == before
