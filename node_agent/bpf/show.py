"""Show what a node's datapath holds: attachments, enrolled pods, counters, connections.

    python -m node_agent.bpf.show --cluster C --node N [--netns PATH] [--flows] [-o json]

Before: a node installed with `node_agent.datapath.Datapath.install()`. After: prints, without
changing anything (flow records are read, not drained), what is pinned and attached, which pods
are enrolled, which Service addresses unenrolled pods' connections are captured for, the
programs' event counters and, with --flows, every connection record — the
operator's view when capture does not do what they expect. No compiler is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from node_agent.bpf import layout
from node_agent.bpf.syscall import prog_run_stats
from node_agent.datapath import Datapath, DatapathError


def _vip_kind(flags: int) -> str:
    names = [n for bit, n in ((layout.VIP_SERVICE, "service VIP"),
                              (layout.VIP_BACKEND, "backend"),
                              (layout.VIP_DRAIN, "draining")) if flags & bit]
    return " + ".join(names) or f"flags {flags:#x}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m node_agent.bpf.show",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--cluster", required=True)
    ap.add_argument("--node", required=True)
    ap.add_argument("--netns", help="node network namespace (default: the current one)")
    ap.add_argument("--flows", action="store_true", help="also list connection records")
    ap.add_argument("-o", "--output", choices=("table", "json"), default="table")
    args = ap.parse_args(argv)
    try:
        with Datapath(args.cluster, args.node, netns=args.netns) as dp:
            status = dp.status()
            if not dp.pinned():
                print(f"show: nothing is installed under {dp.pin_dir}", file=sys.stderr)
                return 1
            runs = {}
            for name, prog_id in status.get("programs", {}).items():
                cnt, ns = prog_run_stats(dp._prog(name))
                runs[name] = {"id": prog_id, "run_cnt": cnt, "run_time_ns": ns}
            report = {"status": status, "programs": runs, "enrolled": dp.enrolled(),
                      "stats": dp.stats(), "listeners": dp.registered_listeners(),
                      "services": {f"{a}:{p}": _vip_kind(v)
                                   for (a, p), v in sorted(dp.services().items())},
                      "flows": [asdict(f) for f in dp.read_flows()] if args.flows else None}
    except DatapathError as e:
        print(f"show: {e}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(report, indent=2))
        return 0
    print(f"pinned under {status['pin_dir']}: {', '.join(status['pinned'])}")
    print(f"policy routing: {'present' if status['routing'] else 'MISSING'}; "
          f"sockops on the cgroup: {'attached' if status['sockops_attached'] else 'NOT attached'}; "
          f"sk_lookup link: {'attached' if status['sk_lookup_attached'] else 'NOT attached'}")
    registered = ", ".join(f"{k} (cookie {v})" for k, v in sorted(report["listeners"].items()))
    print(f"tunnel listeners registered: {registered or 'none'}")
    for name, r in report["programs"].items():
        cost = (f", {r['run_time_ns'] / r['run_cnt']:.0f} ns per run over {r['run_cnt']} runs"
                if r["run_cnt"] else " (run time: sysctl kernel.bpf_stats_enabled=1)")
        print(f"  program {name:<8} id {r['id']}{cost}")
    for dev, prog in sorted(status["tc"].items()):
        print(f"  tc ingress {dev:<14} {prog}")
    for ip, pod in sorted(report["enrolled"].items()):
        print(f"  enrolled {ip:<15} pod id {pod['pod_id']} ifindex {pod['ifindex']}")
    for addr, kind in report["services"].items():
        print(f"  service capture {addr:<21} {kind}")
    print("counters: " + ", ".join(f"{k}={v}" for k, v in report["stats"].items()))
    for f in report["flows"] or []:
        state = "open" if f["closed_ns"] == 0 else "closed"
        print(f"  {f['kind']:<8} {f['src']}:{f['sport']} -> {f['dst']}:{f['dport']} "
              f"received {f['received_bytes']} sent {f['sent_bytes']} {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
