"""Run the node tunnel on a local cluster's nodes without the node agent: eBPF capture installed
and pods enrolled with `node_agent.datapath`, a snapshot file per node built from the cluster's
status, and `python -m node_agent.ztunnel` in each node namespace.

Before: a `lacewing.local.cluster.LocalCluster` that is up, with its pods running. After
`LocalMesh.start()`: enrolled pods' TCP goes through the tunnels (mTLS between nodes); `stop()`
stops the tunnels (SIGTERM: drain), uninstalls the datapath and removes its files, whatever
happened. Used by the tier-3 tests and the perf scenarios, until the node agent runs the tunnel
itself (then this is the agent's job, and `lacewing demo` uses the agent).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from control.ca.authority import CertificateAuthority
from lacewing.local import netns
from lacewing.local.names import ClusterNames
from node_agent.datapath import Datapath, Pod

NOTRACK_TABLE = "lacewing_capture"
# Captured packets (marked by the tc programs) must not meet local mode's kube-proxy-style DNAT
# of cluster IPs: the tunnel balances Services itself, and a DNAT after sk_assign would leave
# the pod talking to a socket keyed by another tuple. Marked packets are therefore not tracked.
NOTRACK_CAPTURED = f"""table ip {NOTRACK_TABLE}
delete table ip {NOTRACK_TABLE}
table ip {NOTRACK_TABLE} {{
  chain prerouting {{ type filter hook prerouting priority raw; meta mark 0x4c57 notrack; }}
}}
"""


def _int_port(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def snapshot_json(status: dict[str, Any], node: str, *, enrolled: set[str],
                  resources: list[dict] = (), version: str = "1") -> dict[str, Any]:
    """The NodeSnapshot (snapfile format) of `node`, from `LocalCluster.status()`.
    `enrolled` holds namespaces, or pods as "ns/name", that are in the mesh."""
    underlay = {n["name"]: n["underlayIP"] for n in status["nodes"]}
    workloads = []
    by_ip = {}
    for p in status["pods"]:
        if not p.get("ip"):
            continue
        uid = f"{p['namespace']}/{p['name']}"
        w = {"namespace": p["namespace"], "name": p["name"], "node": p["node"], "ip": p["ip"],
             "node_ip": underlay.get(p["node"], ""),
             "service_account": p.get("serviceAccount") or "default",
             "labels": p.get("labels") or {}, "ready": bool(p.get("ready")),
             "enrolled": p["namespace"] in enrolled or uid in enrolled}
        workloads.append(w)
        by_ip[p["ip"]] = w
    services = []
    for s in status.get("services", []):
        ports = [{"port": sp["port"], "target_port": _int_port(sp.get("targetPort")) or sp["port"],
                  "name": sp.get("name") or ""} for sp in s.get("ports", [])]
        eps = {}
        for e in s.get("endpoints", []):
            ip, _, port = e.rpartition(":")
            w = by_ip.get(ip)
            if w is None:
                continue
            ep = eps.setdefault(ip, {"workload": f"{w['namespace']}/{w['name']}", "ip": ip,
                                     "ports": {}})
            for sp in ports:
                if sp["target_port"] == int(port):
                    ep["ports"][str(sp["port"])] = int(port)
        services.append({"namespace": s["namespace"], "name": s["name"], "vip": s["clusterIP"],
                         "ports": ports, "endpoints": list(eps.values())})
    return {"version": version, "node": node, "workloads": workloads, "services": services,
            "resources": list(resources)}


class LocalMesh:
    def __init__(self, cluster, workdir: Path, *, enrolled: set[str],
                 resources: list[dict] = (), metrics_port: int = 15020,
                 extra_args: list[str] = ()) -> None:
        self.cluster = cluster
        self.workdir = Path(workdir)
        self.enrolled = set(enrolled)
        self.resources = list(resources)
        self.metrics_port = metrics_port
        self.extra_args = list(extra_args)
        self.procs: dict[str, subprocess.Popen] = {}
        self.datapaths: dict[str, Datapath] = {}
        self.version = 0

    @property
    def ca_dir(self) -> Path:
        return self.workdir / "mesh-ca"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        CertificateAuthority.load_or_generate(self.ca_dir)
        try:
            status = self.cluster.status()
            self._write_snapshots(status)
            for node in status["nodes"]:
                self._start_tunnel(node)
            for node in status["nodes"]:
                self._wait_ready(node)
            self._enroll(status)
        except BaseException:
            self.stop()
            raise

    def _write_snapshots(self, status) -> None:
        self.version += 1
        for node in status["nodes"]:
            snap = snapshot_json(status, node["name"], enrolled=self.enrolled,
                                 resources=self.resources, version=str(self.version))
            path = self.workdir / f"snapshot-{node['name']}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(snap, indent=1))
            os.replace(tmp, path)

    def _start_tunnel(self, node) -> None:
        name = node["name"]
        log = open(self.workdir / f"tunnel-{name}.log", "ab")
        argv = [sys.executable, "-m", "node_agent.ztunnel",
                "--snapshot", str(self.workdir / f"snapshot-{name}.json"),
                "--ca-dir", str(self.ca_dir), "--inbound-address", node["underlayIP"],
                "--metrics-port", str(self.metrics_port),
                "--access-log", str(self.workdir / f"access-{name}.log"), *self.extra_args]
        env = {**netns.clean_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        self.procs[name] = subprocess.Popen(netns.nsenter_argv(node["netns"], argv),
                                            stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            env=env)
        log.close()

    def _wait_ready(self, node, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[node["name"]]
            if proc.poll() is not None:
                break
            if netns.tcp_probe(node["netns"], node["underlayIP"], 15008):
                return
            time.sleep(0.1)
        text = (self.workdir / f"tunnel-{node['name']}.log").read_text()[-2000:]
        raise RuntimeError(f"the tunnel on {node['name']} did not start:\n{text}")

    def _enroll(self, status) -> None:
        for node in status["nodes"]:
            dp = Datapath(self.cluster.name, node["name"], netns=node["netns"])
            self.datapaths[node["name"]] = dp
            dp.install()
            netns.nft(node["netns"], NOTRACK_CAPTURED)
            pods = []
            for p in status["pods"]:
                if p["node"] != node["name"] or not p.get("ip"):
                    continue
                uid = f"{p['namespace']}/{p['name']}"
                pod = Pod(ip=p["ip"], veth=ClusterNames.pod_veth(p["namespace"], p["name"]), name=uid)
                pods.append((pod, p["namespace"] in self.enrolled or uid in self.enrolled))
            dp.sync(pods)

    def apply(self, *, enrolled: set[str] | None = None, resources: list[dict] | None = None):
        """Change enrollment or mesh resources live: new snapshots (SIGHUP) and datapath sync."""
        if enrolled is not None:
            self.enrolled = set(enrolled)
        if resources is not None:
            self.resources = list(resources)
        status = self.cluster.status()
        self._write_snapshots(status)
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGHUP)
        self._enroll(status)
        time.sleep(0.5)     # the tunnels re-read their snapshot files

    def metrics(self, node: str) -> str:
        n = next(x for x in self.cluster.status()["nodes"] if x["name"] == node)
        out = subprocess.run(netns.netns_exec_argv(n["netns"], [
            sys.executable, "-c",
            f"import urllib.request;print(urllib.request.urlopen("
            f"'http://127.0.0.1:{self.metrics_port}/metrics',timeout=5).read().decode())"]),
            capture_output=True, text=True, timeout=20, env=netns.clean_env())
        return out.stdout

    def access_log(self, node: str) -> list[dict]:
        path = self.workdir / f"access-{node}.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def pids(self) -> list[int]:
        """The tunnel processes themselves (not the nsenter wrappers, which exec them)."""
        return [p.pid for p in self.procs.values() if p.poll() is None]

    def stop(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
        for name, dp in self.datapaths.items():
            with contextlib.suppress(Exception):
                dp.uninstall()
            with contextlib.suppress(Exception):
                node = next(n for n in self.cluster.status()["nodes"] if n["name"] == name)
                netns.nft(node["netns"], f"delete table ip {NOTRACK_TABLE}\n")
            with contextlib.suppress(Exception):
                dp.close()
        self.datapaths.clear()


_ = urllib  # the metrics fetch runs inside the node namespace through a child process
