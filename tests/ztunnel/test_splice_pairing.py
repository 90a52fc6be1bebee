"""The same-node splice loses no byte that arrives while the pair is being made.

A spliced socket's bytes are consumed by the sk_skb verdict as soon as it is in the verdict's
sockhash; a redirect to a socket not yet paired would drop them (acknowledged to the sender,
never delivered: the connection stalls). Here both ends stream while `Splicer.pair` runs, many
times over, and every byte must come out of the other end in order. Loopback only; the
verdict is loaded by the tunnel's own loader (a short-lived BCC subprocess, pins removed).
"""

from __future__ import annotations

import socket
import threading

import pytest

from node_agent.ztunnel.proxy import _load_splicer
from tests.bpf.conftest import _require_root_and_bcc

pytestmark = [pytest.mark.timeout(180), pytest.mark.bpf]

ROUNDS = 150
SIZE = 96 * 1024          # per direction per round: more than one skb, less than the buffers


def _pattern(n: int, seed: int) -> bytes:
    return bytes((seed + i * 7) & 0xFF for i in range(256)) * (n // 256)


def _tcp_pair(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    """(outside end, spliced end) of one loopback connection."""
    out = socket.create_connection(listener.getsockname(), timeout=10)
    inner, _ = listener.accept()
    inner.settimeout(10)
    return out, inner


def _stream(sock: socket.socket, data: bytes, step: int = 4096) -> None:
    """Send in small writes so that the bytes keep arriving during the pairing."""
    try:
        for i in range(0, len(data), step):
            sock.sendall(data[i:i + step])
    except OSError:
        pass


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    try:
        while len(got) < n and (chunk := sock.recv(n - len(got))):
            got += chunk
    except TimeoutError:
        pass
    return bytes(got)


def test_bytes_arriving_while_the_pair_is_made_all_reach_the_peer():
    _require_root_and_bcc()
    splicer = _load_splicer()
    assert splicer is not None, "the splice loader failed"
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        for rnd in range(ROUNDS):
            x, a = _tcp_pair(listener)          # x -> a ~> b -> y, and y -> b ~> a -> x
            y, b = _tcp_pair(listener)
            forward, backward = _pattern(SIZE, rnd), _pattern(SIZE, rnd + 101)
            senders = [threading.Thread(target=_stream, args=(x, forward)),
                       threading.Thread(target=_stream, args=(y, backward))]
            try:
                for t in senders:
                    t.start()
                cookies = splicer.pair(a, b)
                for s in (a, b):                # bytes queued before the pair: the tunnel's kick
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
                at_y, at_x = _read_exactly(y, SIZE), _read_exactly(x, SIZE)
                assert (len(at_y), len(at_x)) == (SIZE, SIZE), f"round {rnd}: bytes lost"
                assert at_y == forward and at_x == backward, f"round {rnd}: bytes out of order"
                splicer.forget(*cookies)
            finally:
                for t in senders:
                    t.join(10)
                for s in (x, a, y, b):
                    s.close()
    finally:
        listener.close()
        splicer.close()


def test_a_pair_the_kernel_refuses_leaves_nothing_behind():
    """When a socket cannot enter the maps (here: one not connected), `pair` raises and removes
    what it had put in, so the other socket keeps working as a plain one (the tunnel then
    copies instead) and the peers map, which the kernel does not clean, keeps no entry."""
    import struct

    from node_agent.ztunnel.splice import cookie

    _require_root_and_bcc()
    splicer = _load_splicer()
    assert splicer is not None, "the splice loader failed"
    listener = socket.create_server(("127.0.0.1", 0))
    unconnected = socket.socket()
    x, a = _tcp_pair(listener)
    try:
        with pytest.raises(OSError):
            splicer.pair(a, unconnected)
        key = struct.pack("Q", cookie(a))
        assert splicer.peers.lookup(key) is None
        assert key not in set(splicer.targets.keys())   # (a sockhash's values are not readable)
        x.sendall(b"still plain")
        assert _read_exactly(a, 11) == b"still plain"
    finally:
        for s in (x, a, unconnected):
            s.close()
        listener.close()
        splicer.close()
