"""Compile, load and pin a node's eBPF programs and maps, then exit.

    python -m node_agent.bpf.load --cluster C --node N [--netns PATH]   # compile, load, pin
    python -m node_agent.bpf.load --print-c [--program NAME]   # print the final C, load nothing

Before: bpffs (mounted here if need be) and BCC with kernel headers (scripts/setup.sh). After:
/sys/fs/bpf/lw-<cluster>/<node>/ holds prog_<name> for each program in
`node_agent.bpf.programs.PROGRAMS` and each map; maps already pinned there are re-used (their
contents kept), programs are replaced atomically; with --netns, the node namespace also gets the
policy routing (fwmark rule -> `local 0.0.0.0/0 dev lo` table) and the maps its netns cookie.
This is the only place that runs the compiler:
the long-running agent (`node_agent.datapath`) opens the pins, so it never holds LLVM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from node_agent.bpf import pins, programs
from node_agent.bpf.settings import DEFAULT, Settings, pin_dir


def load_and_pin(*, cluster: str, node: str, settings: Settings = DEFAULT) -> dict:
    from bcc import BPF  # the compiler lives only in this short-lived step
    from bcc.libbcc import lib

    from node_agent.bpf import syscall

    pins.ensure_bpffs()
    directory = pin_dir(cluster, node)
    os.makedirs(directory, exist_ok=True)
    flags = programs.cflags(settings=settings, pin_dir=directory)
    result: dict = {"pin_dir": directory, "programs": {}, "maps": []}
    for prog in programs.PROGRAMS:
        b = BPF(text=programs.final_c(prog).encode(), cflags=flags)
        try:
            fn = programs.load_func(b, prog)
            final = pins.prog_path(cluster, node, prog.name)
            tmp = final + "_new"
            if os.path.exists(tmp):
                os.unlink(tmp)
            if lib.bpf_obj_pin(fn.fd, tmp.encode()) != 0:
                raise OSError(f"cannot pin {prog.name} at {tmp}")
            os.replace(tmp, final)
            result["programs"][prog.name] = syscall.prog_info(fn.fd)[0]
        finally:
            b.cleanup()
    result["maps"] = [m for m in programs.MAPS if os.path.exists(f"{directory}/{m}")]
    missing = set(programs.MAPS) - set(result["maps"])
    if missing:
        raise RuntimeError(f"maps not pinned under {directory}: {sorted(missing)}")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m node_agent.bpf.load", description=__doc__.split("\n")[0])
    ap.add_argument("--cluster", help="cluster name (pins under /sys/fs/bpf/lw-<cluster>/)")
    ap.add_argument("--node", help="node name, e.g. node1")
    ap.add_argument("--netns", help="node network namespace (path or name under /run/netns): "
                    "also install its policy routing")
    ap.add_argument("--settings", metavar="JSON", default="{}",
                    help='settings other than the defaults, e.g. \'{"port_outbound": 16001}\' '
                         "(fields of node_agent.bpf.settings.Settings)")
    ap.add_argument("--print-c", action="store_true", help="print the final C and exit")
    ap.add_argument("--program", choices=[p.name for p in programs.PROGRAMS],
                    help="with --print-c: only this program")
    args = ap.parse_args(argv)
    try:
        settings = Settings(**json.loads(args.settings))
    except (ValueError, TypeError) as e:
        ap.error(f"--settings: {e}")
    if args.print_c:
        directory = pin_dir(args.cluster, args.node) if args.cluster and args.node else None
        chosen = [programs.by_name(args.program)] if args.program else list(programs.PROGRAMS)
        for prog in chosen:
            sys.stdout.write(programs.printable(prog, settings=settings, pin_dir=directory) + "\n")
        return 0
    if not args.cluster or not args.node:
        ap.error("--cluster and --node are required (or --print-c)")
    try:
        result = load_and_pin(cluster=args.cluster, node=args.node, settings=settings)
        if args.netns:
            from node_agent.datapath import Datapath

            with Datapath(args.cluster, args.node, netns=args.netns, settings=settings) as dp:
                dp.prepare_node()
            result["netns"] = args.netns
    except Exception as e:  # noqa: BLE001 - one line for the operator, exit 1
        print(f"load: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
