"""Tier 2: what :15008 does with bad peers — refused or timed out, counted, logged, no crash, and
connections already open keep working."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from control.ca.authority import CertificateAuthority
from node_agent.certs.manager import WorkloadCertificate
from node_agent.certs.tls import ssl_context
from node_agent.ztunnel import wire
from tests.ztunnel.helpers import ident, service, snapshot, workload
from tests.ztunnel.mesh import running_mesh

pytestmark = pytest.mark.timeout(90)

CLIENT = workload("client", "127.0.10.5", node="node0", node_ip="127.0.0.1")
SRV = workload("srv", "127.0.11.5", node="node1", node_ip="127.0.0.2")
DB = workload("db", "127.0.11.6", node="node1", node_ip="127.0.0.2")
PLACEMENTS = {"node0": {("default", "client")}, "node1": {("default", "srv"), ("default", "db")}}
SVC = service("srv", "127.0.20.1", [SRV])


def make(node):
    return snapshot(node, [CLIENT, SRV, DB], services=[SVC])


def wc_from(key, chain: list[bytes], bundle: bytes, identity: str) -> WorkloadCertificate:
    from control.ca.spiffe_id import parse_workload
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return WorkloadCertificate(identity=parse_workload(identity), cert_chain_pem=b"".join(chain),
                               key_pem=pem, trust_bundle_pem=bundle, serial=1, not_before=0,
                               not_after=0)


def forge(tmp_path, *, uris: list[str], days_from: float, days_to: float) -> ssl.SSLContext:
    """A client context whose leaf the mesh CA really signed, with chosen SANs and validity."""
    ca_dir = tmp_path / "ca"
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca-cert.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca-key.pem").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + dt.timedelta(days=days_from))
            .not_valid_after(now + dt.timedelta(days=days_to))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(u) for u in uris]), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    bundle = (ca_dir / "root-cert.pem").read_bytes() if (ca_dir / "root-cert.pem").exists() \
        else (ca_dir / "ca-cert.pem").read_bytes()
    return ssl_context(wc_from(key, [leaf.public_bytes(serialization.Encoding.PEM)], bundle,
                               uris[0]), server=False)


def valid_ctx(ca: CertificateAuthority, identity: str, *,
              trust: CertificateAuthority | None = None) -> ssl.SSLContext:
    from control.ca.spiffe_id import parse_workload
    key, chain = ca.issue_with_new_key(parse_workload(identity))
    wc = WorkloadCertificate(identity=parse_workload(identity),
                             cert_chain_pem=b"".join(chain.cert_chain), key_pem=key,
                             trust_bundle_pem=b"".join((trust or ca).trust_bundle),
                             serial=chain.serial,
                             not_before=chain.not_before, not_after=chain.not_after)
    return ssl_context(wc, server=False)


async def attempt(mesh, ctx: ssl.SSLContext | None, *, sni: str, target=SRV, raw: bytes = b""):
    """Talk to node1's :15008; returns the reply status, or the name of the failure."""
    host, port = mesh.tunnels["node1"].addresses["inbound"]
    try:
        async with asyncio.timeout(10):
            if ctx is None:
                r, w = await asyncio.open_connection(host, port)
                w.write(raw)
            else:
                r, w = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=sni)
                w.write(wire.encode_header(wire.TunnelHeader(
                    wire.Address(target.ip, 8080), wire.Address(CLIENT.ip, 5555))))
            await w.drain()
            data = await r.read(4096)
            w.close()
    except (ssl.SSLError, ConnectionError) as exc:
        return type(exc).__name__
    if not data:
        return "eof"
    return wire.ReplyReader().feed(data)[0] if data.startswith(b"LW") else data


def refused(mesh, prefix: str) -> float:
    total = 0.0
    for fam in mesh.registries["node1"].collect():
        for s in fam.samples:
            if (s.name == "lacewing_tunnel_refused_connections_total"
                    and s.labels["reason"].startswith(prefix)):
                total += s.value
    return total


