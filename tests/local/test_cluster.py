"""End to end: real namespaces, veths, nftables and processes (root).

Every cluster here comes from the `make_cluster` fixture, which removes it even when a test
fails; names are unique per run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from control.config.errors import ConfigError
from lacewing.local import netns
from lacewing.local.cluster import LocalCluster
from lacewing.local.names import NETNS_ETC
from tests.conftest import unique_cluster_name

WEB = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, version: v1}}
    spec:
      containers:
      - name: web
        command: [python3, -c, "import http.server,os; http.server.HTTPServer.allow_reuse_address=True; h=type('H',(http.server.BaseHTTPRequestHandler,),{'do_GET': lambda s: (s.send_response(200), s.send_header('Content-Length','%d' % len(os.environ['POD_NAME'])), s.end_headers(), s.wfile.write(os.environ['POD_NAME'].encode())), 'log_message': lambda *a: None}); http.server.HTTPServer(('', 8080), h).serve_forever()"]
        ports: [{containerPort: 8080, name: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: node0
  containers:
  - {name: c, command: [sleep, infinity]}
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _curl(cluster: LocalCluster, pod: str, url: str) -> str:
    out = cluster.exec(pod, ["curl", "-sS", "-m", "5", url], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _leftovers(name: str) -> list[str]:
    found = [ns for ns in netns.list_netns() if ns.startswith(f"lw-{name}-")]
    found += [str(p) for p in NETNS_ETC.glob(f"lw-{name}-*")] if NETNS_ETC.is_dir() else []
    for path in (Path(f"/run/lacewing/lw-{name}"), Path(f"/sys/fs/bpf/lw-{name}")):
        if path.exists():
            found.append(str(path))
    out = subprocess.run(["pgrep", "-f", f"--cluster {name}"], capture_output=True, text=True)
    found += [f"pid {p}" for p in out.stdout.split()]
    return found


def test_service_reaches_pods_on_both_nodes(make_cluster, tmp_path):
    cluster = make_cluster(nodes=2)
    cluster.apply([_write(tmp_path, "web.yaml", WEB)])
    pods = cluster.wait_ready()
    web = [p for p in pods if p["labels"].get("app") == "web"]
    assert sorted(p["node"] for p in web) == ["node0", "node1"]
    assert all(p["ip"].startswith("10.244.") for p in pods)
    svc = cluster.status()["services"][0]
    assert svc["clusterIP"] == "10.96.0.10" and len(svc["endpoints"]) == 2
    seen = {_curl(cluster, "client", "http://web.default.svc.cluster.local/") for _ in range(40)}
    assert seen == {p["name"] for p in web}
    # A pod that calls its own Service and lands on itself still gets an answer (hairpin).
    me = web[0]["name"]
    answers = {_curl(cluster, me, "http://web/") for _ in range(20)}
    assert me in answers


def test_two_clusters_coexist(make_cluster, tmp_path):
    a = make_cluster(nodes=1)
    b = make_cluster(nodes=2)
    path = _write(tmp_path, "web.yaml", WEB)
    a.apply([path])
    b.apply([path])
    a.wait_ready()
    b.wait_ready()
    # Same addresses inside, different namespaces outside: each reaches only its own pods.
    pods_a = {p["name"] for p in a.status()["pods"]}
    assert _curl(a, "client", "http://web/") in pods_a
    assert _curl(b, "client", "http://web/") in {p["name"] for p in b.status()["pods"]}
    a.down()
    assert b.status()["phase"] == "Ready"
    assert _curl(b, "client", "http://web/")


def test_down_leaves_nothing_behind(make_cluster, tmp_path):
    cluster = make_cluster(nodes=2)
    cluster.apply([_write(tmp_path, "web.yaml", WEB)])
    cluster.wait_ready()
    pids = [c["pid"] for p in cluster.status()["pods"] for c in p["containers"]]
    assert _leftovers(cluster.name)
    cluster.down()
    assert _leftovers(cluster.name) == []
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert not cluster.store.exists()


def test_killed_up_is_recovered_by_the_next_up(root_required):
    name = unique_cluster_name()
    cmd = [sys.executable, "-m", "lacewing.cli", "local", "up", "--name", name, "--nodes", "3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cluster = LocalCluster(name)
    try:
        # Kill `up` once it has made part of the network.
        deadline = time.monotonic() + 30
        while not netns.netns_exists(f"lw-{name}-node0") and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.kill()
        proc.wait()
        assert not cluster.is_up()
        assert cluster.up(nodes=2) is True
        status = cluster.status()
        assert status["phase"] == "Ready" and [n["name"] for n in status["nodes"]] == ["node0", "node1"]
        assert not netns.netns_exists(f"lw-{name}-node2")
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.down()
    assert _leftovers(name) == []


def test_up_of_a_cluster_that_is_up_changes_nothing(make_cluster):
    cluster = make_cluster(nodes=1)
    pid = cluster.supervisor_pid()
    out = subprocess.run([sys.executable, "-m", "lacewing.cli", "local", "up", "--name",
                          cluster.name], capture_output=True, text=True)
    assert out.returncode == 0 and "already up" in out.stdout
    assert cluster.supervisor_pid() == pid


def test_bad_input_is_refused_and_nothing_is_half_made(make_cluster, tmp_path):
    cluster = make_cluster(nodes=1)
    bad = WEB + """---
