"""`python -m perf.bench_waypoint`: the waypoint's CPU per request, A/B by git revision.

Before: root or not, `make setup` done, nginx and wrk installed. The waypoint runs with the
`lacewing-l7` bootstrap (perf/scenarios/lacewing_l7.py: two routes that miss, a default
route with retries and a timeout, a DestinationRule with pool limits and outlier detection,
metrics and trace propagation) on loopback, in front of one nginx worker; `wrk -t2 -c64`
loads it for `--duration` seconds. After: per variant, the CPU seconds the waypoint process
spent during the load (utime + stime from /proc/PID/stat) divided by the requests wrk
completed — a figure that stays put on a noisy shared machine, where requests/s does not.

Variants are `NAME=REV`: REV a git revision (its `waypoint/` is exported with `git archive`
to a temporary directory that goes first on the waypoint's PYTHONPATH; everything else comes
from the working tree; an exported revision has no built fast lane, so it runs its Python
path), `.` for the working tree itself, `python` for the working tree with the compiled fast
lane off (`LACEWING_WAYPOINT_FAST_LANE=0`), or `haproxy` (HAProxy 2.6, one thread, the
haproxy-http scenario's configuration) as the native-code reference. Rounds
alternate the variants (rotated order) and the medians are reported. `--profile S` records
the first variant with py-spy for S seconds under the same load and prints where the time
goes (leaf and inclusive). `--route weighted` makes the default route a 90/10 split between
subsets v1 and v2 (two endpoints on the one nginx): canary traffic; `--route authz` adds
an ALLOW AuthorizationPolicy (method and path) that the load passes. `--close` sends every
request on a new connection, so the figure is the CPU per connection. Results also go to
perf/results/bench_waypoint-<UTC time>.json.

    .venv/bin/python -m perf.bench_waypoint --variant before=HEAD~1 --variant after=. \
        --rounds 5 --duration 5
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from perf.parse import parse_wrk
from perf.scenarios.haproxy_http import CONFIG as HAPROXY_CONFIG
from perf.scenarios.lacewing_l7 import BOOTSTRAP, stop_all

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

NGINX_CONF = """worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log;
daemon off;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{
    listen {host}:{port} backlog=8192;
    location / {{ return 200 "hello from the lacewing perf server\\n"; }}
  }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {HOST}:{port}:\n"
                       f"{log.read_text()[-1500:] if log.exists() else ''}")


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        stop_all([proc])


@dataclass
class Variant:
    name: str
    rev: str                   # a git revision, "." (working tree) or "haproxy"
    tree: Path | None = None   # where its waypoint/ was exported (None: the working tree)
    samples: list[dict] = field(default_factory=list)


def export(rev: str, into: Path) -> Path:
    """`waypoint/` as of `rev`, into a directory of its own (nothing in the repo changes)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "waypoint"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


WEIGHTED_ROUTE = ("  - route: [{destination: {host: server, subset: v1}, weight: 90},\n"
                  "            {destination: {host: server, subset: v2}, weight: 10}]\n")


AUTHZ_POLICY = """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: server, namespace: perf}
spec:
  targetRefs: [{kind: Service, group: "", name: server}]
  action: ALLOW
  rules:
  - to: [{operation: {methods: [GET, HEAD], paths: ["/*"]}}]
"""


def bootstrap(upstream: int, route: str) -> str:
    """The lacewing-l7 bootstrap in front of `upstream`; `route="weighted"`: the default
    route splits 90/10 between subsets v1 and v2 (a second endpoint, version v2, on the
    same server), as a canary rollout does; `route="authz"`: an ALLOW AuthorizationPolicy
    on the Service that the load's requests pass."""
    if route == "authz":
        return bootstrap(upstream, "default").rstrip("\n") + "\n" + AUTHZ_POLICY
    text = BOOTSTRAP.format(server=HOST).replace(f"ip: {HOST}, port: 80,",
                                                 f"ip: {HOST}, port: {upstream},")
    if route == "weighted":
        one = f"  - {{name: server, ip: {HOST}, port: {upstream}, labels: {{app: server, version: v1}}}}\n"
        default = "  - route: [{destination: {host: server, subset: v1}}]\n    timeout: 10s\n"
        if one not in text or default not in text:
            raise RuntimeError("perf/scenarios/lacewing_l7.py BOOTSTRAP changed: update "
                               "bench_waypoint.bootstrap")
        text = text.replace(one, one + one.replace("name: server,", "name: server-v2,")
                            .replace("version: v1", "version: v2"))
        text = text.replace(default, WEIGHTED_ROUTE + "    timeout: 10s\n")
    return text


