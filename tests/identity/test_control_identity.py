"""The control plane's TLS port presents spiffe://<td>/ns/lacewing-system/sa/lacewing-control."""

import asyncio
import socket
import ssl

from control.ca.authority import CertificateAuthority
from control.ca.grpc_server import ServingIdentity
from control.ca.spiffe_id import CONTROL_DNS_NAMES
from node_agent.certs.tls import peer_spiffe_id
from tests.identity.helpers import running_cluster

CONTROL = "spiffe://cluster.local/ns/lacewing-system/sa/lacewing-control"


def test_grpc_port_presents_control_identity_and_requires_a_client_cert(tmp_path):
    async def go():
        async with running_cluster(tmp_path, placements={}) as cl:
            cl.client_for("n1")
            cred = tmp_path / "nodes" / "n1"
            port = cl.port

            def handshake(with_client_cert: bool):
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.load_verify_locations(cafile=str(cred / "root-cert.pem"))
                ctx.set_alpn_protocols(["h2"])
                if with_client_cert:
                    ctx.load_cert_chain(str(cred / "node-cert.pem"), str(cred / "node-key.pem"))
                with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                    with ctx.wrap_socket(raw, server_hostname=CONTROL_DNS_NAMES[0]) as tls:
                        server_id = peer_spiffe_id(tls)
                        tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                        try:
                            # the server's SETTINGS frame, or an alert: no client certificate
                            answer = tls.recv(1)
                        except (ssl.SSLError, ConnectionError):
                            answer = b""
                        return server_id, answer

            server_id, answer = await asyncio.to_thread(handshake, True)
            assert server_id == CONTROL and answer
            _, answer = await asyncio.to_thread(handshake, False)
            assert answer == b"", "the CA port accepted a client without a certificate"
    asyncio.run(asyncio.wait_for(go(), 60))


def test_serving_identity_reissues_at_half_life(tmp_path):
    ca = CertificateAuthority.load_or_generate(tmp_path / "ca")
    now = [ca.signing_cert.not_valid_before_utc.timestamp() + 3600]
    ident = ServingIdentity(ca, clock=lambda: now[0])
    first = ident.issued
    assert ident.configuration(only_if_changed=False) is not None
    assert ident.configuration(only_if_changed=True) is None  # unchanged: gRPC keeps its config
    now[0] = first.not_before + (first.not_after - first.not_before) * 0.6
    assert ident.configuration(only_if_changed=True) is not None
    assert ident.issued.serial != first.serial
