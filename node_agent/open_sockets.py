"""Which TCP addresses the node's open connections use, from the kernel (NETLINK_SOCK_DIAG).

Before: a node network namespace (the current one, or a path such as /run/netns/NAME). After
`connected(netns)`: the (ip, port) pairs at the local end and at the remote end of every IPv4
TCP socket there that is part of a connection (not listening, not in TIME_WAIT or closed)
and still has an owner: an orphan (its process closed it; it lingers in FIN_WAIT2 or
LAST_ACK up to tcp_fin_timeout) only finishes closing, and the kernel resets any data that
still reaches it.

The datapath asks this before it drops a Service VIP from `lw_vips`: the tunnel's accepted
socket for a captured VIP connection has the VIP as its local address (bpf_sk_assign keeps the
original destination), and a socket it dialled for such a connection has the endpoint as its
remote address — while one exists, the entry must keep steering its packets.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from pyroute2 import DiagSocket
from pyroute2 import netns as _netns
from pyroute2.netlink.exceptions import NetlinkError

# tcp_states.h: ESTABLISHED 1 .. CLOSING 11; a bit per state in the request
_TIME_WAIT, _CLOSE, _LISTEN = 6, 7, 10
CONNECTED_STATES = sum(1 << s for s in range(1, 12) if s not in (_TIME_WAIT, _CLOSE, _LISTEN))


@dataclass(frozen=True)
class Connected:
    local: frozenset[tuple[str, int]]
    remote: frozenset[tuple[str, int]]


def connected(netns: str | None = None) -> Connected:
    """The local and remote (ip, port) of the connected IPv4 TCP sockets in `netns`.
    Raises OSError when the namespace is gone or the kernel refuses the dump. pyroute2's
    synchronous sockets run their own event loop: call it from a thread with none running."""
    if netns:
        # the calling thread enters the namespace to open its netlink socket (setns is
        # per thread); the socket stays bound to that namespace after the thread returns
        _netns.pushns(netns)
        try:
            ds = DiagSocket()
        finally:
            _netns.popns()
    else:
        ds = DiagSocket()
    with ds:
        try:
            ds.bind()
            rows = ds.get_sock_stats(family=socket.AF_INET, states=CONNECTED_STATES)
        except NetlinkError as e:
            raise OSError(e.code, f"sock_diag dump refused: {e}") from None
        rows = [r for r in rows if r["idiag_inode"]]     # orphans only finish closing
        local = frozenset((r["idiag_src"], r["idiag_sport"]) for r in rows)
        remote = frozenset((r["idiag_dst"], r["idiag_dport"]) for r in rows)
    return Connected(local, remote)
