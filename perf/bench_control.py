"""Scale benchmark of the control plane: compile, push, convergence, memory, bytes per change.

Run: `python -m perf.bench_control [--pods 10000 --services 1000 --policies 1000 --nodes 100
--changes 30]`. Before: nothing running. After: a Markdown table on stdout and JSON in
perf/results/bench_control-<time>.json.

Three processes, so that each figure belongs to one of them:
  1. the control plane (child): the real `ControlPlane` (writer, incremental compiler, catalog,
     delta xDS over gRPC with mTLS from the real CA) fed by an in-memory source with the whole
     mesh — 100 namespaces, pods spread over the nodes, Services selecting 10 pods each, L4
     AuthorizationPolicies. It reports the full compile time and its RSS;
  2. the simulated nodes (child): one real `XdsClient` + `XdsState` per node, each its own
     gRPC channel and stream with its own node credential (N real streams, one event loop);
  3. this driver: waits for every node to sync, then makes one change at a time (one pod's
     labels), and for each measures the time from the source reporting it to the moment *every*
     node has applied it (CLOCK_MONOTONIC is system-wide, so times compare across processes),
     and the bytes each node received for it.
Targets (issue 5): p99 convergence < 1 s, control plane RSS < 1 GB, bytes per node for a one-pod
change proportional to the change. On 2 shared cores, the client process (100 nodes decoding and
rebuilding snapshots) competes with the control plane for CPU: convergence is an upper bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = ("shop-0", "pod-0")  # the pod every change touches


def _rss_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


# ------------------------------------------------------------------ the mesh
def mesh_objects(*, pods: int, services: int, policies: int, nodes: int) -> list[dict]:
    namespaces = max(1, services // 10)
    objs: list[dict] = []
    for n in range(nodes):
        objs.append({"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"node{n}"},
                     "status": {"addresses": [{"type": "InternalIP",
                                               "address": f"172.18.{n // 250}.{10 + n % 250}"}]}})
    for ns in range(namespaces):
        objs.append({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": f"shop-{ns}",
                                  "labels": {"lacewing.dev/dataplane-mode": "ambient"}}})
    per_ns = max(1, pods // namespaces)
    for i in range(pods):
        ns, k = i % namespaces, i // namespaces
        node = i % nodes
        objs.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"pod-{k}", "namespace": f"shop-{ns}",
                         "labels": {"app": f"svc-{k % max(1, services // namespaces)}",
                                    "version": "v1"}},
            "spec": {"nodeName": f"node{node}", "serviceAccountName": f"sa-{k % 10}",
                     "containers": [{"name": "app", "ports": [{"name": "http",
                                                               "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": f"10.{128 + i // 65536}.{(i // 256) % 256}.{i % 256}",
                       "conditions": [{"type": "Ready", "status": "True"}]}})
    del per_ns
    for s in range(services):
        ns, k = s % namespaces, s // namespaces
        objs.append({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": f"svc-{k}", "namespace": f"shop-{ns}"},
                     "spec": {"clusterIP": f"10.96.{s // 256}.{s % 256}", "selector": {"app": f"svc-{k}"},
                              "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})
    for p in range(policies):
        ns, k = p % namespaces, p // namespaces
        objs.append({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                     "metadata": {"name": f"allow-{k}", "namespace": f"shop-{ns}"},
                     "spec": {"selector": {"matchLabels": {"app": f"svc-{k % 10}"}},
                              "action": "ALLOW",
                              "rules": [{"from": [{"source": {"principals": [
                                  f"cluster.local/ns/shop-{(ns + 1) % namespaces}/sa/sa-{k % 10}"]}}],
                                  "to": [{"operation": {"ports": ["8080"]}}]}]}})
    return objs


def changed_pod(objs_by_key: dict, change: int) -> dict:
    base = objs_by_key[TARGET]
    meta = dict(base["metadata"])
    meta["labels"] = {**meta["labels"], "bench-change": str(change)}
    return {**base, "metadata": meta}


# ------------------------------------------------------------------ child 1: the control plane
class BenchSource:
    """Everything at once, then one pod change per command read from stdin."""

    name = "bench"

    def __init__(self, objs: list[dict], commands: asyncio.Queue) -> None:
        self.objs = objs
        self.commands = commands

    async def run(self, queue: asyncio.Queue) -> None:
        from control.objects import ALL_KINDS, Key, Replace, Upsert, key_of
        from control.writer import Synced

        by_key = {key_of(o): o for o in self.objs}
        await queue.put(Replace(ALL_KINDS, by_key))
        await queue.put(Synced(self.name))
        plain = {(k.namespace, k.name): o for k, o in by_key.items() if k.kind == "Pod"}
        while True:
            change = await self.commands.get()
            event = Upsert(Key("Pod", *TARGET), changed_pod(plain, change))
            await queue.put(event)
            print(json.dumps({"change": change, "at": event.at}), flush=True)


async def _serve(directory: Path, args: argparse.Namespace) -> None:
    from control.ca.authority import CertificateAuthority
    from control.ca.node_credentials import issue_node_credential
    from control.plane import ControlPlane

    ca = CertificateAuthority.load_or_generate(directory / "ca")
    for n in range(args.nodes):
        issue_node_credential(ca, f"node{n}", directory / "nodes" / f"node{n}")
    objs = mesh_objects(pods=args.pods, services=args.services, policies=args.policies,
                        nodes=args.nodes)
    rss_idle = _rss_kib(os.getpid())
    commands: asyncio.Queue = asyncio.Queue()
    plane = ControlPlane(ca=ca, sources=[BenchSource(objs, commands)],
                         grpc_address="127.0.0.1:0", metrics_host=None)
    t0 = time.perf_counter()
    await plane.start()
    while not plane.catalog.ready:
        await asyncio.sleep(0.01)
    compile_s = time.perf_counter() - t0
    del objs
    (directory / "ready.json").write_text(json.dumps({
        "port": plane.port, "compile_seconds": compile_s, "rss_idle": rss_idle,
        "rss_compiled": _rss_kib(os.getpid()), "resources": plane.catalog.counts()}))
    loop = asyncio.get_running_loop()

    def read_stdin() -> None:
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd.get("op") == "change":
                loop.call_soon_threadsafe(commands.put_nowait, cmd["n"])
            elif cmd.get("op") == "rss":
                print(json.dumps({"rss": _rss_kib(os.getpid()),
                                  "clients": len(plane.xds.clients)}), flush=True)
            elif cmd.get("op") == "stop":
                break
        loop.call_soon_threadsafe(stop.set)

    stop = asyncio.Event()
    threading.Thread(target=read_stdin, daemon=True).start()
    await stop.wait()
    await plane.stop()


# ------------------------------------------------------------------ child 2: the nodes
async def _nodes(directory: Path, args: argparse.Namespace) -> None:
    from control.backoff import Backoff
    from node_agent.xds.client import XdsClient
    from node_agent.xds.state import XdsState

    port = json.loads((directory / "ready.json").read_text())["port"]
    target = f"{TARGET[0]}/{TARGET[1]}"
    clients = []
    for n in range(args.nodes):
        state = XdsState.for_node(f"node{n}")
        client = XdsClient(addresses=[f"127.0.0.1:{port}"], credentials=directory / "nodes" / f"node{n}",
                           node=f"node{n}", state=state, backoff=Backoff(initial=0.1, maximum=2))

        def on_snapshot(snap, n=n, client=client) -> None:
            w = snap.workloads.get(target)
            tag = w.labels.get("bench-change") if w is not None else None
            if tag is not None and tag != client.__dict__.get("_bench_seen"):
                client.__dict__["_bench_seen"] = tag
                print(json.dumps({"node": n, "change": int(tag), "at": time.monotonic(),
                                  "bytes": client.bytes_received}), flush=True)
        state.subscribers.append(on_snapshot)
        clients.append(client)
    t0 = time.monotonic()
    tasks = [asyncio.create_task(c.run()) for c in clients]
    await asyncio.gather(*(c.synced.wait() for c in clients))
    print(json.dumps({"synced": time.monotonic() - t0, "streams": len(clients),
                      "initial_bytes": [c.bytes_received for c in clients],
                      "rss": _rss_kib(os.getpid())}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# ------------------------------------------------------------------ the driver
def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def drive(args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="lw-bench-control-") as tmp:
        d = Path(tmp)
        common = ["--pods", str(args.pods), "--services", str(args.services), "--policies",
                  str(args.policies), "--nodes", str(args.nodes)]
        server = subprocess.Popen([sys.executable, "-m", "perf.bench_control", "--serve", tmp, *common],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        nodes = None
        try:
            while not (d / "ready.json").exists():
                if server.poll() is not None:
                    raise SystemExit("the control plane child died; see its output above")
                time.sleep(0.05)
            ready = json.loads((d / "ready.json").read_text())
            print(f"full compile: {ready['compile_seconds']:.2f} s; resources {ready['resources']}",
                  file=sys.stderr)
            nodes = subprocess.Popen([sys.executable, "-m", "perf.bench_control", "--nodes-child", tmp,
                                      *common], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
            synced = json.loads(nodes.stdout.readline())
            print(f"{synced['streams']} nodes synced in {synced['synced']:.1f} s", file=sys.stderr)
            server.stdin.write(json.dumps({"op": "rss"}) + "\n")
            server.stdin.flush()
            rss_synced = json.loads(server.stdout.readline())
            convergence, node_times, per_node_bytes = [], [], []
            last_bytes = {n: b for n, b in enumerate(synced["initial_bytes"])}
            for change in range(1, args.changes + 1):
                server.stdin.write(json.dumps({"op": "change", "n": change}) + "\n")
                server.stdin.flush()
                started = json.loads(server.stdout.readline())["at"]
                seen = {}
                while len(seen) < args.nodes:
                    ev = json.loads(nodes.stdout.readline())
                    if ev.get("change") != change:
                        continue
                    seen[ev["node"]] = ev
                times = [ev["at"] - started for ev in seen.values()]
                convergence.append(max(times))
                node_times.extend(times)
                per_node_bytes.extend(ev["bytes"] - last_bytes[n] for n, ev in seen.items())
                last_bytes.update({n: ev["bytes"] for n, ev in seen.items()})
                time.sleep(args.gap)
            server.stdin.write(json.dumps({"op": "rss"}) + "\n")
            server.stdin.flush()
            rss_after = json.loads(server.stdout.readline())
        finally:
            for proc in (nodes, server):
                if proc is None:
                    continue
                try:
                    proc.stdin.write(json.dumps({"op": "stop"}) + "\n")
                    proc.stdin.close()
                except (BrokenPipeError, OSError, ValueError):
                    pass
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    initial = synced["initial_bytes"]
    return {
        "params": {"pods": args.pods, "services": args.services, "policies": args.policies,
                   "nodes": args.nodes, "changes": args.changes, "streams": synced["streams"]},
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                 "python": platform.python_version()},
        "full_compile_seconds": ready["compile_seconds"],
        "initial_sync_seconds": synced["synced"],
        "convergence_all_nodes_seconds": {"p50": _pct(convergence, 0.5),
                                          "p99": _pct(convergence, 0.99),
                                          "max": max(convergence)},
        "convergence_per_node_seconds": {"p50": _pct(node_times, 0.5),
                                         "p99": _pct(node_times, 0.99)},
        "control_plane_rss_kib": {"idle": ready["rss_idle"]["VmRSS"],
                                  "compiled": ready["rss_compiled"]["VmRSS"],
                                  "synced": rss_synced["rss"]["VmRSS"],
                                  "after": rss_after["rss"]["VmRSS"],
                                  # the kernel updates VmHWM lazily: take the larger
                                  "peak": max(rss_after["rss"]["VmHWM"], rss_after["rss"]["VmRSS"],
                                              rss_synced["rss"]["VmRSS"])},
        "bytes_per_node_one_pod_change": {"median": statistics.median(per_node_bytes),
                                          "max": max(per_node_bytes)},
        "bytes_per_node_full_snapshot": statistics.median(initial),
        "resources": ready["resources"],
    }


def report(r: dict) -> str:
    p, c, rss = r["params"], r["convergence_all_nodes_seconds"], r["control_plane_rss_kib"]
    b = r["bytes_per_node_one_pod_change"]
    lines = [
        f"Control plane at scale: {p['pods']} pods, {p['services']} services, {p['policies']} "
        f"policies, {p['nodes']} nodes ({p['streams']} real gRPC streams), {p['changes']} changes",
        "", "| measure | value | target |", "|---|---|---|",
        f"| full compile | {r['full_compile_seconds']:.2f} s | |",
        f"| initial sync of all nodes | {r['initial_sync_seconds']:.1f} s | |",
        f"| one change to all nodes, p50 | {c['p50'] * 1000:.0f} ms | |",
        f"| one change to all nodes, p99 | {c['p99'] * 1000:.0f} ms | < 1000 ms |",
        f"| one change to one node, p50 / p99 | {r['convergence_per_node_seconds']['p50'] * 1000:.0f}"
        f" / {r['convergence_per_node_seconds']['p99'] * 1000:.0f} ms | |",
        f"| control plane RSS compiled / synced / peak | {rss['compiled'] / 1024:.0f} / "
        f"{rss['synced'] / 1024:.0f} / {rss['peak'] / 1024:.0f} MiB | < 1024 MiB |",
        f"| bytes per node, one pod change (median) | {b['median']:.0f} B | ∝ change |",
        f"| bytes per node, full snapshot | {r['bytes_per_node_full_snapshot'] / 1024:.0f} KiB | |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.bench_control", description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=10_000)
    ap.add_argument("--services", type=int, default=1_000)
    ap.add_argument("--policies", type=int, default=1_000)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--changes", type=int, default=30)
    ap.add_argument("--gap", type=float, default=0.1, help="seconds between changes")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default perf/results/)")
    ap.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)
    ap.add_argument("--nodes-child", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(Path(args.serve), args))
        return 0
    if args.nodes_child:
        asyncio.run(_nodes(Path(args.nodes_child), args))
        return 0
    result = drive(args)
    text = report(result)
    print(text)
    out = args.out or RESULTS / f"bench_control-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**result, "report": text}, indent=2))
    print(f"\nresults: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
