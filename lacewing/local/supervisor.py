"""The supervisor of one local cluster: makes pods real and keeps them running.

Run as `python -m lacewing.local.supervisor --cluster C` by `lacewing local up`; it lives until
SIGTERM. It plays the kubelet, the CNI plugin and kube-proxy of the local cluster:

- reads the applied objects whenever `generation` changes, and turns Deployments and Pods into
  pods: a network namespace with a veth to its node, an address from the node's pod CIDR, hosts
  and resolv.conf files, and one process per container (`ip netns exec`), restarted with
  exponential backoff when it exits;
- probes readiness (every declared TCP port accepts a connection) and keeps each node's service
  rules (cluster IP → ready endpoints) and each pod's hosts file current;
- is the only writer of `status.json`.

On SIGTERM it stops every process it started (SIGTERM to each process group, SIGKILL after a
grace period) and exits; `lacewing local down` then removes the namespaces.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from control.config.loader import Document
from lacewing.local import dataplane, netns, runtime_objects, topology
from lacewing.local.components import ComponentSpec, read_components
from lacewing.local.manifests import Container, Deployment, Pod, PodSpec, Service, parse_workload
from lacewing.local.names import NETNS_ETC, ClusterNames
from lacewing.local.store import Store

log = logging.getLogger("lacewing.supervisor")

BACKOFF_START = 1.0
BACKOFF_MAX = 30.0
BACKOFF_RESET_AFTER = 10.0
STOP_GRACE = 5.0
PROBE_INTERVAL = 0.5
TICK = 0.1


@dataclass
class ContainerProcess:
    """One process (a pod's container, or a component): a process group of its own, restarted
    with backoff when it exits."""

    name: str
    argv: list[str]          # complete, namespace entry included
    log_path: Path
    container: Container | None = None
    proc: subprocess.Popen | None = None
    restarts: int = 0
    backoff: float = BACKOFF_START
    started_at: float = 0.0
    next_start: float = 0.0
    last_exit: int | None = None

    def start(self, env: dict[str, str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, cwd="/", start_new_session=True,
            )
        self.started_at = time.monotonic()

    def poll(self, now: float) -> bool:
        """True when the process has just exited (and a restart is now scheduled)."""
        if self.proc is None or self.proc.poll() is None:
            return False
        self.last_exit = self.proc.returncode
        self.proc = None
        if now - self.started_at >= BACKOFF_RESET_AFTER:
            self.backoff = BACKOFF_START
        self.next_start = now + self.backoff
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)
        return True

    def restart_due(self, now: float) -> bool:
        return self.proc is None and now >= self.next_start

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class ComponentRuntime:
    spec: ComponentSpec
    process: ContainerProcess
    healthy: bool = False


@dataclass
class PodRuntime:
    namespace: str
    name: str
    node: str
    node_index: int
    ip: str
    netns: str
    veth: str
    owner: str
    spec: PodSpec
    spec_hash: str
    labels: dict[str, str]
    annotations: dict[str, str]
    containers: list[ContainerProcess] = field(default_factory=list)
    ready: bool = False
    created: float = field(default_factory=time.time)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def phase(self) -> str:
        if all(c.running for c in self.containers):
            return "Running"
        if any(c.restarts for c in self.containers):
            return "CrashLoopBackOff"
        return "Pending"

    def env(self) -> dict[str, str]:
        bindir = str(Path(sys.executable).parent)
        return {
            "PATH": f"{bindir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1",
            "POD_NAME": self.name, "POD_NAMESPACE": self.namespace, "POD_IP": self.ip,
            "NODE_NAME": self.node, "SERVICE_ACCOUNT": self.spec.service_account,
            "POD_VERSION": self.labels.get("version", ""),
        }


@dataclass(frozen=True)
class DesiredPod:
    namespace: str
    name: str
    owner: str
    spec: PodSpec
    labels: dict[str, str]
    annotations: dict[str, str]
    spec_hash: str


def _hash(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def desired_pods(objects: list[Deployment | Pod]) -> dict[tuple[str, str], DesiredPod]:
    """Pure: the pods that Deployments and Pods ask for, keyed by (namespace, name)."""
    out = {}
    for obj in objects:
        if isinstance(obj, Deployment):
            template = _hash(obj.spec, sorted(obj.labels.items()), sorted(obj.annotations.items()))
            for i in range(obj.replicas):
                name = f"{obj.name}-{template[:6]}-{_hash(obj.name, i)[:5]}"
                out[(obj.namespace, name)] = DesiredPod(
                    obj.namespace, name, f"Deployment/{obj.name}", obj.spec, dict(obj.labels),
                    dict(obj.annotations), template)
        elif isinstance(obj, Pod):
            out[(obj.namespace, obj.name)] = DesiredPod(
                obj.namespace, obj.name, "", obj.spec, dict(obj.labels), dict(obj.annotations),
                _hash(obj.spec, sorted(obj.annotations.items())))
    return out


def choose_node(want: DesiredPod, pods: list[PodRuntime], nodes: list[str]) -> str:
    """Pure: spread a Deployment's pods over nodes; then balance pods per node."""
    if want.spec.node_name:
        return want.spec.node_name

    def load(node: str) -> tuple[int, int, int]:
        same_owner = sum(1 for p in pods if p.node == node and p.owner == want.owner
                         and want.owner and p.namespace == want.namespace)
        return (same_owner, sum(1 for p in pods if p.node == node), nodes.index(node))

    return min(nodes, key=load)


def _resolve_target(pod: PodRuntime, target: int | str) -> int | None:
    if isinstance(target, int):
        return target
    for c in pod.spec.containers:
        for p in c.ports:
            if p.name == target:
                return p.port
    return None


class Supervisor:
    def __init__(self, cluster: str):
        self.names = ClusterNames(cluster)
        self.store = Store(self.names)
        record = self.store.read_cluster() or {}
        self.nodes: list[str] = [n["name"] for n in record.get("nodes", [])]
        self.node_index = {n["name"]: n["index"] for n in record.get("nodes", [])}
        self.pods: dict[tuple[str, str], PodRuntime] = {}
        self.components: dict[str, ComponentRuntime] = {}
        self.underlay = {n["name"]: n["underlayIP"] for n in record.get("nodes", [])}
        self.services: list[Service] = []
        self.host_entries: list[dataplane.HostEntry] = []
        self.seen_generation = -1
        self.stopping = False
        self.rules_applied: dict[str, str] = {}
        self.hosts_written: dict[str, str] = {}
        self.last_probe = 0.0
        self.last_status = ""

    # -- reconcile ------------------------------------------------------------------------
    def reconcile(self) -> None:
        objects = []
        for key, obj in self.store.objects().items():
            if not isinstance(obj, dict):
                continue
            parsed = parse_workload(Document(key, 0, obj), [])
            if parsed is not None:
                objects.append(parsed)
        self.services = [o for o in objects if isinstance(o, Service)]
        self.reconcile_components()
        want = desired_pods([o for o in objects if isinstance(o, (Deployment, Pod))])
        overrides = self.store.pod_labels()
        for key, pod in list(self.pods.items()):
            if key not in want or want[key].spec_hash != pod.spec_hash:
                self.remove_pod(pod)
        for key, desired in sorted(want.items()):
            labels = dict(desired.labels)
            for k, v in overrides.get(f"{key[0]}/{key[1]}", {}).items():
                if v is None:
                    labels.pop(k, None)
                else:
                    labels[k] = v
            if key in self.pods:
                self.pods[key].labels = labels
                continue
            try:
                self.create_pod(desired, labels)
            except (OSError, netns.CommandError) as exc:
                log.error("could not create pod %s/%s: %s", key[0], key[1], exc)

    def reconcile_components(self) -> None:
        want = {spec.name: spec for spec in read_components(self.store.root)}
        for name, comp in list(self.components.items()):
            if want.get(name) != comp.spec:
                self.stop_processes([], [comp])
                del self.components[name]
        for name, spec in want.items():
            if name in self.components:
                continue
            proc = ContainerProcess(name, netns.nsenter_argv(spec.netns, list(spec.argv)),
                                    self.store.logs_dir / "components" / f"{name}.log")
            self.components[name] = ComponentRuntime(spec, proc)
            proc.start(netns.clean_env(spec.env))
            log.info("component %s (%s) started in %s", name, spec.kind, spec.netns)

    def allocate_ip(self, node: str) -> str:
        index = self.node_index[node]
        used = {p.ip for p in self.pods.values() if p.node == node}
        for slot in range(topology.MAX_PODS_PER_NODE):
            ip = topology.pod_ip(index, slot)
            if ip not in used:
                return ip
        raise OSError(f"node {node} has no free pod address")

    def create_pod(self, want: DesiredPod, labels: dict[str, str]) -> None:
        node = choose_node(want, list(self.pods.values()), self.nodes)
        index = self.node_index[node]
        ip = self.allocate_ip(node)
        pod_ns = self.names.pod_ns(want.namespace, want.name)
        veth = self.names.pod_veth(want.namespace, want.name)
        node_ns = self.names.node_ns(node)
        netns.delete_netns(pod_ns)  # a leftover from a crash
        netns.add_netns(pod_ns)
        etc = NETNS_ETC / pod_ns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(dataplane.RESOLV_CONF)
        (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n{ip}\t{want.name}\n")
        gw = topology.node_gateway_ip(index)
        netns.ip_batch([f"link add {veth} type veth peer name eth0 netns {pod_ns}",
                        f"link set {veth} up",
                        f"route replace {ip}/32 dev {veth} src {gw}"], netns=node_ns)
        netns.ip_batch(["link set eth0 up", f"addr add {ip}/32 dev eth0",
                        f"route add default via {gw} dev eth0 onlink"], netns=pod_ns)
        pod = PodRuntime(want.namespace, want.name, node, index, ip, pod_ns, veth, want.owner,
                         want.spec, want.spec_hash, labels, want.annotations)
        for c in want.spec.containers:
            log_path = self.store.logs_dir / "pods" / f"{want.namespace}_{want.name}_{c.name}.log"
            pod.containers.append(ContainerProcess(c.name, netns.netns_exec_argv(pod_ns, c.argv),
                                                   log_path, container=c))
        self.pods[pod.key] = pod
        self.write_hosts(pod)
        env = pod.env()
        for cp in pod.containers:
            cp.start({**env, **dict(cp.container.env)})
        log.info("pod %s/%s on %s at %s", pod.namespace, pod.name, node, ip)

    def remove_pod(self, pod: PodRuntime) -> None:
        self.stop_processes([pod])
        netns.delete_netns(pod.netns)
        shutil.rmtree(NETNS_ETC / pod.netns, ignore_errors=True)
        self.hosts_written.pop(pod.netns, None)
        self.pods.pop(pod.key, None)
        log.info("pod %s/%s removed", pod.namespace, pod.name)

    def stop_processes(self, pods: list[PodRuntime],
                       components: list[ComponentRuntime] = ()) -> None:
        procs = [c for p in pods for c in p.containers] + [c.process for c in components]
        for c in procs:
            c.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for c in procs:
            if c.proc is None:
                continue
            try:
                c.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    c.proc.wait(2)
            c.proc = None

    # -- processes and readiness ------------------------------------------------------------
    def tick_processes(self, now: float) -> None:
        for pod in self.pods.values():
            for c in pod.containers:
                if c.poll(now):
                    log.warning("pod %s/%s container %s exited with %s; restart in %.0fs",
                                pod.namespace, pod.name, c.name, c.last_exit, c.next_start - now)
                elif c.restart_due(now):
                    c.restarts += 1
                    c.start({**pod.env(), **dict(c.container.env)})
        for comp in self.components.values():
            c = comp.process
            if c.poll(now):
                comp.healthy = False
                log.warning("component %s exited with %s; restart in %.0fs", c.name, c.last_exit,
                            c.next_start - now)
            elif c.restart_due(now):
                c.restarts += 1
                c.start(netns.clean_env(comp.spec.env))

    def probe(self) -> bool:
        changed = False
        for pod in self.pods.values():
            ports = [p.port for c in pod.spec.containers for p in c.ports]
            node_ns = self.names.node_ns(pod.node)
            ready = all(c.running for c in pod.containers) and all(
                netns.tcp_probe(node_ns, pod.ip, port) for port in ports)
            if ready != pod.ready:
                pod.ready = ready
                changed = True
        for comp in self.components.values():
            spec = comp.spec
            healthy = comp.process.running and (
                not spec.ready_port or netns.tcp_probe(spec.netns, spec.ready_host, spec.ready_port))
            if healthy != comp.healthy:
                comp.healthy = healthy
                changed = True
        return changed

    # -- services -------------------------------------------------------------------------
    def endpoints(self, svc: Service) -> dict[int, list[dataplane.Endpoint]]:
        out: dict[int, list[dataplane.Endpoint]] = {p.port: [] for p in svc.ports}
        if not svc.selector:
            return out
        for pod in sorted(self.pods.values(), key=lambda p: p.ip):
            if pod.namespace != svc.namespace or not pod.ready:
                continue
            if any(pod.labels.get(k) != v for k, v in svc.selector.items()):
                continue
            for sp in svc.ports:
                target = _resolve_target(pod, sp.target_port)
                if target:
                    out[sp.port].append(dataplane.Endpoint(pod.ip, target))
        return out

    def sync_services(self) -> None:
        rules = []
        hosts = []
        for svc in self.services:
            if not svc.cluster_ip:
                continue
            hosts.append(dataplane.HostEntry(svc.namespace, svc.name, svc.cluster_ip))
            for port, eps in self.endpoints(svc).items():
                rules.append(dataplane.ServiceRule(svc.namespace, svc.name, svc.cluster_ip, port,
                                                   tuple(eps)))
        for node in self.nodes:
            index = self.node_index[node]
            local = sorted(p.ip for p in self.pods.values() if p.node == node)
            text = dataplane.node_ruleset(rules, local, topology.node_gateway_ip(index))
            if self.rules_applied.get(node) != text:
                try:
                    netns.nft(self.names.node_ns(node), text)
                    self.rules_applied[node] = text
                except netns.CommandError as exc:
                    log.error("service rules for %s: %s", node, exc)
        self.host_entries = hosts
        for pod in self.pods.values():
            self.write_hosts(pod)

    def write_hosts(self, pod: PodRuntime) -> None:
        text = dataplane.hosts_file(pod_name=pod.name, pod_ip=pod.ip, pod_namespace=pod.namespace,
                                    services=self.host_entries)
        if self.hosts_written.get(pod.netns) == text:
            return
        # Rewrite in place: running processes see the file through a bind mount of its inode.
        with open(NETNS_ETC / pod.netns / "hosts", "r+") as fh:
            fh.write(text)
            fh.truncate()
        self.hosts_written[pod.netns] = text

    # -- status ---------------------------------------------------------------------------
    def status(self) -> dict:
        pods = []
        for pod in sorted(self.pods.values(), key=lambda p: p.key):
            pods.append({
                "namespace": pod.namespace, "name": pod.name, "node": pod.node, "ip": pod.ip,
                "netns": pod.netns, "veth": pod.veth, "phase": pod.phase(), "ready": pod.ready,
                "restarts": sum(c.restarts for c in pod.containers), "owner": pod.owner,
                "serviceAccount": pod.spec.service_account, "labels": pod.labels,
                "annotations": pod.annotations,
                "containers": [{"name": c.name, "pid": c.proc.pid if c.proc else None,
                                "restarts": c.restarts, "lastExitCode": c.last_exit,
                                "log": str(c.log_path)} for c in pod.containers],
            })
        services = []
        for svc in sorted(self.services, key=lambda s: (s.namespace, s.name)):
            eps = self.endpoints(svc)
            services.append({
                "namespace": svc.namespace, "name": svc.name, "clusterIP": svc.cluster_ip,
                "selector": svc.selector,
                "ports": [{"name": p.name, "port": p.port, "targetPort": p.target_port}
                          for p in svc.ports],
                "endpoints": sorted({f"{e.ip}:{e.port}" for es in eps.values() for e in es}),
            })
        components = [{"name": c.spec.name, "kind": c.spec.kind, "node": c.spec.node,
                       "netns": c.spec.netns, "pid": c.process.proc.pid if c.process.proc else None,
                       "healthy": c.healthy, "restarts": c.process.restarts,
                       "log": str(c.process.log_path)}
                      for c in sorted(self.components.values(), key=lambda c: c.spec.name)]
        return {"observedGeneration": self.seen_generation, "pods": pods, "services": services,
                "components": components, "supervisor": {"pid": os.getpid()}}

    def write_status(self, *, force: bool = False) -> None:
        status = self.status()
        text = json.dumps(status, sort_keys=True)
        if text != self.last_status or force:
            if text != self.last_status:
                runtime_objects.write(self.store.root / "runtime", status, self.underlay)
            status["supervisor"]["heartbeat"] = time.time()
            self.store.write_status(status)
            self.last_status = text

    # -- main loop ------------------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        last_heartbeat = 0.0
        try:
            while not self.stopping:
                now = time.monotonic()
                gen = self.store.generation()
                changed = False
                if gen != self.seen_generation:
                    self.reconcile()
                    self.seen_generation = gen
                    changed = True
                self.tick_processes(now)
                if now - self.last_probe >= PROBE_INTERVAL or changed:
                    self.last_probe = now
                    changed = self.probe() or changed
                if changed:
                    self.sync_services()
                beat = now - last_heartbeat >= 1.0
                self.write_status(force=beat)
                if beat:
                    last_heartbeat = now
                time.sleep(TICK)
        finally:
            log.info("stopping %d pods", len(self.pods))
            self.stop_processes(list(self.pods.values()), list(self.components.values()))
            self.write_status(force=True)
        return 0

    def _on_term(self, signum, frame) -> None:
        self.stopping = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return Supervisor(args.cluster).run()


if __name__ == "__main__":
    sys.exit(main())
