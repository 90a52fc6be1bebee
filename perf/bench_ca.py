"""Benchmark of the certificate authority: CSRs signed per second, and control-plane memory.

Run: `python -m perf.bench_ca [--identities 10000] [--concurrency 32]`.
Before: nothing running. After: a Markdown table on stdout and JSON in perf/results/.

Measured, in one run:
  1. the pure path in this process — `check_csr` + `CertificateAuthority.sign` — over
     pre-made CSRs (CSR making is the node's work, not the CA's);
  2. the same over gRPC with mTLS on loopback: the CA server runs in a child process (the
     "control plane"), a node client sends one CSR per identity with N calls in flight;
  3. the child's RSS idle, with the 10,000-identity workload view loaded, and after it issued
     one certificate to each of those identities (the CA keeps no per-certificate state).
On a 2-core machine shared with other work, read the rates as orders of magnitude.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _rss_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def _identities(n: int) -> list[tuple[str, str]]:
    return [(f"ns-{i // 100}", f"sa-{i}") for i in range(n)]


# ------------------------------------------------------------------ the control-plane child
async def _serve(directory: Path, identities: int) -> None:
    from control.ca.authority import CertificateAuthority
    from control.ca.grpc_server import CaServer
    from control.ca.node_credentials import issue_node_credential
    from control.ca.node_workloads import InMemoryNodeWorkloads

    ca = CertificateAuthority.load_or_generate(directory / "ca")
    issue_node_credential(ca, "bench-node", directory / "node")
    rss_idle = _rss_kib(os.getpid())
    workloads = InMemoryNodeWorkloads({"bench-node": _identities(identities)})
    server = CaServer(ca=ca, workloads=workloads, address="127.0.0.1:0")
    await server.start()
    rss_loaded = _rss_kib(os.getpid())
    (directory / "ready.json").write_text(json.dumps(
        {"port": server.port, "rss_idle": rss_idle, "rss_loaded": rss_loaded}))
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    await server.stop(0)


# ------------------------------------------------------------------ measurements
def _make_csrs(n: int) -> list[tuple[str, bytes]]:
    from control.ca.spiffe_id import workload_id
    from node_agent.certs.csr import make_csr

    out = []
    for ns, sa in _identities(n):
        uri = workload_id(ns, sa).uri
        out.append((uri, make_csr(uri)[1]))
    return out


def bench_pure(csrs: list[tuple[str, bytes]], directory: Path) -> dict:
    from control.ca.authority import CertificateAuthority
    from control.ca.csr_check import Issue, check_csr
    from control.ca.node_workloads import InMemoryNodeWorkloads

    ca = CertificateAuthority.load_or_generate(directory / "pure-ca")
    workloads = InMemoryNodeWorkloads({"bench-node": _identities(len(csrs))})
    t0 = time.perf_counter()
    for _, pem in csrs:
        decision = check_csr(pem, node="bench-node", workloads=workloads,
                             trust_domain=ca.trust_domain)
        assert isinstance(decision, Issue), decision
        ca.sign(decision.public_key, decision.identity)
    elapsed = time.perf_counter() - t0
    return {"csrs": len(csrs), "seconds": elapsed, "per_second": len(csrs) / elapsed}


async def bench_grpc(csrs: list[tuple[str, bytes]], *, port: int, node_dir: Path,
                     concurrency: int) -> dict:
    from node_agent.certs.ca_client import GrpcCaClient

    client = GrpcCaClient.from_node_credential(f"127.0.0.1:{port}", node_dir, timeout=30)
    await client.sign(csrs[0][1])  # connect and warm up
    queue = list(csrs)
    errors = 0

    async def worker():
        nonlocal errors
        while queue:
            _, pem = queue.pop()
            try:
                await client.sign(pem)
            except Exception:  # noqa: BLE001 - counted and reported
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    await client.close()
    return {"csrs": len(csrs), "seconds": elapsed, "per_second": len(csrs) / elapsed,
            "errors": errors, "concurrency": concurrency}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.bench_ca", description=__doc__.split("\n")[0])
    p.add_argument("--identities", type=int, default=10_000)
    p.add_argument("--pure", type=int, default=2_000, help="CSRs for the in-process measurement")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(Path(args.serve), args.identities))
        return 0

    with tempfile.TemporaryDirectory(prefix="lacewing-bench-ca-") as tmp:
        d = Path(tmp)
        print(f"making {args.identities} CSRs ...", file=sys.stderr)
        csrs = _make_csrs(args.identities)
        pure = bench_pure(csrs[: args.pure], d)
        child = subprocess.Popen(
            [sys.executable, "-m", "perf.bench_ca", "--serve", str(d),
             "--identities", str(args.identities)],
            stdin=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
        try:
            ready = d / "ready.json"
            deadline = time.monotonic() + 60
            while not ready.exists():
                if child.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the CA server did not start")
                time.sleep(0.05)
            info = json.loads(ready.read_text())
            over_grpc = asyncio.run(bench_grpc(csrs, port=info["port"], node_dir=d / "node",
                                               concurrency=args.concurrency))
            rss_after = _rss_kib(child.pid)
        finally:
            if child.stdin:
                child.stdin.close()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    result = {
        "benchmark": "bench_ca",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                 "machine": platform.machine()},
        "pure_sign": pure,
        "grpc_sign": over_grpc,
        "control_plane_rss_kib": {"idle": info["rss_idle"]["VmRSS"],
                                  "workloads_loaded": info["rss_loaded"]["VmRSS"],
                                  "after_issuing": rss_after["VmRSS"],
                                  "peak": rss_after["VmHWM"]},
        "identities": args.identities,
    }
    rss = result["control_plane_rss_kib"]
    print("| measurement | value |\n|---|---|")
    print(f"| CSRs signed/s, in process (check + sign, {pure['csrs']} CSRs) | {pure['per_second']:.0f} |")
    print(f"| CSRs signed/s, gRPC mTLS loopback ({over_grpc['csrs']} CSRs, "
          f"{over_grpc['concurrency']} in flight) | {over_grpc['per_second']:.0f} |")
    print(f"| gRPC errors | {over_grpc['errors']} |")
    print(f"| control plane RSS idle (CA loaded) | {rss['idle'] / 1024:.1f} MiB |")
    print(f"| … serving, {args.identities} identities in the workload view | {rss['workloads_loaded'] / 1024:.1f} MiB |")
    print(f"| … after issuing {args.identities} SVIDs | {rss['after_issuing'] / 1024:.1f} MiB "
          f"(peak {rss['peak'] / 1024:.1f} MiB) |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench_ca-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}", file=sys.stderr)
    return 1 if over_grpc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