apiVersion: apps/v1
kind: Deployment
metadata: {name: nocmd}
spec:
  selector: {matchLabels: {app: x}}
  template:
    metadata: {labels: {app: x}}
    spec:
      containers: [{name: x, image: busybox}]
"""
    path = _write(tmp_path, "bad.yaml", bad)
    with pytest.raises(ConfigError) as exc:
        cluster.apply([path])
    errors = [p for p in exc.value.problems if p.kind == "invalid"]
    assert [(p.file, p.index, p.path) for p in errors] == [
        (str(path), 3, "spec.template.spec.containers[0].command")]
    assert cluster.status()["pods"] == [] and cluster.store.objects() == {}

    malformed = _write(tmp_path, "malformed.yaml", "kind: Service\nmetadata: {name: [\n")
    out = subprocess.run([sys.executable, "-m", "lacewing.cli", "local", "apply", "--name",
                          cluster.name, "-f", str(malformed)], capture_output=True, text=True)
    assert out.returncode == 1
    assert f"{malformed}: document 0: malformed YAML at line" in out.stderr
    assert "nothing was applied" in out.stderr

    unknown = _write(tmp_path, "cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    out = subprocess.run([sys.executable, "-m", "lacewing.cli", "local", "apply", "--name",
                          cluster.name, "-f", str(unknown)], capture_output=True, text=True)
    assert out.returncode == 1 and "unknown kind 'ConfigMap'" in out.stderr

    lonely = _write(tmp_path, "svc.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n"
                    "spec: {selector: {app: nobody}, ports: [{port: 80}]}\n")
    result = cluster.apply([lonely])
    assert [w.path for w in result.warnings] == ["spec.selector"]
    assert [s["name"] for s in cluster.status()["services"]] == ["s"]


def test_crashing_container_is_restarted_with_backoff(make_cluster, tmp_path):
    cluster = make_cluster(nodes=1)
    crash = """apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers: [{name: c, command: [sh, -c, "echo started; exit 3"]}]
