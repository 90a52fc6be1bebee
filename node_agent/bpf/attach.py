"""Attaching pinned programs: tc clsact ingress filters, the cgroup sock_ops hook, the
node namespace's sk_lookup link (pinned, so it outlives the process that made it), and the
policy routing that delivers marked packets locally.

Before: programs pinned by `node_agent.bpf.load`; an open pyroute2 `IPRoute` bound to the node's
network namespace. After: the requested attachment exists exactly once (every call here is
idempotent), or is gone. Filters are ours when they sit at `Settings.tc_priority` and carry a
name starting with "lw_"; nothing else on a device is touched, and a clsact qdisc is removed
only when no filter at all is left on it.
"""

from __future__ import annotations

import errno
import os

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from node_agent.bpf import syscall
from node_agent.bpf.settings import Settings

CLSACT_INGRESS = 0xFFFFFFF2
CLSACT_EGRESS = 0xFFFFFFF3
ETH_P_ALL = 0x0003
FILTER_HANDLE = 1


def _ensure_clsact(ipr: IPRoute, index: int) -> None:
    try:
        ipr.tc("add", "clsact", index)
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise


def tc_attach(ipr: IPRoute, *, index: int, prog_fd: int, name: str, settings: Settings) -> None:
    """Put `prog_fd` on the device's ingress at our priority, replacing whatever program of
    ours was there in one step (no moment without a program)."""
    _ensure_clsact(ipr, index)
    ipr.tc("replace-filter", "bpf", index, handle=FILTER_HANDLE, fd=prog_fd, name=name,
           parent=CLSACT_INGRESS, prio=settings.tc_priority, protocol=ETH_P_ALL,
           direct_action=True)


def tc_filters(ipr: IPRoute, index: int, parent: int = CLSACT_INGRESS) -> list[tuple[int, str]]:
    """(priority, bpf name) of every bpf filter on the device's clsact hook."""
    try:
        msgs = ipr.get_filters(index=index, parent=parent)
    except NetlinkError as e:
        if e.code in (errno.EINVAL, errno.ENOENT, errno.ENODEV):
            return []
        raise
    out = []
    for m in msgs:
        opts = m.get_attr("TCA_OPTIONS")
        name = opts.get_attr("TCA_BPF_NAME") if opts is not None and hasattr(opts, "get_attr") else None
        if m.get_attr("TCA_KIND") == "bpf" and name:
            out.append(((m["info"] >> 16) & 0xFFFF, name))
    return sorted(set(out))


def tc_ours(ipr: IPRoute, index: int, settings: Settings) -> str | None:
    """Name of our program on the device's ingress, or None."""
    for prio, name in tc_filters(ipr, index):
        if prio == settings.tc_priority and name.startswith("lw_"):
            return name
    return None


def tc_detach(ipr: IPRoute, *, index: int, settings: Settings) -> bool:
    """Remove our filter; drop the clsact qdisc if nothing else is on it. True if removed."""
    if tc_ours(ipr, index, settings) is None:
        return False
    try:
        ipr.tc("del-filter", "bpf", index, parent=CLSACT_INGRESS, prio=settings.tc_priority,
               protocol=ETH_P_ALL)
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            raise
    if not _any_filter(ipr, index):
        try:
            ipr.tc("del", "clsact", index)
        except NetlinkError as e:
            if e.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                raise
    return True


def _any_filter(ipr: IPRoute, index: int) -> bool:
    for parent in (CLSACT_INGRESS, CLSACT_EGRESS):
        try:
            if list(ipr.get_filters(index=index, parent=parent)):
                return True
        except NetlinkError:
            pass
    return False


# ---- cgroup sock_ops ------------------------------------------------------------------

def cgroup2_root() -> str:
    """Where cgroup v2 is mounted (the unified hierarchy, also under a hybrid layout)."""
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return parts[1]
    raise FileNotFoundError("no cgroup v2 hierarchy is mounted; mount one: "
                            "mount -t cgroup2 none /sys/fs/cgroup/unified")


def cgroup_attached(cgroup: str, prog_fd: int) -> bool:
    prog_id = syscall.prog_info(prog_fd)[0]
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return prog_id in syscall.prog_query(target_fd=fd, attach_type=syscall.BPF_CGROUP_SOCK_OPS)
    finally:
        os.close(fd)


def cgroup_attach(cgroup: str, prog_fd: int) -> None:
    if cgroup_attached(cgroup, prog_fd):
        return
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        syscall.prog_attach(target_fd=fd, prog_fd=prog_fd, attach_type=syscall.BPF_CGROUP_SOCK_OPS,
                            flags=syscall.BPF_F_ALLOW_MULTI)
    finally:
        os.close(fd)


