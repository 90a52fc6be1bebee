"""eBPF datapath of the node agent: C programs, their loader, and LLVM-free user-space access.

Before: nothing (a package). After: `selftest()` compiles and loads every program once, for
`lacewing check`; the modules below do the rest:
  programs/settings  which C is which attach point, and the -D settings
  load               the short-lived compile/load/pin step (the only user of BCC/LLVM)
  syscall/pins       bpf(2) and bpffs without a compiler
  attach             tc, cgroup sock_ops and policy routing
  layout/flows       map element layouts; per-connection L4 records and their totals
`node_agent.datapath.Datapath` ties them together for the agent.
"""

from __future__ import annotations


def selftest() -> list[tuple[str, bool, str]]:
    """Compile and load each program once (no pins, nothing attached): [(name, ok, detail)]."""
    results: list[tuple[str, bool, str]] = []
    try:
        from bcc import BPF
    except Exception as e:  # noqa: BLE001 - reported, not raised
        return [("bcc", False, f"BCC does not import ({e}); install python3-bpfcc "
                               "(scripts/setup.sh) ")]
    from node_agent.bpf import programs

    for prog in programs.PROGRAMS:
        name = prog.name
        try:
            b = BPF(text=programs.final_c(prog).encode(), cflags=programs.cflags())
            try:
                fn = programs.load_func(b, prog)
                from node_agent.bpf.syscall import prog_info
                pid, _ = prog_info(fn.fd)
                results.append((name, True, f"loaded (id {pid}); attaches at {prog.attach}"))
            finally:
                b.cleanup()
        except Exception as e:  # noqa: BLE001 - the verifier's words go to the operator
            text = str(e).strip().splitlines()
            results.append((name, False, (text[-1] if text else repr(e))[:300]))
    return results
