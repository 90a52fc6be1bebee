"""The eBPF programs: which C file is which attach point, and the final C text of each.

Before: the `.c`/`.h` files beside this module and a `Settings`. After: `final_c()` gives the
exact text BCC compiles (our own headers inlined, settings as `-D` cflags) — what
`python -m node_agent.bpf.load --print-c` prints — and `node_agent.bpf.load` compiles, loads
and pins each program under the name given here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from node_agent.bpf.settings import DEFAULT, Settings

SRC_DIR = Path(__file__).resolve().parent

_LOCAL_INCLUDE = re.compile(r'^#include "([a-z_]+\.h)"\s*$', re.MULTILINE)


@dataclass(frozen=True)
class Program:
    name: str           # pinned as prog_<name>
    source: str         # C file beside this module
    entry: str          # C function
    kind: str           # program type: "SCHED_CLS", "SOCK_OPS" or "SK_LOOKUP" (PROG_TYPES)
    attach: str         # where the agent attaches it (for people and `lacewing check`)


PROGRAMS: tuple[Program, ...] = (
    Program("pod_out", "lw_pod_out.c", "lw_pod_out", "SCHED_CLS",
            "tc ingress, host-side veth of an enrolled pod"),
    Program("inbound", "lw_inbound.c", "lw_inbound", "SCHED_CLS",
            "tc ingress, node uplink and host-side veths of unenrolled pods"),
    Program("sk_lookup", "lw_sk_lookup.c", "lw_sk_lookup", "SK_LOOKUP",
            "node network namespace, sk_lookup link (captured SYNs meeting TIME_WAIT)"),
    # last: its pin is what watchers take for "the datapath is loaded" (tests/local)
    Program("sockops", "lw_sockops.c", "lw_sockops", "SOCK_OPS",
            "cgroup v2 root, sock_ops (per-connection L4 counters)"),
)

# bpf_prog_type numbers (uapi/linux/bpf.h); BCC 0.26 names no SK_LOOKUP type
PROG_TYPES = {"SCHED_CLS": 3, "SOCK_OPS": 13, "SK_LOOKUP": 30}
# expected attach types the kernel wants at load time (BPF_SK_LOOKUP)
EXPECTED_ATTACH = {"SK_LOOKUP": 36}

MAPS: tuple[str, ...] = ("lw_pods", "lw_excl", "lw_local", "lw_capt", "lw_flows", "lw_cfg",
                         "lw_stats", "lw_vips", "lw_tw", "lw_listeners")


def load_func(bpf, program: Program):
    """Load `program` from a compiled BCC module with its type (and expected attach type)."""
    return bpf.load_func(program.entry.encode(), PROG_TYPES[program.kind],
                         attach_type=EXPECTED_ATTACH.get(program.kind, -1))


def by_name(name: str) -> Program:
    for p in PROGRAMS:
        if p.name == name:
            return p
    raise KeyError(f"no eBPF program named {name!r}; known: {[p.name for p in PROGRAMS]}")


def _inline(path: Path, seen: set[str]) -> str:
    def repl(m: re.Match) -> str:
        header = m.group(1)
        if header in seen:
            return f"/* {header}: already included */"
        seen.add(header)
        return f"/* ---- {header} ---- */\n" + _inline(SRC_DIR / header, seen)

    return _LOCAL_INCLUDE.sub(repl, path.read_text())


def cflags(*, settings: Settings = DEFAULT, pin_dir: str | None = None) -> list[str]:
    flags = [f"-D{k}={v}" for k, v in settings.defines().items()]
    if pin_dir is not None:
        if '"' in pin_dir or "\\" in pin_dir:
            raise ValueError(f"pin directory {pin_dir!r} cannot be quoted in C")
        flags.append(f'-DLW_PIN_DIR="{pin_dir}"')
    return flags


def final_c(program: Program) -> str:
    """The program's C with our headers inlined: exactly what BCC is given."""
    return f"/* ==== {program.source} ==== */\n" + _inline(SRC_DIR / program.source, set())


def printable(program: Program, *, settings: Settings = DEFAULT,
              pin_dir: str | None = None) -> str:
    """Final C as `--print-c` shows it: the -D settings as #defines, then the program."""
    lines = [f"/* {program.name}: {program.attach}; entry {program.entry}() */"]
    for flag in cflags(settings=settings, pin_dir=pin_dir):
        name, _, value = flag[2:].partition("=")
        lines.append(f"#define {name} {value}")
    return "\n".join(lines) + "\n" + final_c(program)
