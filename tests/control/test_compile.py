"""Tier 1: workload rules, incremental compilation and the delta protocol, without I/O."""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.rpc import status_pb2

from control.api import mesh_pb2
from control.catalog import Catalog, Change
from control.compiler import Compiler
from control.objects import ALL_KINDS, Delete, Key, Replace, Upsert, key_of
from control.snapshots import node_snapshot, waypoint_snapshot
from control.state import ClusterState
from control.workloads import enrolled, workload_of
from control.xds import resources as r
from control.xds.session import DeltaSession
from tests.control.helpers import authz, namespace, node, pod, service

AMBIENT = {"lacewing.dev/dataplane-mode": "ambient"}


def compiled(*objs):
    state, catalog = ClusterState(), Catalog()
    comp = Compiler(state, catalog)
    state.apply(Replace(ALL_KINDS, {key_of(o): o for o in objs}))
    comp.full()
    catalog.mark_ready()
    return state, catalog, comp


# --- rules ----------------------------------------------------------------------------------------

def test_enrollment_pod_label_wins_over_namespace():
    ns_in, ns_out = namespace("a", AMBIENT), namespace("b")
    assert enrolled(pod("a", "p", node_name="n", ip="1.1.1.1"), ns_in)
    assert not enrolled(pod("a", "p", node_name="n", ip="1.1.1.1",
                            labels={"lacewing.dev/dataplane-mode": "none"}), ns_in)
    assert enrolled(pod("b", "p", node_name="n", ip="1.1.1.1", labels=AMBIENT), ns_out)
    assert not enrolled(pod("b", "p", node_name="n", ip="1.1.1.1"), ns_out)


def test_workload_identity_waypoint_exclusions_and_readiness():
    ns = namespace("shop", {**AMBIENT, "lacewing.dev/use-waypoint": "wp"})
    p = pod("shop", "web", node_name="n1", ip="10.0.0.1", sa="web", ready=False,
            annotations={"lacewing.dev/exclude-outbound-ports": "9090, 15020,x"})
    w = workload_of(p, namespace=ns, node=node("n1", "172.18.0.10"), trust_domain="example.org")
    assert w.identity == "spiffe://example.org/ns/shop/sa/web"
    assert w.node_ip == "172.18.0.10" and w.waypoint == "shop/wp"
    assert w.exclude_outbound_ports == {9090, 15020} and not w.ready and w.enrolled
    unscheduled = pod("shop", "x", node_name="", ip="")
    assert workload_of(unscheduled, namespace=ns, node=None, trust_domain="cluster.local") is None


# --- incremental compile ----------------------------------------------------------------------------

def test_one_pod_change_touches_only_its_workload_and_services():
    objs = [namespace("shop", AMBIENT)]
    objs += [service("shop", f"svc{i}", ip=f"10.96.0.{i + 1}", selector={"app": f"a{i}"})
             for i in range(5)]
    objs += [pod("shop", f"p{i}", node_name="n1", ip=f"10.244.0.{i + 2}", labels={"app": f"a{i % 5}"})
             for i in range(50)]
    state, catalog, comp = compiled(*objs)
    seen = []
    catalog.listeners.append(seen.append)
    changed = pod("shop", "p7", node_name="n1", ip="10.244.0.9", labels={"app": "a2"}, ready=False)
    comp.update(state.apply(Upsert(Key("Pod", "shop", "p7"), changed)))
    assert len(seen) == 1
    assert seen[0].changed == {r.WORKLOAD: {"shop/p7"}, r.SERVICE: {"shop/svc2"}}
    # The same object again changes nothing.
    assert comp.update(state.apply(Upsert(Key("Pod", "shop", "p7"), changed))) is None
    # A deleted pod leaves its service's endpoints.
    comp.update(state.apply(Delete(Key("Pod", "shop", "p2"))))
    assert seen[-1].changed == {r.WORKLOAD: {"shop/p2"}, r.SERVICE: {"shop/svc2"}}
    assert "10.244.0.4" not in {e.ip for e in comp.services["shop/svc2"].endpoints}


def test_namespace_label_recompiles_its_pods():
    state, catalog, comp = compiled(namespace("shop"), pod("shop", "a", node_name="n", ip="10.0.0.1"),
                                    pod("other", "b", node_name="n", ip="10.0.0.2"))
    assert not comp.workloads["shop/a"].enrolled
    change = comp.update(state.apply(Upsert(Key("Namespace", "", "shop"),
                                            namespace("shop", AMBIENT))))
    assert change.changed == {r.WORKLOAD: {"shop/a"}}
    assert comp.workloads["shop/a"].enrolled and not comp.workloads["other/b"].enrolled


