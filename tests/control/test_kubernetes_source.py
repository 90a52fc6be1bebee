"""The Kubernetes source against kmock (a real HTTP server speaking the Kubernetes API), with the
official `kubernetes` client unpatched: list, watch, creates/updates/deletes, 410 Gone → relist,
and the compiled result (workloads and services) following along."""

from __future__ import annotations

import asyncio
import contextlib
import json

import kmock
import pytest
from kubernetes import client as k8s

from control.backoff import Backoff
from control.catalog import Catalog
from control.compiler import Compiler
from control.objects import Key
from control.sources.kubernetes import FOLLOWED, KubernetesSource
from control.state import ClusterState
from control.writer import Writer
from tests.control.helpers import eventually

PODS = kmock.resource("v1/pods")
MESH_RESOURCES = ("security.istio.io/v1/authorizationpolicies",
                  "security.istio.io/v1/peerauthentications",
                  "networking.istio.io/v1/virtualservices",
                  "networking.istio.io/v1/destinationrules",
                  "lacewing.dev/v1alpha1/ratelimitpolicies")


def pod_body(name: str, *, ns: str = "shop", node: str = "n1", ip: str = "10.244.0.5",
             labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels or {"app": "web"}},
            "spec": {"nodeName": node, "serviceAccountName": "web",
                     "containers": [{"name": "app", "image": "x"}]},
            "status": {"phase": "Running", "podIP": ip, "hostIP": "172.18.0.10",
                       "conditions": [{"type": "Ready", "status": "True"}]}}


