"""Helpers for the control plane tests: a local-mode-shaped state directory, a real CA, real node
credentials, control planes and xDS clients on loopback with real TLS.

The objects written here are the same shapes `lacewing local` writes (config/ + runtime/), so the
directory source, the compiler and the push are exercised exactly as in a local cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from control.backoff import Backoff
from control.ca.authority import CertificateAuthority
from control.ca.node_credentials import issue_node_credential
from control.plane import ControlPlane
from control.snapshots import node_snapshot
from control.sources.directory import DirectorySource
from node_agent.xds.client import XdsClient
from node_agent.xds.state import XdsState

FAST = Backoff(initial=0.05, maximum=0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_yaml(path: Path, *docs: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
    os.replace(tmp, path)


def namespace(name: str, labels: dict[str, str] | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": dict(labels or {})}}


def node(name: str, ip: str) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


def pod(ns: str, name: str, *, node_name: str, ip: str, labels: dict[str, str] | None = None,
        sa: str = "default", ready: bool = True, host_ip: str = "",
        annotations: dict[str, str] | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": dict(labels or {}),
                         "annotations": dict(annotations or {})},
            "spec": {"nodeName": node_name, "serviceAccountName": sa,
                     "containers": [{"name": "app"}]},
            "status": {"phase": "Running", "podIP": ip, "hostIP": host_ip,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def service(ns: str, name: str, *, ip: str, selector: dict[str, str], port: int = 80,
            target: int | str = 8080, labels: dict[str, str] | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": dict(labels or {})},
            "spec": {"clusterIP": ip, "selector": selector,
                     "ports": [{"name": "http", "port": port, "targetPort": target}]}}


def authz(ns: str, name: str, *, app: str, principals: list[str]) -> dict:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"matchLabels": {"app": app}}, "action": "ALLOW",
                     "rules": [{"from": [{"source": {"principals": principals}}]}]}}


class Mesh:
    """A state directory + CA + node credentials; control planes and clients made on demand."""

    def __init__(self, root: Path, nodes: list[str]) -> None:
        self.root = root
        self.config = root / "config"
        self.runtime = root / "runtime"
        self.config.mkdir(parents=True, exist_ok=True)
        self.runtime.mkdir(parents=True, exist_ok=True)
        self.ca = CertificateAuthority.load_or_generate(root / "ca")
        self.nodes = nodes
        for i, n in enumerate(nodes):
            issue_node_credential(self.ca, n, root / "nodes" / n)
            write_yaml(self.runtime / f"Node_{n}.yaml", node(n, f"172.18.0.{10 + i}"))
        self.planes: list[ControlPlane] = []
        self.tasks: list[asyncio.Task] = []

    def node_ip(self, n: str) -> str:
        return f"172.18.0.{10 + self.nodes.index(n)}"

    async def start_plane(self, port: int | None = None) -> ControlPlane:
        plane = ControlPlane(
            ca=CertificateAuthority.load_or_generate(self.root / "ca"),
            sources=[DirectorySource([self.config, self.runtime], interval=0.05)],
            grpc_address=f"127.0.0.1:{port or 0}", metrics_host="127.0.0.1", metrics_port=0)
        await plane.start()
        self.planes.append(plane)
        return plane

    async def stop_plane(self, plane: ControlPlane) -> None:
        await plane.stop()
        if plane in self.planes:
            self.planes.remove(plane)

    def client(self, n: str, ports: list[int], **options) -> XdsClient:
        return XdsClient(addresses=[f"127.0.0.1:{p}" for p in ports],
                         credentials=self.root / "nodes" / n, node=n,
                         state=options.pop("state", None) or XdsState.for_node(n),
                         backoff=options.pop("backoff", FAST), **options)

    def start_client(self, client: XdsClient) -> asyncio.Task:
        task = asyncio.create_task(client.run())
        self.tasks.append(task)
        return task

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for p in list(self.planes):
            await p.stop()


@contextlib.asynccontextmanager
async def mesh(tmp: Path, nodes: list[str]):
    m = Mesh(tmp, nodes)
    try:
        yield m
    finally:
        await m.close()


async def eventually(check: Callable[[], Any], *, timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)


def expected_snapshot(plane: ControlPlane, n: str):
    """The control plane's own compile of node `n`'s snapshot (the client must equal it)."""
    by_type = {t: plane.catalog.objects(t, "nodes") for t in plane.catalog.entries}
    return node_snapshot(n, plane.catalog.version_info, by_type)


def converged(client: XdsClient, plane: ControlPlane) -> bool:
    """The client answered on every type and holds exactly what the control plane compiled."""
    if not (plane.catalog.ready and client.synced.is_set()):
        return False
    want = expected_snapshot(plane, client.node)
    got = client.state.snapshot
    return (dict(got.workloads) == dict(want.workloads) and dict(got.services) == dict(want.services)
            and dict(got.waypoints) == dict(want.waypoints)
            and got.authorization_policies == want.authorization_policies
            and got.peer_authentications == want.peer_authentications
            and got.trust_domain == want.trust_domain)


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))