"""
    cluster.apply([_write(tmp_path, "crash.yaml", crash)])
    deadline = time.monotonic() + 30
    pod = cluster.pod("crasher")
    while pod["restarts"] < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        pod = cluster.pod("crasher")
    assert pod["restarts"] >= 2
    assert pod["containers"][0]["lastExitCode"] == 3
    assert Path(pod["containers"][0]["log"]).read_text().count("started") >= 2


def test_labels_delete_and_status_json(make_cluster, tmp_path):
    cluster = make_cluster(nodes=2)
    path = _write(tmp_path, "web.yaml", WEB)
    cluster.apply([path])
    cluster.wait_ready()
    cluster.label("namespace", "default", {"lacewing.dev/dataplane-mode": "ambient"})
    ns = cluster.store.objects()["Namespace.core_-_default"]
    assert ns["metadata"]["labels"] == {"lacewing.dev/dataplane-mode": "ambient"}
    cluster.label("pod", "default/client", {"team": "a"})
    assert cluster.pod("client")["labels"] == {"team": "a"}
    cluster.label("pod", "client", {"team": None})
    assert cluster.pod("client")["labels"] == {}

    out = subprocess.run([sys.executable, "-m", "lacewing.cli", "local", "status", "--name",
                          cluster.name, "-o", "json"], capture_output=True, text=True, check=True)
    status = json.loads(out.stdout)
    assert status["kind"] == "LocalClusterStatus"
    supervisor = [c for c in status["components"] if c["kind"] == "supervisor"]
    assert len(supervisor) == 1 and supervisor[0]["healthy"]
    assert all({"name", "kind", "node", "pid", "healthy"} <= set(c) for c in status["components"])
    pod = status["pods"][0]
    assert set(pod) >= {"namespace", "name", "node", "ip", "phase", "ready", "restarts", "netns"}

    netns_names = [p["netns"] for p in status["pods"]]
    cluster.delete([path])
    assert cluster.status()["pods"] == []
    assert not any(netns.netns_exists(n) for n in netns_names)


def test_exec_runs_inside_the_pod(make_cluster, tmp_path):
    cluster = make_cluster(nodes=1)
    cluster.apply([_write(tmp_path, "web.yaml", WEB)])
    cluster.wait_ready()
    ip = cluster.pod("client")["ip"]
    out = subprocess.run([sys.executable, "-m", "lacewing.cli", "local", "exec", "--name",
                          cluster.name, "client", "--", "ip", "-4", "-o", "addr", "show", "eth0"],
                         capture_output=True, text=True, env={**os.environ, "HTTP_PROXY": "x"})
    assert out.returncode == 0 and f"inet {ip}/32" in out.stdout


def test_supervisor_death_is_reported(make_cluster):
    cluster = make_cluster(nodes=1)
    os.kill(cluster.supervisor_pid(), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while cluster.status()["phase"] != "Degraded" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cluster.status()["phase"] == "Degraded"
    assert not cluster.is_up()


def test_components_run_in_their_namespace_and_restart(make_cluster):
    from lacewing.local.components import ComponentSpec

    cluster = make_cluster(nodes=1)
    node_ns = cluster.status()["nodes"][0]["netns"]
    spec = ComponentSpec(name="probe-node0", kind="test", netns=node_ns, node="node0",
                         argv=("python3", "-m", "http.server", "--bind", "172.18.0.10", "15099"),
                         ready_port=15099, ready_host="172.18.0.10")
    folder = cluster.store.root / "components"
    (folder / "probe-node0.json").write_text(spec.to_json())
    with cluster.store.locked():
        gen = cluster.store.bump_generation()
    cluster.wait_observed(gen, timeout=30)

    def component() -> dict:
        return next(c for c in cluster.status()["components"] if c["name"] == "probe-node0")

    deadline = time.monotonic() + 30
    while not component()["healthy"] and time.monotonic() < deadline:
        time.sleep(0.1)
    first = component()
    assert first["healthy"] and first["node"] == "node0"
    # It runs inside the node's namespace, so it listens on the node's underlay address.
    assert netns.tcp_probe(node_ns, "172.18.0.10", 15099)
    os.killpg(first["pid"], signal.SIGKILL)
    while (component()["restarts"] < 1 or not component()["healthy"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert component()["restarts"] == 1 and component()["healthy"]
    assert component()["pid"] != first["pid"]


def test_runtime_objects_mirror_pods_for_the_control_plane(make_cluster, tmp_path):
    import yaml

    cluster = make_cluster(nodes=2)
    cluster.apply([_write(tmp_path, "web.yaml", WEB)])
    pods = cluster.wait_ready()
    folder = cluster.store.root / "runtime"

    def read() -> list[dict]:
        return [yaml.safe_load(p.read_text()) for p in sorted(folder.glob("*.yaml"))]

    deadline = time.monotonic() + 10
    while sum(o["kind"] == "Pod" and o["status"]["conditions"][0]["status"] == "True"
              for o in read()) < len(pods) and time.monotonic() < deadline:
        time.sleep(0.1)
    objs = read()
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    assert sorted(n["metadata"]["name"] for n in by_kind["Node"]) == ["node0", "node1"]
    assert sorted(p["status"]["podIP"] for p in by_kind["Pod"]) == sorted(p["ip"] for p in pods)
    web = [p for p in by_kind["Pod"] if p["metadata"]["labels"].get("app") == "web"]
    assert all(p["status"]["conditions"] == [{"type": "Ready", "status": "True"}] for p in web)
    assert {p["status"]["hostIP"] for p in web} == {"172.18.0.10", "172.18.0.11"}


def test_down_detaches_the_node_agents_programs(make_cluster, tmp_path):
    """The sockops program sits on the host's cgroup-v2 root: removing pins and namespaces
    would leave it attached, running for every socket on the host. `down` detaches it."""
    from node_agent.bpf import attach, pins
    from node_agent.bpf.syscall import obj_get, prog_info, prog_query

    cluster = make_cluster(nodes=2)
    # A node agent installs its datapath once a pod of its node is enrolled.
    cluster.label("namespace", "default", {"lacewing.dev/dataplane-mode": "ambient"})
    cluster.apply([_write(tmp_path, "web.yaml", WEB)])
    deadline = time.monotonic() + 60
    paths = [Path(pins.prog_path(cluster.name, n, "sockops")) for n in ("node0", "node1")]
    while not all(p.exists() for p in paths) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(p.exists() for p in paths), "the node agents did not install their datapath"
    ids = set()
    for p in paths:
        fd = obj_get(str(p))
        ids.add(prog_info(fd)[0])
        os.close(fd)
    root = attach.cgroup2_root()

    def attached() -> set[int]:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return set(prog_query(target_fd=fd, attach_type=3))  # BPF_CGROUP_SOCK_OPS
        finally:
            os.close(fd)

    # the loader pins before the agent attaches: wait for the attachment itself
    while not ids <= attached() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ids <= attached(), "the node agents did not attach their sockops programs"
    # Agents that crash (SIGKILL: no chance to clean up) leave their programs attached ...
    for c in cluster.status()["components"]:
        if c["kind"] in ("node-agent", "supervisor") and c["pid"]:
            os.kill(c["pid"], signal.SIGKILL)
    time.sleep(0.5)
    assert ids <= attached()
    # ... and `down` still removes them.
    cluster.down()
    assert not ids & attached()
    assert not cluster.names.bpf_dir.exists()


def test_pods_reach_the_control_plane_address(make_cluster, tmp_path):
    cluster = make_cluster(nodes=2, mesh=False)
    cluster.apply([_write(tmp_path, "web.yaml", WEB)])
    cluster.wait_ready()
    fabric = cluster.names.fabric_ns
    server = subprocess.Popen(netns.nsenter_argv(fabric, ["python3", "-m", "http.server",
                                                          "--bind", "172.18.0.2", "15099"]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not netns.tcp_probe(fabric, "172.18.0.2", 15099) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pod in cluster.status()["pods"]:
            out = cluster.exec(f"{pod['namespace']}/{pod['name']}",
                               ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5",
                                "http://172.18.0.2:15099/"], capture_output=True, text=True)
            assert out.stdout == "200", (pod["node"], out.stderr)
    finally:
        server.terminate()
        server.wait()
