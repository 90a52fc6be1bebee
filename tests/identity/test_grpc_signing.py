"""Signing over real gRPC with mTLS on loopback: node-scoped, refusals coded, counted, logged."""

import asyncio
import base64
import logging

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from spiffe import X509Svid

from control.ca.authority import CertificateAuthority
from control.ca.spiffe_id import workload_id
from node_agent.certs.ca_client import CaRefused, CaUnavailable, GrpcCaClient
from node_agent.certs.csr import make_csr
from tests.identity.helpers import openssl_verify, running_cluster

WEB = "spiffe://cluster.local/ns/default/sa/web"
DB = "spiffe://cluster.local/ns/shop/sa/db"
PLACEMENTS = {"n1": {("default", "web")}, "n2": {("shop", "db")}}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def raw_csr(*names, key=None, ca=None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(list(names)), critical=True)
    if ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def forged_csr() -> bytes:
    """A CSR whose signature was made by another key than the one it carries."""
    good = x509.load_pem_x509_csr(raw_csr(x509.UniformResourceIdentifier(WEB)))
    other = x509.load_pem_x509_csr(raw_csr(x509.UniformResourceIdentifier(WEB)))

    def der_len(n):
        if n < 0x80:
            return bytes([n])
        b = n.to_bytes((n.bit_length() + 7) // 8, "big")
        return bytes([0x80 | len(b)]) + b

    sig = other.signature
    body = (good.tbs_certrequest_bytes + bytes.fromhex("300a06082a8648ce3d040302")
            + b"\x03" + der_len(len(sig) + 1) + b"\x00" + sig)
    der = b"\x30" + der_len(len(body)) + body
    return (b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(der)
            + b"-----END CERTIFICATE REQUEST-----\n")


def test_node_gets_svid_for_its_pod(tmp_path):
    async def go():
        async with running_cluster(tmp_path, placements=PLACEMENTS) as cl:
            client = cl.client_for("n1")
            key_pem, csr_pem = make_csr(WEB)
            signed = await client.sign(csr_pem, validity_seconds=600)
            svid = X509Svid.parse(b"".join(signed.cert_chain), key_pem)
            assert str(svid.spiffe_id) == WEB
            r = openssl_verify(tmp_path / "v", bundle=b"".join(signed.trust_bundle),
                               chain=signed.cert_chain)
            assert r.returncode == 0, r.stdout + r.stderr
            assert signed.trust_bundle == cl.ca.trust_bundle
            assert cl.metric("lacewing_ca_certificates_issued_total", kind="workload") == 1
            bundle = await client.trust_bundle()
            assert bundle == cl.ca.trust_bundle
    run(go())


def test_requested_validity_is_capped_at_max(tmp_path):
    async def go():
        ca = CertificateAuthority.load_or_generate(tmp_path / "ca", max_ttl=3600)
        async with running_cluster(tmp_path, ca=ca, placements=PLACEMENTS) as cl:
            _, csr_pem = make_csr(WEB)
            signed = await cl.client_for("n1").sign(csr_pem, validity_seconds=30 * 86400)
            leaf = x509.load_pem_x509_certificate(signed.cert_chain[0])
            life = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds()
            assert life <= 3600 + 60
    run(go())


def test_someone_elses_identity_is_permission_denied_counted_and_logged(tmp_path, caplog):
    async def go():
        async with running_cluster(tmp_path, placements=PLACEMENTS) as cl:
            client = cl.client_for("n1")
            _, csr_pem = make_csr(DB)  # db runs on n2
            with caplog.at_level(logging.WARNING, logger="lacewing.ca"):
                with pytest.raises(CaRefused) as err:
                    await client.sign(csr_pem)
            assert err.value.code == "PERMISSION_DENIED"
            assert cl.metric("lacewing_ca_csr_refused_total", reason="not_on_node") == 1
            assert cl.metric("lacewing_ca_certificates_issued_total", kind="workload") == 0
            assert any("n1" in r.getMessage() and "not_on_node" in r.getMessage()
                       for r in caplog.records)
            # the node that does run db gets it
            await cl.client_for("n2").sign(csr_pem)
            assert cl.metric("lacewing_ca_certificates_issued_total", kind="workload") == 1
    run(go())


def test_pod_leaving_the_node_stops_issuance(tmp_path):
    async def go():
        async with running_cluster(tmp_path, placements=PLACEMENTS) as cl:
            client = cl.client_for("n1")
            _, csr_pem = make_csr(WEB)
            await client.sign(csr_pem)
            cl.workloads.remove("n1", "default", "web")
            with pytest.raises(CaRefused, match="PERMISSION_DENIED"):
                await client.sign(csr_pem)
    run(go())


URI = x509.UniformResourceIdentifier


@pytest.mark.parametrize("make, reason", [
    (lambda: raw_csr(), "no_uri_san"),
    (lambda: raw_csr(URI(WEB), URI("spiffe://cluster.local/ns/default/sa/x")), "several_uri_sans"),
    (lambda: raw_csr(URI("spiffe://evil.org/ns/default/sa/web")), "other_trust_domain"),
    (lambda: raw_csr(URI(WEB), ca=True), "ca_requested"),
    (forged_csr, "bad_signature"),
    (lambda: b"hello", "unparsable"),
])
def test_malformed_csrs_are_invalid_argument_counted(tmp_path, make, reason):
    async def go():
        async with running_cluster(tmp_path, placements=PLACEMENTS) as cl:
            client = cl.client_for("n1")
            with pytest.raises(CaRefused) as err:
                await client.sign(make())
            assert err.value.code == "INVALID_ARGUMENT"
            assert cl.metric("lacewing_ca_csr_refused_total", reason=reason) == 1
            assert cl.metric("lacewing_ca_certificates_issued_total", kind="workload") == 0
    run(go())


def test_workload_certificate_cannot_act_as_a_node(tmp_path):
    async def go():
        async with running_cluster(tmp_path, placements=PLACEMENTS) as cl:
            # a pod's own SVID chains to the same root, but it is not a node identity
            key_pem, issued = cl.ca.issue_with_new_key(workload_id("default", "web"))
            client = GrpcCaClient(f"127.0.0.1:{cl.port}", cert_chain_pem=b"".join(issued.cert_chain),
                                  key_pem=key_pem, roots_pem=b"".join(cl.ca.trust_bundle))
            try:
                _, csr_pem = make_csr(WEB)
                with pytest.raises(CaRefused, match="PERMISSION_DENIED"):
                    await client.sign(csr_pem)
            finally:
                await client.close()
            assert cl.metric("lacewing_ca_csr_refused_total", reason="not_a_node") == 1
            assert cl.metric("lacewing_ca_certificates_issued_total", kind="workload") == 0
    run(go())


def test_node_credential_from_another_ca_is_rejected_at_handshake(tmp_path):
    async def go():
        stranger = CertificateAuthority.load_or_generate(tmp_path / "stranger")
        async with running_cluster(tmp_path, placements=PLACEMENTS) as cl:
            from control.ca.node_credentials import issue_node_credential
            issue_node_credential(stranger, "n1", tmp_path / "fake-n1")
            # it trusts our server (real bundle) but presents a node cert from another root
            cred_dir = tmp_path / "fake-n1"
            client = GrpcCaClient(
                f"127.0.0.1:{cl.port}",
                cert_chain_pem=(cred_dir / "node-cert.pem").read_bytes(),
                key_pem=(cred_dir / "node-key.pem").read_bytes(),
                roots_pem=b"".join(cl.ca.trust_bundle), timeout=3)
            try:
                _, csr_pem = make_csr(WEB)
                with pytest.raises((CaUnavailable, CaRefused)):
                    await client.sign(csr_pem)
            finally:
                await client.close()
            assert cl.metric("lacewing_ca_certificates_issued_total", kind="workload") == 0
    run(go())


def test_client_checks_the_control_plane_certificate(tmp_path):
    async def go():
        other = CertificateAuthority.load_or_generate(tmp_path / "other")
        async with running_cluster(tmp_path, placements=PLACEMENTS) as cl:
            client = cl.client_for("n1")
            # a client that trusts only another root must not talk to this server
            cred = tmp_path / "nodes" / "n1"
            wary = GrpcCaClient(f"127.0.0.1:{cl.port}",
                                cert_chain_pem=(cred / "node-cert.pem").read_bytes(),
                                key_pem=(cred / "node-key.pem").read_bytes(),
                                roots_pem=b"".join(other.trust_bundle), timeout=3)
            try:
                with pytest.raises(CaUnavailable):
                    await wary.trust_bundle()
            finally:
                await wary.close()
            # and the right server name is required too
            named = GrpcCaClient(f"127.0.0.1:{cl.port}",
                                 cert_chain_pem=(cred / "node-cert.pem").read_bytes(),
                                 key_pem=(cred / "node-key.pem").read_bytes(),
                                 roots_pem=b"".join(cl.ca.trust_bundle),
                                 server_name="web.default.svc", timeout=3)
            try:
                with pytest.raises(CaUnavailable):
                    await named.trust_bundle()
            finally:
                await named.close()
            assert await client.trust_bundle() == cl.ca.trust_bundle
    run(go())
