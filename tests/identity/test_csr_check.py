"""The pure CSR decision: who may get which identity, and which requests are malformed."""

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from control.ca.csr_check import Code, Deny, Issue, check_csr
from control.ca.node_workloads import InMemoryNodeWorkloads
from node_agent.certs.csr import make_csr

TD = "cluster.local"
WEB = "spiffe://cluster.local/ns/default/sa/web"
WORKLOADS = InMemoryNodeWorkloads({"n1": {("default", "web")}, "n2": {("shop", "db")}})


def csr(*names, key=None, ca=None, key_usage=None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(list(names)), critical=True)
    if ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if key_usage is not None:
        b = b.add_extension(key_usage, critical=True)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def uri(u):
    return x509.UniformResourceIdentifier(u)


def decide(pem, node="n1"):
    return check_csr(pem, node=node, workloads=WORKLOADS, trust_domain=TD)


def test_issues_identity_of_a_pod_on_the_node():
    _, pem = make_csr(WEB)
    d = decide(pem)
    assert isinstance(d, Issue)
    assert d.identity.uri == WEB


def test_someone_elses_identity_is_permission_denied():
    _, pem = make_csr("spiffe://cluster.local/ns/shop/sa/db")  # db runs on n2, not n1
    d = decide(pem, node="n1")
    assert isinstance(d, Deny)
    assert (d.code, d.reason) == (Code.PERMISSION_DENIED, "not_on_node")
    assert isinstance(decide(pem, node="n2"), Issue)
    assert decide(pem, node="unknown-node").code is Code.PERMISSION_DENIED


def test_follows_current_workload_state():
    state = InMemoryNodeWorkloads({"n1": {("default", "web")}})
    _, pem = make_csr(WEB)
    assert isinstance(check_csr(pem, node="n1", workloads=state, trust_domain=TD), Issue)
    state.remove("n1", "default", "web")  # the pod left the node
    d = check_csr(pem, node="n1", workloads=state, trust_domain=TD)
    assert d.code is Code.PERMISSION_DENIED


KU_CERT_SIGN = x509.KeyUsage(True, False, False, False, False, True, False, False, False)


@pytest.mark.parametrize("pem, reason", [
    (csr(), "no_uri_san"),
    (csr(x509.DNSName("web.default.svc")), "no_uri_san"),
    (csr(uri(WEB), uri("spiffe://cluster.local/ns/default/sa/other")), "several_uri_sans"),
    (csr(uri(WEB), x509.DNSName("evil.example")), "other_san"),
    (csr(uri(WEB), x509.IPAddress(__import__("ipaddress").ip_address("10.0.0.1"))), "other_san"),
    (csr(uri("spiffe://evil.org/ns/default/sa/web")), "other_trust_domain"),
    (csr(uri("https://cluster.local/ns/default/sa/web")), "not_spiffe_id"),
    (csr(uri("spiffe://cluster.local/lacewing/node/n1")), "not_workload_identity"),
    (csr(uri("spiffe://cluster.local/ns/default")), "not_workload_identity"),
    (csr(uri(WEB), ca=True), "ca_requested"),
    (csr(uri(WEB), key_usage=KU_CERT_SIGN), "ca_requested"),
    (csr(uri(WEB), key=ec.generate_private_key(ec.SECP384R1())), "unsupported_key"),
    (csr(uri(WEB), key=rsa.generate_private_key(public_exponent=65537, key_size=2048)),
     "unsupported_key"),
    (b"-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n",
     "unparsable"),
    (b"", "unparsable"),
])
def test_malformed_requests_are_invalid_argument(pem, reason):
    d = decide(pem)
    assert isinstance(d, Deny), d
    assert (d.code, d.reason) == (Code.INVALID_ARGUMENT, reason)
    assert d.message


def test_ca_false_basic_constraints_is_fine():
    assert isinstance(decide(csr(uri(WEB), ca=False)), Issue)


def tampered_signature(pem: bytes) -> bytes:
    """Same request body, signature flipped: what a forged or corrupted CSR looks like."""
    der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the ECDSA signature's last INTEGER
    import base64
    b64 = base64.encodebytes(bytes(der))
    return b"-----BEGIN CERTIFICATE REQUEST-----\n" + b64 + b"-----END CERTIFICATE REQUEST-----\n"


def test_bad_signature_is_invalid_argument():
    _, pem = make_csr(WEB)
    d = decide(tampered_signature(pem))
    assert isinstance(d, Deny)
    assert d.code is Code.INVALID_ARGUMENT
    assert d.reason in ("bad_signature", "unparsable")  # a flipped bit may break the DER too


def test_signature_over_other_key_is_bad_signature():
    # A CSR carrying the victim's public key but signed by another key: the classic forgery.
    victim = ec.generate_private_key(ec.SECP256R1())
    attacker = ec.generate_private_key(ec.SECP256R1())
    good = x509.load_pem_x509_csr(csr(uri(WEB), key=victim))
    forged = x509.load_pem_x509_csr(csr(uri(WEB), key=attacker))
    # splice: victim's CertificationRequestInfo, attacker's signature
    info = good.tbs_certrequest_bytes
    sig = forged.signature
    der = _assemble_csr(info, sig)
    import base64
    pem = (b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(der)
           + b"-----END CERTIFICATE REQUEST-----\n")
    d = decide(pem)
    assert (d.code, d.reason) == (Code.INVALID_ARGUMENT, "bad_signature")


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _assemble_csr(info: bytes, sig: bytes) -> bytes:
    alg = bytes.fromhex("300a06082a8648ce3d040302")  # ecdsa-with-SHA256
    bitstr = b"\x03" + _der_len(len(sig) + 1) + b"\x00" + sig
    body = info + alg + bitstr
    return b"\x30" + _der_len(len(body)) + body


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_never_raises_and_never_issues(data):
    for blob in (data, b"-----BEGIN CERTIFICATE REQUEST-----\n" + data
                 + b"\n-----END CERTIFICATE REQUEST-----\n"):
        d = decide(blob)
        assert isinstance(d, Deny) and d.code is Code.INVALID_ARGUMENT


def test_string_input_is_accepted():
    _, pem = make_csr(WEB)
    assert isinstance(decide(pem.decode()), Issue)


NAMES = st.sampled_from(["default", "web", "shop", "db", "api"])


@settings(max_examples=40, deadline=None)
@given(ns=NAMES, sa=NAMES, node=st.sampled_from(["n1", "n2", "n3"]),
       placed=st.sets(st.tuples(st.sampled_from(["n1", "n2"]), NAMES, NAMES), max_size=6))
def test_issues_exactly_the_identities_on_the_callers_node(ns, sa, node, placed):
    state = InMemoryNodeWorkloads()
    for n, pns, psa in placed:
        state.add(n, pns, psa)
    _, pem = make_csr(f"spiffe://cluster.local/ns/{ns}/sa/{sa}")
    d = check_csr(pem, node=node, workloads=state, trust_domain=TD)
    if (node, ns, sa) in placed:
        assert isinstance(d, Issue) and (d.identity.namespace, d.identity.service_account) == (ns, sa)
    else:
        assert isinstance(d, Deny) and d.code is Code.PERMISSION_DENIED
