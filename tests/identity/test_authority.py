"""The CA: generated or plug-in, persisted, and every SPIFFE X.509-SVID rule on what it issues."""

import os
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from spiffe import X509Svid

from control.ca import certificates as c
from control.ca.authority import CaConfigError, CertificateAuthority
from control.ca.spiffe_id import node_id, workload_id
from tests.identity.helpers import make_intermediate, openssl_verify, write_root

WEB = workload_id("default", "web")


@pytest.fixture
def ca(tmp_path):
    return CertificateAuthority.load_or_generate(tmp_path / "ca")


def leaf_of(issued) -> x509.Certificate:
    return x509.load_pem_x509_certificate(issued.cert_chain[0])


def test_issued_svid_meets_every_spiffe_rule(ca):
    key_pem, issued = ca.issue_with_new_key(WEB)
    leaf = leaf_of(issued)
    ext = leaf.extensions
    san = ext.get_extension_for_class(x509.SubjectAlternativeName)
    # exactly one URI SAN, the SPIFFE ID
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [WEB.uri]
    assert len(list(san.value)) == 1
    # cA=false, critical
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    # critical key usage with digitalSignature only
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature
    for other in ("content_commitment", "key_encipherment", "data_encipherment",
                  "key_agreement", "key_cert_sign", "crl_sign"):
        assert getattr(ku.value, other) is False, other
    # EKU serverAuth + clientAuth
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    # ECDSA P-256
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(leaf.public_key().curve, ec.SECP256R1)
    # the independent `spiffe` package accepts it as an X.509-SVID
    svid = X509Svid.parse(b"".join(issued.cert_chain), key_pem)
    assert str(svid.spiffe_id) == WEB.uri
    # and openssl verifies it against the bundle, for both TLS purposes
    assert issued.trust_bundle == ca.trust_bundle


@pytest.mark.parametrize("purpose", ["sslserver", "sslclient"])
def test_openssl_verifies_against_bundle(ca, tmp_path, purpose):
    _, issued = ca.issue_with_new_key(WEB)
    r = openssl_verify(tmp_path / "v", bundle=b"".join(issued.trust_bundle),
                       chain=issued.cert_chain, purpose=purpose)
    assert r.returncode == 0, r.stdout + r.stderr


def test_openssl_rejects_against_another_root(ca, tmp_path):
    other = CertificateAuthority.load_or_generate(tmp_path / "other")
    _, issued = ca.issue_with_new_key(WEB)
    r = openssl_verify(tmp_path / "v", bundle=b"".join(other.trust_bundle), chain=issued.cert_chain)
    assert r.returncode != 0


def test_default_ttl_is_24h_and_max_caps_requests(tmp_path):
    now = 1_900_000_000.0
    ca = CertificateAuthority.load_or_generate(tmp_path / "ca", max_ttl=3600, default_ttl=1800,
                                               clock=lambda: now)
    _, issued = ca.issue_with_new_key(WEB, ttl=10 * 86400)
    assert issued.not_after == now + 3600
    _, issued = ca.issue_with_new_key(WEB, ttl=0)
    assert issued.not_after == now + 1800
    _, issued = ca.issue_with_new_key(WEB, ttl=5)
    assert issued.not_after == now + 5
    assert issued.not_before <= now
    plain = CertificateAuthority.load_or_generate(tmp_path / "ca")
    assert plain.effective_ttl(0) == 24 * 3600


def test_leaf_never_outlives_signing_cert(tmp_path):
    root_key, root = write_root(tmp_path / "p")
    inter_key, inter = make_intermediate(root_key, root, days=1)
    d = tmp_path / "p"
    (d / "ca-cert.pem").write_bytes(c.cert_pem(inter))
    (d / "ca-key.pem").write_bytes(c.key_pem(inter_key))
    (d / "root-cert.pem").write_bytes(c.cert_pem(root))
    (d / "cert-chain.pem").write_bytes(c.cert_pem(inter) + c.cert_pem(root))
    ca = CertificateAuthority.from_plugin(d, max_ttl=30 * 86400)
    _, issued = ca.issue_with_new_key(WEB, ttl=30 * 86400)
    assert issued.not_after <= c.not_after_ts(inter)


def test_generated_root_persists_across_restart(tmp_path):
    d = tmp_path / "ca"
    first = CertificateAuthority.load_or_generate(d)
    assert (os.stat(d / "ca-key.pem").st_mode & 0o777) == 0o600
    second = CertificateAuthority.load_or_generate(d)
    assert first.trust_bundle == second.trust_bundle
    # a certificate issued before the restart still verifies against the bundle after it
    _, issued = first.issue_with_new_key(WEB)
    leaf_of(issued).verify_directly_issued_by(x509.load_pem_x509_certificate(second.trust_bundle[0]))


def test_root_is_ecdsa_p256_ca(ca):
    root = x509.load_pem_x509_certificate(ca.trust_bundle[0])
    assert isinstance(root.public_key().curve, ec.SECP256R1)
    assert c.is_ca_cert(root) and c.is_self_signed(root)


