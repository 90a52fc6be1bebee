"""The waypoint's SVID is renewed (waypoint/renewal.py): with a short TTL, a connection made
after renewal is served with the new certificate (serial and notAfter as the client saw them)
while a connection made before keeps working; the client context for node tunnels is swapped
too; a CA outage keeps the certificate in hand and the renewal recovers when the CA returns;
`python -m waypoint --ca-dir --svid-ttl` does it as a process, shown in /debug/snapshot and
/metrics. Real CA, real gRPC, real TLS on loopback."""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest
from cryptography import x509

from control.backoff import Backoff
from control.ca.authority import CertificateAuthority
from control.ca.spiffe_id import workload_id
from lacewing.sample_app import Behaviour
from tests.identity.helpers import running_cluster, wait_until
from tests.waypoint.conftest import eventually, make_snapshot, service_dict
from waypoint import renewal
from waypoint.proxy import Tunnels, WaypointThread
from waypoint.tls import client_context, server_context

WAYPOINT_ID = "spiffe://cluster.local/ns/demo/sa/waypoint"
FAST = Backoff(initial=0.1, maximum=0.4)


def peer_cert(sock) -> x509.Certificate:
    return x509.load_der_x509_certificate(sock.getpeercert(binary_form=True))


def client_for(ca: CertificateAuthority, sa: str = "alice") -> ssl.SSLContext:
    key, chain = ca.issue_with_new_key(workload_id("demo", sa))
    return client_context(b"".join(chain.cert_chain), key, b"".join(ca.trust_bundle))


def https(port: int, ctx: ssl.SSLContext) -> http.client.HTTPSConnection:
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
    conn.connect()
    return conn


def call(conn: http.client.HTTPSConnection) -> int:
    conn.request("GET", "/", headers={"Host": "web.demo"})
    resp = conn.getresponse()
    resp.read()
    return resp.status


class TlsPeer:
    """A TLS server standing in for a node tunnel: records the client certificate each
    connection presented."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.ctx = ctx
        self.serials: list[int] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(raw, server_side=True) as s:
                    self.serials.append(peer_cert(s).serial_number)
                    s.recv(1)
            except (OSError, ssl.SSLError):
                pass

    def close(self) -> None:
        self.sock.close()


def test_renewal_serves_new_connections_with_the_new_certificate(backends, tmp_path):
    ca_dir = tmp_path / "ca"
    ca = CertificateAuthority.load_or_generate(ca_dir)
    rot = renewal.SvidRotation(renewal.ca_dir_source(ca_dir, WAYPOINT_ID, ttl=4),
                               backoff=FAST)
    first = asyncio.run(rot.first())
    v1 = backends(("v1", Behaviour()))
    tunnels = Tunnels(client_context=None, source_ip="127.0.0.1")  # type: ignore[arg-type]
    wp = WaypointThread(make_snapshot([service_dict(v1)]), ssl_context=rot.server_context,
                        tunnels=tunnels).start()
    peer = TlsPeer(server_context(*_material(ca, "node-tunnel")))
    renewer = None
    try:
        wp.call(renewal.attach, rot, wp.waypoint, tunnels)
        assert tunnels.client_context is rot.client_context
        renewer = asyncio.run_coroutine_threadsafe(rot.run(), wp.loop)
        ctx = client_for(ca)
        old = https(wp.port, ctx)
        assert call(old) == 200
        before = peer_cert(old.sock)
        assert before.serial_number == first.serial
        _handshake(tunnels.client_context, peer.port)
        assert eventually(lambda: peer.serials == [first.serial])

        described = wp.call(wp.waypoint.describe)["certificate"]
        assert described["serial"] == format(first.serial, "x")
        assert described["identity"] == WAYPOINT_ID and described["state"] == "valid"
        assert wp.metrics.registry.get_sample_value(
            "lacewing_waypoint_certificate_expiry_seconds", {"identity": WAYPOINT_ID}) > 0

        assert eventually(lambda: rot.renewals >= 1, timeout=15)
        renewed = rot.current
        assert renewed.serial != first.serial and renewed.not_after > first.not_after

        new = https(wp.port, ctx)
        try:
            after = peer_cert(new.sock)
            assert after.serial_number == renewed.serial
            assert after.not_valid_after_utc > before.not_valid_after_utc
            assert call(new) == 200
        finally:
            new.close()
        # The connection made before the renewal keeps its certificate and keeps working.
        assert call(old) == 200 and peer_cert(old.sock).serial_number == first.serial
        old.close()
        # New upstream connections (to node tunnels) present the new certificate.
        assert tunnels.client_context is rot.client_context
        _handshake(tunnels.client_context, peer.port)
        assert eventually(lambda: len(peer.serials) == 2)
        assert peer.serials[1] == renewed.serial
        assert wp.call(wp.waypoint.describe)["certificate"]["serial"] == \
            format(renewed.serial, "x")
        assert wp.metrics.registry.get_sample_value(
            "lacewing_waypoint_certificate_renewals_total", {"result": "issued"}) >= 2
    finally:
        if renewer is not None:
            renewer.cancel()
        peer.close()
        wp.stop()


def _material(ca: CertificateAuthority, sa: str) -> tuple[bytes, bytes, bytes]:
    key, chain = ca.issue_with_new_key(workload_id("demo", sa))
    return b"".join(chain.cert_chain), key, b"".join(ca.trust_bundle)


def _handshake(ctx: ssl.SSLContext, port: int) -> int:
    """Connect, send a byte; the serial of the certificate the server presented."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw) as s:
        s.sendall(b"x")
        return peer_cert(s).serial_number