async def eventually(predicate, timeout: float = 10.0) -> None:
    """Counters move in the tunnel's own tasks, a moment after the client saw the outcome."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def open_echo(mesh):
    r, w = await mesh.connect(CLIENT.ip, (SVC.vip, 80))
    assert (await r.readline()).startswith(b"127.")
    return r, w


async def still_works(r, w, payload=b"still here"):
    w.write(payload)
    await w.drain()
    assert await asyncio.wait_for(r.readexactly(len(payload)), 10) == payload


def test_every_bad_peer_is_refused_counted_and_open_connections_survive(tmp_path):
    async def go():
        async with running_mesh(tmp_path, placements=PLACEMENTS, handshake_timeout=1.0) as mesh:
            await mesh.pod(SRV.ip)
            await mesh.pod(DB.ip)
            await mesh.apply(make)
            r, w = await open_echo(mesh)
            sni = wire.sni_for(SRV.identity)
            ca = mesh.cluster.ca

            # plaintext and garbage
            assert await attempt(mesh, None, sni=sni, raw=b"GET / HTTP/1.1\r\n\r\n") in (
                "eof", "ConnectionResetError")
            assert await attempt(mesh, None, sni=sni, raw=bytes(range(256)) * 8) in (
                "eof", "ConnectionResetError")
            await eventually(lambda: refused(mesh, "handshake_failed") == 2)

            # a certificate from another CA
            other = CertificateAuthority.load_or_generate(tmp_path / "other-ca")
            assert await attempt(mesh, valid_ctx(other, CLIENT.identity, trust=ca),
                                 sni=sni) != wire.OK
            # an expired one, signed by the right CA
            expired = forge(tmp_path, uris=[CLIENT.identity], days_from=-3, days_to=-1)
            assert await attempt(mesh, expired, sni=sni) != wire.OK
            await eventually(lambda: refused(mesh, "handshake_failed") == 4)

            # two URI SANs
            two = forge(tmp_path, uris=[CLIENT.identity, ident("kube-system", "admin")],
                        days_from=-1, days_to=1)
            assert await attempt(mesh, two, sni=sni) in ("eof", "ConnectionResetError")
            await eventually(lambda: refused(mesh, "bad_peer_certificate") == 1)

            # a valid certificate asking for a workload of another identity
            good = valid_ctx(ca, CLIENT.identity)
            assert await attempt(mesh, good, sni=sni, target=DB) == wire.UNKNOWN_TARGET
            assert await attempt(mesh, good, sni=wire.sni_for(DB.identity), target=SRV) == \
                wire.UNKNOWN_TARGET
            # an identity that is not served here at all (SNI refused in the handshake)
            assert await attempt(mesh, good, sni=wire.sni_for(ident("x", "y"))) != wire.OK
            await eventually(lambda: refused(mesh, "unknown_target") == 2)
            await eventually(lambda: refused(mesh, "sni_unknown_identity") == 1)
            # the right request works
            assert await attempt(mesh, good, sni=sni) == wire.OK

            # garbage after a good handshake
            host, port = mesh.tunnels["node1"].addresses["inbound"]
            rr, ww = await asyncio.open_connection(host, port, ssl=good, server_hostname=sni)
            ww.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = await asyncio.wait_for(rr.read(100), 10)
            assert reply.startswith(b"LW\x04")
            ww.close()
            await eventually(lambda: refused(mesh, "bad_header") == 1)

            await still_works(r, w)
            denials = [e for e in mesh.access("node1") if e["decision"] != "allow"]
            assert len(denials) >= 9
            w.close()
    asyncio.run(go())


def test_half_open_handshakes_time_out_and_idle_floods_are_bounded(tmp_path):
    async def go():
        async with running_mesh(tmp_path, placements=PLACEMENTS, handshake_timeout=0.5,
                                max_pending=100) as mesh:
            await mesh.pod(SRV.ip)
            await mesh.apply(make)
            r, w = await open_echo(mesh)
            host, port = mesh.tunnels["node1"].addresses["inbound"]
            idle = []
            for _ in range(1500):
                try:
                    idle.append(await asyncio.open_connection(host, port))
                except OSError:
                    break
            await still_works(r, w)
            deadline = asyncio.get_running_loop().time() + 20
            while (refused(mesh, "handshake_timeout") + refused(mesh, "pending_limit") < 1500
                   and asyncio.get_running_loop().time() < deadline):
                await asyncio.sleep(0.1)
            assert refused(mesh, "pending_limit") >= 1000
            assert refused(mesh, "handshake_timeout") >= 1
            assert refused(mesh, "handshake_timeout") + refused(mesh, "pending_limit") == 1500
            for _, iw in idle:
                iw.close()
            await still_works(r, w, b"after the flood")
            # a new, good connection is served again
            r2, w2 = await open_echo(mesh)
            await still_works(r2, w2)
            w.close()
            w2.close()
    asyncio.run(go())


def test_idle_connections_are_closed_after_the_idle_timeout(tmp_path):
    async def go():
        async with running_mesh(tmp_path, placements=PLACEMENTS, idle_timeout=0.4) as mesh:
            await mesh.pod(SRV.ip)
            await mesh.apply(make)
            r, w = await open_echo(mesh)
            assert await asyncio.wait_for(r.read(), 15) == b""   # closed by the tunnel
            assert any("idle timeout" in e["reason"] for e in mesh.access("node0"))
    asyncio.run(go())
