"""Tier 3: a connection an unenrolled pod opened through a Service VIP outlives the VIP leaving
the capture (NOTES.md: it used to break). One-node local cluster, real control plane, node
agent, eBPF programs and tunnel: `legacy/caller` holds a connection to Service mesh/echo, whose
only endpoint is an enrolled pod on the same node, so the VIP is captured and the tunnel's
:15006 relays it. Then the endpoint leaves the mesh: the VIP no longer qualifies, its lw_vips
entry drains (the open connection still reaches the tunnel's socket, a new connection is not
captured and goes through the DNAT), and so does the endpoint's backend entry (the pod's own
program no longer steers its replies to the tunnel's socket); once the connection closes both
are retired."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from lacewing.local import netns
from lacewing.local.mesh import AMBIENT, LocalMesh, uninstall_capture
from node_agent.bpf import layout
from node_agent.datapath import Datapath

pytestmark = pytest.mark.timeout(240)

PY = sys.executable

ECHO = ("import socket,threading\n"
        "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        "s.bind(('0.0.0.0',8080));s.listen(64)\n"
        "def serve(c):\n"
        "  while True:\n"
        "    d=c.recv(100)\n"
        "    if not d: c.close(); return\n"
        "    c.sendall(b'echo '+d)\n"
        "while True:\n"
        "  c,a=s.accept();threading.Thread(target=serve,args=(c,),daemon=True).start()\n")

# one connection: a round trip, then (once GO exists) another, then close
HOLD = ("import socket,sys,os,time\n"
        "c=socket.create_connection((sys.argv[1],80),timeout=10)\n"
        "c.sendall(b'one');print(c.recv(100).decode(),flush=True)\n"
        "while not os.path.exists(sys.argv[2]): time.sleep(0.05)\n"
        "c.sendall(b'two');print(c.recv(100).decode(),flush=True)\n"
        "c.close()\n")

ONCE = ("import socket,sys\n"
        "c=socket.create_connection((sys.argv[1],80),timeout=5)\n"
        "c.sendall(b'new');print(c.recv(100).decode())\n")


def wait_for(what, check, *, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout:.0f} s")
        time.sleep(0.2)


def test_an_open_vip_connection_outlives_the_vip_leaving(make_cluster, tmp_path):
    cluster = make_cluster(nodes=1)
    (tmp_path / "w.yaml").write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: mesh}\n"
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: legacy}\n"
        "---\napiVersion: v1\nkind: Pod\nmetadata: {name: echo, namespace: mesh, "
        "labels: {app: echo}}\nspec:\n  nodeName: node0\n  containers:\n  - name: main\n"
        f"    command: {json.dumps([PY, '-c', ECHO])}\n"
        "---\napiVersion: v1\nkind: Pod\nmetadata: {name: caller, namespace: legacy}\n"
        "spec:\n  nodeName: node0\n  containers:\n  - name: main\n"
        "    command: [sleep, infinity]\n"
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: mesh}\n"
        "spec:\n  selector: {app: echo}\n  ports: [{port: 80, targetPort: 8080}]\n")
    cluster.apply([tmp_path / "w.yaml"])
    cluster.wait_ready(namespace="mesh", min_pods=1)
    cluster.wait_ready(namespace="legacy", min_pods=1)
    status = cluster.status()
    vip = next(s["clusterIP"] for s in status["services"] if s["name"] == "echo")
    node0 = status["nodes"][0]
    dp = Datapath(cluster.name, "node0", netns=node0["netns"])
    mesh = LocalMesh(cluster, namespaces=set(), pods={"mesh/echo"})
    go = tmp_path / "go"
    holder = None
    try:
        mesh.start()
        echo_ip = next(p["ip"] for p in cluster.status()["pods"] if p["name"] == "echo")
        backend = (echo_ip, 8080)
        wait_for("the VIP captured", lambda: dp.services() == {
            (vip, 80): layout.VIP_SERVICE, backend: layout.VIP_BACKEND})
        holder = subprocess.Popen(cluster.exec_argv("legacy/caller", [PY, "-c", HOLD, vip,
                                                                      str(go)]),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=netns.clean_env())
        assert holder.stdout.readline().strip() == "echo one"
        captured = dp.stats()["captured_service"]
        assert captured >= 1

        # the endpoint leaves the mesh: the VIP stops qualifying, its entry drains
        cluster.label("pod", "mesh/echo", {k: None for k in AMBIENT})
        wait_for("the VIP draining", lambda: dp.services() == {
            (vip, 80): layout.VIP_SERVICE | layout.VIP_DRAIN,
            backend: layout.VIP_BACKEND | layout.VIP_DRAIN})
        # a new connection is not captured: the DNAT takes it to the pod directly
        new = cluster.exec("legacy/caller", [PY, "-c", ONCE, vip], capture_output=True,
                           text=True, timeout=30)
        assert new.stdout.strip() == "echo new", new.stderr
        assert dp.stats()["captured_service"] == captured
        # the open connection still goes through the tunnel, both ways
        go.write_text("")
        assert holder.stdout.readline().strip() == "echo two"
        assert holder.wait(10) == 0, holder.stderr.read()
        # closed: the entry is retired at the agent's next sweep
        wait_for("the drained VIP retired", lambda: dp.services() == {} or None, timeout=30)
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait()
        dp.close()
        mesh.stop()
        uninstall_capture(cluster)
