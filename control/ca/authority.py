"""The certificate authority: one signing key, a trust bundle, and the TTL rules.

Before: a directory. Either it holds Istio's `cacerts` layout (a plug-in CA: `ca-cert.pem`,
`ca-key.pem`, `root-cert.pem`, `cert-chain.pem`; the signing cert may be an intermediate), or it
is empty and `CertificateAuthority.load_or_generate` makes a self-signed ECDSA P-256 root and
writes it there in the same layout, so a restart keeps it. After: `sign(...)` returns an
`IssuedChain` (leaf first, then intermediates; the roots separately as the trust bundle).

Who may get which identity is not decided here: control/ca/csr_check.py decides that (pure), and
control/ca/grpc_service.py wires the two together over gRPC.

Trust bundle = every certificate in `root-cert.pem` (several during a root rotation — see
docs/identity.md for the procedure). TTL: the default is 24 h; a request for more than
`max_ttl` gets `max_ttl`; no leaf outlives the signing certificate.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from control.ca import certificates as c
from control.ca.spiffe_id import DEFAULT_TRUST_DOMAIN, NodeId, WorkloadId, validate_trust_domain

DEFAULT_TTL = 24 * 3600
DEFAULT_MAX_TTL = 7 * 24 * 3600
ROOT_TTL = 10 * 365 * 24 * 3600
# Leaves are back-dated a little for clock skew between nodes, but never by more than a tenth of
# their lifetime (so that half-life renewal still means half of the usable life).
MAX_BACKDATE = 60.0

CA_CERT = "ca-cert.pem"
CA_KEY = "ca-key.pem"
ROOT_CERT = "root-cert.pem"
CERT_CHAIN = "cert-chain.pem"


class CaConfigError(Exception):
    """The CA's files are missing or inconsistent; the message names the file and the fix."""


@dataclass(frozen=True)
class IssuedChain:
    """What the CA hands out: PEM leaf + intermediates, the PEM roots, and the leaf's facts."""

    cert_chain: tuple[bytes, ...]
    trust_bundle: tuple[bytes, ...]
    serial: int
    not_before: float
    not_after: float
    spiffe_id: str


class CertificateAuthority:
    """Signs SPIFFE X.509-SVIDs with one key; see the module docstring for files and rules."""

    def __init__(self, *, signing_cert: x509.Certificate, signing_key: c.PrivateKey,
                 intermediates: Iterable[x509.Certificate], roots: Iterable[x509.Certificate],
                 trust_domain: str = DEFAULT_TRUST_DOMAIN, default_ttl: int = DEFAULT_TTL,
                 max_ttl: int = DEFAULT_MAX_TTL, clock: Callable[[], float] = time.time) -> None:
        validate_trust_domain(trust_domain)
        if default_ttl <= 0 or max_ttl <= 0:
            raise CaConfigError("CA TTLs must be positive numbers of seconds")
        self.trust_domain = trust_domain
        self.default_ttl = int(default_ttl)
        self.max_ttl = int(max_ttl)
        self._clock = clock
        self._signing_cert = signing_cert
        self._signing_key = signing_key
        self._intermediates = tuple(intermediates)
        self._roots = tuple(roots)
        if not self._roots:
            raise CaConfigError("the trust bundle is empty: root-cert.pem must hold a root")
        self._chain_pems = c.chain_pems(self._intermediates)
        self._bundle_pems = c.chain_pems(self._roots)

    # ---------------------------------------------------------------- construction from files
    @classmethod
    def load_or_generate(cls, directory: str | os.PathLike[str], **options) -> CertificateAuthority:
        """Load the CA in `directory`, or make a self-signed root there first if it is empty."""
        d = Path(directory)
        if not (d / CA_CERT).exists() and not (d / CA_KEY).exists():
            generate_root(d, trust_domain=options.get("trust_domain", DEFAULT_TRUST_DOMAIN),
                          clock=options.get("clock", time.time))
        return cls.from_plugin(d, **options)

    @classmethod
    def from_plugin(cls, directory: str | os.PathLike[str], **options) -> CertificateAuthority:
        """Load Istio's `cacerts` layout from `directory` and check it hangs together."""
        d = Path(directory)
        signing_cert = _read_certs(d / CA_CERT)[0]
        signing_key = _read_key(d / CA_KEY)
        roots = _read_certs(d / ROOT_CERT)
        chain_file = _read_certs(d / CERT_CHAIN) if (d / CERT_CHAIN).exists() else []
        if _public_der(signing_key.public_key()) != _public_der(signing_cert.public_key()):
            raise CaConfigError(f"{d / CA_KEY} is not the key of {d / CA_CERT}; supply the matching pair")
        if not c.is_ca_cert(signing_cert):
            raise CaConfigError(f"{d / CA_CERT} is not a CA certificate (needs cA=true and keyCertSign)")
        for root in roots:
            if not c.is_ca_cert(root):
                raise CaConfigError(f"{d / ROOT_CERT} holds a certificate that is not a CA")
        intermediates = _intermediates(signing_cert, chain_file)
        _check_chains_to_a_root(signing_cert, intermediates, roots, where=d)
        return cls(signing_cert=signing_cert, signing_key=signing_key,
                   intermediates=intermediates, roots=roots, **options)

    # ---------------------------------------------------------------- facts
    @property
    def trust_bundle(self) -> tuple[bytes, ...]:
        """PEM roots a peer must trust (more than one during a rotation)."""
        return self._bundle_pems

    @property
    def signing_cert(self) -> x509.Certificate:
        return self._signing_cert

    def effective_ttl(self, requested: int | None) -> int:
        """0/None → the default; more than the maximum → the maximum."""
        if not requested or requested <= 0:
            return min(self.default_ttl, self.max_ttl)
        return min(int(requested), self.max_ttl)

    # ---------------------------------------------------------------- issuing
    def sign(self, public_key: ec.EllipticCurvePublicKey, identity: WorkloadId | NodeId, *,
             ttl: int | None = None, dns_names: Iterable[str] = ()) -> IssuedChain:
        """Issue an X.509-SVID for `identity` on `public_key`. Callers have checked who asks."""
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
                public_key.curve, ec.SECP256R1):
            raise ValueError("Lacewing issues certificates for ECDSA P-256 keys only")
        if identity.trust_domain != self.trust_domain:
            raise ValueError(f"{identity} is not in trust domain {self.trust_domain}")
        now = self._clock()
        lifetime = self.effective_ttl(ttl)
        not_after = min(now + lifetime, c.not_after_ts(self._signing_cert))
        if not_after <= now:
            raise CaConfigError("the signing certificate has expired; rotate the CA")
        not_before = now - min(MAX_BACKDATE, lifetime / 10)
        serial = x509.random_serial_number()
        leaf = c.build_svid(public_key=public_key, spiffe_uri=identity.uri,
                            issuer_cert=self._signing_cert, issuer_key=self._signing_key,
                            not_before=not_before, not_after=not_after, serial=serial,
                            dns_names=dns_names)
        return IssuedChain(
            cert_chain=(c.cert_pem(leaf), *self._chain_pems),
            trust_bundle=self._bundle_pems,
            serial=serial,
            not_before=c.not_before_ts(leaf),
            not_after=c.not_after_ts(leaf),
            spiffe_id=identity.uri,
        )

    def issue_with_new_key(self, identity: WorkloadId | NodeId, *, ttl: int | None = None,
                           dns_names: Iterable[str] = ()) -> tuple[bytes, IssuedChain]:
        """Make a key and a certificate for it (node credentials, the control plane's own cert)."""
        key = c.new_key()
        return c.key_pem(key), self.sign(key.public_key(), identity, ttl=ttl, dns_names=dns_names)


