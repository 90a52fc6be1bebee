"""Byte layouts of the maps' keys and values, mirroring lw_defs.h.

Before: lw_defs.h defines the structs the kernel programs use. After: the agent packs and
unpacks map elements with these formats and numpy dtypes; `tests/bpf` checks the sizes
against the kernel's own map info, so a change on one side without the other fails loudly.
"""

from __future__ import annotations

import socket
import struct

import numpy as np

POD = struct.Struct("=IIII")               # pod_id, ifindex, flags, pad   (key: be32 ip)
EXCL_KEY = struct.Struct("=IHBB")          # pod_id, port (host order), dir, pad
CAPT_KEY = struct.Struct("=4s4sHH")        # saddr, daddr, sport, dport (network order)
FLOW = struct.Struct("=4s4sHHIIIQQQQIIII")
CFG = struct.Struct("=QII")                # netns_cookie, enabled, uplink_ifindex
VIP_KEY = struct.Struct("=4s2sH")          # addr, port (both network order), pad
                                           # value: U32 flags (VIP_*)
U32 = struct.Struct("=I")
U64 = struct.Struct("=Q")

DIR_OUT = 1
DIR_IN = 2

KIND_OUTBOUND = 1
KIND_INBOUND = 2
KIND_TUNNEL = 3
KIND_NAMES = {KIND_OUTBOUND: "outbound", KIND_INBOUND: "inbound", KIND_TUNNEL: "tunnel"}

VIP_SERVICE = 1         # a Service VIP:port: unenrolled pods' SYNs to it go to 15006
VIP_BACKEND = 2         # an endpoint the tunnel dials for such a connection: replies to its socket
VIP_DRAIN = 4           # no longer qualifies; kept (no new capture) while open connections use it

# slots of the lw_listeners sockmap: which of the tunnel's listeners (LW_LISTENER_*)
LISTENER_SLOTS = {"outbound": 0, "inbound": 1, "tunnel": 2}

FLOW_FIN_IN = 1
FLOW_FIN_OUT = 2

STATS = ("captured_outbound", "captured_inbound", "captured_tunnel", "assigned_established",
         "dropped_no_listener", "assign_failed", "excluded", "flows_opened", "flows_table_full",
         "flows_closed", "captured_service", "time_wait_syn", "time_wait_unregistered",
         "time_wait_listener_assigned", "time_wait_listener_refused")

FLOW_DTYPE = np.dtype([
    ("saddr", "<u4"), ("daddr", "<u4"), ("sport", "<u2"), ("dport", "<u2"), ("kind", "<u4"),
    ("src_pod", "<u4"), ("dst_pod", "<u4"), ("rx", "<u8"), ("tx", "<u8"), ("opened_ns", "<u8"),
    ("closed_ns", "<u8"), ("state", "<u4"), ("flags", "<u4"), ("fin_seq", "<u4"), ("pad", "<u4"),
])
assert FLOW_DTYPE.itemsize == FLOW.size == 72


def ip_key(ip: str) -> bytes:
    """A pod map key: the IPv4 address in network order."""
    return socket.inet_aton(ip)


def vip_key(ip: str, port: int) -> bytes:
    """A lw_vips key: IPv4 address and TCP port, both in network order."""
    return VIP_KEY.pack(socket.inet_aton(ip), port.to_bytes(2, "big"), 0)


def ip_from_u32(value: int) -> str:
    """An address read as a native u32 from a network-order field."""
    return socket.inet_ntoa(struct.pack("=I", int(value)))