def start_proxy(v: Variant, work: Path, upstream: int, *, route: str = "default"
                ) -> tuple[subprocess.Popen, int]:
    port = free_port()
    log = work / f"{v.name}.log"
    env = {k: val for k, val in os.environ.items() if "proxy" not in k.lower()}
    if v.rev == "haproxy":
        cfg = work / "haproxy.cfg"
        text = HAPROXY_CONFIG.format(listen=HOST, port=port, server=HOST)
        cfg.write_text(text.replace(f"server server {HOST}:80", f"server server {HOST}:{upstream}"))
        argv = ["haproxy", "-db", "-f", str(cfg)]
        cwd = work
    else:
        boot = work / "bootstrap.yaml"
        boot.write_text(bootstrap(upstream, route))
        argv = [sys.executable, "-m", "waypoint", "--bootstrap", str(boot),
                "--listen", f"{HOST}:{port}", "--metrics", f"{HOST}:0",
                "--default-service", "perf/server"]
        cwd = v.tree or ROOT
        if v.rev == "python":
            env["LACEWING_WAYPOINT_FAST_LANE"] = "0"
        if v.tree is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(v.tree), env.get("PYTHONPATH", "")])
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd, env=env,
                                start_new_session=True)
    wait_port(port, proc, log, v.name)
    return proc, port