def test_a_ca_outage_keeps_the_certificate_and_renewal_recovers(tmp_path):
    async def go():
        placements = {"n1": {("demo", "waypoint")}}
        async with running_cluster(tmp_path, placements=placements) as cl:
            client = cl.client_for("n1", reconnect_backoff_max=0.3, timeout=2)
            rot = renewal.SvidRotation(renewal.ca_client_source(client, WAYPOINT_ID, ttl=6),
                                       backoff=FAST)
            first = await rot.first()
            await cl.stop()                         # the CA goes away
            task = asyncio.get_running_loop().create_task(rot.run())
            try:
                await wait_until(lambda: rot.failures >= 2, timeout=20)
                # Still the certificate in hand, still valid, still what new handshakes get.
                assert rot.current.serial == first.serial
                row = rot.describe()
                assert row["state"] == "valid" and row["failures"] >= 2
                assert "UNAVAILABLE" in row["last_error"]
                assert rot.renewals == 0
                await cl.start()                    # same port: the CA is back
                await wait_until(lambda: rot.renewals == 1, timeout=20)
                assert rot.current.serial != first.serial and rot.failures == 0
                assert rot.describe()["last_error"] is None
            finally:
                task.cancel()
                await client.close()
    asyncio.run(asyncio.wait_for(go(), 60))


def test_an_unreadable_ca_directory_is_an_outage_too(tmp_path):
    ca_dir = tmp_path / "ca"
    CertificateAuthority.load_or_generate(ca_dir)

    async def go():
        rot = renewal.SvidRotation(renewal.ca_dir_source(ca_dir, WAYPOINT_ID, ttl=4),
                                   backoff=FAST)
        first = await rot.first()
        shutil.move(ca_dir, tmp_path / "away")
        task = asyncio.get_running_loop().create_task(rot.run())
        try:
            await wait_until(lambda: rot.failures >= 1, timeout=20)
            assert rot.current.serial == first.serial
            shutil.move(tmp_path / "away", ca_dir)
            await wait_until(lambda: rot.renewals == 1, timeout=20)
            assert rot.current.serial != first.serial
        finally:
            task.cancel()
    asyncio.run(asyncio.wait_for(go(), 60))


