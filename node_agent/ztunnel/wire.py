"""The tunnel's wire format after the TLS 1.3 handshake (docs/tunnel.md), sans-IO.

Before: an outbound tunnel connection finished its mutual TLS handshake with the destination
node (or waypoint), having sent `sni_for(expected identity)` as SNI. After: the client writes
`encode_header(...)` and, without waiting, the application's bytes; the server reads the header
with `HeaderReader`, decides, and answers with `encode_reply(status)` before any byte of the
destination's. Everything after the header and the reply is the connection's bytes, both ways;
a TLS close_notify is a half-close (the peer shuts down its write side to the application).

Header (big-endian):
    magic  b"LWT1"   version u8 = 1   flags u8 (0)   length u16 = bytes that follow
    target: family u8 (4|6), address (4|16), port u16      the workload address to connect to
    source: family u8 (4|6), address (4|16), port u16      the original client address
Reply: b"LW" status u8 reason-length u8 reason (UTF-8, ≤ 255 bytes).
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from dataclasses import dataclass

MAGIC = b"LWT1"
VERSION = 1
MAX_HEADER = 8 + 2 * 19 + 64        # room for extensions; anything longer is garbage
REPLY_MAGIC = b"LW"

OK = 0
DENIED = 1             # authorization policy
UNKNOWN_TARGET = 2     # no such workload here, or not the identity the client expected
UPSTREAM_FAILED = 3    # the workload refused or did not answer
BAD_REQUEST = 4        # unparsable header
STATUS_NAMES = {OK: "ok", DENIED: "denied", UNKNOWN_TARGET: "unknown_target",
                UPSTREAM_FAILED: "upstream_failed", BAD_REQUEST: "bad_request"}


class ProtocolError(ValueError):
    """The peer sent bytes that are not this protocol."""


@dataclass(frozen=True)
class Address:
    ip: str
    port: int

    def encode(self) -> bytes:
        addr = ipaddress.ip_address(self.ip)
        return struct.pack("!B", addr.version) + addr.packed + struct.pack("!H", self.port)

    @staticmethod
    def decode(buf: bytes, pos: int) -> tuple[Address, int]:
        if pos >= len(buf):
            raise ProtocolError("header ends inside an address")
        family = buf[pos]
        size = {4: 4, 6: 16}.get(family)
        if size is None:
            raise ProtocolError(f"address family {family} is neither 4 nor 6")
        end = pos + 1 + size + 2
        if end > len(buf):
            raise ProtocolError("header ends inside an address")
        ip = str(ipaddress.ip_address(buf[pos + 1:pos + 1 + size]))
        (port,) = struct.unpack_from("!H", buf, pos + 1 + size)
        if port == 0:
            raise ProtocolError("port 0")
        return Address(ip, port), end


@dataclass(frozen=True)
class TunnelHeader:
    target: Address
    source: Address


def encode_header(header: TunnelHeader) -> bytes:
    body = header.target.encode() + header.source.encode()
    return MAGIC + struct.pack("!BBH", VERSION, 0, len(body)) + body


def decode_header(buf: bytes) -> TunnelHeader:
    """One complete header (exactly) -> TunnelHeader, or ProtocolError."""
    if len(buf) < 8 or buf[:4] != MAGIC:
        raise ProtocolError("not a Lacewing tunnel header")
    version, _flags, length = struct.unpack_from("!BBH", buf, 4)
    if version != VERSION:
        raise ProtocolError(f"unsupported tunnel version {version}")
    if 8 + length != len(buf):
        raise ProtocolError("header length does not match")
    target, pos = Address.decode(buf, 8)
    source, pos = Address.decode(buf, pos)
    # bytes after the two addresses are extensions this version does not define: ignored
    return TunnelHeader(target, source)


class HeaderReader:
    """Feed bytes as they arrive; `feed` returns (header, leftover bytes) once complete, else
    None. Raises ProtocolError as soon as the bytes cannot be a header."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> tuple[TunnelHeader, bytes] | None:
        self._buf += data
        buf = self._buf
        n = min(len(buf), 4)
        if buf[:n] != MAGIC[:n]:
            raise ProtocolError("not a Lacewing tunnel header")
        if len(buf) < 8:
            return None
        (length,) = struct.unpack_from("!H", buf, 6)
        if 8 + length > MAX_HEADER:
            raise ProtocolError(f"header of {8 + length} bytes is longer than {MAX_HEADER}")
        if len(buf) < 8 + length:
            return None
        header = decode_header(buf[:8 + length])
        return header, buf[8 + length:]


def encode_reply(status: int, reason: str = "") -> bytes:
    raw = reason.encode()[:255]
    return REPLY_MAGIC + bytes((status, len(raw))) + raw


class ReplyReader:
    """Client side: feed bytes; returns (status, reason, leftover) once the reply is complete."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> tuple[int, str, bytes] | None:
        self._buf += data
        buf = self._buf
        n = min(len(buf), 2)
        if buf[:n] != REPLY_MAGIC[:n]:
            raise ProtocolError("not a Lacewing tunnel reply")
        if len(buf) < 4:
            return None
        status, length = buf[2], buf[3]
        if len(buf) < 4 + length:
            return None
        reason = buf[4:4 + length].decode("utf-8", "replace")
        return status, reason, buf[4 + length:]


def sni_for(identity: str) -> str:
    """The SNI a client sends to ask the server to present `identity`'s certificate.

    A hash, so that any SPIFFE ID fits one DNS label; the server maps it back with the
    identities of its own workloads (`sni_index`)."""
    return hashlib.sha256(identity.encode()).hexdigest()[:32] + ".id.lacewing"


def sni_index(identities) -> dict[str, str]:
    return {sni_for(i): i for i in identities}