def test_invalid_mesh_resource_is_refused_and_the_rest_compiles():
    bad = authz("shop", "bad", app="x", principals=["p"])
    bad["spec"]["action"] = "EXPLODE"
    _, catalog, comp = compiled(namespace("shop"), bad,
                                authz("shop", "good", app="x", principals=["p"]))
    assert set(catalog.entries[r.AUTHORIZATION_POLICY]) == {"shop/good"}
    assert Key("AuthorizationPolicy", "shop", "bad") in comp.problems


def test_waypoint_snapshot_keeps_what_concerns_it():
    wp_pod = pod("shop", "wp-1", node_name="n1", ip="10.244.0.50", sa="wp",
                 labels={"lacewing.dev/waypoint": "wp"})
    uses = service("shop", "web", ip="10.96.0.1", selector={"app": "web"},
                   labels={"lacewing.dev/use-waypoint": "wp"})
    other = service("shop", "db", ip="10.96.0.2", selector={"app": "db"})
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": "web", "namespace": "shop"},
          "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web"}}]}]}}
    vs_db = {**vs, "metadata": {"name": "db", "namespace": "shop"},
             "spec": {"hosts": ["db"], "http": [{"route": [{"destination": {"host": "db"}}]}]}}
    l7 = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
          "metadata": {"name": "l7", "namespace": "shop"},
          "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "web"}],
                   "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}}
    _, catalog, comp = compiled(namespace("shop"), wp_pod, uses, other, vs, vs_db, l7,
                                pod("shop", "web-1", node_name="n1", ip="10.244.0.3",
                                    labels={"app": "web"}))
    wp = comp.waypoints["shop/wp"]
    assert wp.identity == "spiffe://cluster.local/ns/shop/sa/wp" and wp.addresses == ("10.244.0.50",)
    by_type = {t: catalog.objects(t, "waypoints", "shop/wp") for t in catalog.entries}
    snap = waypoint_snapshot(wp, "1", by_type)
    assert set(snap.services) == {"shop/web"} and set(snap.workloads) == {"shop/web-1"}
    assert [v.name for v in snap.virtual_services] == ["web"]
    assert [p.name for p in snap.authorization_policies] == ["l7"]
    # Nodes never see the L7 policy, nor the routes.
    node_types = {t: catalog.objects(t, "nodes") for t in catalog.entries}
    assert node_snapshot("n1", "1", node_types).authorization_policies == ()
    assert comp.services["shop/web"].waypoint == "shop/wp"


def test_versions_are_content_hashes_equal_across_replicas():
    objs = [namespace("shop"), pod("shop", "a", node_name="n", ip="10.0.0.1", labels={"x": "1"})]
    _, c1, _ = compiled(*objs)
    _, c2, _ = compiled(*reversed(objs))
    assert {n: e.packed.version for n, e in c1.entries[r.WORKLOAD].items()} == \
        {n: e.packed.version for n, e in c2.entries[r.WORKLOAD].items()}


def test_wire_round_trip_of_every_kind():
    objs = [namespace("shop"), pod("shop", "a", node_name="n", ip="10.0.0.1", labels={"x": "1"},
                                   annotations={"lacewing.dev/exclude-inbound-ports": "80"}),
            service("shop", "s", ip="10.96.0.1", selector={"x": "1"}, target="http"),
            authz("shop", "p", app="x", principals=["cluster.local/ns/a/sa/b"])]
    _, catalog, _ = compiled(*objs)
    for type_url, entries in catalog.entries.items():
        for entry in entries.values():
            back = r.decode(type_url, entry.packed.as_any())
            assert back == entry.obj


# --- the delta protocol ----------------------------------------------------------------------------

def request(type_url, **kw):
    return discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, **kw)


def test_session_initial_versions_and_nack_details():
    _, catalog, _ = compiled(namespace("shop"),
                             *[pod("shop", f"p{i}", node_name="n", ip=f"10.0.0.{i + 1}")
                               for i in range(3)])
    versions = {n: e.packed.version for n, e in catalog.entries[r.WORKLOAD].items()}
    s = DeltaSession(role="node")
    # The client holds p0 (current), p1 (stale) and p9 (gone).
    held = {"shop/p0": versions["shop/p0"], "shop/p1": "old", "shop/p9": "x"}
    [resp] = s.on_request(request(r.WORKLOAD, initial_resource_versions=held), catalog, now=0)
    assert sorted(x.name for x in resp.resources) == ["shop/p1", "shop/p2"]
    assert list(resp.removed_resources) == ["shop/p9"]
    # NACK naming one resource: it is recorded, the rest counts as accepted.
    detail = any_pb2.Any()
    detail.Pack(mesh_pb2.RejectedResources(resources=[mesh_pb2.RejectedResources.Rejected(
        name="shop/p2", version=versions["shop/p2"], reason="no good")]))
    s.on_request(request(r.WORKLOAD, response_nonce=resp.nonce, error_detail=status_pb2.Status(
        code=3, message="1 rejected", details=[detail])), catalog, now=1)
    [rej] = s.rejections()
    assert (rej.name, rej.reason) == ("shop/p2", "no good")
    assert s.acks[-1].accepted is False
    # An empty initial state for a type answers with everything, even when that is nothing.
    [empty] = s.on_request(request(r.PEER_AUTHENTICATION), catalog, now=2)
    assert list(empty.resources) == [] and empty.nonce


