"""A small transparent relay standing in for the node tunnel in the datapath tests.

    nsenter --net=/run/netns/<node> python perf/relay.py 15001 15006 [--no-upstream|--sockmap]
                                                      [--upstream HOST:PORT] [--register MAP]

Before: runs in a node namespace where the datapath steers captured connections to these ports.
After: listens on each port with IP_TRANSPARENT; for every accepted connection prints one JSON
line {"listener", "local", "peer"} — `local` is the original destination the eBPF capture kept —
then connects to that original destination from the node and copies bytes both ways (or, with
--no-upstream, closes). With --sockmap (one connection at a time) the two sockets are put in
a sockmap whose sk_skb verdict program redirects each one's bytes to the other inside the
kernel, as the tunnel's same-node splice will: only bytes that arrived before the sockets
entered the map pass through user space, and a last JSON line per connection says how many
({"copied": n}). With --upstream HOST:PORT it connects there instead of to the original
destination (the capture benchmark's "addressed directly" case needs that) and prints no
per-connection lines. With --register MAP (the datapath's pinned lw_listeners sockmap) its
listeners are registered with the datapath, as the node tunnel registers its own: the ports
given are, in order, the outbound, inbound-plaintext and tunnel listeners. A line
`register MAP` on stdin does the same later (the datapath may be installed after the relay
started) and is answered with a line `registered` or `register failed: <why>`. Prints "ready"
once listening; exits on SIGTERM or when stdin closes.
Used by the datapath tests (tests/bpf) and the capture-cost benchmark (perf/bench_capture.py).
"""

from __future__ import annotations

import json
import socket
import sys
import threading

IP_TRANSPARENT = 19


def pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(262144)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


SPLICE_C = r"""
#include <uapi/linux/bpf.h>
int lw_t_verdict(struct __sk_buff *skb)
{
    /* slot 0: the accepted socket (local port = original destination port), slot 1: upstream */
    __u32 to = skb->local_port == DPORT ? 1 : 0;
    return bpf_sk_redirect_map(skb, (void *)bpf_pseudo_fd(1, TARGETS), to, 0);
}
"""


class Splicer:
    """Two BPF sockmaps + an sk_skb verdict program per destination port (test only: uses
    BCC). The verdict is attached to `sources` and redirects into `targets` (no program), and
    both sockets are targets before either is a source: a redirect to an empty slot would drop
    the bytes that arrive in between (node_agent/ztunnel/splice.py does the same)."""

    def __init__(self, dport: int):
        from bcc import BPF

        from node_agent.bpf.syscall import Map, map_create, prog_attach

        # BCC 0.26 has no sk_redirect_map method for sockmaps: make the maps here and hand
        # their fds to the C as pseudo map fds
        self.sources, self.targets = (
            Map(map_create(map_type=15, key_size=4, value_size=4, max_entries=2, name=name))
            for name in ("lw_t_pair", "lw_t_to"))
        self.bpf = BPF(text=SPLICE_C.encode(),
                       cflags=[f"-DDPORT={dport}", f"-DTARGETS={self.targets.fd}"])
        fn = self.bpf.load_func(b"lw_t_verdict", BPF.SK_SKB)
        prog_attach(target_fd=self.sources.fd, prog_fd=fn.fd, attach_type=5)  # STREAM_VERDICT

    def pair(self, conn: socket.socket, up: socket.socket) -> None:
        for m in (self.targets, self.sources):
            m.update((0).to_bytes(4, "little"), conn.fileno().to_bytes(4, "little"))
            m.update((1).to_bytes(4, "little"), up.fileno().to_bytes(4, "little"))

    def unpair(self) -> None:
        for m in (self.sources, self.targets):
            m.delete((0).to_bytes(4, "little"))
            m.delete((1).to_bytes(4, "little"))

    def close(self) -> None:
        self.bpf.cleanup()
        self.sources.close()
        self.targets.close()


