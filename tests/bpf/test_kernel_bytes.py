"""The tunnel's own connection to a pod is counted in the kernel too, and the tunnel reads one
record at a time by socket cookie.

Inbound over :15008 the pod-facing socket is one the tunnel opens itself: a transparent socket
in the node namespace carrying the client's address, connected to an enrolled pod of the node.
lw_sockops.c records it at ACTIVE_ESTABLISHED (kind "delivery"), oriented like the captured
records (received = what the client sent). Here a test socket in node1's namespace plays that
part, with the real programs and datapath of tests/bpf/conftest.py; `FlowReader` is what the
tunnel's telemetry uses (node_agent/ztunnel/telemetry.py).
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from node_agent.bpf.flows import FlowReader
from tests.bpf.conftest import _pod
from tests.bpf.netapps import Server, connect
from tests.bpf.topology import in_netns

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

IP_TRANSPARENT = 19
SO_COOKIE = 57


def cookie(sock: socket.socket) -> int:
    return struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]


def transparent(node_ns: str, src_ip: str, dst: tuple[str, int]) -> socket.socket:
    """A connection from node_ns that carries src_ip as its source, as the tunnel's are."""
    def mk():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        s.bind((src_ip, 0))
        s.settimeout(10)
        s.connect(dst)
        return s
    return in_netns(node_ns, mk)


def exact_exchange(s: socket.socket, *, send: int, receive: int) -> int:
    """The "exact" protocol of tests/bpf/netapps.Server: `send` bytes in all (header included),
    then read exactly `receive` bytes; the client closes first."""
    body = send
    for _ in range(3):
        head = f"exact {body} {receive}\n"
        body = send - len(head)
    s.sendall(head.encode())
    block = b"s" * 65536
    while body > 0:
        n = min(body, len(block))
        s.sendall(block[:n])
        body -= n
    got = 0
    while got < receive and (chunk := s.recv(min(262144, receive - got))):
        got += len(chunk)
    return got


def flows_of(dp, src: str, sport: int):
    return [f for f in dp.read_flows() if f.src == src and f.sport == sport]


def wait_closed(dp, src: str, sport: int):
    deadline = time.monotonic() + 10
    while True:
        found = flows_of(dp, src, sport)
        assert len(found) == 1, dp.read_flows()
        if not found[0].open or time.monotonic() > deadline:
            return found[0]
        time.sleep(0.02)


@pytest.fixture
def reader(dp):
    r = dp.flow_reader()
    try:
        yield r
    finally:
        r.close()


def test_the_tunnels_delivery_socket_is_counted_exactly(topo, dp, reader):
    node = topo.nodes[0]
    _a, _b, _c, d = node.pods
    e = topo.nodes[1].pods[0]              # a pod of another node: the client of a 15008 hop
    server = Server(d.name, 8181)
    dp.enroll(_pod(d))
    try:
        sent, reply = 5 * 1024 * 1024 + 4321, 3 * 1024 * 1024 + 17
        s = transparent(node.name, e.ip, (d.ip, 8181))
        with s:
            mine = s.getsockname()
            c = cookie(s)
            assert exact_exchange(s, send=sent, receive=reply) == reply
            live = reader.read(c)
            assert live is not None and not live.closed
        f = wait_closed(dp, e.ip, mine[1])
        assert (f.kind, f.dst, f.dport) == ("delivery", d.ip, 8181)
        assert f.src_pod == 0 and f.dst_pod != 0
        # oriented like a captured record: received is what the client (e) sent
        assert (f.received_bytes, f.sent_bytes) == (sent, reply)
        final = reader.read(c)
        assert final is not None and final.closed
        assert (final.received, final.sent) == (sent, reply)
        reader.consume(c)
        assert reader.read(c) is None and flows_of(dp, e.ip, mine[1]) == []
        reader.consume(c)                   # already gone: fine
    finally:
        dp.leave(_pod(d))
        server.close()


def test_same_node_and_node_sockets_get_no_delivery_record(topo, dp):
    node = topo.nodes[0]
    a, _b, _c, d = node.pods
    server = Server(d.name, 8182)
    dp.enroll(_pod(a))
    dp.enroll(_pod(d))
    try:
        # from an enrolled pod's address of this node: the captured side counts that one
        with transparent(node.name, a.ip, (d.ip, 8182)) as s:
            mine_a = s.getsockname()
            assert exact_exchange(s, send=1000, receive=10) == 10
        # from the node's own address: the node's (or the tunnel's cross-node) traffic
        with connect(node.name, d.ip, 8182) as s:
            mine_n = s.getsockname()
            assert exact_exchange(s, send=1000, receive=10) == 10
        time.sleep(0.2)
        assert flows_of(dp, a.ip, mine_a[1]) == []
        assert flows_of(dp, mine_n[0], mine_n[1]) == []
    finally:
        dp.leave(_pod(a))
        dp.leave(_pod(d))
        server.close()


def test_reap_deletes_only_closed_records_past_their_grace(topo, dp, reader):
    node = topo.nodes[0]
    _a, _b, c_pod, d = node.pods
    e = topo.nodes[1].pods[0]
    server = Server(d.name, 8183)
    dp.enroll(_pod(d))
    held = None
    try:
        held = transparent(node.name, e.ip, (d.ip, 8183))
        held.sendall(b"hold\n")
        held.sendall(b"x")
        assert held.recv(1) == b"k"
        open_cookie = cookie(held)
        with transparent(node.name, c_pod.ip, (d.ip, 8183)) as s:
            mine = s.getsockname()
            done_cookie = cookie(s)
            assert exact_exchange(s, send=2000, receive=20) == 20
        assert not wait_closed(dp, c_pod.ip, mine[1]).open
        assert reader.reap(older_than=3600) == 0            # closed, but only just
        assert reader.read(done_cookie) is not None
        later = time.monotonic_ns() + 7200 * 10**9
        assert reader.reap(older_than=60, now_ns=later) >= 1
        assert reader.read(done_cookie) is None              # gone
        kept = reader.read(open_cookie)                      # open: never reaped
        assert kept is not None and not kept.closed
        assert (kept.received, kept.sent) == (len(b"hold\nx"), 1)
    finally:
        if held is not None:
            held.close()
        dp.leave(_pod(d))
        server.close()


def test_a_reader_refuses_a_map_of_another_layout(dp):
    from node_agent.bpf.syscall import BPF_MAP_TYPE_HASH, Map, map_create

    m = Map(map_create(map_type=BPF_MAP_TYPE_HASH, key_size=8, value_size=64, max_entries=4))
    try:
        with pytest.raises(ValueError, match="reload the programs"):
            FlowReader(m)
    finally:
        m.close()