class Harness:
    def __init__(self, server: kmock.KubernetesEmulator) -> None:
        for res in ("v1/namespaces", "v1/pods", "v1/services", "v1/nodes", "v1/serviceaccounts",
                    "discovery.k8s.io/v1/endpointslices", *MESH_RESOURCES):
            server.resources[res] = {}
        cfg = k8s.Configuration(host=str(server.url).rstrip("/"))
        cfg.connection_pool_maxsize = 32
        self.api = k8s.ApiClient(cfg)
        self.core = k8s.CoreV1Api(self.api)
        self.custom = k8s.CustomObjectsApi(self.api)
        self.state = ClusterState()
        self.catalog = Catalog()
        self.compiler = Compiler(self.state, self.catalog)
        # kmock 0.8 cannot route the cluster-scoped /api/v1/namespaces (it reads "namespaces"
        # as the start of a namespaced path): Namespaces are left out here and enrollment is
        # set with pod labels.
        followed = tuple(f for f in FOLLOWED if f.kind != "Namespace")
        self.source = KubernetesSource(self.api, followed=followed,
                                       backoff=Backoff(initial=0.05, maximum=0.2))
        self.writer = Writer(state=self.state, compiler=self.compiler, catalog=self.catalog,
                             sources={self.source.name})
        self.tasks: list[asyncio.Task] = []

    async def __aenter__(self):
        self.tasks = [asyncio.create_task(self.writer.run()),
                      asyncio.create_task(self.source.run(self.writer.queue))]
        return self

    async def __aexit__(self, *exc):
        for t in reversed(self.tasks):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.api.close()

    async def call(self, fn, *args, **kwargs):
        return await asyncio.to_thread(fn, *args, **kwargs)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_follows_creates_updates_deletes(kmock):
    async with Harness(kmock) as h:
        await h.call(h.core.create_namespaced_pod, "shop", pod_body("web-1", labels={
            "app": "web", "lacewing.dev/dataplane-mode": "ambient"}))
        await eventually(lambda: h.catalog.ready and "shop/web-1" in h.compiler.workloads,
                         what="the created pod as a workload")
        w = h.compiler.workloads["shop/web-1"]
        assert w.enrolled and w.ready and w.identity == "spiffe://cluster.local/ns/shop/sa/web"
        assert h.compiler.service_accounts_on("n1") == {("shop", "web")}

        await h.call(h.core.create_namespaced_service, "shop", {
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
        await eventually(lambda: "shop/web" in h.compiler.services
                         and h.compiler.services["shop/web"].endpoints, what="service endpoints")
        assert [e.ip for e in h.compiler.services["shop/web"].endpoints] == ["10.244.0.5"]

        # Update: relabel the pod out of the service's selector and out of the mesh.
        await h.call(h.core.patch_namespaced_pod, "web-1", "shop", {"metadata": {"labels": {
            "app": "other", "lacewing.dev/dataplane-mode": "none"}}})
        await eventually(lambda: not h.compiler.workloads["shop/web-1"].enrolled,
                         what="the pod label opting out")
        await eventually(lambda: h.compiler.services["shop/web"].endpoints == (),
                         what="the endpoint leaving")

        # A mesh resource (a CRD) arrives through the custom objects API.
        await h.call(h.custom.create_namespaced_custom_object, "security.istio.io", "v1", "shop",
                     "authorizationpolicies", {
                         "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                         "metadata": {"name": "allow-web", "namespace": "shop"},
                         "spec": {"action": "ALLOW", "rules": [{"from": [{"source": {
                             "principals": ["cluster.local/ns/shop/sa/web"]}}]}]}})
        await eventually(lambda: Key("AuthorizationPolicy", "shop", "allow-web") in h.compiler.config,
                         what="the AuthorizationPolicy")

        # Delete.
        await h.call(h.core.delete_namespaced_pod, "web-1", "shop")
        await eventually(lambda: "shop/web-1" not in h.compiler.workloads, what="the pod deleted")
        assert h.compiler.service_accounts_on("n1") == frozenset()
        assert h.source.relists_after_gone == 0


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_410_gone_relists_and_catches_what_the_watch_missed(kmock):
    gone = {"served": 0}

    def first_pod_watch(req) -> bool:
        return (req.action == kmock.action.WATCH and req.resource == PODS
                and gone["served"] == 0)

    def expire(req):
        # While "the watch was away", a pod disappears without any event reaching us.
        key = (PODS, "shop", "vanished")
        kmock.objects[key].delete()
        gone["served"] += 1
        event = {"type": "ERROR", "object": {"apiVersion": "v1", "kind": "Status", "code": 410,
                                             "status": "Failure", "reason": "Expired",
                                             "message": "too old resource version"}}
        return json.dumps(event).encode() + b"\n"  # one line of the watch stream

    kmock[first_pod_watch] << expire
    kmock.objects[PODS, "shop", "vanished"] = pod_body("vanished", ip="10.244.0.9")
    kmock.objects[PODS, "shop", "stays"] = pod_body("stays", ip="10.244.0.8")
    async with Harness(kmock) as h:
        await eventually(lambda: h.source.relists_after_gone == 1, what="a relist after 410")
        await eventually(lambda: "shop/stays" in h.compiler.workloads
                         and "shop/vanished" not in h.compiler.workloads,
                         what="the relisted state")
        assert h.source.lists["Pod"] == 2
        # And the watch after the relist follows new changes.
        await h.call(h.core.create_namespaced_pod, "shop", pod_body("late", ip="10.244.0.7"))
        await eventually(lambda: "shop/late" in h.compiler.workloads, what="a pod after relist")


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_kubernetes_mode_end_to_end_from_a_kubeconfig_to_a_node(kmock, tmp_path):
    """`--kubeconfig` → KubernetesSource → control plane → a node's xDS client."""
    from control.ca.authority import CertificateAuthority
    from control.ca.node_credentials import issue_node_credential
    from control.plane import ControlPlane
    from control.sources.kubernetes import load_api_client
    from node_agent.xds.client import XdsClient
    from node_agent.xds.state import XdsState

    for res in ("v1/pods", "v1/services", "v1/nodes", "v1/serviceaccounts",
                "discovery.k8s.io/v1/endpointslices", *MESH_RESOURCES):
        kmock.resources[res] = {}
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}))
    api = load_api_client(kubeconfig=str(kubeconfig))
    core = k8s.CoreV1Api(api)
    ca = CertificateAuthority.load_or_generate(tmp_path / "ca")
    issue_node_credential(ca, "n1", tmp_path / "n1")
    followed = tuple(f for f in FOLLOWED if f.kind != "Namespace")  # kmock 0.8, see above
    plane = ControlPlane(ca=ca, sources=[KubernetesSource(api, followed=followed)],
                         grpc_address="127.0.0.1:0", metrics_host=None)
    await plane.start()
    client = XdsClient(addresses=[f"127.0.0.1:{plane.port}"], credentials=tmp_path / "n1",
                       node="n1", state=XdsState.for_node("n1"),
                       backoff=Backoff(initial=0.05, maximum=0.2))
    task = asyncio.create_task(client.run())
    try:
        await asyncio.to_thread(core.create_namespaced_pod, "shop", pod_body("web-1"))
        await eventually(lambda: "shop/web-1" in client.state.snapshot.workloads,
                         what="the pod on the node")
        await asyncio.to_thread(core.delete_namespaced_pod, "web-1", "shop")
        await eventually(lambda: "shop/web-1" not in client.state.snapshot.workloads,
                         what="the deletion on the node")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await plane.stop()
        api.close()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_bookmark_moves_the_resource_version_the_next_watch_starts_from(kmock):
    served = {"n": 0}

    def first_pod_watch(req) -> bool:
        return req.action == kmock.action.WATCH and req.resource == PODS and served["n"] == 0

    def bookmark_then_end(req):
        served["n"] += 1
        event = {"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                                                "metadata": {"resourceVersion": "4242"}}}
        return json.dumps(event).encode() + b"\n"  # then the server ends this watch

    kmock[first_pod_watch] << bookmark_then_end
    async with Harness(kmock) as h:
        def pod_watches():
            return [req for req in kmock[kmock.action.WATCH] if req.resource == PODS]
        await eventually(lambda: len(pod_watches()) >= 2, what="a second pod watch")
        watches = pod_watches()
        assert watches[1].params.get("resourceVersion") == "4242"
        assert h.source.lists["Pod"] == 1  # a bookmark is not a reason to relist
        assert not h.compiler.workloads  # and it carries no object


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_an_api_server_that_is_down_at_first_is_retried_with_backoff():
    from tests.control.helpers import free_port

    port = free_port()
    cfg = k8s.Configuration(host=f"http://127.0.0.1:{port}")
    cfg.connection_pool_maxsize = 32
    api = k8s.ApiClient(cfg)
    followed = tuple(f for f in FOLLOWED if f.kind in ("Pod", "Node"))
    source = KubernetesSource(api, followed=followed, backoff=Backoff(initial=0.05, maximum=0.2))
    state, catalog = ClusterState(), Catalog()
    writer = Writer(state=state, compiler=Compiler(state, catalog), catalog=catalog,
                    sources={source.name})
    tasks = [asyncio.create_task(writer.run()), asyncio.create_task(source.run(writer.queue))]
    try:
        await eventually(lambda: source.errors >= 2, what="failed attempts while it is down")
        assert not catalog.ready  # nothing is served from a source that never listed
        async with kmock.KubernetesEmulator() as server:
            server.resources["v1/pods"] = {}
            server.resources["v1/nodes"] = {}
            server.objects[PODS, "shop", "a"] = pod_body("a")
            async with kmock.Server(server, port=port):
                await eventually(lambda: catalog.ready and "shop/a" in writer.compiler.workloads,
                                 what="sync once the API server is up")
                for t in reversed(tasks):
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        api.close()
