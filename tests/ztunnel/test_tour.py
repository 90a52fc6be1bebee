"""Tier 3: the demo's mesh tour on the demo's own workloads (lacewing/samples/hello.yaml)."""

from __future__ import annotations

from importlib import resources

import pytest

from lacewing.local.mesh import uninstall_capture
from lacewing.tours.mesh import mesh_tour

pytestmark = pytest.mark.timeout(300)


def test_mesh_tour(make_cluster):
    cluster = make_cluster(nodes=2)
    try:
        with resources.as_file(resources.files("lacewing.samples") / "hello.yaml") as path:
            cluster.apply([path])
        cluster.wait_ready(namespace="demo", min_pods=3)
        steps, lines = [], []
        ok = mesh_tour(cluster, say=steps.append, out=lines.append)
        text = "\n".join(lines)
        assert ok, text
        assert "spiffe://cluster.local/ns/demo/sa/client → spiffe://cluster.local/ns/demo/sa/hello" \
            in text
        assert "legacy/outsider (not in the mesh) → " in text
        assert "demo/client:   HTTP/1.1 200" in text
        assert "mutual_tls" in text and "policy" in text
        assert len(steps) == 5
    finally:
        uninstall_capture(cluster)
