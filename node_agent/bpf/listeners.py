"""Registering the tunnel's listening sockets with the datapath (the lw_listeners sockmap).

Before: a node's datapath is installed (the sockmap is pinned at
/sys/fs/bpf/lw-<cluster>/<node>/lw_listeners), and a process in the node's namespace owns the
listeners that capture delivers to (15001 outbound, 15006 inbound plaintext, 15008 tunnel).
After: `register()` has put those sockets in the sockmap, where the sk_lookup program
(lw_sk_lookup.c) finds them for a captured SYN that met a TIME_WAIT socket of its own tuple.
The kernel drops a socket from the map when it closes, and a restarted owner registers its
new sockets over the old slots. Only bpf(2) through ctypes: no compiler, no netlink, so any
process (the node agent, the perf relay) can call it.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping

from node_agent.bpf import layout
from node_agent.bpf.syscall import BpfError, Map


def _fd(sock: socket.socket | int) -> int:
    return sock if isinstance(sock, int) else sock.fileno()


def register(map_path: str, listeners: Mapping[str, socket.socket | int]) -> None:
    """Put each listening socket (or its fd) in its slot: keys are "outbound", "inbound" and
    "tunnel" (layout.LISTENER_SLOTS)."""
    unknown = set(listeners) - set(layout.LISTENER_SLOTS)
    if unknown:
        raise ValueError(f"unknown listener kinds {sorted(unknown)}; "
                         f"known: {sorted(layout.LISTENER_SLOTS)}")
    try:
        m = Map.open(map_path)
    except BpfError as e:
        raise FileNotFoundError(e.errno, f"no listener map at {map_path} ({e.strerror}); "
                                "install the datapath first") from None
    with m:
        for kind, sock in listeners.items():
            try:
                m.update(layout.U32.pack(layout.LISTENER_SLOTS[kind]),
                         layout.U64.pack(_fd(sock)))
            except BpfError as e:
                raise OSError(e.errno, f"cannot register the {kind} listener: {e.strerror} "
                              "(it must be a listening TCP socket in the node's namespace)") from None


def unregister(map_path: str, kinds: tuple[str, ...] = tuple(layout.LISTENER_SLOTS)) -> None:
    """Empty those slots (a captured SYN meeting TIME_WAIT then finds no listener)."""
    with Map.open(map_path) as m:
        for kind in kinds:
            try:
                m.delete(layout.U32.pack(layout.LISTENER_SLOTS[kind]))
            except BpfError as e:
                if e.errno != errno.EINVAL:     # what a sockmap says of an empty slot
                    raise


def registered(map_path: str) -> dict[str, int]:
    """kind -> socket cookie of each registered listener."""
    out = {}
    with Map.open(map_path) as m:
        for kind, slot in layout.LISTENER_SLOTS.items():
            raw = m.lookup(layout.U32.pack(slot))
            if raw is not None:
                out[kind] = layout.U64.unpack(raw)[0]
    return out
