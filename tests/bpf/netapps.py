"""Test servers and clients inside pod namespaces, and the relay process, for datapath tests.

Before: a Topology (tests/bpf/topology.py). After: `Server` answers, per connection, either
"who" (the peer address it sees) or "sink N" (counts what arrives until EOF, then sends N
bytes); `ask_who`/`transfer` are the clients; `Relay` runs perf/relay.py in a node
namespace with nsenter and collects the connections it accepted. Everything stops in close().
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
from pathlib import Path

from tests.bpf.topology import in_netns

RELAY = Path(__file__).resolve().parents[2] / "perf" / "relay.py"


class Server:
    def __init__(self, ns: str, port: int):
        def mk():
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
            s.listen(64)
            return s

        self.sock = in_netns(ns, mk)
        self.peers: list[tuple[str, int]] = []
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer)
            threading.Thread(target=self._serve, args=(conn, peer), daemon=True).start()

    @staticmethod
    def _serve(conn: socket.socket, peer) -> None:
        with conn:
            f = conn.makefile("rb")
            line = f.readline().decode().split()
            if line[:1] == ["who"]:
                conn.sendall(f"{peer[0]}:{peer[1]}\n".encode())
            elif line[:1] == ["sink"]:
                total = 0
                while chunk := f.read1(262144):
                    total += len(chunk)
                reply = int(line[1])
                block = b"r" * 65536
                while reply > 0:
                    n = min(reply, len(block))
                    conn.sendall(block[:n])
                    reply -= n
            elif line[:1] == ["exact"]:
                left = int(line[1])
                while left > 0:
                    chunk = f.read1(min(left, 262144))
                    if not chunk:
                        return
                    left -= len(chunk)
                reply = int(line[2])
                block = b"r" * 65536
                while reply > 0:
                    n = min(reply, len(block))
                    conn.sendall(block[:n])
                    reply -= n
                while f.read1(65536):           # the client closes first
                    pass
            elif line[:1] == ["hold"]:
                while f.read1(65536):
                    conn.sendall(b"k")

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def connect(ns: str, ip: str, port: int, *, timeout: float = 3.0) -> socket.socket:
    return in_netns(ns, socket.create_connection, (ip, port), timeout=timeout)


def ask_who(ns: str, ip: str, port: int, *, timeout: float = 3.0) -> tuple[str, tuple[str, int]]:
    """Connect from namespace ns; return (what the server saw as our address, our address)."""
    with connect(ns, ip, port, timeout=timeout) as s:
        mine = s.getsockname()
        s.sendall(b"who\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data.decode().strip(), mine


def transfer(ns: str, ip: str, port: int, *, send: int, receive: int,
             exact: bool = False) -> tuple[int, tuple]:
    """Send `send` bytes (header included), then read the server's `receive` bytes until EOF.
    With exact=True nobody relies on a half-close: the server reads exactly what is sent, the
    client reads exactly `receive` bytes and closes. Returns (bytes received, our address)."""
    with connect(ns, ip, port, timeout=10) as s:
        mine = s.getsockname()
        head = f"sink {receive}\n"
        if exact:                               # the body is what follows the header line
            body = send
            for _ in range(3):
                head = f"exact {body} {receive}\n"
                body = send - len(head)
        s.sendall(head.encode())
        header = len(head)
        block = b"s" * 65536
        left = send - header
        while left > 0:
            n = min(left, len(block))
            s.sendall(block[:n])
            left -= n
        got = 0
        if exact:
            while got < receive and (chunk := s.recv(min(262144, receive - got))):
                got += len(chunk)
            return got, mine
        s.shutdown(socket.SHUT_WR)
        while chunk := s.recv(262144):
            got += len(chunk)
    return got, mine


class Relay:
    """perf/relay.py in a node namespace."""

    def __init__(self, node_ns: str, ports: tuple[int, ...] = (15001, 15006), *,
                 upstream: bool = True, sockmap: bool = False, register: str | None = None):
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env["PYTHONPATH"] = str(RELAY.resolve().parents[2])
        args = (["nsenter", f"--net=/run/netns/{node_ns}", sys.executable, str(RELAY),
                 *map(str, ports)] + ([] if upstream else ["--no-upstream"])
                + (["--sockmap"] if sockmap else [])
                + (["--register", register] if register else []))
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        self.accepted: queue.Queue = queue.Queue()
        self.replies: queue.Queue = queue.Queue()
        first = self.proc.stdout.readline().strip()
        if first != "ready":
            self.close()
            raise RuntimeError(f"relay did not start: {first!r}")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.accepted.put(json.loads(line))
            except ValueError:
                self.replies.put(line.strip())

    def register(self, map_path: str) -> None:
        """Register the relay's listeners with a datapath installed after it started."""
        self.proc.stdin.write(f"register {map_path}\n")
        self.proc.stdin.flush()
        reply = self.replies.get(timeout=10)
        if reply != "registered":
            raise RuntimeError(f"relay: {reply}")

    def drain(self) -> list[dict]:
        out = []
        while True:
            try:
                out.append(self.accepted.get_nowait())
            except queue.Empty:
                return out

    def next(self, timeout: float = 3.0) -> dict:
        return self.accepted.get(timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
