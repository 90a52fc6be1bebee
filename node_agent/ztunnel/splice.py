"""Same-node splice: after the tunnel allowed a same-node connection, the bytes between its two
plain sockets can be forwarded by the kernel (a sockhash with an `sk_skb` stream verdict that
redirects each socket's bytes to its peer's send side) so that user space copies nothing.

Before: `python -m node_agent.ztunnel.splice load --pin-dir D` (short-lived: it is the only
step that runs BCC/LLVM) created the maps, compiled and loaded the verdict program, attached it
to the source sockhash and pinned all four under D. After: the tunnel's `Splicer.open(D)` works
on the pinned maps with raw bpf(2) calls: `pair(a, b)` records each socket's cookie as the
other's peer, puts both sockets in the target sockhash (no program: their bytes still queue
for user space), and only then in the source sockhash, whose verdict redirects to the target
one; `forget(a, b)` removes all three entries. The kernel drops a socket from both sockhashes
when it closes.

Why two sockhashes: a verdict consumes every skb it sees, and `bpf_sk_redirect_hash` to a
socket not in the map drops it. With one map, bytes that reached the first socket entered
before the second one was in were lost (acknowledged to the sender, never delivered: the
connection stalled). Each socket is a redirect target before either has a verdict.

Bytes read by user space before the pair was made are forwarded by the relay itself; bytes
queued in the socket are consumed by the verdict at the next arrival, in order. EOF still
reaches user space, which shuts the peer down — but only after the kernel has sent everything it
redirected (`pending` compares the source's TCP byte count with what reached the peer), since
the redirect is asynchronous (a work item) and a shutdown before it would cut the tail.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import socket
import struct
import sys
import termios

from node_agent.bpf.syscall import Map, map_create, obj_get, obj_pin, prog_attach

SO_COOKIE = 57
BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_SOCKHASH = 1, 18
BPF_SK_SKB_STREAM_VERDICT = 5
MAX = 65536
PINS = ("socks", "targets", "peers", "prog")   # as `Splicer` takes the maps, then the program

VERDICT_C = r"""
#include <uapi/linux/bpf.h>
int lw_splice(struct __sk_buff *skb)
{
    __u64 cookie = bpf_get_socket_cookie(skb);
    __u64 *peer = bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, PEERS_FD), &cookie);
    if (!peer)
        return SK_PASS;
    __u64 key = *peer;
    return bpf_sk_redirect_hash(skb, (void *)bpf_pseudo_fd(1, TARGETS_FD), &key, 0);
}
"""


def cookie(sock) -> int:
    return struct.unpack("Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]


def tcp_written(sock) -> int:
    """Bytes the kernel took from writers of this socket: acked + still queued (+1 for a SYN
    on an active opener; callers compare differences only)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 136)
    acked = struct.unpack_from("Q", info, 120)[0]
    outq = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    return acked + outq


def tcp_received(sock) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 136)
    return struct.unpack_from("Q", info, 128)[0]


def load(pin_dir: str) -> dict:
    from bcc import BPF  # only here: the short-lived loader

    from node_agent.bpf.pins import ensure_bpffs
    ensure_bpffs()
    os.makedirs(pin_dir, exist_ok=True)
    socks = map_create(map_type=BPF_MAP_TYPE_SOCKHASH, key_size=8, value_size=4,
                       max_entries=MAX, name="lw_splice_sk")
    targets = map_create(map_type=BPF_MAP_TYPE_SOCKHASH, key_size=8, value_size=4,
                         max_entries=MAX, name="lw_splice_to")
    peers = map_create(map_type=BPF_MAP_TYPE_HASH, key_size=8, value_size=8, max_entries=MAX,
                       name="lw_splice_peer")
    b = BPF(text=VERDICT_C.encode(), cflags=[f"-DPEERS_FD={peers}", f"-DTARGETS_FD={targets}"])
    fn = b.load_func(b"lw_splice", BPF.SK_SKB)
    prog_attach(target_fd=socks, prog_fd=fn.fd, attach_type=BPF_SK_SKB_STREAM_VERDICT)
    for name, fd in zip(PINS, (socks, targets, peers, fn.fd), strict=True):
        path = os.path.join(pin_dir, name)
        if os.path.exists(path):
            os.unlink(path)
        obj_pin(fd, path)
    return {"pin_dir": pin_dir}


def unload(pin_dir: str) -> None:
    for name in PINS:
        try:
            os.unlink(os.path.join(pin_dir, name))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(pin_dir)
    except OSError:
        pass


class Splicer:
    """`socks`: the sockhash with the verdict (sources); `targets`: the sockhash it redirects
    to (no program); `peers`: cookie -> the peer's cookie."""

    def __init__(self, socks: Map, targets: Map, peers: Map) -> None:
        self.socks = socks
        self.targets = targets
        self.peers = peers

    @classmethod
    def open(cls, pin_dir: str) -> Splicer:
        return cls(*(Map(obj_get(os.path.join(pin_dir, name))) for name in PINS[:3]))

    def pair(self, a, b) -> tuple[int, int]:
        """Splice a and b (both connected, not read by user space from now on). The order
        matters: a verdict may run on a's bytes as soon as a is in `socks`, so b must be a
        target with a known peer by then (and the other way round)."""
        ca, cb = cookie(a), cookie(b)
        try:
            self.peers.update(struct.pack("Q", ca), struct.pack("Q", cb))
            self.peers.update(struct.pack("Q", cb), struct.pack("Q", ca))
            for sock, c in ((a, ca), (b, cb)):
                self.targets.update(struct.pack("Q", c), struct.pack("I", sock.fileno()))
            for sock, c in ((a, ca), (b, cb)):
                self.socks.update(struct.pack("Q", c), struct.pack("I", sock.fileno()))
        except OSError:         # e.g. a map is full: the caller copies instead, so leave
            self.forget(ca, cb)  # no entry behind (the peers map is not cleaned on close)
            raise
        return ca, cb

    def forget(self, ca: int, cb: int) -> None:
        for c in (ca, cb):
            key = struct.pack("Q", c)
            self.socks.delete(key)
            self.peers.delete(key)
            self.targets.delete(key)

    def close(self) -> None:
        self.socks.close()
        self.targets.close()
        self.peers.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m node_agent.ztunnel.splice")
    ap.add_argument("action", choices=["load", "unload"])
    ap.add_argument("--pin-dir", required=True)
    args = ap.parse_args(argv)
    if args.action == "load":
        print(json.dumps(load(args.pin_dir)))
    else:
        unload(args.pin_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
