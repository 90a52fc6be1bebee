"""A small transparent relay standing in for the node tunnel in the datapath tests.

    nsenter --net=/run/netns/<node> python tests/bpf/relay.py 15001 15006 [--no-upstream]

Before: runs in a node namespace where the datapath steers captured connections to these ports.
After: listens on each port with IP_TRANSPARENT; for every accepted connection prints one JSON
line {"listener", "local", "peer"} — `local` is the original destination the eBPF capture kept —
then connects to that original destination from the node and copies bytes both ways (or, with
--no-upstream, closes). Prints "ready" once listening; exits on SIGTERM or when stdin closes.
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


def serve(conn: socket.socket, upstream: bool) -> None:
    local = conn.getsockname()
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


def listen(port: int, upstream: bool, lock: threading.Lock) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    s.bind(("0.0.0.0", port))
    s.listen(128)

    def loop():
        while True:
            conn, peer = s.accept()
            with lock:
                print(json.dumps({"listener": port, "local": list(conn.getsockname()),
                                  "peer": list(peer)}), flush=True)
            threading.Thread(target=serve, args=(conn, upstream), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return s


def main(argv: list[str]) -> int:
    upstream = "--no-upstream" not in argv
    ports = [int(a) for a in argv if not a.startswith("--")]
    lock = threading.Lock()
    for p in ports:
        listen(p, upstream, lock)
    print("ready", flush=True)
    sys.stdin.read()        # the test closes stdin (or kills us) to stop
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
