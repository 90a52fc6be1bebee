"""`LocalCluster`: make, use and remove a local cluster — the API behind `lacewing local`.

Before: root on a Linux host with iproute2 and nftables. After `up()`: namespaces
`lw-<c>-fabric` (the underlay bridge) and `lw-<c>-node<i>` (one per node, each with a pod CIDR
and routes to every other node's pods), bpffs mounted with a folder `lw-<c>`, the state
directory, and the supervisor running. After `down()`: none of it is left — processes,
namespaces (and with them links, routes, rules and tc filters), /etc/netns files, bpffs pins,
the state directory; bpffs itself is unmounted only if `up` mounted it and nothing else is in it.

Tests, the demo and perf use this class directly; the CLI is a thin layer over it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control.config.errors import ConfigError, Problem
from control.config.loader import Document, load_documents
from lacewing.errors import UserError
from lacewing.local import netns, topology
from lacewing.local.apply import plan_apply, plan_delete
from lacewing.local.names import NETNS_ETC, STATE_ROOT, ClusterNames, check_cluster_name

SUPERVISOR_MODULE = "lacewing.local.supervisor"
HEARTBEAT_STALE = 5.0


@dataclass
class ApplyResult:
    written: list[str]
    warnings: list[Problem]
    generation: int


def _require_root() -> None:
    if os.geteuid() != 0:
        raise UserError("local clusters need root (network namespaces, eBPF); run with sudo")


def _process_matches(pid: int, *needles: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    text = [part.decode(errors="replace") for part in cmdline]
    return all(n in text for n in needles)


def _terminate(pid: int, *, grace: float) -> None:
    """SIGTERM a process (and its group when it leads one), SIGKILL after `grace`."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