def test_first_without_retry_reports_the_error(tmp_path):
    source = renewal.ca_dir_source(tmp_path / "missing", WAYPOINT_ID)
    with pytest.raises(renewal.SvidUnavailable, match="missing"):
        asyncio.run(renewal.SvidRotation(source).first(retry=False))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_waypoint_process_renews_its_svid(backends, tmp_path):
    from tests.waypoint.test_process import bootstrap_text

    backs = backends(("v1", Behaviour()), ("v2", Behaviour()))
    (tmp_path / "boot.yaml").write_text(bootstrap_text(backs, 0))
    ca_dir = tmp_path / "ca"
    metrics = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "waypoint", "--bootstrap", str(tmp_path / "boot.yaml"),
         "--listen", "127.0.0.1:0", "--metrics", f"127.0.0.1:{metrics}",
         "--ca-dir", str(ca_dir), "--svid-ttl", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line + proc.stderr.read()
        port = int(line.rsplit(":", 1)[1])
        ctx = client_for(CertificateAuthority.from_plugin(ca_dir))

        def served_serial() -> int:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    ctx.wrap_socket(raw) as s:
                return peer_cert(s).serial_number

        def snapshot() -> dict:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/debug/snapshot",
                                        timeout=5) as r:
                return json.load(r)["certificate"]

        first = served_serial()
        assert snapshot()["serial"] == format(first, "x")
        assert eventually(lambda: snapshot()["renewals"] >= 1, timeout=15)
        now = snapshot()
        assert served_serial() == int(now["serial"], 16) != first
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert f'lacewing_waypoint_certificate_expiry_seconds{{identity="{WAYPOINT_ID}"}}' \
            in text
        proc.terminate()
        assert proc.wait(10) == 0
        assert "waypoint SVID renewed" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_an_expired_certificate_is_never_presented(tmp_path):
    ca_dir = tmp_path / "ca"
    ca = CertificateAuthority.load_or_generate(ca_dir)
    now = [0.0]
    rot = renewal.SvidRotation(renewal.ca_dir_source(ca_dir, WAYPOINT_ID, ttl=60),
                               clock=lambda: now[0])
    first = asyncio.run(rot.first())
    peer = TlsPeer(rot.server_context)
    try:
        ctx = client_for(ca)
        now[0] = first.not_after - 1
        assert _handshake(ctx, peer.port) == first.serial    # still valid: served
        now[0] = first.not_after                 # expired, nothing new: refused
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _handshake(ctx, peer.port)
        assert rot.describe()["state"] == "expired"
    finally:
        peer.close()


def test_the_waypoint_process_uses_the_control_planes_ca_and_rides_out_an_outage(tmp_path):
    """`python -m waypoint --xds ... --credentials DIR` without --ca-dir: the SVID comes from
    the control plane's CA (a CSR over gRPC with the node credential) and is renewed; while
    the CA is away the process keeps serving its certificate, and renews once it is back.
    (Only the CA runs here: the xDS follower keeps retrying, which does not matter.)"""
    from control.ca.node_credentials import issue_node_credential
    from tests.identity.helpers import Cluster

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_loop(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    cluster = Cluster(tmp_path, placements={"n1": {("demo", "waypoint")}})
    on_loop(cluster.start())
    issue_node_credential(cluster.ca, "n1", tmp_path / "cred")
    metrics = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "waypoint", "--xds", f"127.0.0.1:{cluster.port}",
         "--credentials", str(tmp_path / "cred"), "--node", "n1", "--waypoint", "demo/waypoint",
         "--listen", "127.0.0.1:0", "--metrics", f"127.0.0.1:{metrics}", "--svid-ttl", "6"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        ctx = client_for(cluster.ca)

        def served() -> int:
            return _handshake(ctx, port)

        def snapshot() -> dict:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/debug/snapshot",
                                        timeout=5) as r:
                return json.load(r)["certificate"]

        first = served()
        assert snapshot()["identity"] == WAYPOINT_ID
        assert eventually(lambda: snapshot()["renewals"] >= 1, timeout=15)
        renewed = served()
        assert renewed != first and snapshot()["serial"] == format(renewed, "x")
        on_loop(cluster.stop())                        # the CA goes away
        assert eventually(lambda: snapshot()["failures"] >= 1, timeout=15)
        assert served() == renewed                     # still serving what it has
        assert snapshot()["state"] == "valid"
        on_loop(cluster.start())                       # back, same port
        assert eventually(lambda: snapshot()["renewals"] >= 2, timeout=20)
        assert served() not in (first, renewed) and snapshot()["failures"] == 0
        proc.terminate()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        on_loop(cluster.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_readiness_fails_while_the_certificate_is_expired(tmp_path):
    """/healthz/ready answers 503 while the waypoint has no valid SVID (every node tunnel's
    handshake would be refused), 200 again once it has one."""
    ca_dir = tmp_path / "ca"
    CertificateAuthority.load_or_generate(ca_dir)
    now = [0.0]
    rot = renewal.SvidRotation(renewal.ca_dir_source(ca_dir, WAYPOINT_ID, ttl=60),
                               clock=lambda: now[0])
    first = asyncio.run(rot.first())

    def ready(port: int) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz/ready",
                                        timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    svc = {"name": "web", "namespace": "demo", "ports": [{"port": 80}], "endpoints": []}
    with WaypointThread(make_snapshot([svc]), metrics_port=0) as wp:
        wp.call(renewal.attach, rot, wp.waypoint, Tunnels(client_context=rot.client_context,
                                                         source_ip="127.0.0.1"))
        now[0] = first.not_after - 1
        assert ready(wp.metrics_port) == (200, "ready\n")
        now[0] = first.not_after
        status, text = ready(wp.metrics_port)
        assert status == 503 and "certificate is expired" in text
