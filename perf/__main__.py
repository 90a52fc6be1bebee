"""`python -m perf run`: the performance suite (see perf/README.md)."""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

from perf import report
from perf.run import as_json, run, summarize
from perf.scenarios import SCENARIOS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf", description="Lacewing's performance "
                                     "suite: scenarios side by side in one run, as ratios.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure scenarios side by side")
    r.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated, from: {', '.join(SCENARIOS)} (default: all)")
    r.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    r.add_argument("--duration", type=int, default=5, help="seconds per measurement (default 5)")
    r.add_argument("--out", type=Path, default=None,
                   help="results folder (default perf/results/<UTC time>)")
    sub.add_parser("list", help="list the scenarios")
    args = parser.parse_args(argv)
    if args.cmd == "list":
        for name, cls in SCENARIOS.items():
            print(f"{name:16} {cls.description}")
        return 0
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; see `python -m perf list`")
    if "direct" not in names:
        names.insert(0, "direct")  # every ratio needs the baseline in the same run
    if args.repeat < 1 or args.duration < 1:
        parser.error("--repeat and --duration must be at least 1")
    if os.geteuid() != 0:
        print("error: the performance suite needs root (it makes a local cluster)", file=sys.stderr)
        return 1
    when = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or Path(__file__).resolve().parent / "results" / when
    from perf.topology import PerfTopology

    print(f"perf: scenarios {', '.join(names)}; {args.repeat} × {args.duration}s each")
    topo = PerfTopology.start()
    print(f"perf: on local cluster {topo.cluster.name}", flush=True)
    try:
        samples = run(topo, names, repeat=args.repeat, duration=args.duration)
    finally:
        topo.stop()
    summary = summarize(samples)
    meta = {"when": when, "repeat": args.repeat, "duration": args.duration,
            "scenarios": names, "cpus": os.cpu_count(), "kernel": os.uname().release}
    paths = report.write(out, samples=as_json(samples), summary=summary, meta=meta)
    print()
    print(paths["markdown"].read_text())
    print(f"results: {paths['json']}\ntable:   {paths['markdown']}\nchart:   {paths['chart']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
