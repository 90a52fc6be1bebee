"""haproxy-mtls: a native-code proxy pair, the stand-in for a mesh's node proxies.

HAProxy (one thread) on each node: plaintext in from the client pod on node0, mutual TLS 1.3
(ECDSA P-256 certificates with SPIFFE URI SANs, issued by Lacewing's own CA code) between the
nodes, plaintext out to the server pod on node1. TCP mode, like a mesh's L4 tunnel. HAProxy
verifies the peer's chain against the CA; it does not match the SPIFFE ID itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from control.ca.authority import CertificateAuthority
from control.ca.spiffe_id import workload_id
from lacewing.local import netns
from perf.scenarios.base import Scenario, Target
from perf.topology import PerfTopology

HTTP_IN, IPERF_IN, HTTP_TLS, IPERF_TLS = 18080, 15201, 18443, 18444

GLOBAL = """global
  nbthread {threads}
  maxconn 9000
  ssl-default-bind-options ssl-min-ver TLSv1.3
  ssl-default-server-options ssl-min-ver TLSv1.3
defaults
  mode tcp
  timeout connect 5s
  timeout client 120s
  timeout server 120s
"""

CLIENT_SIDE = GLOBAL + """
frontend http_in
  bind {listen}:{http_in}
  default_backend http_out
backend http_out
  server peer {peer}:{http_tls} ssl crt {dir}/client.pem ca-file {dir}/ca.pem verify required
frontend iperf_in
  bind {listen}:{iperf_in}
  default_backend iperf_out
backend iperf_out
  server peer {peer}:{iperf_tls} ssl crt {dir}/client.pem ca-file {dir}/ca.pem verify required
"""

SERVER_SIDE = GLOBAL + """
frontend http_tls
  bind {listen}:{http_tls} ssl crt {dir}/server.pem ca-file {dir}/ca.pem verify required
  default_backend app
backend app
  server app {server}:80
frontend iperf_tls
  bind {listen}:{iperf_tls} ssl crt {dir}/server.pem ca-file {dir}/ca.pem verify required
  default_backend iperf
backend iperf
  server app {server}:5201
"""


class HaproxyMtls(Scenario):
    name = "haproxy-mtls"
    description = "HAProxy pair, 1 thread each, mTLS between the nodes"
    threads = 1

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, topo: PerfTopology) -> Target:
        d = topo.workdir / "haproxy"
        d.mkdir(exist_ok=True)
        self._certificates(d)
        n0, n1 = topo.node(0), topo.node(1)
        gateway = "10.244.0.1"  # node0's address that its pods reach first (topology.py)
        ports = dict(http_in=HTTP_IN, iperf_in=IPERF_IN, http_tls=HTTP_TLS, iperf_tls=IPERF_TLS)
        (d / "client.cfg").write_text(CLIENT_SIDE.format(
            threads=self.threads, listen=gateway, peer=n1["underlayIP"], dir=d, **ports))
        (d / "server.cfg").write_text(SERVER_SIDE.format(
            threads=self.threads, listen=n1["underlayIP"], server=topo.server_ip, dir=d, **ports))
        for node, cfg in ((n1, "server.cfg"), (n0, "client.cfg")):
            log = open(d / f"{cfg}.log", "wb")
            self.procs.append(subprocess.Popen(
                netns.nsenter_argv(node["netns"], ["haproxy", "-db", "-f", str(d / cfg)]),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=netns.clean_env()))
            log.close()
        for node, port in ((n1, HTTP_TLS), (n0, HTTP_IN)):
            host = n1["underlayIP"] if node is n1 else gateway
            self._wait_listening(node["netns"], host, port, d)
        return Target(f"http://{gateway}:{HTTP_IN}/", gateway, IPERF_IN)

    @staticmethod
    def _certificates(d: Path) -> None:
        ca = CertificateAuthority.load_or_generate(d / "ca")
        (d / "ca.pem").write_bytes(b"".join(ca.trust_bundle))
        for name in ("client", "server"):
            key, chain = ca.issue_with_new_key(workload_id("perf", name))
            (d / f"{name}.pem").write_bytes(b"".join(chain.cert_chain) + key)

    def _wait_listening(self, ns: str, host: str, port: int, d: Path) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if netns.tcp_probe(ns, host, port):
                return
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.05)
        logs = "".join(p.read_text() for p in d.glob("*.log"))
        raise RuntimeError(f"haproxy did not start listening on {host}:{port}:\n{logs[-1500:]}")

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def stop(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs = []
