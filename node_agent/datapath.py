"""The node agent's handle on the eBPF datapath of one node: install, enroll, leave, read.

Before: a node network namespace shaped as the local cluster (or Kubernetes) makes it — pods'
host-side veths, an uplink — and, for `install()`, BCC on the machine (it runs the short-lived
loader `python -m node_agent.bpf.load` in a subprocess when nothing is pinned yet). After: the
programs are attached where `docs/datapath.md` says, the pinned maps say which pods are enrolled
and which of their ports are excluded, and `read_flows()`/`l4_totals()` give the in-kernel L4
counters. This process itself never loads the compiler: it works on pinned objects with raw
bpf(2) calls and netlink (pyroute2).

Every method is idempotent, and all state lives in the kernel (pins, attachments, maps), so a
restarted agent calls `adopt()` and carries on: capture never stops while no agent runs.
The enrollment driver that follows the control plane's snapshots calls `sync()` (or
`enroll`/`leave`/`observe`/`forget` one pod at a time).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from pyroute2 import IPRoute
from pyroute2 import netns as _netns

from node_agent import open_sockets
from node_agent.bpf import attach, layout, listeners, pins, programs
from node_agent.bpf.flows import (
    FlowReader,
    FlowRecord,
    FlowTable,
    L4Totals,
    PairTotals,
    by_workload,
)
from node_agent.bpf.settings import DEFAULT, Settings, pin_dir
from node_agent.bpf.syscall import Map, obj_get, prog_get_fd_by_id, prog_info

EXCLUDE_OUTBOUND = "lacewing.dev/exclude-outbound-ports"
EXCLUDE_INBOUND = "lacewing.dev/exclude-inbound-ports"
SO_NETNS_COOKIE = 71


log = logging.getLogger("lacewing.datapath")

class DatapathError(RuntimeError):
    """Something the operator has to fix; the message says what."""


def parse_ports(value: str, *, annotation: str) -> frozenset[int]:
    """"8080, 9090" -> {8080, 9090}; an empty value is no ports."""
    ports = set()
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or not 0 < int(part) < 65536:
            raise ValueError(f"{annotation}: {part!r} is not a port (1-65535); "
                             f"write a comma-separated list such as \"8080,9090\"")
        ports.add(int(part))
    return frozenset(ports)


@dataclass(frozen=True, kw_only=True)
class Pod:
    """What the datapath needs to know of a pod on this node."""

    ip: str
    veth: str                                       # host-side veth, in the node namespace
    name: str = ""                                  # NAMESPACE/POD, for messages
    exclude_outbound_ports: frozenset[int] = field(default_factory=frozenset)
    exclude_inbound_ports: frozenset[int] = field(default_factory=frozenset)

    @classmethod
    def from_annotations(cls, *, ip: str, veth: str, name: str = "",
                         annotations: Mapping[str, str] | None = None) -> Pod:
        ann = annotations or {}
        return cls(ip=ip, veth=veth, name=name,
                   exclude_outbound_ports=parse_ports(ann.get(EXCLUDE_OUTBOUND, ""),
                                                      annotation=EXCLUDE_OUTBOUND),
                   exclude_inbound_ports=parse_ports(ann.get(EXCLUDE_INBOUND, ""),
                                                     annotation=EXCLUDE_INBOUND))


class Datapath:
    """One node's datapath. `netns` is the node's network namespace (a path or a name under
    /run/netns); None means the one this process runs in (an agent started with nsenter).
    `uplink` is the device traffic from other nodes arrives on (None: there is none)."""

    def __init__(self, cluster: str, node: str, *, netns: str | None = None,
                 uplink: str | None = "eth0",
                 cgroup: str | None = None, settings: Settings = DEFAULT,
                 python: str = sys.executable):
        self.cluster = cluster
        self.node = node
        self.pin_dir = pin_dir(cluster, node)
        if netns is not None and "/" not in netns:
            netns = f"/run/netns/{netns}"
        self.netns = netns
        self.uplink = uplink
        self._cgroup = cgroup
        self.settings = settings
        self.python = python
        self._fds: dict[str, int] = {}
        self._maps: dict[str, Map] = {}
        self._ipr: IPRoute | None = None
        self._totals: L4Totals | None = None

    # ---- plumbing ---------------------------------------------------------------------

    @property
    def cgroup(self) -> str:
        if self._cgroup is None:
            self._cgroup = attach.cgroup2_root()
        return self._cgroup

    def _ip(self) -> IPRoute:
        if self._ipr is None:
            try:
                self._ipr = IPRoute(netns=self.netns, flags=0) if self.netns else IPRoute()
            except FileNotFoundError:
                raise DatapathError(f"network namespace {self.netns} does not exist; "
                                    "is the node up?") from None
        return self._ipr

    def _prog(self, name: str) -> int:
        if name not in self._fds:
            try:
                self._fds[name] = obj_get(pins.prog_path(self.cluster, self.node, name))
            except OSError as e:
                raise DatapathError(f"program {name} is not pinned under {self.pin_dir} ({e}); "
                                    "run install()") from None
        return self._fds[name]

    def _map(self, name: str) -> Map:
        if name not in self._maps:
            try:
                self._maps[name] = Map.open(pins.map_path(self.cluster, self.node, name))
            except OSError as e:
                raise DatapathError(f"map {name} is not pinned under {self.pin_dir} ({e}); "
                                    "run install()") from None
        return self._maps[name]

    def _ifindex(self, ifname: str, *, must: bool = True) -> int | None:
        found = self._ip().link_lookup(ifname=ifname)
        if not found:
            if must:
                raise DatapathError(f"no device {ifname} in the node namespace "
                                    f"{self.netns or '(current)'}")
            return None
        return found[0]

    def close(self) -> None:
        """Close file descriptors and sockets. Attachments and pins stay."""
        self._close_progs()
        for m in self._maps.values():
            m.close()
        self._maps.clear()
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def __enter__(self) -> Datapath:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _netns_cookie(self) -> int:
        try:
            s = (_netns.create_socket(self.netns, flags=0) if self.netns
                 else socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        except FileNotFoundError:
            raise DatapathError(f"network namespace {self.netns} does not exist; "
                                "is the node up?") from None
        try:
            return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")
        finally:
            s.close()

    # ---- lifecycle --------------------------------------------------------------------

    def pinned(self) -> bool:
        have = set(pins.pinned(self.cluster, self.node))
        want = {f"prog_{p.name}" for p in programs.PROGRAMS} | set(programs.MAPS)
        return want <= have

    def load(self) -> None:
        """Compile, load and pin (the short-lived loader, in a subprocess)."""
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        proc = subprocess.run([self.python, "-m", "node_agent.bpf.load", "--cluster",
                               self.cluster, "--node", self.node, "--settings",
                               json.dumps(dataclasses.asdict(self.settings))],
                              capture_output=True, text=True, env=env, timeout=120)
        if proc.returncode != 0:
            raise DatapathError(f"loading the eBPF programs failed: {proc.stderr.strip()}; "
                                "`lacewing check` tells what the machine lacks")

    def install(self, *, reload: bool = False) -> None:
        """Load and pin if nothing is pinned yet (or, with reload, a new build of the programs
        over the same maps), then attach everything node-wide. A reload moves every attachment
        to the new programs without a moment uncovered: tc filters are replaced in place, and
        the new sockops program is attached before the old one is detached."""
        pins.ensure_bpffs()
        if reload and self.pinned():
            old_sockops = prog_info(self._prog("sockops"))[0]
            self.load()
            self._close_progs()
            self._attach_node()
            ipr = self._ip()
            for link in ipr.get_links():
                name = attach.tc_ours(ipr, link["index"], self.settings)
                if name and name.removeprefix("lw_") in {p.name for p in programs.PROGRAMS}:
                    self._tc(link["index"], name.removeprefix("lw_"))
            if old_sockops != prog_info(self._prog("sockops"))[0]:
                try:
                    fd = prog_get_fd_by_id(old_sockops)
                except OSError:
                    return      # already gone
                try:
                    attach.cgroup_detach(self.cgroup, fd)
                finally:
                    os.close(fd)
            return
        if not self.pinned():
            self.load()
        self._attach_node()

    def _close_progs(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def adopt(self) -> None:
        """After an agent restart: re-use what is pinned, re-attach only what is missing.
        Never detaches, so capture has no gap. Fails if nothing is installed."""
        if not self.pinned():
            raise DatapathError(f"nothing to adopt: no programs pinned under {self.pin_dir}; "
                                "run install()")
        self._attach_node()
        # a pod enrolled in the map whose veth lost its program (e.g. re-created) gets it back
        existing = {link["index"] for link in self._ip().get_links()}
        for pod in self.enrolled().values():
            index = pod["ifindex"]
            if index in existing and attach.tc_ours(self._ip(), index, self.settings) is None:
                self._tc(index, "pod_out")

    def prepare_node(self) -> None:
        """The node-wide state that attaches nothing: the maps' netns cookie and node
        addresses, and the policy routing for marked packets."""
        up = self._ifindex(self.uplink, must=False) if self.uplink else None
        cfg = layout.CFG.pack(self._netns_cookie(), 1, up or 0)
        self._map("lw_cfg").update(layout.U32.pack(0), cfg)
        self._refresh_local_addresses()
        attach.routing_install(self._ip(), self.settings)
        self._set_node_sysctls()

    # Node-namespace settings the capture relies on (docs/datapath.md, "Node namespace
    # settings"). tcp_early_demux: the tunnel's transparent sockets carry pods' addresses;
    # with early demux on, a forwarded SYN (a pod that left the mesh, an excluded port) whose
    # tuple matches one of them lingering in TIME_WAIT is delivered to it instead of routed
    # on, and the pod waits a 1 s SYN retransmission.
    NODE_SYSCTLS = {"net/ipv4/tcp_early_demux": "0"}

    def _set_node_sysctls(self) -> None:
        """Write NODE_SYSCTLS in the node's namespace (on a Kubernetes node: the host's),
        logging each one it changes. Not restored by `uninstall`: they only turn off a
        receive-path shortcut."""
        if self.netns is not None:
            _netns.pushns(self._netns_path())   # /proc/sys/net is the opener's namespace
        try:
            for key, want in self.NODE_SYSCTLS.items():
                path = f"/proc/sys/{key}"
                with open(path, "r+") as fh:
                    have = fh.read().strip()
                    if have != want:
                        fh.seek(0)
                        fh.write(want)
                        log.info("datapath %s/%s: %s %s -> %s in the node's namespace",
                                 self.cluster, self.node, key.replace("/", "."), have, want)
        except OSError as e:
            raise DatapathError(f"cannot set {key.replace('/', '.')}={want} in the node's "
                                f"namespace: {e.strerror}") from None
        finally:
            if self.netns is not None:
                _netns.popns()

    def node_sysctls(self) -> dict[str, str]:
        """NODE_SYSCTLS as the node's namespace has them now (for `status`)."""
        if self.netns is not None:
            _netns.pushns(self._netns_path())
        try:
            out = {}
            for key in self.NODE_SYSCTLS:
                try:
                    with open(f"/proc/sys/{key}") as fh:
                        out[key.replace("/", ".")] = fh.read().strip()
                except OSError:
                    out[key.replace("/", ".")] = "?"
            return out
        finally:
            if self.netns is not None:
                _netns.popns()

    def _attach_node(self) -> None:
        self.prepare_node()
        if self.uplink is not None:     # None: a node with no uplink (nothing from off-node)
            self._tc(self._ifindex(self.uplink), "inbound")
        attach.cgroup_attach(self.cgroup, self._prog("sockops"))
        attach.sk_lookup_attach(link_path=self._sk_lookup_link, prog_fd=self._prog("sk_lookup"),
                                netns_path=self._netns_path())

    @property
    def _sk_lookup_link(self) -> str:
        return pins.link_path(self.cluster, self.node, "sk_lookup")

    def _netns_path(self) -> str:
        if self.netns is None:
            return "/proc/thread-self/ns/net"
        if not os.path.exists(self.netns):
            raise DatapathError(f"network namespace {self.netns} does not exist; is the node up?")
        return self.netns

    def register_listeners(self, sockets: Mapping[str, socket.socket | int]) -> None:
        """Tell the datapath which sockets are the tunnel's listeners: {"outbound": …,
        "inbound": …, "tunnel": …} (sockets or fds, in the node's namespace). A captured SYN
        that meets a TIME_WAIT socket of its own tuple is handed to them by the sk_lookup
        program; without a registration such a SYN is dropped (`time_wait_unregistered`).
        Call again after the listeners are re-created; closed sockets leave the map."""
        try:
            listeners.register(pins.map_path(self.cluster, self.node, "lw_listeners"), sockets)
        except FileNotFoundError as e:
            raise DatapathError(f"{e.strerror}; run install()") from None

    def registered_listeners(self) -> dict[str, int]:
        """kind -> socket cookie of each registered listener."""
        return listeners.registered(pins.map_path(self.cluster, self.node, "lw_listeners"))

    def _refresh_local_addresses(self) -> None:
        local = self._map("lw_local")
        want = {layout.ip_key(a.get_attr("IFA_ADDRESS")) for a in self._ip().get_addr(family=2)}
        for k in list(local.keys()):
            if k not in want:
                local.delete(k)
        for k in want:
            local.update(k, b"\x01")

    def uninstall(self) -> None:
        """Detach everything of this node and unpin it. Safe to call when nothing is there."""
        ipr = None
        try:
            ipr = self._ip()
        except DatapathError:
            pass  # the namespace is gone, and with it every tc filter and route in it
        if ipr is not None:
            for link in ipr.get_links():
                attach.tc_detach(ipr, index=link["index"], settings=self.settings)
            attach.routing_remove(ipr, self.settings)
        if os.path.exists(pins.prog_path(self.cluster, self.node, "sockops")):
            attach.cgroup_detach(self.cgroup, self._prog("sockops"))
        attach.sk_lookup_detach(self._sk_lookup_link)
        self.close()
        pins.remove(self.cluster, self.node)

    # ---- pods -------------------------------------------------------------------------

    def _tc(self, index: int, prog: str) -> None:
        attach.tc_attach(self._ip(), index=index, prog_fd=self._prog(prog), name=f"lw_{prog}",
                         settings=self.settings)

    def enrolled(self) -> dict[str, dict[str, int]]:
        """Enrolled pods as the kernel sees them: ip -> {pod_id, ifindex}."""
        out = {}
        for k, v in self._map("lw_pods").items():
            pod_id, ifindex, _flags, _ = layout.POD.unpack(v)
            out[socket.inet_ntoa(k)] = {"pod_id": pod_id, "ifindex": ifindex}
        return out

    def _pod_id(self, ip: str) -> int:
        current = self.enrolled()
        if ip in current:
            return current[ip]["pod_id"]
        used = {p["pod_id"] for p in current.values()}
        pod_id = 1
        while pod_id in used:
            pod_id += 1
        return pod_id

    def _set_exclusions(self, pod_id: int, pod: Pod | None) -> None:
        excl = self._map("lw_excl")
        want = set()
        if pod is not None:
            want = ({layout.EXCL_KEY.pack(pod_id, p, layout.DIR_OUT, 0)
                     for p in pod.exclude_outbound_ports}
                    | {layout.EXCL_KEY.pack(pod_id, p, layout.DIR_IN, 0)
                       for p in pod.exclude_inbound_ports})
        for k in list(excl.keys()):
            if layout.EXCL_KEY.unpack(k)[0] == pod_id and k not in want:
                excl.delete(k)
        for k in want:
            excl.update(k, b"\x01")

    def enroll(self, pod: Pod) -> int:
        """Capture the pod's traffic from now on (new connections; existing ones go on as
        they were). Returns its pod id. Also updates the port exclusions of an enrolled pod."""
        index = self._ifindex(pod.veth)
        pod_id = self._pod_id(pod.ip)
        self._set_exclusions(pod_id, pod)
        self._map("lw_pods").update(layout.ip_key(pod.ip), layout.POD.pack(pod_id, index, 0, 0))
        self._tc(index, "pod_out")
        return pod_id

    def observe(self, pod: Pod) -> None:
        """A pod that is not enrolled: watch its veth for plaintext to enrolled pods."""
        self.leave(pod)

    def leave(self, pod: Pod) -> None:
        """Stop capturing the pod: its veth gets the inbound program (it is now an unenrolled
        pod), then it leaves the maps. New connections are plain; no restart needed."""
        index = self._ifindex(pod.veth)
        self._tc(index, "inbound")
        self._drop(pod.ip)

    def forget(self, pod: Pod) -> None:
        """The pod is gone: detach from its veth if it still exists, and drop it from the maps."""
        index = self._ifindex(pod.veth, must=False)
        if index is not None:
            attach.tc_detach(self._ip(), index=index, settings=self.settings)
        self._drop(pod.ip)

    def _drop(self, ip: str) -> None:
        key = layout.ip_key(ip)
        raw = self._map("lw_pods").lookup(key)
        if raw is not None:
            self._set_exclusions(layout.POD.unpack(raw)[0], None)
            self._map("lw_pods").delete(key)

    def sync(self, pods: Iterable[tuple[Pod, bool]]) -> None:
        """Make the kernel match the node's pods: (pod, enrolled) for every pod on the node.
        Pods the kernel knows that are not listed are forgotten."""
        listed = list(pods)
        ips = {p.ip for p, _ in listed}
        veths = {p.veth for p, _ in listed}
        for pod, enrolled in listed:
            if enrolled:
                self.enroll(pod)
            else:
                self.leave(pod)
        for ip in self.enrolled():
            if ip not in ips:
                self._drop(ip)
        up = self._ifindex(self.uplink, must=False) if self.uplink else None
        for link in self._ip().get_links():
            name = link.get_attr("IFLA_IFNAME")
            if link["index"] != up and name not in veths:
                attach.tc_detach(self._ip(), index=link["index"], settings=self.settings)

    # ---- services -----------------------------------------------------------------------

    def set_services(self, *, vips: Iterable[tuple[str, int]],
                     backends: Iterable[tuple[str, int]] = ()) -> None:
        """Make `lw_vips` hold these: `vips`, the (cluster IP, port) pairs of Services with an
        enrolled endpoint on this node (unenrolled pods' connections to them are captured
        before the node's DNAT and balanced by the tunnel's :15006), and `backends`, the
        (endpoint IP, port) pairs the tunnel may dial for them keeping an unenrolled client's
        address (their replies go to the tunnel's socket). An entry not listed stops being
        captured: it is removed, or — while an open connection of the node still uses it (a
        socket with the VIP as its local address, or the backend as its remote one) — kept
        as draining (`VIP_DRAIN`: that connection's packets still reach the tunnel, no new
        SYN is captured) until `retire_drained_services` finds it unused."""
        want: dict[bytes, int] = {}
        for ip, port in vips:
            key = layout.vip_key(ip, port)
            want[key] = want.get(key, 0) | layout.VIP_SERVICE
        for ip, port in backends:
            key = layout.vip_key(ip, port)
            want[key] = want.get(key, 0) | layout.VIP_BACKEND
        m = self._map("lw_vips")
        have = {k: layout.U32.unpack(v)[0] for k, v in m.items()}
        leaving = {k: f for k, f in have.items() if k not in want}
        in_use = self._vips_in_use(leaving) if leaving else set()
        for k, flags in leaving.items():
            if k not in in_use:
                m.delete(k)
            elif not flags & layout.VIP_DRAIN:
                m.update(k, layout.U32.pack(flags | layout.VIP_DRAIN))
        for k, flags in want.items():
            if have.get(k) != flags:
                m.update(k, layout.U32.pack(flags))

    def retire_drained_services(self) -> int:
        """Remove the draining `lw_vips` entries no open connection uses any more; returns
        how many went. Call it from the thread that calls `set_services` (one writer)."""
        m = self._map("lw_vips")
        draining = {k: f for k, f in ((k, layout.U32.unpack(v)[0]) for k, v in m.items())
                    if f & layout.VIP_DRAIN}
        if not draining:
            return 0
        in_use = self._vips_in_use(draining)
        gone = [k for k in draining if k not in in_use]
        for k in gone:
            m.delete(k)
        return len(gone)

    def _vips_in_use(self, entries: Mapping[bytes, int]) -> set[bytes]:
        """The keys of `entries` an open connection of the node uses. If the kernel cannot
        be asked, all of them (keeping an entry a while longer costs nothing; dropping one
        a connection uses breaks that connection)."""
        try:
            conns = open_sockets.connected(self.netns)
        except OSError:
            return set(entries)
        used = set()
        for k, flags in entries.items():
            addr, port, _ = layout.VIP_KEY.unpack(k)
            key = (socket.inet_ntoa(addr), int.from_bytes(port, "big"))
            if (flags & layout.VIP_SERVICE and key in conns.local) or \
                    (flags & layout.VIP_BACKEND and key in conns.remote):
                used.add(k)
        return used

    def services(self) -> dict[tuple[str, int], int]:
        """`lw_vips` as the kernel holds it: (address, port) -> VIP_* flags."""
        out = {}
        for k, v in self._map("lw_vips").items():
            addr, port, _ = layout.VIP_KEY.unpack(k)
            out[(socket.inet_ntoa(addr), int.from_bytes(port, "big"))] = layout.U32.unpack(v)[0]
        return out

    # ---- reading ----------------------------------------------------------------------

    def read_flows(self) -> list[FlowRecord]:
        """Every connection record in the kernel now (open ones and those closed since the
        last `l4_totals()`)."""
        return FlowTable(self._map("lw_flows")).records()

    def l4_totals(self) -> dict[tuple[str, str, str], PairTotals]:
        """Monotonic totals per (source ip, destination ip, kind) for istio_tcp_* metrics.
        Counts closed connections once and then removes their records from the kernel."""
        return {(layout.ip_from_u32(s), layout.ip_from_u32(d), layout.KIND_NAMES.get(k, str(k))): t
                for (s, d, k), t in self._l4().update().items()}

    def l4_by_workload(self, workload_of: Callable[[str], str | None]
                       ) -> dict[tuple[str, str, str], PairTotals]:
        """The same totals per (source workload, destination workload, reporter), for the
        istio_tcp_* exporter; `workload_of(ip)` names a pod's workload (None: "unknown")."""
        return by_workload(self._l4().update(), workload_of)

    def flow_reader(self) -> FlowReader:
        """Per-connection reads by socket cookie for the node tunnel (`FlowReader`: one map
        lookup each, `consume` after the final read, `reap` for closed records nobody
        consumed). It opens its own descriptor of lw_flows, so `close()` here leaves it
        working. While a tunnel reads this way it owns the deletion of records: do not call
        `l4_totals()` on the same node then."""
        try:
            flows = Map.open(pins.map_path(self.cluster, self.node, "lw_flows"))
        except OSError as e:
            raise DatapathError(f"map lw_flows is not pinned under {self.pin_dir} ({e}); "
                                "run install()") from None
        try:
            return FlowReader(flows)
        except ValueError as e:
            flows.close()
            raise DatapathError(str(e)) from None

    def _l4(self) -> L4Totals:
        if self._totals is None:
            self._totals = L4Totals(FlowTable(self._map("lw_flows")))
        return self._totals

    def stats(self) -> dict[str, int]:
        m = self._map("lw_stats")
        out = {}
        for i, name in enumerate(layout.STATS):
            out[name] = sum(layout.U64.unpack(v)[0] for v in m.lookup_percpu(layout.U32.pack(i)))
        return out

    def status(self) -> dict:
        """What is attached and pinned, for `lacewing check`, tests and operators."""
        out: dict = {"pin_dir": self.pin_dir, "pinned": pins.pinned(self.cluster, self.node),
                     "tc": {}, "routing": False, "sockops_attached": False,
                     "sk_lookup_attached": False}
        try:
            ipr = self._ip()
            out["sk_lookup_attached"] = attach.sk_lookup_attached(
                self._sk_lookup_link, self._netns_path()) is not None
        except DatapathError:
            return out
        for link in ipr.get_links():
            name = attach.tc_ours(ipr, link["index"], self.settings)
            if name:
                out["tc"][link.get_attr("IFLA_IFNAME")] = name
        out["routing"] = attach.routing_present(ipr, self.settings)
        out["sysctls"] = self.node_sysctls()
        try:
            fd = obj_get(pins.prog_path(self.cluster, self.node, "sockops"))
        except OSError as e:
            if e.errno not in (errno.ENOENT,):
                raise
        else:
            try:
                out["sockops_attached"] = attach.cgroup_attached(self.cgroup, fd)
                out["programs"] = {p.name: prog_info(self._prog(p.name))[0]
                                   for p in programs.PROGRAMS}
            finally:
                os.close(fd)
        return out


def detach_orphaned_sockops(cgroup: str | None = None) -> list[int]:
    """Detach sockops programs of ours (`lw_sockops`) that hang on the cgroup-v2 root although
    no cluster's pin refers to them any more — what an agent killed before `uninstall()` and a
    teardown that only removed pins would leave, counting every socket on the host forever.

    Safe beside running clusters: the loader pins before it attaches, so an attached program of
    a live cluster is always pinned. Returns the program ids it detached."""
    import glob

    from node_agent.bpf.syscall import prog_detach, prog_query

    BPF_CGROUP_SOCK_OPS = 3

    root = cgroup or attach.cgroup2_root()
    pinned = set()
    for path in glob.glob(f"{pins.BPFFS}/lw-*/*/prog_*"):
        try:
            fd = obj_get(path)
        except OSError:
            continue
        try:
            pinned.add(prog_info(fd)[0])
        finally:
            os.close(fd)
    detached = []
    cg = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for prog_id in prog_query(target_fd=cg, attach_type=BPF_CGROUP_SOCK_OPS):
            if prog_id in pinned:
                continue
            try:
                fd = prog_get_fd_by_id(prog_id)
            except OSError:
                continue
            try:
                if prog_info(fd)[1] == "lw_sockops":
                    prog_detach(target_fd=cg, prog_fd=fd, attach_type=BPF_CGROUP_SOCK_OPS)
                    detached.append(prog_id)
            finally:
                os.close(fd)
    finally:
        os.close(cg)
    return detached
