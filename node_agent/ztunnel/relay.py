"""The byte path: one asyncio protocol per socket (`Side`), paired by `join` into a relay.

Before: the proxy accepted or opened a socket and wrapped it in a `Side` — plain TCP, or TLS
driven through `tls.TlsConnection`. While a connection is being set up (handshake, tunnel
header, policy), a Side buffers what it receives and wakes whoever `await`s it. After `join`,
bytes flow from each side to the other in the callbacks, with no task and no copy beyond the
kernel's and TLS's: write-buffer pressure on one side pauses reading on the other; an EOF (TCP
FIN, or TLS close_notify) is passed on as a half-close; the connection ends when both directions
have ended or either socket fails, and `on_close` fires exactly once.

Framed tunnel sides (`join_framed`, wire.FLAG_FRAMED): the TLS side's bytes are DATA frames and
its half-close a FIN frame, so the end of an inner connection is not the end of the TLS
connection. Once both FINs have passed and nothing failed, the TLS side is *released* — detached
from the pod's side, ready for the next inner connection (the proxy pools it or reads the next
header). A TLS close_notify, a TCP FIN or an error on it, a pod's reset, or a bad frame: it is
closed, never released.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import time
from collections.abc import Callable

from node_agent.ztunnel import wire
from node_agent.ztunnel.tls import TlsConnection

HIGH_WATER = 4 << 20
_COPY_BELOW = 16 << 10        # framed sends: smaller payloads are copied behind their header
BUFFER_LIMIT = 1 << 20        # bytes a side buffers during setup before it stops reading


class Side(asyncio.Protocol):
    __slots__ = ("transport", "tls", "peer", "relaying", "buffer", "buffered", "eof", "lost",
                 "received", "activity", "waiter", "handshake", "_on_lost", "error",
                 "session_key", "splice", "framing", "born")

    def __init__(self, *, tls: TlsConnection | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.tls = tls
        self.peer: Side | None = None
        self.relaying = False
        self.buffer: list[bytes] = []
        self.buffered = 0
        self.eof = False
        self.lost = False
        self.error: BaseException | None = None
        self.received = 0           # plaintext bytes received
        self.activity = 0
        self.waiter: asyncio.Future | None = None
        self.handshake: asyncio.Future | None = None
        self._on_lost: Callable[[Side], None] | None = None
        self.session_key: tuple | None = None
        self.splice: _SpliceState | None = None   # set on both sides of a spliced pair
        self.framing: Framing | None = None       # a framed tunnel side, while joined
        self.born = 0.0                 # time.monotonic() when its TLS handshake finished (reuse age)

    # ------------------------------------------------------------------ asyncio callbacks
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        if self.tls is not None:
            self.handshake = asyncio.get_running_loop().create_future()
            if not self.tls.obj.server_side:
                self._advance_handshake(b"")

    def data_received(self, data: bytes) -> None:
        self.activity += 1
        tls = self.tls
        if tls is None:
            if self.relaying:                   # the hot path: plain bytes, relaying
                self.received += len(data)
                self.peer.send(data)
                return
            chunks = [data]
        else:
            if not tls.handshaken:
                data = self._advance_handshake(data)
                if data is None:
                    return
            try:
                chunks = tls.receive(data)
            except ssl.SSLError as exc:
                self._fail(exc)
                return
            out = tls.outgoing()
            if out:
                self.transport.write(out)
        if chunks:
            if self.framing is not None and self.relaying:
                self._framed_in(chunks)
                if tls.eof and not self.lost and self.error is None:
                    if self.framing is not None:
                        self.framing.broken = True      # close_notify: no reuse
                    self._got_eof()
                return
            n = 0
            for c in chunks:
                n += len(c)
            self.received += n
            if self.relaying:
                peer = self.peer
                if len(chunks) == 1:
                    peer.send(chunks[0])
                else:
                    peer.send(b"".join(chunks))
            else:
                self.buffer.extend(chunks)
                self.buffered += n
                if self.buffered > BUFFER_LIMIT:
                    self.transport.pause_reading()
                self._wake()
        if tls is not None and tls.eof:
            if self.framing is not None:
                self.framing.broken = True
            self._got_eof()

    def _framed_in(self, chunks: list[bytes]) -> None:
        """Framed bytes from the peer tunnel while relaying (decrypted chunks, one TLS record
        each, decoded one by one so that a frame boundary copies a record, not the batch):
        payload to the pod, FIN as its half-close, bytes after FIN kept for the next inner
        connection once released."""
        fr = self.framing
        feed = fr.decoder.feed
        payload = []
        fin = False
        rest = b""
        try:
            for i, chunk in enumerate(chunks):
                data, fin, rest = feed(chunk)
                if data:
                    payload.append(data)
                if fin:
                    if i + 1 < len(chunks):
                        rest = rest + b"".join(chunks[i + 1:])
                    break
        except wire.ProtocolError as exc:
            fr.broken = True
            if fr.on_bad_frame is not None:
                fr.on_bad_frame(exc)
            self.error = exc
            self.abort()
            return
        if payload:
            data = payload[0] if len(payload) == 1 else b"".join(payload)
            self.received += len(data)
            self.peer.send(data)
        if fin:
            fr.fin_in = True
            self._got_eof()
            if rest:
                if self.framing is None and not self.lost:      # released: the next header
                    self.buffer.append(rest)
                    self.buffered += len(rest)
                    self._wake()
                else:
                    fr.broken = True
                    self.error = wire.ProtocolError("bytes after FIN")
                    if fr.on_bad_frame is not None:
                        fr.on_bad_frame(self.error)
                    self.abort()

    def _advance_handshake(self, data: bytes) -> bytes | None:
        tls = self.tls
        if data:
            tls.incoming.write(data)
        try:
            done = tls.handshake()
        except (ssl.SSLError, ValueError) as exc:
            out = tls.outgoing()
            if out:
                self.transport.write(out)
            self._fail(exc)
            return None
        out = tls.outgoing()
        if out:
            self.transport.write(out)
        if not done:
            return None
        if not self.handshake.done():
            self.handshake.set_result(True)
        self.born = time.monotonic()
        return b""

    def eof_received(self) -> bool:
        if self.framing is not None:
            self.framing.broken = True
        self._got_eof()
        return True

    def connection_lost(self, exc) -> None:
        self.lost = True
        if exc is not None and self.error is None:
            self.error = exc
        if self.handshake is not None and not self.handshake.done():
            self.handshake.set_exception(self.error or ConnectionResetError("connection closed"))
        self._wake()
        if self._on_lost is not None:
            self._on_lost(self)
        peer = self.peer
        if peer is not None and not peer.lost and peer.transport is not None:
            if self.error is not None:
                peer.abort()
            else:
                peer.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.splice is not None:
            return      # spliced sockets are never read by user space again
        if self.peer is not None and self.peer.transport is not None and not self.peer.lost:
            self.peer.transport.resume_reading()

    # ------------------------------------------------------------------ helpers
    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        if self.handshake is not None and not self.handshake.done():
            self.handshake.set_exception(exc)
        self._wake()
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _got_eof(self) -> None:
        if self.eof:
            return
        self.eof = True
        if self.handshake is not None and not self.handshake.done():
            self.handshake.set_exception(ConnectionResetError("closed during the TLS handshake"))
        if self.relaying:
            if self.splice is not None:
                self.splice.eof_when_flushed(self)
                return
            self._pass_eof()
        else:
            self._wake()

    def _pass_eof(self) -> None:
        peer = self.peer
        peer.send_eof()
        if peer.eof and not peer.lost:
            self.close()
            peer.close()
        elif peer.eof:
            self.close()

    async def wait_data(self) -> None:
        """Until something new is buffered, the peer ended, or the socket failed."""
        if self.buffer or self.eof or self.lost:
            return
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def take(self) -> bytes:
        data = b"".join(self.buffer)
        self.buffer.clear()
        self.buffered = 0
        return data

    def send(self, data: bytes) -> None:
        if self.lost or not data:
            return
        if self.tls is not None:
            if self.framing is not None:
                if len(data) < _COPY_BELOW:
                    data = wire.frame_data(data)
                else:       # the frame header as its own TLS write: no copy of a big payload
                    obj, n = self.tls.obj, len(data)
                    for pos in range(0, n, wire.MAX_FRAME):
                        chunk = data if n <= wire.MAX_FRAME else data[pos:pos + wire.MAX_FRAME]
                        obj.write(wire.frame_head(len(chunk)))
                        obj.write(chunk)
                    self.transport.write(self.tls.outgoing())
                    return
            data = self.tls.send(data)
        self.transport.write(data)

    def send_eof(self) -> None:
        if self.lost:
            return
        fr = self.framing
        if fr is not None:
            if not fr.fin_out:
                fr.fin_out = True
                self.transport.write(self.tls.send(wire.FIN_FRAME))
            return
        if self.tls is not None:
            out = self.tls.close_write()
            if out:
                self.transport.write(out)
        elif self.transport.can_write_eof():
            self.transport.write_eof()

    def close(self) -> None:
        fr = self.framing
        if fr is not None and not self.lost:
            if (fr.fin_in and fr.fin_out and not fr.broken and self.error is None
                    and not self.transport.is_closing()):
                self._release()
                return
            fr.broken = True
        if self.transport is not None and not self.lost:
            if self.tls is not None and not self.tls.closed_write:
                out = self.tls.close_write()
                if out:
                    self.transport.write(out)
            self.transport.close()

    def _release(self) -> None:
        """Both FINs passed: detach from the pod's side, keep the TLS connection open."""
        fr = self.framing
        peer = self.peer
        got = self.received
        self.framing = None
        self.peer = None
        self.relaying = False
        self.eof = False
        self.received = 0
        self._on_lost = None
        if peer is not None and peer.peer is self:
            peer.peer = None
        if not self.transport.is_closing():
            self.transport.resume_reading()
        fr.on_release(got)

    def abort(self, *, reset: bool = False) -> None:
        if self.framing is not None:
            self.framing.broken = True
        if self.transport is None or self.lost:
            return
        if self.transport.is_closing() and not reset:
            return
        if reset:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
        self.transport.abort()


