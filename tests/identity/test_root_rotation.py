"""Root rotation: with old and new roots in the bundle, old-root and new-root certificates
complete TLS 1.3 mutual handshakes with each other, both ways; the procedure in
docs/identity.md works end to end over gRPC with a live CA swap."""

import asyncio
import shutil
import socket
import ssl
import threading

import pytest

from control.ca import certificates as c
from control.ca.authority import CertificateAuthority
from control.ca.spiffe_id import workload_id
from node_agent.certs.manager import CertificateManager, WorkloadCertificate
from node_agent.certs.schedule import Backoff
from node_agent.certs.tls import peer_spiffe_id, ssl_context
from tests.identity.helpers import running_cluster

WEB = workload_id("default", "web")
DB = workload_id("shop", "db")


def as_workload_cert(ca, ident, *, bundle: bytes) -> WorkloadCertificate:
    key_pem, issued = ca.issue_with_new_key(ident)
    return WorkloadCertificate(identity=ident, cert_chain_pem=b"".join(issued.cert_chain),
                               key_pem=key_pem, trust_bundle_pem=bundle, serial=issued.serial,
                               not_before=issued.not_before, not_after=issued.not_after)


def mutual_handshake(server_cert: WorkloadCertificate, client_cert: WorkloadCertificate):
    """One TLS handshake over loopback; returns (what the server saw, what the client saw)."""
    server_ctx = ssl_context(server_cert, server=True)
    client_ctx = ssl_context(client_cert, server=False)
    result: dict = {}
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]

    def serve():
        try:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                result["server_saw"] = peer_spiffe_id(tls)
                result["version"] = tls.version()
                tls.sendall(b"ok")
        except Exception as exc:  # noqa: BLE001 - reported to the test below
            result["server_error"] = exc

    t = threading.Thread(target=serve)
    t.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_ctx.wrap_socket(raw) as tls:
                client_saw = peer_spiffe_id(tls)
                assert tls.recv(2) == b"ok"  # TLS 1.3: the server checks the client cert here
    finally:
        t.join(10)
        listener.close()
    if "server_error" in result:
        raise result["server_error"]
    return result["server_saw"], client_saw, result["version"]


@pytest.fixture
def two_roots(tmp_path):
    old = CertificateAuthority.load_or_generate(tmp_path / "old")
    new = CertificateAuthority.load_or_generate(tmp_path / "new")
    return old, new


def test_old_and_new_root_certificates_interoperate_both_ways(two_roots):
    old, new = two_roots
    bundle = old.trust_bundle[0] + new.trust_bundle[0]
    web_old = as_workload_cert(old, WEB, bundle=bundle)
    db_new = as_workload_cert(new, DB, bundle=bundle)
    for server, client in ((web_old, db_new), (db_new, web_old)):
        server_saw, client_saw, version = mutual_handshake(server, client)
        assert server_saw == client.identity.uri
        assert client_saw == server.identity.uri
        assert version == "TLSv1.3"


def test_without_the_other_root_the_handshake_fails(two_roots):
    old, new = two_roots
    web_old = as_workload_cert(old, WEB, bundle=old.trust_bundle[0])
    db_new = as_workload_cert(new, DB, bundle=new.trust_bundle[0] + old.trust_bundle[0])
    # the server trusts only the old root; the new-root client is refused
    with pytest.raises((ssl.SSLError, ConnectionError)):
        mutual_handshake(web_old, db_new)


def _phase_dir(base, name, *, signer_dir, roots: bytes):
    d = base / name
    d.mkdir()
    for f in ("ca-cert.pem", "ca-key.pem", "cert-chain.pem"):
        shutil.copy(signer_dir / f, d / f)
    (d / "root-cert.pem").write_bytes(roots)
    return d


def test_rotation_procedure_end_to_end_over_grpc(tmp_path, two_roots):
    """Phase 1: sign with the old key, bundle old+new. Phase 2: sign with the new key, same
    bundle. A node that only knew the old root keeps talking to the CA throughout, and its
    phase-1 and phase-2 certificates interoperate."""
    old, new = two_roots
    roots = old.trust_bundle[0] + new.trust_bundle[0]
    phase1 = CertificateAuthority.from_plugin(
        _phase_dir(tmp_path, "p1", signer_dir=tmp_path / "old", roots=roots))
    phase2 = CertificateAuthority.from_plugin(
        _phase_dir(tmp_path, "p2", signer_dir=tmp_path / "new", roots=roots))
    assert len(phase1.trust_bundle) == 2

    async def go():
        placements = {"n1": {("default", "web"), ("shop", "db")}}
        async with running_cluster(tmp_path / "cl", ca=old, placements=placements) as cl:
            client = cl.client_for("n1", timeout=3)  # node credential from the old root only
            mgr = CertificateManager(client, backoff=Backoff(initial=0.1, maximum=0.3))
            try:
                cl.server.replace_ca(phase1)
                web = await mgr.get(WEB)
                cl.server.replace_ca(phase2)
                db = await mgr.get(DB)
                web = await mgr.get(WEB)  # now carries the newest bundle too
                leaf_issuers = {c.load_pem_certs(x.cert_chain_pem)[0].issuer for x in (web, db)}
                assert len(leaf_issuers) == 2  # really one old-root and one new-root leaf
                return web, db
            finally:
                await mgr.close()

    web, db = asyncio.run(asyncio.wait_for(go(), 60))
    assert web.trust_bundle_pem == roots and db.trust_bundle_pem == roots
    for server, client in ((web, db), (db, web)):
        server_saw, client_saw, _ = mutual_handshake(server, client)
        assert (server_saw, client_saw) == (client.identity.uri, server.identity.uri)
