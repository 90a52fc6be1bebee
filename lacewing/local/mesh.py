"""Turn the mesh on in a local cluster, the way an operator does, and watch it work: label
namespaces `lacewing.dev/dataplane-mode=ambient`, apply mesh resources, wait until every node
agent's data path (node_agent/ztunnel/wiring.py: tunnel + eBPF capture) has the pods enrolled.

Before: a `lacewing.local.cluster.LocalCluster` that is up (control plane and node agents run),
with its workloads applied. After `start()`: enrolled pods' TCP goes through the node tunnels.
`access_log(node)` reads the tunnel's JSON lines from the node agent's log, `metrics(node)` its
Prometheus text, `pids()` the node agents (where the tunnels live). `stop()` takes the labels off
again; `uninstall_capture(cluster)` detaches the capture before the cluster goes down. Used by
the tier-3 tests and the perf scenarios.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from node_agent.datapath import Datapath

AMBIENT = {"lacewing.dev/dataplane-mode": "ambient"}


def _in_node(netns: str, argv: list[str]) -> list[str]:
    """argv run in a node's network namespace (keeping the host's mounts)."""
    return ["nsenter", f"--net=/run/netns/{netns}", "--", *argv]


def _env() -> dict[str, str]:
    """No proxy settings inside namespaces (docs/PLATFORM: they would capture loopback)."""
    import os
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


class LocalMesh:
    def __init__(self, cluster, *, namespaces: set[str], resources: list[dict] = (),
                 pods: set[str] = ()) -> None:
        self.cluster = cluster
        self.namespaces = set(namespaces)
        self.pods = set(pods)                # NAMESPACE/POD enrolled one by one
        self.resources = list(resources)

    def start(self, *, timeout: float = 60.0) -> None:
        for ns in sorted(self.namespaces):
            self.cluster.label("namespace", ns, AMBIENT)
        for pod in sorted(self.pods):
            self.cluster.label("pod", pod, AMBIENT)
        if self.resources:
            self.apply(self.resources)
        self.wait_enrolled(timeout=timeout)

    def apply(self, resources: list[dict], *, timeout: float = 30.0) -> None:
        """Apply mesh resources and wait until every node agent holds them."""
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
            yaml.safe_dump_all(resources, fh)
        try:
            self.cluster.apply([fh.name])
        finally:
            Path(fh.name).unlink(missing_ok=True)
        self.wait_config(resources, timeout=timeout)

    def config_dump(self, node: str) -> dict:
        n = next(x for x in self.cluster.status()["nodes"] if x["name"] == node)
        out = subprocess.run(_in_node(n["netns"], [
            sys.executable, "-c",
            "import urllib.request;print(urllib.request.urlopen("
            "'http://127.0.0.1:15000/config_dump',timeout=5).read().decode())"]),
            capture_output=True, text=True, timeout=20, env=_env())
        try:
            return json.loads(out.stdout)
        except ValueError:
            return {}

    def wait_config(self, resources: list[dict], *, timeout: float = 30.0) -> None:
        """Until each node agent's snapshot carries these PeerAuthentications and
        AuthorizationPolicies (then a moment for the tunnel's thread to swap its state)."""
        keys = {"PeerAuthentication": "peerAuthentications",
                "AuthorizationPolicy": "authorizationPolicies"}
        want = [(keys[r["kind"]], r["metadata"].get("namespace", "default"), r["metadata"]["name"])
                for r in resources if r.get("kind") in keys]
        deadline = time.monotonic() + timeout
        for node in self.cluster.status()["nodes"]:
            while True:
                dump = self.config_dump(node["name"]).get("snapshot") or {}
                have = {(k, (p.get("metadata") or {}).get("namespace", "default"),
                         (p.get("metadata") or {}).get("name")) for k in keys.values()
                        for p in dump.get(k, [])}
                if all(w in have for w in want):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{node['name']} did not receive {want} in time")
                time.sleep(0.2)
        time.sleep(0.5)

    def _expected(self) -> dict[str, set[str]]:
        want: dict[str, set[str]] = {}
        for p in self.cluster.status()["pods"]:
            uid = f"{p['namespace']}/{p['name']}"
            if p.get("ip") and (p["namespace"] in self.namespaces or uid in self.pods):
                want.setdefault(p["node"], set()).add(p["ip"])
        return want

    def wait_enrolled(self, *, timeout: float = 60.0) -> None:
        """Until each node's capture holds its enrolled pods (the tunnel got the snapshot first)."""
        deadline = time.monotonic() + timeout
        want = self._expected()
        status = self.cluster.status()
        while True:
            missing = {}
            for node in status["nodes"]:
                ips = want.get(node["name"], set())
                if not ips:
                    continue
                have = self._enrolled(node)
                if not ips <= have:
                    missing[node["name"]] = sorted(ips - have)
            if not missing:
                time.sleep(0.3)      # the policy part of the same snapshot reached the tunnel
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"pods not enrolled in time: {missing}; see the node agents' "
                                   f"logs ({[c['log'] for c in self._agents()]})")
            time.sleep(0.2)

    def _agents(self) -> list[dict]:
        return [c for c in self.cluster.status()["components"] if c.get("kind") == "node-agent"]

    def access_log(self, node: str) -> list[dict]:
        out = []
        for c in self._agents():
            if c.get("node") != node or not c.get("log"):
                continue
            with contextlib.suppress(OSError):
                for line in Path(c["log"]).read_text(errors="replace").splitlines():
                    if line.startswith('{"time"'):
                        with contextlib.suppress(ValueError):
                            out.append(json.loads(line))
        return out

    def metrics(self, node: str, *, port: int = 15020) -> str:
        n = next(x for x in self.cluster.status()["nodes"] if x["name"] == node)
        out = subprocess.run(_in_node(n["netns"], [
            sys.executable, "-c",
            f"import urllib.request;print(urllib.request.urlopen("
            f"'http://127.0.0.1:{port}/metrics',timeout=5).read().decode())"]),
            capture_output=True, text=True, timeout=20, env=_env())
        return out.stdout

    def pids(self) -> list[int]:
        return [c["pid"] for c in self._agents() if c.get("pid")]

    def stop(self, *, timeout: float = 30.0) -> None:
        """Leave the mesh as an operator would: labels off; the agents make the pods plaintext
        again (their capture stays installed, empty, as the agents own it)."""
        with contextlib.suppress(Exception):
            for ns in sorted(self.namespaces):
                self.cluster.label("namespace", ns, {k: None for k in AMBIENT})
            for pod in sorted(self.pods):
                self.cluster.label("pod", pod, {k: None for k in AMBIENT})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(self._enrolled(n) for n in self.cluster.status()["nodes"]):
                return
            time.sleep(0.2)

    def _enrolled(self, node) -> set[str]:
        dp = Datapath(self.cluster.name, node["name"], netns=node["netns"])
        try:
            return set(dp.enrolled()) if dp.pinned() else set()
        except Exception:  # noqa: BLE001 - not installed
            return set()
        finally:
            dp.close()


def uninstall_capture(cluster) -> None:
    """Detach every node's capture before a cluster goes down: `LocalCluster.down` removes the
    pins and the namespaces, but a sockops program attached to the root cgroup would stay."""
    with contextlib.suppress(Exception):
        for node in cluster.status()["nodes"]:
            dp = Datapath(cluster.name, node["name"], netns=node["netns"])
            with contextlib.suppress(Exception):
                dp.uninstall()
            dp.close()