class _SpliceState:
    """The kernel forwards the bytes of a spliced pair. User space never reads either socket
    (a pair is only made when it has read nothing: the kernel re-delivers bytes user space read
    before the pair was made, measured), kicks the verdict for bytes already queued, and learns
    about each FIN from an epoll watching only EPOLLRDHUP; it passes the FIN on once the kernel
    has sent everything it redirected before it (splice.py)."""

    def __init__(self, splicer, a: Side, b: Side) -> None:
        import select

        from node_agent.ztunnel import splice
        self._splice = splice
        self.splicer = splicer
        self.sides = (a, b)
        self.sock = {a: a.transport.get_extra_info("socket"),
                     b: b.transport.get_extra_info("socket")}
        # what the kernel had taken from writers of each side before the splice, beyond the
        # bytes user space wrote to it (a SYN counts on an active opener)
        self.adjust = {b: splice.tcp_written(self.sock[b]) - a.received,
                       a: splice.tcp_written(self.sock[a]) - b.received}
        self.cookies = splicer.pair(self.sock[a], self.sock[b])
        self.kernel_bytes: dict[Side, int] = {}
        self.ep = select.epoll()
        self.fd_side = {}
        for side in (a, b):
            side.transport.pause_reading()
            fd = self.sock[side].fileno()
            self.fd_side[fd] = side
            self.ep.register(fd, select.EPOLLRDHUP | select.EPOLLET)
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.ep.fileno(), self._events)
        self.closed = False
        for side in (a, b):     # bytes that arrived before the pair was made
            self._kick(side)

    def _kick(self, side: Side) -> None:
        """Have the verdict take bytes queued before the pair was made: setting SO_RCVLOWAT
        makes TCP signal data-ready (tcp_set_rcvlowat), with no user-space read at all."""
        import socket as _s
        try:
            self.sock[side].setsockopt(_s.SOL_SOCKET, _s.SO_RCVLOWAT, 1)
        except OSError:
            pass

    def _events(self) -> None:
        try:
            events = self.ep.poll(0)
        except (OSError, ValueError):
            return
        for fd, _ev in events:
            side = self.fd_side.get(fd)
            if side is not None and not side.eof:
                side.eof = True
                self.eof_when_flushed(side)

    def received(self, side: Side) -> int:
        try:
            return self._splice.tcp_received(self.sock[side])
        except OSError:
            return 0

    def eof_when_flushed(self, side: Side, tries: int = 2000) -> None:
        peer = side.peer
        try:
            want = self._splice.tcp_received(self.sock[side]) - 1          # the FIN counts 1
            have = self._splice.tcp_written(self.sock[peer]) - self.adjust[peer]
        except OSError:
            want = have = 0
        if have < want and tries > 0 and not peer.lost:
            self.loop.call_later(0.0005, self.eof_when_flushed, side, tries - 1)
            return
        self.kernel_bytes[side] = max(want, side.received)
        side._pass_eof()

    def release(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.ep.fileno())
        self.ep.close()
        try:
            self.splicer.forget(*self.cookies)
        except OSError:
            pass