def wrk(port: int, *, duration: int, connections: int, threads: int,
        close: bool = False) -> str:
    """`close`: every request on a new connection (`Connection: close`)."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s",
            *(["-H", "Connection: close"] if close else []), f"http://{HOST}:{port}/"]
    return subprocess.run(argv, check=True, capture_output=True, text=True,
                          timeout=duration + 30).stdout


def measure(v: Variant, work: Path, upstream: int, args) -> dict:
    proc, port = start_proxy(v, work, upstream, route=args.route)
    try:
        wrk(port, duration=1, connections=args.connections, threads=args.threads,
            close=args.close)  # warm up
        user0, sys0 = cpu_times(proc.pid)
        t0 = time.monotonic()
        out = wrk(port, duration=args.duration, connections=args.connections,
                  threads=args.threads, close=args.close)
        wall = time.monotonic() - t0
        user1, sys1 = cpu_times(proc.pid)
        user, kernel = user1 - user0, sys1 - sys0
        cpu = user + kernel
        if proc.poll() is not None:
            raise RuntimeError(f"{v.name} exited during the load")
    finally:
        stop(proc)
    r = parse_wrk(out)
    if r.requests == 0:
        raise RuntimeError(f"{v.name}: wrk completed no request:\n{out}")
    return {"requests": r.requests, "errors": r.errors, "requests_per_s": r.requests_per_s,
            "cpu_s": cpu, "wall_s": wall, "cpu_us_per_request": cpu / r.requests * 1e6,
            "user_us_per_request": user / r.requests * 1e6,
            "sys_us_per_request": kernel / r.requests * 1e6,
            "cpu_share": cpu / wall}


def profile(v: Variant, work: Path, upstream: int, args) -> None:
    """py-spy on the waypoint under the same load; leaf and inclusive shares."""
    spy = Path(sys.executable).with_name("py-spy")
    proc, port = start_proxy(v, work, upstream, route=args.route)
    raw = work / "profile.txt"
    try:
        load = subprocess.Popen(["wrk", f"-t{args.threads}", f"-c{args.connections}",
                                 f"-d{args.profile + 3}s", f"http://{HOST}:{port}/"],
                                stdout=subprocess.DEVNULL)
        time.sleep(1)
        subprocess.run([str(spy), "record", "-p", str(proc.pid), "-f", "raw", "-r", "500",
                        "-d", str(int(args.profile)), "-o", str(raw), "--nonblocking", "--gil"],
                       check=True, capture_output=True)
        load.wait()
    finally:
        stop(proc)
    if args.raw:
        shutil.copy(raw, args.raw)
    print(summarize_profile(raw.read_text(), top=args.top, lines=args.lines))


def summarize_profile(text: str, *, top: int = 30, lines: bool = False) -> str:
    """py-spy raw (collapsed) stacks → the frames with the most samples, leaf and inclusive
    (per function, or per line with `lines`)."""
    leaf: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        if not lines:
            frames = [re.sub(r":\d+\)$", ")", f) for f in frames]
        total += count
        leaf[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    if not total:
        return "no samples"
    lines = [f"{total} samples", "", "leaf (self) %:"]
    lines += [f"{100 * c / total:6.1f}  {f}" for f, c in leaf.most_common(top)]
    lines += ["", "inclusive %:"]
    lines += [f"{100 * c / total:6.1f}  {f}" for f, c in incl.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.bench_waypoint",
                                description=__doc__.split("\n")[0])
    p.add_argument("--variant", action="append", default=[], metavar="NAME=REV",
                   help="a git revision, '.' (working tree) or 'haproxy'; repeatable "
                   "(default: current=.)")
    p.add_argument("--route", choices=("default", "weighted", "authz"), default="default",
                   help="weighted: the default route splits 90/10 between two subsets "
                   "(a canary); authz: an ALLOW AuthorizationPolicy on the Service")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=int, default=5, help="seconds of load per sample")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--close", action="store_true",
                   help="every request on a new connection (wrk -H 'Connection: close'): "
                   "the CPU per request is then the CPU per connection")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", type=int, default=0, metavar="S",
                   help="instead of measuring: py-spy the first variant for S seconds")
    p.add_argument("--top", type=int, default=30, help="frames shown by --profile")
    p.add_argument("--lines", action="store_true", help="--profile per line, not per function")
    p.add_argument("--raw", type=Path, metavar="FILE", help="--profile: keep py-spy's raw stacks")
    args = p.parse_args(argv)
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            print(f"error: {tool} is not installed; run `make setup`", file=sys.stderr)
            return 2
    variants = []
    for spec in args.variant or ["current=."]:
        name, sep, rev = spec.partition("=")
        if not sep or not name or not rev:
            print(f"error: --variant wants NAME=REV, got {spec!r}", file=sys.stderr)
            return 2
        variants.append(Variant(name, rev))
    if args.route != "default" and any(v.rev == "haproxy" for v in variants):
        print(f"note: the haproxy variant does its default routing, not --route {args.route}: "
              "its figure is a reference, not like for like", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="bench-waypoint-"))
    nginx = None
    try:
        for v in variants:
            if v.rev not in (".", "python", "haproxy"):
                try:
                    v.tree = export(v.rev, work / f"tree-{v.name}")
                except subprocess.CalledProcessError as e:
                    print(f"error: cannot export waypoint/ at {v.rev!r}: "
                          f"{e.stderr.decode().strip()}", file=sys.stderr)
                    return 2
        upstream = free_port()
        (work / "nginx.conf").write_text(NGINX_CONF.format(dir=work, host=HOST, port=upstream))
        with open(work / "nginx.log", "wb") as log:
            nginx = subprocess.Popen(["nginx", "-p", str(work), "-c", str(work / "nginx.conf")],
                                     stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        wait_port(upstream, nginx, work / "nginx-error.log", "nginx")
        if args.profile:
            profile(variants[0], work, upstream, args)
            return 0
        for i in range(args.rounds):
            order = variants[i % len(variants):] + variants[:i % len(variants)]
            for v in order:
                s = measure(v, work, upstream, args)
                v.samples.append(s)
                print(f"round {i + 1} {v.name:>10}: {s['cpu_us_per_request']:6.1f} µs CPU/request"
                      f" (user {s['user_us_per_request']:5.1f}, sys {s['sys_us_per_request']:5.1f})"
                      f"  {s['requests_per_s']:9.0f} req/s  CPU {100 * s['cpu_share']:3.0f}%"
                      f"  errors {s['errors']}", flush=True)
    finally:
        stop(nginx)
        shutil.rmtree(work, ignore_errors=True)
    print()
    summary = {}
    for v in variants:
        def med(key: str, v=v) -> float:
            return statistics.median(s[key] for s in v.samples)
        cpu, rps = med("cpu_us_per_request"), med("requests_per_s")
        user, kernel = med("user_us_per_request"), med("sys_us_per_request")
        summary[v.name] = {"rev": v.rev, "cpu_us_per_request": cpu, "requests_per_s": rps,
                           "user_us_per_request": user, "sys_us_per_request": kernel,
                           "samples": v.samples}
        print(f"{v.name:>10} ({v.rev}): median {cpu:6.1f} µs CPU/request (user {user:5.1f}, "
              f"sys {kernel:5.1f}), {rps:9.0f} req/s")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench_waypoint-{stamp}.json"
    out.write_text(json.dumps({"duration_s": args.duration, "route": args.route,
                               "connections": args.connections, "close": args.close,
                               "threads": args.threads, "variants": summary}, indent=1))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
