"""Tier 2: the waypoint follows the real control plane over delta xDS (in one process, real TLS
on loopback): a directory of local-mode-shaped objects → compiler → push → the waypoint's
snapshot → requests routed by the pushed VirtualService to real sample-app servers."""

from __future__ import annotations

import asyncio
import time

from lacewing.sample_app import Behaviour, Identity, SampleServer, run_load
from tests.control.helpers import Mesh, namespace, pod, service, write_yaml
from tests.waypoint.conftest import eventually
from waypoint import bootstrap
from waypoint.control import follow
from waypoint.proxy import WaypointThread

VS = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
      "metadata": {"name": "web", "namespace": "shop"},
      "spec": {"hosts": ["web"], "http": [
          {"match": [{"headers": {"x-user": {"exact": "tester"}}}],
           "route": [{"destination": {"host": "web", "subset": "v2"}}]},
          {"route": [{"destination": {"host": "web", "subset": "v1"}}]}]}}
DR = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
      "metadata": {"name": "web", "namespace": "shop"},
      "spec": {"host": "web", "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                          {"name": "v2", "labels": {"version": "v2"}}]}}


def test_waypoint_follows_the_control_plane(tmp_path):
    servers = []
    for i, version in enumerate(("v1", "v2")):
        s = SampleServer(identity=Identity(pod=f"web-{version}", namespace="shop", node="n0",
                                           version=version),
                         behaviour=Behaviour(), host=f"127.0.31.{i + 1}", port=8080, quiet=True)
        s.start()
        servers.append(s)
    m = Mesh(tmp_path, ["node0"])
    empty = bootstrap.snapshot(waypoint=("shop", "waypoint"))
    wp = WaypointThread(empty, metrics_port=None).start()
    try:
        write_yaml(m.config / "mesh.yaml", VS, DR)
        write_yaml(m.runtime / "objects.yaml",
                   namespace("shop", {"lacewing.dev/dataplane-mode": "ambient"}),
                   pod("shop", "web-v1", node_name="node0", ip="127.0.31.1", sa="web",
                       labels={"app": "web", "version": "v1"}),
                   pod("shop", "web-v2", node_name="node0", ip="127.0.31.2", sa="web",
                       labels={"app": "web", "version": "v2"}),
                   pod("shop", "waypoint-0", node_name="node0", ip="127.0.31.9",
                       sa="waypoint", labels={"lacewing.dev/waypoint": "waypoint"}),
                   service("shop", "web", ip="10.96.0.50", selector={"app": "web"},
                           labels={"lacewing.dev/use-waypoint": "waypoint"}))

        async def start():
            plane = await m.start_plane()
            client = follow(wp.waypoint, addresses=[f"127.0.0.1:{plane.port}"],
                            credentials=m.root / "nodes" / "node0", node="node0",
                            namespace="shop", name="waypoint")
            m.start_client(client)
            return plane

        asyncio.run_coroutine_threadsafe(start(), wp.loop).result(30)
        assert eventually(lambda: "shop/web" in wp.waypoint.config.routes, timeout=20), \
            wp.waypoint.config.snapshot
        url = f"http://127.0.0.1:{wp.port}/"
        r = run_load(url, requests=50, headers={"Host": "web.shop"})
        assert r.versions == {"v1": 50}, r.statuses
        r = run_load(url, requests=20, headers={"Host": "web.shop", "x-user": "tester"})
        assert r.versions == {"v2": 20}
    finally:
        asyncio.run_coroutine_threadsafe(m.close(), wp.loop).result(30)
        wp.stop()
        for s in servers:
            s.stop()
        time.sleep(0)