def cgroup_detach(cgroup: str, prog_fd: int) -> bool:
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        syscall.prog_detach(target_fd=fd, prog_fd=prog_fd, attach_type=syscall.BPF_CGROUP_SOCK_OPS)
        return True
    except syscall.BpfError as e:
        if e.errno in (errno.ENOENT, errno.EINVAL):
            return False
        raise
    finally:
        os.close(fd)


# ---- policy routing -------------------------------------------------------------------

def _our_rules(ipr: IPRoute, settings: Settings) -> list:
    return [r for r in ipr.get_rules(family=2)
            if r.get_attr("FRA_FWMARK") == settings.mark
            and (r.get_attr("FRA_TABLE") or r["table"]) == settings.route_table]


def routing_install(ipr: IPRoute, settings: Settings) -> None:
    """`ip rule add fwmark MARK lookup TABLE` and `ip route replace local 0.0.0.0/0 dev lo
    table TABLE`, each once."""
    lo = ipr.link_lookup(ifname="lo")[0]
    ipr.route("replace", dst="0.0.0.0/0", type="local", oif=lo, table=settings.route_table,
              scope=254)
    if not _our_rules(ipr, settings):
        ipr.rule("add", family=2, fwmark=settings.mark, fwmask=0xFFFFFFFF,
                 table=settings.route_table, priority=settings.rule_priority)


def routing_present(ipr: IPRoute, settings: Settings) -> bool:
    routes = ipr.get_routes(family=2, table=settings.route_table)
    return bool(_our_rules(ipr, settings)) and any(r["type"] == 2 for r in routes)


def routing_remove(ipr: IPRoute, settings: Settings) -> None:
    for r in _our_rules(ipr, settings):
        try:
            ipr.rule("del", family=2, fwmark=settings.mark, fwmask=0xFFFFFFFF,
                     table=settings.route_table, priority=r.get_attr("FRA_PRIORITY"))
        except NetlinkError as e:
            if e.code != errno.ENOENT:
                raise
    lo = ipr.link_lookup(ifname="lo")[0]
    try:
        ipr.route("del", dst="0.0.0.0/0", type="local", oif=lo, table=settings.route_table)
    except NetlinkError as e:
        if e.code not in (errno.ESRCH, errno.ENOENT):
            raise


# ---- sk_lookup on the node namespace (a pinned BPF link) -------------------------------

def _netns_ino(netns_path: str) -> int:
    return os.stat(netns_path).st_ino


def _open_link(link_path: str) -> int | None:
    try:
        return syscall.obj_get(link_path)
    except syscall.BpfError as e:
        if e.errno == errno.ENOENT:
            return None
        raise


def sk_lookup_attached(link_path: str, netns_path: str) -> int | None:
    """Id of the program the pinned link runs in this namespace, or None (no pin, or a link
    left from a namespace that is gone)."""
    fd = _open_link(link_path)
    if fd is None:
        return None
    try:
        info = syscall.link_info(fd)
    finally:
        os.close(fd)
    if info["netns_ino"] != _netns_ino(netns_path):
        return None
    return info["prog_id"]


def sk_lookup_attach(*, link_path: str, prog_fd: int, netns_path: str) -> None:
    """Run `prog_fd` for every socket lookup in the namespace, through a BPF link pinned at
    `link_path`, so that it stays attached when this process exits and a restarted agent finds
    it (adopt). A pinned link of this namespace is re-used, and moved to `prog_fd` in one step
    if it runs another program (reload); one left from a namespace that is gone is replaced."""
    fd = _open_link(link_path)
    if fd is not None:
        try:
            info = syscall.link_info(fd)
            if info["netns_ino"] == _netns_ino(netns_path):
                if info["prog_id"] != syscall.prog_info(prog_fd)[0]:
                    syscall.link_update(fd, prog_fd)
                return
        finally:
            os.close(fd)
        os.unlink(link_path)
    ns = os.open(netns_path, os.O_RDONLY)
    try:
        fd = syscall.link_create(prog_fd=prog_fd, target_fd=ns, attach_type=syscall.BPF_SK_LOOKUP)
    finally:
        os.close(ns)
    try:
        tmp = link_path + "_new"
        if os.path.exists(tmp):
            os.unlink(tmp)
        syscall.obj_pin(fd, tmp)
        os.replace(tmp, link_path)
    finally:
        os.close(fd)


def sk_lookup_detach(link_path: str) -> bool:
    """Detach the pinned link's program (even if another process holds the link) and unpin
    it. True if there was one."""
    fd = _open_link(link_path)
    if fd is None:
        return False
    try:
        try:
            syscall.link_detach(fd)
        except syscall.BpfError as e:
            if e.errno not in (errno.ENOLINK, errno.EINVAL, errno.ENOENT):
                raise
    finally:
        os.close(fd)
    try:
        os.unlink(link_path)
    except FileNotFoundError:
        pass
    return True
