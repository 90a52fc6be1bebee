"""Benchmark: folding per-connection flow records into per-(source, destination) totals.

    .venv/bin/python -m perf.bench_flow_agg [--records 1000,10000,65536] [--pairs 200]

Before: `node_agent.bpf.flows` (the agent's numpy group-by and the plain-Python loop it is
checked against). After: prints, side by side in one run, the time per aggregation of each
implementation — plain Python, numpy (what the agent uses), numba (JIT; compile time shown
apart) — as ratios to plain Python, and the resident memory a process needs to import each
(numba brings LLVM into the process, which the long-running agent must not hold). Quote the
ratios, not the absolute times: the machine has 2 shared cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

from node_agent.bpf import layout
from node_agent.bpf.flows import aggregate, aggregate_python


def synthetic(n: int, pairs: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    recs = np.zeros(n, dtype=layout.FLOW_DTYPE)
    p = rng.integers(0, pairs, n)
    recs["saddr"] = 0x0A_F4_01_00 + (p % 250)
    recs["daddr"] = 0x0A_F4_02_00 + (p // 250)
    recs["kind"] = 1 + (p % 3)
    recs["rx"] = rng.integers(0, 1 << 30, n)
    recs["tx"] = rng.integers(0, 1 << 30, n)
    recs["closed_ns"] = np.where(rng.random(n) < 0.5, 0, 1)
    return recs


def numba_impl():
    from numba import njit, types
    from numba.typed import Dict

    key_t = types.UniTuple(types.int64, 3)

    @njit(cache=False)
    def agg(saddr, daddr, kind, rx, tx, closed):
        idx = Dict.empty(key_type=key_t, value_type=types.int64)
        n = len(saddr)
        keys = np.zeros((n, 3), np.int64)
        sums = np.zeros((n, 4), np.uint64)
        m = 0
        for i in range(n):
            k = (np.int64(saddr[i]), np.int64(daddr[i]), np.int64(kind[i]))
            if k in idx:
                j = idx[k]
            else:
                idx[k] = m
                keys[m, 0], keys[m, 1], keys[m, 2] = k
                j = m
                m += 1
            sums[j, 0] += rx[i]
            sums[j, 1] += tx[i]
            sums[j, 2] += 1
            if closed[i] != 0:
                sums[j, 3] += 1
        return keys[:m], sums[:m]

    from node_agent.bpf.flows import PairTotals

    def run(recs):
        keys, sums = agg(recs["saddr"], recs["daddr"], recs["kind"], recs["rx"], recs["tx"],
                         recs["closed_ns"])
        return {(int(a), int(b), int(c)): PairTotals(int(s[0]), int(s[1]), int(s[2]), int(s[3]))
                for (a, b, c), s in zip(keys.tolist(), sums, strict=True)}

    return run


def best_of(fn, recs, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(recs)
        best = min(best, time.perf_counter() - t)
    return best


def import_rss(module: str) -> int:
    code = (f"import {module}\n"
            "print([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", default="1000,10000,65536")
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("-o", "--output", choices=("table", "json"), default="table")
    args = ap.parse_args(argv)

    try:
        t = time.perf_counter()
        nb = numba_impl()
        nb(synthetic(10, 3))                                  # JIT compile
        compile_s = time.perf_counter() - t
    except ImportError:
        nb, compile_s = None, None

    rows = []
    for n in (int(x) for x in args.records.split(",")):
        recs = synthetic(n, args.pairs)
        want = aggregate_python(recs)
        assert aggregate(recs) == want
        row = {"records": n, "python_s": best_of(aggregate_python, recs, args.repeat),
               "numpy_s": best_of(aggregate, recs, args.repeat)}
        if nb is not None:
            assert nb(recs) == want
            row["numba_s"] = best_of(nb, recs, args.repeat)
        rows.append(row)
    rss = {"numpy": import_rss("numpy"), "node_agent.datapath": import_rss("node_agent.datapath")}
    if nb is not None:
        rss["numba"] = import_rss("numba")
    result = {"pairs": args.pairs, "rows": rows, "numba_compile_s": compile_s, "import_rss_kib": rss}
    if args.output == "json":
        print(json.dumps(result, indent=2))
        return 0
    print(f"flow aggregation, {args.pairs} (source, destination, kind) groups, best of {args.repeat}")
    print(f"{'records':>8} {'python ms':>10} {'numpy ms':>9} {'numba ms':>9} "
          f"{'numpy speedup':>14} {'numba speedup':>14}")
    for r in rows:
        nbs = r.get("numba_s")
        print(f"{r['records']:>8} {r['python_s'] * 1e3:>10.2f} {r['numpy_s'] * 1e3:>9.2f} "
              f"{(nbs * 1e3 if nbs else float('nan')):>9.2f} "
              f"{r['python_s'] / r['numpy_s']:>13.1f}x "
              f"{(r['python_s'] / nbs if nbs else float('nan')):>13.1f}x")
    if compile_s is not None:
        print(f"numba JIT compile (once per process): {compile_s * 1e3:.0f} ms")
    print("RSS of a process that imports it: "
          + ", ".join(f"{k} {v / 1024:.0f} MiB" for k, v in rss.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
