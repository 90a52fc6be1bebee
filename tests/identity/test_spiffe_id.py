"""SPIFFE IDs are built and parsed in one place, strictly."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.ca import spiffe_id as s

DNS1123 = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\Z")


def test_workload_id_shape_and_istio_principal():
    w = s.workload_id("default", "api-gateway")
    assert w.uri == "spiffe://cluster.local/ns/default/sa/api-gateway"
    assert w.principal == "cluster.local/ns/default/sa/api-gateway"
    assert s.parse(w.uri) == w


def test_node_id_shape():
    n = s.node_id("node-1", trust_domain="example.org")
    assert n.uri == "spiffe://example.org/lacewing/node/node-1"
    assert s.parse_node(n.uri) == n
    with pytest.raises(s.SpiffeIdError):
        s.parse_workload(n.uri)


@pytest.mark.parametrize("bad", [
    "http://cluster.local/ns/a/sa/b",
    "SPIFFE://cluster.local/ns/a/sa/b",
    "spiffe://Cluster.Local/ns/a/sa/b",
    "spiffe://cluster.local:8443/ns/a/sa/b",
    "spiffe://user@cluster.local/ns/a/sa/b",
    "spiffe://cluster.local/ns/a/sa/b?x=1",
    "spiffe://cluster.local/ns/a/sa/b#f",
    "spiffe://cluster.local/ns//sa/b",
    "spiffe://cluster.local/ns/../sa/b",
    "spiffe://cluster.local/ns/a/sa/b/",
    "spiffe://cluster.local/ns/a/sa/b/extra",
    "spiffe://cluster.local/ns/a%20/sa/b",
    "spiffe://cluster.local",
    "spiffe:///ns/a/sa/b",
])
def test_rejects_malformed(bad):
    with pytest.raises(s.SpiffeIdError):
        s.parse(bad)


@settings(max_examples=50, deadline=None)
@given(DNS1123, DNS1123, st.sampled_from(["cluster.local", "example.org", "td-1"]))
def test_round_trip_matches_independent_parser(ns, sa, td):
    from spiffe import SpiffeId  # the independent `spiffe` package

    w = s.workload_id(ns, sa, trust_domain=td)
    theirs = SpiffeId(w.uri)
    assert str(theirs) == w.uri
    assert str(theirs.trust_domain) == td
    assert s.parse(w.uri) == w
