"""X.509 building blocks for the CA: roots, SPIFFE X.509-SVID leaves, PEM helpers.

Before: keys and a validated SPIFFE ID (control/ca/spiffe_id.py). After: `cryptography`
certificate objects and PEM bytes. No files, no network, no clock of its own (times are passed in)
— control/ca/authority.py decides what to issue and when; this module only builds it.

Leaves follow the SPIFFE X.509-SVID standard
(https://github.com/spiffe/spiffe/blob/main/standards/X509-SVID.md): exactly one URI SAN (the
SPIFFE ID), basicConstraints cA=false (critical), keyUsage digitalSignature only (critical),
extKeyUsage serverAuth + clientAuth. The subject is empty, so the SAN extension is critical
(RFC 5280 §4.2.1.6). Nothing is ever copied from a CSR except its public key.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key: the only key type Lacewing issues certificates for."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (the form the `spiffe` package and `ssl` module read)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_pem_certs(data: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, in order; ValueError if there is none or one is bad."""
    return x509.load_pem_x509_certificates(data)


def _hash_for(key: PrivateKey) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)


def is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except Exception:  # noqa: BLE001 - InvalidSignature, unsupported algorithms: not self-signed
        return False
    return True


def is_ca_cert(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return bool(bc.ca and ku.key_cert_sign)


def build_root(*, key: PrivateKey, trust_domain: str, not_before: float, not_after: float,
               common_name: str = "Lacewing root CA") -> x509.Certificate:
    """A self-signed root for a trust domain (URI SAN `spiffe://<td>` as SPIFFE allows).

    Its name carries a short key fingerprint so that an old and a new root, side by side in a
    bundle during a rotation, never share a subject.
    """
    public = key.public_key()
    tag = x509.SubjectKeyIdentifier.from_public_key(public).digest[:4].hex()
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Lacewing"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, trust_domain),
        x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} {tag}"),
    ])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(not_before))
        .not_valid_after(_utc(not_after))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
            critical=False,
        )
        .sign(key, _hash_for(key))
    )


LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
    encipher_only=False, decipher_only=False,
)


def build_svid(*, public_key: ec.EllipticCurvePublicKey, spiffe_uri: str,
               issuer_cert: x509.Certificate, issuer_key: PrivateKey,
               not_before: float, not_after: float, serial: int,
               dns_names: Iterable[str] = ()) -> x509.Certificate:
    """A SPIFFE X.509-SVID leaf for `spiffe_uri`, signed by the issuer.

    `dns_names` is only for the control plane's own serving certificate (so gRPC clients can
    check a host name); the CA never takes DNS names from a CSR.
    """
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_uri)]
    sans += [x509.DNSName(d) for d in dns_names]
    try:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        )
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(_utc(not_before))
        .not_valid_after(_utc(not_after))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(LEAF_KEY_USAGE, critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        .add_extension(aki, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(issuer_key, _hash_for(issuer_key))
    )


def uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def not_before_ts(cert: x509.Certificate) -> float:
    return cert.not_valid_before_utc.timestamp()


def not_after_ts(cert: x509.Certificate) -> float:
    return cert.not_valid_after_utc.timestamp()


def chain_pems(certs: Sequence[x509.Certificate]) -> tuple[bytes, ...]:
    return tuple(cert_pem(c) for c in certs)
