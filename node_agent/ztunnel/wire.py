"""The tunnel's wire format after the TLS 1.3 handshake (docs/tunnel.md), sans-IO.

Before: an outbound tunnel connection finished its mutual TLS handshake with the destination
node (or waypoint), having sent `sni_for(expected identity)` as SNI. After: the client writes
`encode_header(...)` and, without waiting, the application's bytes; the server reads the header
with `HeaderReader`, decides, and answers with `encode_reply(status)` before any byte of the
destination's. Everything after the header and the reply is the connection's bytes, both ways;
a TLS close_notify is a half-close (the peer shuts down its write side to the application).

Framed mode (`FLAG_FRAMED` in the header, sent only toward node tunnels, which reuse their TLS
connections): after the header and after the reply, each direction is a sequence of frames —
DATA (payload of 1..MAX_FRAME bytes) and one FIN (the writer's half-close). `frame_data` and
`FIN_FRAME` encode; `FrameDecoder` decodes. Once both FINs have passed the TLS connection is
clean: the server reads the next header from it, the client keeps it idle for the next
connection of the same identity pair (proxy.py, pool.py).

Header (big-endian):
    magic  b"LWT1"   version u8 = 1   flags u8   length u16 = bytes that follow
    (flags: bit 0 FLAG_FRAMED; other bits ignored)
    target: family u8 (4|6), address (4|16), port u16      the workload address to connect to
    source: family u8 (4|6), address (4|16), port u16      the original client address
Reply: b"LW" status u8 reason-length u8 reason (UTF-8, ≤ 255 bytes).
Frame (framed mode only): type u8 (0 DATA, 1 FIN)   length u32   payload (DATA: 1..MAX_FRAME;
    FIN: none)
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


FLAG_FRAMED = 1
# TLS ALPN value a tunnel advertises when it speaks the framed mode: a client frames (and pools)
# only a connection whose handshake selected it, so a peer of an older version is spoken to
# unframed instead of misread
ALPN_FRAMED = "lacewing-tunnel-framed/1"
FRAME_DATA = 0
FRAME_FIN = 1
MAX_FRAME = 256 << 10
_FRAME = struct.Struct("!BI")
FRAME_HEAD = _FRAME.size
FIN_FRAME = _FRAME.pack(FRAME_FIN, 0)


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
    flags: int = 0

    @property
    def framed(self) -> bool:
        return bool(self.flags & FLAG_FRAMED)


def encode_header(header: TunnelHeader) -> bytes:
    body = header.target.encode() + header.source.encode()
    return MAGIC + struct.pack("!BBH", VERSION, header.flags & 0xFF, len(body)) + body


def decode_header(buf: bytes) -> TunnelHeader:
    """One complete header (exactly) -> TunnelHeader, or ProtocolError."""
    if len(buf) < 8 or buf[:4] != MAGIC:
        raise ProtocolError("not a Lacewing tunnel header")
    version, flags, length = struct.unpack_from("!BBH", buf, 4)
    if version != VERSION:
        raise ProtocolError(f"unsupported tunnel version {version}")
    if 8 + length != len(buf):
        raise ProtocolError("header length does not match")
    target, pos = Address.decode(buf, 8)
    source, pos = Address.decode(buf, pos)
    # bytes after the two addresses are extensions this version does not define: ignored
    return TunnelHeader(target, source, flags)


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


def frame_head(length: int) -> bytes:
    """The header of a DATA frame of `length` (1..MAX_FRAME) bytes."""
    return _FRAME.pack(FRAME_DATA, length)


def frame_data(data: bytes) -> bytes:
    """Application bytes as DATA frames (one per MAX_FRAME bytes)."""
    n = len(data)
    if n <= MAX_FRAME:
        return _FRAME.pack(FRAME_DATA, n) + data
    parts = []
    for pos in range(0, n, MAX_FRAME):
        chunk = data[pos:pos + MAX_FRAME]
        parts.append(_FRAME.pack(FRAME_DATA, len(chunk)))
        parts.append(chunk)
    return b"".join(parts)


class FrameDecoder:
    """One direction of a framed inner connection. `feed(bytes)` returns (payload, fin, rest):
    the application bytes decoded so far, whether the FIN frame came, and the bytes after it
    (the next inner connection's header, on a server). Raises ProtocolError on an unknown
    frame type, an empty or oversized DATA frame, a FIN with a length, or bytes after FIN."""

    __slots__ = ("_remaining", "_head", "fin")

    def __init__(self) -> None:
        self._remaining = 0         # payload bytes left in the current DATA frame
        self._head = b""            # a frame header split across reads
        self.fin = False

    def feed(self, data: bytes) -> tuple[bytes, bool, bytes]:
        if self.fin:
            if data:
                raise ProtocolError("bytes after FIN")
            return b"", True, b""
        if self._head:
            data = self._head + data
            self._head = b""
        rem = self._remaining
        n = len(data)
        if rem >= n:                # the common case: inside one DATA frame
            self._remaining = rem - n
            return data, False, b""
        out = []
        pos = 0
        while pos < n:
            if rem:
                take = min(rem, n - pos)
                out.append(data[pos:pos + take])
                pos += take
                rem -= take
                continue
            if n - pos < FRAME_HEAD:
                self._head = data[pos:]
                break
            kind, length = _FRAME.unpack_from(data, pos)
            pos += FRAME_HEAD
            if kind == FRAME_DATA:
                if not 0 < length <= MAX_FRAME:
                    raise ProtocolError(f"DATA frame of {length} bytes (1..{MAX_FRAME})")
                rem = length
            elif kind == FRAME_FIN:
                if length:
                    raise ProtocolError("FIN frame with a length")
                self.fin = True
                self._remaining = 0
                return b"".join(out), True, data[pos:]
            else:
                raise ProtocolError(f"unknown frame type {kind}")
        self._remaining = rem
        return b"".join(out), False, b""


def sni_for(identity: str) -> str:
    """The SNI a client sends to ask the server to present `identity`'s certificate.

    A hash, so that any SPIFFE ID fits one DNS label; the server maps it back with the
    identities of its own workloads (`sni_index`)."""
    return hashlib.sha256(identity.encode()).hexdigest()[:32] + ".id.lacewing"


def sni_index(identities) -> dict[str, str]:
    return {sni_for(i): i for i in identities}