def test_plugin_ca_with_intermediate_issues_chain_with_it(tmp_path):
    d = tmp_path / "cacerts"
    root_key, root = write_root(d)
    inter_key, inter = make_intermediate(root_key, root)
    (d / "ca-cert.pem").write_bytes(c.cert_pem(inter))
    (d / "ca-key.pem").write_bytes(c.key_pem(inter_key))
    (d / "root-cert.pem").write_bytes(c.cert_pem(root))
    (d / "cert-chain.pem").write_bytes(c.cert_pem(inter) + c.cert_pem(root))
    ca = CertificateAuthority.from_plugin(d)
    key_pem, issued = ca.issue_with_new_key(WEB)
    assert len(issued.cert_chain) == 2
    assert x509.load_pem_x509_certificate(issued.cert_chain[1]) == inter
    assert issued.trust_bundle == (c.cert_pem(root),)
    r = openssl_verify(tmp_path / "v", bundle=issued.trust_bundle[0], chain=issued.cert_chain)
    assert r.returncode == 0, r.stdout + r.stderr
    X509Svid.parse(b"".join(issued.cert_chain), key_pem)  # intermediates checked by spiffe too


def test_plugin_ca_with_rsa_intermediate_still_issues_p256_leaves(tmp_path):
    # Istio's sample plug-in certs are RSA; the leaves we issue stay ECDSA P-256.
    from cryptography.hazmat.primitives import hashes
    d = tmp_path / "cacerts"
    root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = time.time()
    root = c.build_root(key=root_key, trust_domain="cluster.local", not_before=now - 60,
                        not_after=now + 86400)
    d.mkdir()
    (d / "ca-cert.pem").write_bytes(c.cert_pem(root))
    (d / "ca-key.pem").write_bytes(c.key_pem(root_key))
    (d / "root-cert.pem").write_bytes(c.cert_pem(root))
    ca = CertificateAuthority.from_plugin(d)
    _, issued = ca.issue_with_new_key(WEB)
    leaf = leaf_of(issued)
    assert isinstance(leaf.public_key().curve, ec.SECP256R1)
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
    r = openssl_verify(tmp_path / "v", bundle=issued.trust_bundle[0], chain=issued.cert_chain)
    assert r.returncode == 0, r.stdout + r.stderr


def test_plugin_ca_errors_name_the_file_and_the_fix(tmp_path):
    d = tmp_path / "cacerts"
    root_key, root = write_root(d)
    with pytest.raises(CaConfigError, match="ca-cert.pem is missing"):
        CertificateAuthority.from_plugin(d)
    other_key = c.new_key()
    (d / "ca-cert.pem").write_bytes(c.cert_pem(root))
    (d / "ca-key.pem").write_bytes(c.key_pem(other_key))
    (d / "root-cert.pem").write_bytes(c.cert_pem(root))
    with pytest.raises(CaConfigError, match="not the key of"):
        CertificateAuthority.from_plugin(d)
    # an intermediate whose root is not in root-cert.pem
    inter_key, inter = make_intermediate(root_key, root)
    _, stranger = write_root(tmp_path / "x")
    (d / "ca-cert.pem").write_bytes(c.cert_pem(inter))
    (d / "ca-key.pem").write_bytes(c.key_pem(inter_key))
    (d / "root-cert.pem").write_bytes(c.cert_pem(stranger))
    with pytest.raises(CaConfigError, match="does not chain to any root"):
        CertificateAuthority.from_plugin(d)
    (d / "root-cert.pem").write_bytes(b"not a pem")
    with pytest.raises(CaConfigError, match="no readable PEM"):
        CertificateAuthority.from_plugin(d)


def test_refuses_other_trust_domain_and_non_p256_keys(ca):
    with pytest.raises(ValueError, match="trust domain"):
        ca.issue_with_new_key(workload_id("a", "b", trust_domain="evil.org"))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(ValueError, match="P-256"):
        ca.sign(rsa_key.public_key(), WEB)
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError, match="P-256"):
        ca.sign(p384.public_key(), WEB)


def test_node_identity_is_an_svid_too(ca):
    key_pem, issued = ca.issue_with_new_key(node_id("node-1"))
    svid = X509Svid.parse(b"".join(issued.cert_chain), key_pem)
    assert str(svid.spiffe_id) == "spiffe://cluster.local/lacewing/node/node-1"


def test_trust_domain_is_configurable(tmp_path):
    ca = CertificateAuthority.load_or_generate(tmp_path / "ca", trust_domain="example.org")
    root = x509.load_pem_x509_certificate(ca.trust_bundle[0])
    assert c.uri_sans(root) == ["spiffe://example.org"]
    key_pem, issued = ca.issue_with_new_key(workload_id("default", "web", trust_domain="example.org"))
    assert str(X509Svid.parse(b"".join(issued.cert_chain), key_pem).spiffe_id) == \
        "spiffe://example.org/ns/default/sa/web"
    with pytest.raises(ValueError, match="trust domain"):
        ca.issue_with_new_key(WEB)  # cluster.local