class Framing:
    """The framed state of a joined tunnel side (one inner connection)."""

    __slots__ = ("decoder", "fin_in", "fin_out", "broken", "on_release", "on_bad_frame")

    def __init__(self, *, on_release: Callable[[int], None],
                 on_bad_frame: Callable[[Exception], None] | None = None) -> None:
        self.decoder = wire.FrameDecoder()
        self.fin_in = False         # the peer tunnel's FIN came
        self.fin_out = False        # ours went
        self.broken = False         # never reuse
        self.on_release = on_release
        self.on_bad_frame = on_bad_frame


def join_framed(plain: Side, tun: Side, *, on_close: Callable[[int, int], None],
                on_release: Callable[[Side], None],
                on_bad_frame: Callable[[Exception], None] | None = None) -> None:
    """Relay between a pod's plain side and a framed tunnel side (set up: header and reply
    done; `tun.buffer` holds framed bytes that came with the reply or the header).
    `on_close(plain bytes received, tunnel payload bytes received)` fires once, when the pod's
    side is gone and the tunnel side is gone or released; `on_release(tun)` when the tunnel side
    is clean and free for the next inner connection (its buffer holds what followed the FIN)."""
    done = [False, False]           # closed, released
    tun_count = [0]

    def finished(_side=None) -> None:
        if done[0] or not plain.lost or not (tun.lost or done[1]):
            return
        done[0] = True
        on_close(plain.received, tun_count[0] if done[1] else tun.received)

    def released(got: int) -> None:
        done[1] = True
        tun_count[0] = got
        finished()
        on_release(tun)

    raw = tun.take()
    tun.received = 0
    tun.framing = Framing(on_release=released, on_bad_frame=on_bad_frame)
    plain.peer, tun.peer = tun, plain
    plain._on_lost = tun._on_lost = finished
    plain.relaying = tun.relaying = True
    if plain.buffer:
        tun.send(plain.take())
    for side in (plain, tun):
        if side.transport is not None and not side.lost:
            side.transport.resume_reading()
    if (tun.transport is not None and not tun.lost and not plain.lost
            and tun.transport.get_write_buffer_size() > HIGH_WATER):
        plain.transport.pause_reading()     # still congested from an earlier connection:
        #                                     its resume_writing resumes this pod
    if plain.lost:
        if plain.error is not None:
            tun.abort()
        else:
            tun.close()
    elif tun.lost:
        if tun.error is not None:
            plain.abort()
        else:
            plain.close()
    else:
        early_eof = tun.eof             # close_notify or TCP FIN during the setup: no reuse
        tun.eof = False
        if plain.eof:
            tun.send_eof()
        if raw:
            tun._framed_in([raw])
        if early_eof and not tun.lost and tun.error is None:
            if tun.framing is not None:
                tun.framing.broken = True
            tun._got_eof()
    finished()


