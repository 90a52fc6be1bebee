"""haproxy-http: HAProxy 2.6 in HTTP mode, one thread, doing the same routing work as
`lacewing-l7` — the native-code peer for the waypoint.

In node0's namespace, like the waypoint: per request a header ACL (`x-canary: always`) and a
path-prefix ACL (`/api/`, with a rewrite) that miss, then the default backend — the server
pod on node1 over keep-alive HTTP/1.1 (`http-reuse always`), with `retry-on conn-failure`
and 5xx, 2 retries and a 10 s server timeout, and a unique request id header
(the waypoint adds `x-request-id` and trace headers).
"""

from __future__ import annotations

import subprocess

from lacewing.local import netns
from perf.scenarios.base import Scenario, Target
from perf.scenarios.lacewing_l7 import GATEWAY, stop_all, wait_listening
from perf.topology import PerfTopology

PORT = 18082

CONFIG = """global
  nbthread 1
  maxconn 9000
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 120s
  timeout server 10s
  retries 2
  retry-on conn-failure 500 501 502 503 504
frontend http_in
  bind {listen}:{port}
  unique-id-format %{{+X}}o\\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid
  http-request set-header x-request-id %[unique-id]
  acl canary hdr(x-canary) -m str always
  acl api path_beg /api/
  http-request set-path /%[path,regsub(^/api/,)] if api
  use_backend v2 if canary
  default_backend v1
backend v1
  balance roundrobin
  server server {server}:80
backend v2
  balance roundrobin
  server server {server}:80
"""


class HaproxyHttp(Scenario):
    name = "haproxy-http"
    description = "HAProxy HTTP mode, 1 thread: the same routing work as lacewing-l7"

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, topo: PerfTopology) -> Target:
        d = topo.workdir / "haproxy-http"
        d.mkdir(exist_ok=True)
        (d / "haproxy.cfg").write_text(CONFIG.format(listen=GATEWAY, port=PORT,
                                                     server=topo.server_ip))
        n0 = topo.node(0)
        log_path = d / "haproxy.log"
        log = open(log_path, "wb")
        self.procs.append(subprocess.Popen(
            netns.nsenter_argv(n0["netns"], ["haproxy", "-db", "-f", str(d / "haproxy.cfg")]),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=netns.clean_env()))
        log.close()
        wait_listening(n0["netns"], GATEWAY, PORT, self.procs, [log_path], "haproxy")
        return Target(f"http://{GATEWAY}:{PORT}/", topo.server_ip, 5201)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def stop(self) -> None:
        stop_all(self.procs)
        self.procs = []