def pipe_counting(src: socket.socket, dst: socket.socket, counter: list) -> None:
    try:
        while True:
            try:
                data = src.recv(262144)
            except BlockingIOError:
                # a socket in a sockmap wakes its reader for bytes the verdict program sent
                # elsewhere, and then says EAGAIN even when blocking: wait again
                continue
            if not data:
                break
            counter.append(len(data))
            dst.sendall(data)
    except OSError as e:
        print(f"relay: {src.getsockname()} -> {dst.getsockname()}: {e}", file=sys.stderr)
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def serve_spliced(conn: socket.socket, lock: threading.Lock) -> None:
    local = conn.getsockname()
    up = socket.create_connection(local, timeout=5)
    up.settimeout(None)
    splicer = Splicer(local[1])
    splicer.pair(conn, up)
    copied: list[int] = []
    t = threading.Thread(target=pipe_counting, args=(up, conn, copied), daemon=True)
    t.start()
    pipe_counting(conn, up, copied)
    t.join()
    splicer.unpair()
    splicer.close()
    with lock:
        print(json.dumps({"copied": sum(copied)}), flush=True)
    conn.close()
    up.close()


def serve(conn: socket.socket, upstream: bool, fixed: tuple[str, int] | None = None) -> None:
    local = fixed or conn.getsockname()
    if not upstream:
        conn.close()
        return
    try:
        up = socket.create_connection(local, timeout=5)
        up.settimeout(None)
    except OSError:
        conn.close()
        return
    t = threading.Thread(target=pipe, args=(up, conn), daemon=True)
    t.start()
    pipe(conn, up)
    t.join()
    conn.close()
    up.close()


def listen(port: int, upstream: bool, lock: threading.Lock, spliced: bool = False,
           fixed: tuple[str, int] | None = None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    s.bind(("0.0.0.0", port))
    s.listen(4096)

    def loop():
        while True:
            conn, peer = s.accept()
            if fixed is None:
                with lock:
                    print(json.dumps({"listener": port, "local": list(conn.getsockname()),
                                      "peer": list(peer)}), flush=True)
            if spliced:
                threading.Thread(target=serve_spliced, args=(conn, lock), daemon=True).start()
            else:
                threading.Thread(target=serve, args=(conn, upstream, fixed), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return s


LISTENER_KINDS = ("outbound", "inbound", "tunnel")   # the ports given, in this order


def register(map_path: str, socks: list[socket.socket]) -> None:
    """Put our listeners in the datapath's lw_listeners sockmap (node_agent/bpf/listeners.py)."""
    from node_agent.bpf.listeners import register as put

    put(map_path, dict(zip(LISTENER_KINDS, socks, strict=False)))


def main(argv: list[str]) -> int:
    upstream = "--no-upstream" not in argv
    spliced = "--sockmap" in argv
    fixed = None
    registry = None
    for opt in ("--upstream", "--register"):
        if opt in argv:
            i = argv.index(opt)
            value = argv[i + 1]
            argv = argv[:i + 1] + argv[i + 2:]
            if opt == "--upstream":
                host, _, port = value.rpartition(":")
                fixed = (host, int(port))
            else:
                registry = value
    ports = [int(a) for a in argv if not a.startswith("--")]
    lock = threading.Lock()
    socks = [listen(p, upstream, lock, spliced, fixed) for p in ports]
    if registry is not None:
        try:
            register(registry, socks)
        except (OSError, ValueError) as e:
            print(f"register failed: {e}", flush=True)
            return 1
    print("ready", flush=True)
    for line in sys.stdin:      # the test closes stdin (or kills us) to stop
        if line.startswith("register "):
            try:
                register(line.split(None, 1)[1].strip(), socks)
            except (OSError, ValueError) as e:
                with lock:
                    print(f"register failed: {e}", flush=True)
            else:
                with lock:
                    print("registered", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