class LocalCluster:
    def __init__(self, name: str = "lacewing"):
        from lacewing.local.store import Store

        self.name = check_cluster_name(name)
        self.names = ClusterNames(self.name)
        self.store = Store(self.names)

    # -- lifecycle ------------------------------------------------------------------------
    def is_up(self) -> bool:
        record = self.store.read_cluster()
        return bool(record and record.get("phase") == "Ready" and self.supervisor_alive())

    def supervisor_pid(self) -> int | None:
        try:
            pid = int((self.store.root / "supervisor.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _process_matches(pid, SUPERVISOR_MODULE, self.name) else None

    def supervisor_alive(self) -> bool:
        pid = self.supervisor_pid()
        return pid is not None and not _is_zombie(pid)

    def up(self, *, nodes: int = 2, mesh: bool = True, timeout: float = 30.0) -> bool:
        """Make the cluster; False (and no change) when it is already up. With `mesh=False` it
        runs no mesh components (control plane, node agents): plain Kubernetes-shaped
        networking, for baselines and for tests that drive a data plane part themselves."""
        _require_root()
        if not 1 <= nodes <= topology.MAX_NODES:
            raise UserError(f"--nodes must be between 1 and {topology.MAX_NODES}")
        if self.is_up():
            return False
        self.down()  # whatever a crashed or killed `up` of this name left behind
        names = self.names
        node_names = [names.node_name(i) for i in range(nodes)]
        record: dict[str, Any] = {
            "name": self.name, "phase": "Creating", "created": time.time(),
            "nodes": [{"name": n, "index": i, "netns": names.node_ns(n),
                       "underlayIP": topology.node_underlay_ip(i),
                       "podCIDR": topology.node_pod_cidr(i)} for i, n in enumerate(node_names)],
            "serviceCIDR": str(topology.SERVICE_CIDR),
            "bpffsMountedByUs": False,
            "mesh": mesh,
        }
        self.store.write_cluster(record)
        record["bpffsMountedByUs"] = netns.mount_bpffs()
        self.store.write_cluster(record)
        names.bpf_dir.mkdir(exist_ok=True)
        self._make_network(record["nodes"])
        self._make_identity(record)
        if mesh:
            self._write_components(record)
        self._start_supervisor(timeout=timeout)
        record["phase"] = "Ready"
        self.store.write_cluster(record)
        return True

    def _make_network(self, nodes: list[dict[str, Any]]) -> None:
        fabric = self.names.fabric_ns
        netns.add_netns(fabric)
        netns.ip_batch(["link add br0 type bridge", "link set br0 up",
                        f"addr add {topology.CONTROL_PLANE_IP}/16 dev br0"], netns=fabric)
        for node in nodes:
            netns.add_netns(node["netns"])
            i = node["index"]
            # The fabric routes each node's pods through that node, so pods reach the control
            # plane (172.18.0.2) and its answers find their way back.
            netns.ip_batch([f"link add n{i} type veth peer name eth0 netns {node['netns']}",
                            f"link set n{i} master br0", f"link set n{i} up",
                            f"route add {node['podCIDR']} via {node['underlayIP']} dev br0"],
                           netns=fabric)
            lines = ["link set eth0 up", f"addr add {node['underlayIP']}/16 dev eth0",
                     f"addr add {topology.node_gateway_ip(i)}/32 dev lo"]
            for other in nodes:
                if other is not node:
                    lines.append(f"route add {other['podCIDR']} via {other['underlayIP']} dev eth0")
            netns.ip_batch(lines, netns=node["netns"])
            netns.sysctl(node["netns"], {
                "net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0",
                "net.ipv4.conf.default.rp_filter": "0", "net.ipv4.conf.eth0.rp_filter": "0",
                # The node tunnel's transparent sockets carry pods' addresses. With early demux
                # on, a forwarded SYN whose tuple matches one of them lingering in TIME_WAIT is
                # delivered to it instead of routed on, and the pod waits a 1 s retransmission
                # (measured: new connections/s 11,600 → 900 after a pod left the mesh).
                "net.ipv4.tcp_early_demux": "0",
            })

    def _make_identity(self, record: dict[str, Any]) -> None:
        """The cluster's CA (a generated root) and one credential per node (docs/identity.md)."""
        from control.ca.authority import CertificateAuthority
        from control.ca.node_credentials import issue_node_credential

        ca = CertificateAuthority.load_or_generate(self.store.root / "ca")
        for node in record["nodes"]:
            issue_node_credential(ca, node["name"], self.store.root / "nodes" / node["name"])
        record["caDir"] = str(self.store.root / "ca")
        record["controlPlane"] = {"address": topology.CONTROL_PLANE_IP, "netns": self.names.fabric_ns}

    def _write_components(self, record: dict[str, Any]) -> None:
        from lacewing.local.components import default_components

        folder = self.store.root / "components"
        folder.mkdir(parents=True, exist_ok=True)
        for spec in default_components(record, self.store.root):
            (folder / f"{spec.name}.json").write_text(spec.to_json())

    def _start_supervisor(self, *, timeout: float) -> None:
        self.store.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.store.logs_dir / "supervisor.log", "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", SUPERVISOR_MODULE, "--cluster", self.name],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env=netns.clean_env(), cwd="/",
            )
        (self.store.root / "supervisor.pid").write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.store.read_status()
            if status and status.get("supervisor", {}).get("pid") == proc.pid:
                return
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = (self.store.logs_dir / "supervisor.log").read_text()[-2000:]
        raise UserError(f"the cluster supervisor did not start; its log ends:\n{tail}")

    def down(self) -> list[str]:
        """Remove everything this cluster made; safe to call on a partial or absent cluster."""
        _require_root()
        removed = []
        pid = self.supervisor_pid()
        if pid:
            _terminate(pid, grace=15.0)
            removed.append(f"supervisor (pid {pid})")
        record = self.store.read_cluster() or {}
        # The node agents' eBPF programs: a cgroup attachment outlives pins and namespaces, so
        # detach through the datapath itself (safe when nothing is there), then sweep what a
        # crashed agent of any cluster left attached with no pin.
        from node_agent.datapath import Datapath, DatapathError, detach_orphaned_sockops

        if self.names.bpf_dir.is_dir():
            for node_dir in sorted(p for p in self.names.bpf_dir.iterdir() if p.is_dir()):
                try:
                    # A namespace that is gone is skipped by uninstall (never the host's own).
                    Datapath(self.name, node_dir.name,
                             netns=self.names.node_ns(node_dir.name)).uninstall()
                    removed.append(f"eBPF datapath of {node_dir.name}")
                except (DatapathError, OSError) as exc:
                    removed.append(f"eBPF datapath of {node_dir.name} (partly: {exc})")
        with contextlib.suppress(OSError):
            if orphans := detach_orphaned_sockops():
                removed.append(f"{len(orphans)} orphaned sockops program(s)")
        owned = [ns for ns in netns.list_netns() if self.names.owns_netns(ns)]
        # Anything still running inside our namespaces was started by this cluster.
        for ns in owned:
            for p in netns.pids_in_netns(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
        for ns in sorted(owned, key=lambda n: ("node" in n or "fabric" in n, n)):
            netns.delete_netns(ns)
        if owned:
            removed.append(f"{len(owned)} network namespaces")
        for etc in NETNS_ETC.glob(f"{self.names.prefix}*") if NETNS_ETC.is_dir() else []:
            shutil.rmtree(etc, ignore_errors=True)
        if self.names.bpf_dir.exists():
            shutil.rmtree(self.names.bpf_dir, ignore_errors=True)
            removed.append(str(self.names.bpf_dir))
        bpffs = self.names.bpf_dir.parent
        if record.get("bpffsMountedByUs") and netns.bpffs_mounted(bpffs) and not any(bpffs.iterdir()):
            netns.umount(bpffs)
        if self.store.root.exists():
            shutil.rmtree(self.store.root, ignore_errors=True)
            removed.append(str(self.store.root))
        return removed

    @staticmethod
    def all_names() -> list[str]:
        """Every cluster this host has something of (state, or namespaces)."""
        found = set()
        if STATE_ROOT.is_dir():
            found |= {p.name[3:] for p in STATE_ROOT.glob("lw-*")}
        for ns in netns.list_netns():
            parts = ns.split("-")
            if len(parts) >= 3 and parts[0] == "lw":
                found.add(parts[1])
        return sorted(n for n in found if n)

    # -- status ---------------------------------------------------------------------------
    def _require_up(self) -> dict[str, Any]:
        record = self.store.read_cluster()
        if not record:
            raise UserError(f"no local cluster named {self.name!r}; make one with "
                            f"`lacewing local up --name {self.name}`")
        return record

    def status(self) -> dict[str, Any]:
        """The stable status document (docs/local-mode.md)."""
        record = self._require_up()
        sup = self.store.read_status() or {}
        beat = (sup.get("supervisor") or {}).get("heartbeat", 0)
        pid = self.supervisor_pid()
        healthy = pid is not None and time.time() - beat < HEARTBEAT_STALE
        components = [{"name": "supervisor", "kind": "supervisor", "node": "",
                       "pid": pid, "healthy": healthy}]
        components += sup.get("components", [])
        return {
            "apiVersion": "lacewing.dev/v1alpha1", "kind": "LocalClusterStatus",
            "name": self.name, "phase": record.get("phase") if healthy else "Degraded",
            "generation": self.store.generation(),
            "observedGeneration": sup.get("observedGeneration", -1),
            "nodes": record.get("nodes", []),
            "pods": sup.get("pods", []), "services": sup.get("services", []),
            "components": components,
        }

    # -- configuration --------------------------------------------------------------------
    def _load(self, sources: list[str | Path | Document]) -> list[Document]:
        docs, problems = [], []
        for src in sources:
            if isinstance(src, Document):
                docs.append(src)
                continue
            try:
                docs += load_documents(src)
            except ConfigError as exc:
                problems += exc.problems
        if problems:
            raise ConfigError(problems)
        return docs

    def apply(self, sources: list[str | Path | Document], *, wait: bool = True,
              timeout: float = 60.0) -> ApplyResult:
        """Validate everything, then write it all, or raise ConfigError and write nothing."""
        record = self._require_up()
        docs = self._load(sources)
        with self.store.locked():
            plan = plan_apply(docs, self.store.objects(),
                              nodes=[n["name"] for n in record.get("nodes", [])])
            if plan.errors:
                raise ConfigError(plan.problems)
            self.store.put_objects(plan.write)
            gen = self.store.bump_generation()
        if wait:
            self.wait_observed(gen, timeout=timeout)
        from lacewing.local.store import object_key

        return ApplyResult([object_key(o) for o in plan.write], plan.warnings, gen)

    def delete(self, sources: list[str | Path | Document], *, wait: bool = True,
               timeout: float = 60.0) -> ApplyResult:
        self._require_up()
        docs = self._load(sources)
        with self.store.locked():
            plan = plan_delete(docs, self.store.objects())
            self.store.delete_keys(plan.delete)
            gen = self.store.bump_generation()
        if wait:
            self.wait_observed(gen, timeout=timeout)
        return ApplyResult(plan.delete, plan.warnings, gen)

    def label(self, kind: str, target: str, changes: dict[str, str | None]) -> None:
        """Set (value) or remove (None) labels on a namespace or a pod."""
        import copy

        from lacewing.local.manifests import LABEL_VALUE

        for k, v in changes.items():
            if not k or (v is not None and (len(v) > 63 or not LABEL_VALUE.match(v))):
                raise UserError(f"invalid label {k}={v}")
        self._require_up()
        with self.store.locked():
            if kind == "namespace":
                objs = self.store.objects()
                key = f"Namespace.core_-_{target}"
                obj = copy.deepcopy(objs.get(key)) or {
                    "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": target}}
                if key not in objs and target not in ("default",):
                    raise UserError(f"namespace {target!r} not found")
                labels = obj["metadata"].setdefault("labels", {}) or {}
                for k, v in changes.items():
                    if v is None:
                        labels.pop(k, None)
                    else:
                        labels[k] = v
                obj["metadata"]["labels"] = labels
                self.store.put_objects([obj])
            elif kind == "pod":
                ns, name = self.split_pod(target)
                if not any(p["namespace"] == ns and p["name"] == name
                           for p in self.status()["pods"]):
                    raise UserError(f"pod {ns}/{name} not found; see `lacewing local status`")
                overrides = self.store.pod_labels()
                entry = overrides.setdefault(f"{ns}/{name}", {})
                entry.update(changes)
                self.store.write_pod_labels(overrides)
            else:
                raise UserError(f"can label a namespace or a pod, not {kind!r}")
            gen = self.store.bump_generation()
        self.wait_observed(gen, timeout=30)

    def wait_observed(self, generation: int, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.store.read_status() or {}
            if status.get("observedGeneration", -1) >= generation:
                return
            if not self.supervisor_alive():
                raise UserError(f"the supervisor of cluster {self.name!r} is not running; "
                                f"see {self.store.logs_dir / 'supervisor.log'}, or run "
                                f"`lacewing local down --name {self.name}` and `up` again")
            time.sleep(0.05)
        raise UserError(f"the cluster did not take generation {generation} within {timeout:.0f}s")

    def wait_ready(self, *, namespace: str | None = None, timeout: float = 60.0,
                   min_pods: int = 1) -> list[dict[str, Any]]:
        """Wait until every pod (of `namespace`, if given) is ready; returns them."""
        deadline = time.monotonic() + timeout
        pods: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            pods = [p for p in self.status()["pods"]
                    if namespace is None or p["namespace"] == namespace]
            if len(pods) >= min_pods and all(p["ready"] for p in pods):
                return pods
            time.sleep(0.1)
        waiting = ", ".join(f"{p['namespace']}/{p['name']} ({p['phase']})"
                            for p in pods if not p["ready"]) or "no pods yet"
        raise UserError(f"pods not ready within {timeout:.0f}s: {waiting}")

    # -- pods -----------------------------------------------------------------------------
    @staticmethod
    def split_pod(target: str) -> tuple[str, str]:
        ns, _, name = target.rpartition("/")
        return (ns or "default", name)

    def pod(self, target: str) -> dict[str, Any]:
        ns, name = self.split_pod(target)
        for p in self.status()["pods"]:
            if p["namespace"] == ns and p["name"] == name:
                return p
        raise UserError(f"pod {ns}/{name} not found; see `lacewing local status`")

    def pods(self, *, namespace: str | None = None,
             labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        return [p for p in self.status()["pods"]
                if (namespace is None or p["namespace"] == namespace)
                and all(p["labels"].get(k) == v for k, v in (labels or {}).items())]

    def exec_argv(self, target: str, argv: list[str]) -> list[str]:
        return netns.netns_exec_argv(self.pod(target)["netns"], argv)

    def exec(self, target: str, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        """Run a command in a pod's namespace (with its hosts file) and wait for it."""
        kwargs.setdefault("env", netns.clean_env())
        return subprocess.run(self.exec_argv(target, argv), check=False, **kwargs)
