"""Preflight: can this host run Lacewing? One result per requirement, each with its fix.

Before: any Linux host. After: a list of `Result`s; nothing is left behind (the probe program is
loaded into a namespace made for the check and removed with it, its pin removed).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SK_ASSIGN_PROBE = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
int lw_check_sk_assign(struct __sk_buff *skb) {
    struct bpf_sock_tuple t = {};
    struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
    if (sk) {
        bpf_sk_assign(skb, sk, 0);
        bpf_sk_release(sk);
    }
    return TC_ACT_OK;
}
"""


@dataclass(frozen=True)
class Result:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _root() -> Result:
    ok = os.geteuid() == 0
    return Result("root", ok, "running as root" if ok else f"running as uid {os.geteuid()}",
                  "run as root (sudo): namespaces and eBPF need CAP_SYS_ADMIN and CAP_NET_ADMIN")


def _bpf_syscall() -> Result:
    # BPF_MAP_CREATE of a 1-entry array: the smallest thing the bpf() syscall can do.
    class Attr(ctypes.Structure):
        _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                    ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                    ("pad", ctypes.c_char * 112)]

    libc = ctypes.CDLL(None, use_errno=True)
    attr = Attr(2, 4, 4, 1)
    fd = libc.syscall(321, 0, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        return Result("bpf syscall", False, f"bpf(BPF_MAP_CREATE) failed: {os.strerror(err)}",
                      "needs a kernel with CONFIG_BPF_SYSCALL, and root")
    os.close(fd)
    return Result("bpf syscall", True, "bpf() creates maps")


def _btf() -> Result:
    ok = Path("/sys/kernel/btf/vmlinux").exists()
    return Result("BTF", ok, "/sys/kernel/btf/vmlinux present" if ok else "no kernel BTF",
                  "needs a kernel built with CONFIG_DEBUG_INFO_BTF")


def _headers() -> Result:
    build = Path(f"/lib/modules/{platform.release()}/build")
    if not build.exists():
        return Result("kernel headers for BCC", False, f"{build} missing",
                      "run `make setup` (links Debian's linux-headers-amd64 when the running "
                      "kernel has no headers of its own; PLATFORM.md)")
    target = os.path.realpath(build)
    linked = "" if target.endswith(platform.release()) else f" (linked to {target}: the running "\
        "kernel ships none; Debian's headers stand in)"
    return Result("kernel headers for BCC", True, f"{build}{linked}")


def _bcc() -> Result:
    try:
        import bcc  # noqa: F401
    except ImportError as exc:
        return Result("BCC", False, f"cannot import bcc: {exc}",
                      "run `make setup` (installs python3-bpfcc and links it into .venv)")
    return Result("BCC", True, "bcc imports")


def _tools() -> Result:
    missing = [t for t in ("ip", "tc", "nft", "nsenter") if not shutil.which(t)]
    return Result("host tools", not missing,
                  "ip, tc, nft, nsenter found" if not missing else f"missing: {', '.join(missing)}",
                  "apt-get install iproute2 nftables util-linux")


def _bpffs() -> Result:
    from lacewing.local.netns import bpffs_mounted

    if bpffs_mounted():
        return Result("bpffs", True, "mounted at /sys/fs/bpf")
    return Result("bpffs", True, "not mounted at /sys/fs/bpf; `lacewing local up` and the node "
                  "agent mount it", "mount -t bpf bpf /sys/fs/bpf", required=False)


def _cgroup2() -> Result:
    with open("/proc/self/mounts") as fh:
        mounts = [line.split()[1] for line in fh if line.split()[2] == "cgroup2"]
    if mounts:
        return Result("cgroup v2", True, f"mounted at {mounts[0]}")
    return Result("cgroup v2", False, "no cgroup2 mount",
                  "mount -t cgroup2 none /sys/fs/cgroup/unified")


def _tc_sk_assign() -> Result:
    """Compile, load, attach (tc clsact ingress, in a scratch namespace) and remove a program
    that uses bpf_skc_lookup_tcp + bpf_sk_assign: the capture technique of DESIGN §2."""
    name = "bpf_sk_assign on tc ingress"
    try:
        from bcc import BPF
    except ImportError:
        return Result(name, False, "BCC missing", "run `make setup`")
    from lacewing.local import netns
    from lacewing.local.netns import mount_bpffs

    tag = secrets.token_hex(3)
    ns = f"lw-chk{tag}-probe"
    pin_dir = Path(f"/sys/fs/bpf/lw-chk{tag}")
    mounted = False
    try:
        b = BPF(text=SK_ASSIGN_PROBE)
        fn = b.load_func("lw_check_sk_assign", BPF.SCHED_CLS)
        mounted = mount_bpffs()
        pin_dir.mkdir()
        pin = pin_dir / "prog"
        from bcc import libbcc

        if libbcc.lib.bpf_obj_pin(fn.fd, str(pin).encode()) != 0:
            return Result(name, False, "pinning the program in bpffs failed", "check bpffs")
        netns.add_netns(ns)
        netns.ip_batch(["link add lwchk0 type veth peer name lwchk1", "link set lwchk0 up",
                        "link set lwchk1 up"], netns=ns)
        tc = ["nsenter", f"--net=/run/netns/{ns}", "tc"]
        netns.run([*tc, "qdisc", "add", "dev", "lwchk0", "clsact"])
        netns.run([*tc, "filter", "add", "dev", "lwchk0", "ingress", "bpf", "direct-action",
                   "pinned", str(pin)])
        shown = netns.run([*tc, "filter", "show", "dev", "lwchk0", "ingress"])
        if "direct-action" not in shown:  # program names are cut at 15 characters
            return Result(name, False, "the filter did not attach", "see `tc filter show`")
        b.cleanup()
        return Result(name, True, "compiled, loaded, attached to a clsact ingress and removed")
    except Exception as exc:  # the check reports every failure as a ✘, never a traceback
        return Result(name, False, f"{type(exc).__name__}: {str(exc).strip()[:300]}",
                      "needs tc clsact, cls_bpf and bpf_sk_assign (Linux ≥ 5.7) and BCC headers")
    finally:
        with contextlib.suppress(Exception):
            netns.delete_netns(ns)
        shutil.rmtree(pin_dir, ignore_errors=True)
        if mounted:
            from lacewing.local.netns import umount

            umount(Path("/sys/fs/bpf"))


def _datapath_programs() -> list[Result]:
    """Each program of the node agent, compiled and loaded once (node_agent.bpf.selftest)."""
    try:
        from node_agent.bpf import selftest  # type: ignore[attr-defined]
    except ImportError:
        return []
    out = []
    for item in selftest():
        name, ok, detail = item[:3]
        out.append(Result(f"datapath program {name}", bool(ok), detail,
                          "" if ok else "see docs/datapath.md"))
    return out


CHECKS: list[Callable[[], Result]] = [_root, _tools, _bpf_syscall, _btf, _headers, _bcc, _bpffs,
                                      _cgroup2, _tc_sk_assign]


def run_checks() -> list[Result]:
    results = []
    for check in CHECKS:
        result = check()
        results.append(result)
        if check is _root and not result.ok:
            return results  # everything else needs root
    if all(r.ok for r in results):
        results += _datapath_programs()
    return results