def join(a: Side, b: Side, *, on_close: Callable[[], None], splicer=None) -> None:
    """Start relaying between two set-up sides; buffered bytes and EOFs are passed on first.
    With a `splicer` (two plain sides), the kernel forwards the bytes from then on."""
    done = [False]

    def lost(_side: Side) -> None:
        if a.lost and b.lost and not done[0]:
            done[0] = True
            if a.splice is not None:
                a.splice.release()
            on_close()

    a.peer, b.peer = b, a
    a._on_lost = b._on_lost = lost
    for src, dst in ((a, b), (b, a)):
        if src.buffer:
            dst.send(src.take())
        src.relaying = True
    if (splicer is not None and a.tls is None and b.tls is None and not (a.lost or b.lost)
            and not (a.eof or b.eof) and a.received == 0 and b.received == 0
            and a.transport.get_write_buffer_size() == 0
            and b.transport.get_write_buffer_size() == 0):
        try:
            a.splice = b.splice = _SpliceState(splicer, a, b)
        except OSError:
            a.splice = b.splice = None      # e.g. the map is full: copy instead
    for src in (a, b):
        if src.transport is not None and not src.lost and src.splice is None:
            src.transport.resume_reading()
    for src, dst in ((a, b), (b, a)):
        if src.lost and not dst.lost:
            if src.error is not None:
                dst.abort()
            else:
                dst.close()
        elif src.eof:
            dst.send_eof()
    if a.eof and b.eof:
        a.close()
        b.close()
    lost(a)