# -------------------------------------------------------------------- helpers
def generate_root(directory: Path, *, trust_domain: str = DEFAULT_TRUST_DOMAIN,
                  clock: Callable[[], float] = time.time) -> None:
    """Write a new self-signed root in the `cacerts` layout (key file mode 0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = c.new_key()
    now = clock()
    root = c.build_root(key=key, trust_domain=trust_domain, not_before=now - MAX_BACKDATE,
                        not_after=now + ROOT_TTL)
    _write(directory / CA_KEY, c.key_pem(key), mode=0o600)
    for name in (CA_CERT, ROOT_CERT, CERT_CHAIN):
        _write(directory / name, c.cert_pem(root), mode=0o644)


def _write(path: Path, data: bytes, *, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_certs(path: Path) -> list[x509.Certificate]:
    try:
        return c.load_pem_certs(path.read_bytes())
    except FileNotFoundError:
        raise CaConfigError(
            f"{path} is missing: a plug-in CA needs ca-cert.pem, ca-key.pem, root-cert.pem "
            "(and cert-chain.pem for an intermediate)"
        ) from None
    except ValueError as exc:
        raise CaConfigError(f"{path} holds no readable PEM certificate ({exc})") from None


def _read_key(path: Path) -> c.PrivateKey:
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise CaConfigError(f"{path} is missing: supply the signing key (unencrypted PEM)") from None
    except (ValueError, TypeError) as exc:
        raise CaConfigError(f"{path} is not an unencrypted PEM private key ({exc})") from None


def _public_der(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _intermediates(signing_cert: x509.Certificate,
                   chain_file: list[x509.Certificate]) -> list[x509.Certificate]:
    """Signing cert and cert-chain.pem, roots (self-signed) dropped, duplicates removed."""
    out: list[x509.Certificate] = []
    seen: set[bytes] = set()
    for cert in [signing_cert, *chain_file]:
        fp = cert.fingerprint(hashes.SHA256())
        if fp in seen or c.is_self_signed(cert):
            continue
        seen.add(fp)
        out.append(cert)
    return out


def _check_chains_to_a_root(signing_cert: x509.Certificate, intermediates: list[x509.Certificate],
                            roots: list[x509.Certificate], *, where: Path) -> None:
    """The signing cert must reach one of the roots through the intermediates given."""
    cert = signing_cert
    pool = [*intermediates, *roots]
    for _ in range(len(pool) + 1):
        if any(_issued_by(cert, r) for r in roots):
            return
        parent = next((p for p in intermediates if p is not cert and _issued_by(cert, p)), None)
        if parent is None:
            break
        cert = parent
    raise CaConfigError(
        f"{where / CA_CERT} does not chain to any root in {where / ROOT_CERT}; "
        f"put the intermediates in {where / CERT_CHAIN} and the root in {where / ROOT_CERT}"
    )


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # noqa: BLE001 - any failure means "not issued by"
        return False
    return True
