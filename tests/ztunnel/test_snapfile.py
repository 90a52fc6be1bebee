"""Tier 1: the standalone tunnel's snapshot file parser, including hypothesis fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.ztunnel import snapfile

GOOD = {
    "version": "7", "node": "node0",
    "workloads": [{"namespace": "a", "name": "p", "node": "node0", "ip": "10.0.0.5",
                   "node_ip": "172.18.0.10", "service_account": "sa", "labels": {"app": "p"}}],
    "services": [{"namespace": "a", "name": "s", "vip": "10.96.0.1",
                  "ports": [{"port": 80, "target_port": 8080}],
                  "endpoints": [{"workload": "a/p", "ip": "10.0.0.5", "ports": {"80": 8080}}]}],
    "resources": [{"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                   "metadata": {"name": "strict", "namespace": "a"},
                   "spec": {"mtls": {"mode": "STRICT"}}}],
}


def test_good_file():
    snap = snapfile.parse(GOOD)
    assert snap.version == "7" and snap.node == "node0"
    w = snap.workloads["a/p"]
    assert w.identity == "spiffe://cluster.local/ns/a/sa/sa" and w.enrolled
    assert snap.services["a/s"].endpoints[0].ports[80] == 8080
    assert snap.peer_authentications[0].spec.mtls.mode == "STRICT"


def test_invalid_resource_is_refused_naming_it():
    bad = {**GOOD, "resources": [{**GOOD["resources"][0], "spec": {"mtls": {"mode": "NOPE"}}}]}
    with pytest.raises(snapfile.SnapshotFileError, match="resource 0"):
        snapfile.parse(bad)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["version", "node", "workloads", "services",
                                        "waypoints", "resources", "trust_domain"]),
                       json_values, max_size=6))
def test_fuzz_snapshot_parser_fails_only_with_its_own_error(obj):
    try:
        snapfile.parse(obj)
    except snapfile.SnapshotFileError:
        pass