def test_l7_resources_go_only_to_the_waypoint_in_front_of_their_service():
    def vs(name, host):
        return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"hosts": [host], "http": [{"route": [{"destination": {"host": host}}]}]}}
    web = service("shop", "web", ip="10.96.0.1", selector={"app": "web"},
                  labels={"lacewing.dev/use-waypoint": "wp-a"})
    db = service("shop", "db", ip="10.96.0.2", selector={"app": "db"})
    state, catalog, comp = compiled(namespace("shop"), web, db, vs("web", "web.shop.svc.cluster.local"),
                                    vs("db", "db"))
    entries = catalog.entries[r.VIRTUAL_SERVICE]
    assert entries["shop/web"].audience == {"shop/wp-a"}
    assert entries["shop/db"].audience == frozenset()  # no waypoint in front of db
    assert set(catalog.objects(r.VIRTUAL_SERVICE, "waypoints", "shop/wp-a")) == {"shop/web"}
    assert catalog.objects(r.VIRTUAL_SERVICE, "waypoints", "shop/wp-b") == {}
    assert catalog.objects(r.VIRTUAL_SERVICE, "nodes") == {}
    # The namespace moves db behind wp-b: its route follows, in the same change.
    seen = []
    catalog.listeners.append(seen.append)
    comp.update(state.apply(Upsert(Key("Namespace", "", "shop"), namespace(
        "shop", {"lacewing.dev/use-waypoint": "wp-b"}))))
    assert entries["shop/db"].audience == {"shop/wp-b"}
    assert entries["shop/web"].audience == {"shop/wp-a"}  # the Service label wins
    assert seen[-1].changed[r.VIRTUAL_SERVICE] == {"shop/db"}
    # A waypoint session that held db's route while it concerned it gets its removal.
    s = DeltaSession(role="waypoint", waypoint="shop/wp-b")
    [resp] = s.on_request(request(r.VIRTUAL_SERVICE), catalog, now=0)
    assert [x.name for x in resp.resources] == ["shop/db"]
    comp.update(state.apply(Upsert(Key("Namespace", "", "shop"), namespace("shop"))))
    [gone] = s.on_change(seen[-1], catalog, now=1)
    assert list(gone.removed_resources) == ["shop/db"] and not gone.resources


def test_nothing_is_served_until_every_source_has_synced():
    from control.writer import Synced, Writer

    state, catalog = ClusterState(), Catalog()
    writer = Writer(state=state, compiler=Compiler(state, catalog), catalog=catalog,
                    sources={"config", "runtime"})
    s = DeltaSession(role="node")
    # A node that reconnects early, holding a workload: it must not be told to drop it.
    held = {"shop/a": "v-old"}
    assert s.on_request(request(r.WORKLOAD, initial_resource_versions=held), catalog, now=0) == []
    writer.apply_batch([Replace(frozenset({"Namespace"}), {key_of(namespace("shop")):
                                                           namespace("shop")}),
                        Synced("config")])
    assert not catalog.ready
    assert s.on_change(Change(1, {r.WORKLOAD: frozenset({"shop/a"})}), catalog, now=1) == []
    a = pod("shop", "a", node_name="n", ip="10.0.0.1")
    writer.apply_batch([Replace(frozenset({"Pod"}), {key_of(a): a}), Synced("runtime")])
    assert catalog.ready
    [resp] = s.on_ready(catalog, now=2)
    assert [x.name for x in resp.resources] == ["shop/a"] and not resp.removed_resources


def test_a_nack_without_details_rejects_the_whole_response():
    _, catalog, _ = compiled(namespace("shop"),
                             *[pod("shop", f"p{i}", node_name="n", ip=f"10.0.0.{i + 1}")
                               for i in range(2)])
    s = DeltaSession(role="node")
    [resp] = s.on_request(request(r.WORKLOAD), catalog, now=0)
    s.on_request(request(r.WORKLOAD, response_nonce=resp.nonce,
                         error_detail=status_pb2.Status(code=3, message="cannot apply")),
                 catalog, now=1)
    assert sorted(x.name for x in s.rejections()) == ["shop/p0", "shop/p1"]
    assert all(x.reason == "cannot apply" for x in s.rejections())
