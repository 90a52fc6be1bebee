"""HTTP/2 server side, sans-IO over `h2`: bytes in, requests out, responses to bytes.

Before: a downstream connection that began with the HTTP/2 preface (prior knowledge, h2c) or
negotiated `h2` by ALPN. After: `RequestReady(stream_id, headers, body)` per request, each
routed on its own (so one long-lived gRPC/HTTP/2 connection still spreads over endpoints):
whole when the stream ended within the bytes fed, else with `stream`, a `streaming.Body` that
later DATA (and trailers) go into, acknowledged to the client (WINDOW_UPDATE) only as the
proxy consumes it. `respond()` queues a whole answer; `respond_head`/`send`/`end` stream one;
both honour flow control; `data_to_send()` is what to write. Bad input never raises out of
here:

- a frame that breaks the protocol → GOAWAY(PROTOCOL_ERROR) and `closed` (h2 decides);
- a rapid-reset flood (CVE-2023-44487: streams opened and reset by the client faster than
  `max_resets` per `reset_window_s`) → GOAWAY(ENHANCE_YOUR_CALM) and `closed`;
- a stream whose headers exceed `max_head` bytes → RST_STREAM(REFUSED... ) answered 431;
- more than `max_concurrent` open streams is refused by SETTINGS (h2 enforces it).
Each refusal is reported in `errors` for the proxy to count.

`H2Client` is the upstream side (gRPC and HTTP/2 services): requests become streams on one
connection per endpoint (bodies whole or streamed), responses (with trailers) come back whole
or, when their body is still arriving, at their headers with a `Body`. A reset is passed on
as a failed `Body` or a stream id; `cancel`/`reset`/`abandon` send RST_STREAM.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from waypoint.streaming import RETRY_BUFFER_BYTES, Body

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Receive windows. A streamed body is acknowledged only as it is consumed, so these bound
# what one stream (and one connection) can have in flight towards the waypoint — and, on a
# fast path, how much goes per round trip (h2's 64 KiB default halves upload throughput).
STREAM_WINDOW = 1024 * 1024
CONNECTION_WINDOW = 4 * 1024 * 1024


def _open_windows(conn: h2.connection.H2Connection, stream_window: int,
                  connection_window: int) -> None:
    if stream_window != 65535:
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: stream_window})
    if connection_window > 65535:
        conn.increment_flow_control_window(connection_window - 65535)


@dataclass(slots=True)
class RequestReady:
    stream_id: int
    headers: list[tuple[str, str]]   # pseudo-headers included, names lower-case
    body: bytes
    stream: Body | None = None       # the body, when it was still arriving (streaming)

    def pseudo(self, name: str) -> str:
        for n, v in self.headers:
            if n == name:
                return v
        return ""


@dataclass(slots=True)
class _Stream:
    headers: list[tuple[str, str]]
    body: list[bytes] = field(default_factory=list)
    size: int = 0


class _Out:
    """What is queued for one stream: pieces of body, then (once `end`) trailers or
    END_STREAM. Sent as far as flow control allows (`flush`)."""

    __slots__ = ("chunks", "trailers", "end", "size")

    def __init__(self) -> None:
        self.chunks: list[memoryview] = []
        self.trailers: list[tuple[str, str]] | None = None
        self.end = False
        self.size = 0

    def add(self, data: bytes) -> None:
        if data:
            self.chunks.append(memoryview(data))
            self.size += len(data)


class _Endpoint:
    """What both ends of an HTTP/2 connection share: bodies queued to send as flow control
    allows (`_pending`, by stream id) and bodies handed out while still arriving (`_live`)."""

    conn: h2.connection.H2Connection
    _pending: dict[int, _Out]
    _live: dict[int, Body]

    def send(self, sid: int, data: bytes) -> None:
        o = self._pending.get(sid)
        if o is not None:
            o.add(data)
            flush(self.conn, self._pending)

    def end(self, sid: int, trailers: list[tuple[str, str]] | None = None) -> None:
        o = self._pending.get(sid)
        if o is not None:
            o.trailers, o.end = trailers or None, True
            flush(self.conn, self._pending)

    def unsent(self, sid: int) -> int | None:
        """Bytes queued for the stream and not yet sent (flow control); None: none queued."""
        o = self._pending.get(sid)
        return None if o is None else o.size

    def _ack(self, sid: int, n: int) -> None:
        try:
            self.conn.acknowledge_received_data(n, sid)
        except (h2.exceptions.ProtocolError, KeyError):
            pass

    def fail_all(self, reason: str) -> None:
        """The connection is gone: every body still arriving fails."""
        live, self._live = self._live, {}
        for body in live.values():
            body.fail(reason)


class H2Server(_Endpoint):
    def __init__(self, *, max_concurrent: int = 100, max_head: int = 65536,
                 max_body: int | None = None, max_resets: int = 200,
                 reset_window_s: float = 1.0, retain: int = RETRY_BUFFER_BYTES,
                 stream_window: int = STREAM_WINDOW,
                 connection_window: int = CONNECTION_WINDOW) -> None:
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8",
                                        validate_inbound_headers=True,
                                        normalize_inbound_headers=True)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.local_settings = h2.settings.Settings(
            client=False, initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: max_head,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: stream_window,
            })
        self.conn.initiate_connection()
        _open_windows(self.conn, 65535, connection_window)
        self.max_head = max_head
        self.max_body = max_body
        self.retain = retain
        self.max_resets = max_resets
        self.reset_window_s = reset_window_s
        self._resets: list[float] = []
        self._streams: dict[int, _Stream] = {}
        self._live: dict[int, Body] = {}      # request bodies handed out while arriving
        self._pending: dict[int, _Out] = {}  # not yet sent
        self.closed = False
        self.errors: list[str] = []

    def data_to_send(self) -> bytes:
        return self.conn.data_to_send()

    def _goaway(self, code: h2.errors.ErrorCodes, kind: str) -> None:
        self.errors.append(kind)
        try:
            if self.conn.state_machine.state != h2.connection.ConnectionState.CLOSED:
                self.conn.close_connection(error_code=code)
        except h2.exceptions.ProtocolError:
            pass
        self.closed = True

    def feed(self, data: bytes, now: float) -> list[RequestReady | int]:
        """Returns requests, and the ids (ints) of streams the client reset.

        A request whose stream ended within these bytes comes whole (`body`); one whose
        body is still arriving comes with `stream`, a `Body` that later DATA goes into —
        acknowledged to the client only as the proxy consumes it (`Body.consumed`)."""
        if self.closed:
            return []
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            code = getattr(e, "error_code", None) or h2.errors.ErrorCodes.PROTOCOL_ERROR
            self._goaway(code, "protocol_error")
            return []
        out: list[RequestReady | int] = []
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                headers = [(n if isinstance(n, str) else n.decode(),
                            v if isinstance(v, str) else v.decode()) for n, v in ev.headers]
                size = sum(len(n) + len(v) + 32 for n, v in headers)
                if size > self.max_head:
                    self.errors.append("headers_too_large")
                    self._respond_now(ev.stream_id, 431)
                    continue
                self._streams[ev.stream_id] = _Stream(headers)
                if ev.stream_ended is not None:
                    out.append(self._complete(ev.stream_id))
            elif isinstance(ev, h2.events.DataReceived):
                live = self._live.get(ev.stream_id)
                if live is not None:
                    live.feed(ev.data)    # acknowledged when consumed
                    if ev.flow_controlled_length > len(ev.data):   # padding
                        self.conn.acknowledge_received_data(
                            ev.flow_controlled_length - len(ev.data), ev.stream_id)
                    if ev.stream_ended is not None:
                        self._end_live(ev.stream_id, None)
                    continue
                st = self._streams.get(ev.stream_id)
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if st is None:
                    continue
                st.size += len(ev.data)
                if self.max_body is not None and st.size > self.max_body:
                    self.errors.append("body_too_large")
                    del self._streams[ev.stream_id]
                    self._respond_now(ev.stream_id, 413)
                    continue
                st.body.append(ev.data)
                if ev.stream_ended is not None:
                    out.append(self._complete(ev.stream_id))
            elif isinstance(ev, h2.events.TrailersReceived):
                trailers = [(n if isinstance(n, str) else n.decode(),
                             v if isinstance(v, str) else v.decode()) for n, v in ev.headers]
                if ev.stream_id in self._live:
                    self._end_live(ev.stream_id, trailers)
                elif ev.stream_id in self._streams:
                    out.append(self._complete(ev.stream_id, trailers))
            elif isinstance(ev, h2.events.StreamEnded):
                if ev.stream_id in self._live:
                    self._end_live(ev.stream_id, None)
                elif ev.stream_id in self._streams:
                    out.append(self._complete(ev.stream_id))
            elif isinstance(ev, h2.events.StreamReset):
                self._streams.pop(ev.stream_id, None)
                self._pending.pop(ev.stream_id, None)
                live = self._live.pop(ev.stream_id, None)
                if live is not None:
                    live.fail("reset")
                    live.release()
                out.append(ev.stream_id)
                self._resets.append(now)
                cutoff = now - self.reset_window_s
                while self._resets and self._resets[0] < cutoff:
                    self._resets.pop(0)
                if len(self._resets) > self.max_resets:
                    self._goaway(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, "rapid_reset")
                    return out
            elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                self._flush()     # (a new INITIAL_WINDOW_SIZE opens windows too)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.closed = True
        # Streams whose headers came but whose body is still arriving: hand them out now.
        for sid in [sid for sid in self._streams if sid not in self._live]:
            st = self._streams.pop(sid)
            body = Body(retain=self.retain, length=_length(st.headers),
                        on_consumed=lambda n, sid=sid: self._ack(sid, n))
            for chunk in st.body:
                body.feed(chunk)
            body.acked = len(body.chunks)       # acknowledged on arrival, as before
            body.acked_bytes = body.size
            self._live[sid] = body
            out.append(RequestReady(sid, st.headers, b"", body))
        return [x for x in out if x is not None]

    def _end_live(self, sid: int, trailers: list[tuple[str, str]] | None) -> None:
        body = self._live.pop(sid, None)
        if body is not None:
            body.end(trailers)

    def abandon(self, stream_id: int) -> None:
        """The answer is complete while the client is still sending: stop the stream
        (RST_STREAM NO_ERROR, RFC 9113 §8.1) and give back the window of what it sent."""
        body = self._live.pop(stream_id, None)
        if body is not None:
            body.fail("abandoned")
            body.release()
            self.reset(stream_id, h2.errors.ErrorCodes.NO_ERROR)

    def reset(self, stream_id: int, code=h2.errors.ErrorCodes.CANCEL) -> None:
        self._pending.pop(stream_id, None)
        body = self._live.pop(stream_id, None)
        if body is not None:
            body.fail("reset")
            body.release()
        try:
            self.conn.reset_stream(stream_id, error_code=code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            pass

    def _complete(self, stream_id: int, trailers: list[tuple[str, str]] | None = None
                  ) -> RequestReady | None:
        """A request that arrived whole. With trailers it is handed out as a body that has
        already ended with them (as HTTP/1.1's reader does), so that they are sent on."""
        st = self._streams.pop(stream_id, None)
        if st is None:
            return None
        if trailers:     # its DATA was acknowledged on arrival: nothing to ack when consumed
            body = Body(retain=self.retain, length=_length(st.headers),
                        on_consumed=lambda _n: None)
            for chunk in st.body:
                body.feed(chunk)
            body.acked = len(body.chunks)
            body.acked_bytes = body.size
            body.end(trailers)
            return RequestReady(stream_id, st.headers, b"", body)
        return RequestReady(stream_id, st.headers, b"".join(st.body))

    def _respond_now(self, stream_id: int, status: int) -> None:
        try:
            self.conn.send_headers(stream_id, [(":status", str(status))], end_stream=True)
        except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            pass

    def respond(self, stream_id: int, status: int, headers: list[tuple[str, str]],
                body: bytes, trailers: list[tuple[str, str]] | None = None) -> None:
        if self.closed:
            return
        hs = [(":status", str(status))] + [(n, v) for n, v in headers
                                             if n not in _H2_FORBIDDEN]
        if not trailers:
            hs.append(("content-length", str(len(body))))
        try:
            self.conn.send_headers(stream_id, hs, end_stream=not body and not trailers)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            return  # the client reset the stream meanwhile
        if body or trailers:
            o = self._pending[stream_id] = _Out()
            o.add(body)
            o.trailers, o.end = trailers or None, True
            self._flush()

    # --- a response streamed: head, pieces as they arrive, then trailers or the end -------
    def respond_head(self, stream_id: int, status: int, headers: list[tuple[str, str]],
                     length: int | None) -> bool:
        if self.closed:
            return False
        hs = [(":status", str(status))] + [(n, v) for n, v in headers
                                             if n not in _H2_FORBIDDEN]
        if length is not None:
            hs.append(("content-length", str(length)))
        try:
            self.conn.send_headers(stream_id, hs, end_stream=False)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            return False
        self._pending[stream_id] = _Out()
        return True

    def live(self, stream_id: int) -> bool:
        return stream_id in self._pending

    def _flush(self) -> None:
        flush(self.conn, self._pending)


def _length(headers: list[tuple[str, str]]) -> int | None:
    for n, v in headers:
        if n == "content-length":
            try:
                return int(v)
            except ValueError:
                return None
    return None


def flush(conn: h2.connection.H2Connection, pending: dict[int, _Out]) -> None:
    """Send queued bodies as far as flow control allows; trailers (if any) end the stream.
    A stream stays queued (possibly empty) until it has ended."""
    for sid in list(pending):
        o = pending[sid]
        try:
            chunks = o.chunks
            ended = False
            window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            while window > 0 and chunks:
                view = chunks[0]
                part = view[:window]
                if len(part) == len(view):
                    chunks.pop(0)
                else:
                    chunks[0] = view[window:]
                o.size -= len(part)
                ended = not chunks and o.end and not o.trailers
                conn.send_data(sid, bytes(part), end_stream=ended)
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if not chunks and o.end:
                if o.trailers:
                    conn.send_headers(sid, o.trailers, end_stream=True)
                elif not ended:     # ended with nothing left to send: an empty END_STREAM
                    conn.end_stream(sid)
                del pending[sid]
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            pending.pop(sid, None)


@dataclass(slots=True)
class ResponseReady:
    stream_id: int
    status: int
    headers: list[tuple[str, str]]     # without pseudo-headers
    body: bytes
    trailers: list[tuple[str, str]]
    stream: Body | None = None         # the body, when it was still arriving (streaming)


class H2Client(_Endpoint):
    """The upstream side: requests as streams on one connection (their bodies whole, or
    streamed with `send`/`end`); responses back whole when they end within one read, else as
    soon as their headers are in, the body following in a `Body` (acknowledged to the server
    only as the proxy consumes it)."""

    def __init__(self, *, stream_window: int = STREAM_WINDOW,
                 connection_window: int = CONNECTION_WINDOW) -> None:
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                        validate_inbound_headers=True,
                                        normalize_inbound_headers=True)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        _open_windows(self.conn, stream_window, connection_window)
        self._streams: dict[int, dict] = {}
        self._live: dict[int, Body] = {}
        self._pending: dict[int, _Out] = {}
        self.closed = False

    def data_to_send(self) -> bytes:
        return self.conn.data_to_send()

    @property
    def open_streams(self) -> int:
        return len(self._streams) + len(self._live)

    def request(self, headers: list[tuple[str, str]], body: bytes, *, end: bool = True) -> int:
        """Open a stream; `end=False`: the body follows with `send` and `end`."""
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=end and not body)
        self._streams[sid] = {"status": 0, "headers": [], "body": [], "trailers": []}
        if body or not end:
            o = self._pending[sid] = _Out()
            o.add(body)
            o.end = end
            flush(self.conn, self._pending)
        return sid

    def cancel(self, sid: int) -> None:
        self._streams.pop(sid, None)
        self._pending.pop(sid, None)
        body = self._live.pop(sid, None)
        if body is not None:
            body.fail("cancelled")
            body.release()
        try:
            self.conn.reset_stream(sid, error_code=h2.errors.ErrorCodes.CANCEL)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            pass

    def feed(self, data: bytes) -> list[ResponseReady | int]:
        """Responses (whole, or with `stream`), and the ids (ints) of streams the server
        reset."""
        if self.closed:
            return []
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
            self.fail_all("protocol_error")
            return []
        out: list[ResponseReady | int] = []
        for ev in events:
            if isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                flush(self.conn, self._pending)   # (a request body may be streaming out)
                continue
            sid = getattr(ev, "stream_id", 0) or 0
            live = self._live.get(sid)
            if live is not None:
                if isinstance(ev, h2.events.DataReceived):
                    live.feed(ev.data)   # acknowledged when consumed
                    if ev.flow_controlled_length > len(ev.data):
                        self._ack(sid, ev.flow_controlled_length - len(ev.data))
                elif isinstance(ev, h2.events.TrailersReceived):
                    live.trailers = [(n, v) for n, v in ev.headers]
                elif isinstance(ev, h2.events.StreamEnded):
                    del self._live[sid]
                    live.end(live.trailers)
                elif isinstance(ev, h2.events.StreamReset):
                    del self._live[sid]
                    self._pending.pop(sid, None)
                    live.fail("reset")
                    live.release()
                    out.append(sid)
                continue
            st = self._streams.get(sid)
            if isinstance(ev, h2.events.ResponseReceived) and st is not None:
                for n, v in ev.headers:
                    if n == ":status":
                        st["status"] = int(v)
                    elif not n.startswith(":"):
                        st["headers"].append((n, v))
            elif isinstance(ev, h2.events.DataReceived):
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if st is not None:
                    st["body"].append(ev.data)
            elif isinstance(ev, h2.events.TrailersReceived) and st is not None:
                st["trailers"] = [(n, v) for n, v in ev.headers]
            elif isinstance(ev, h2.events.StreamEnded) and st is not None:
                del self._streams[ev.stream_id]
                out.append(ResponseReady(ev.stream_id, st["status"], st["headers"],
                                         b"".join(st["body"]), st["trailers"]))
            elif isinstance(ev, h2.events.StreamReset):
                if self._streams.pop(ev.stream_id, None) is not None:
                    out.append(ev.stream_id)
                self._pending.pop(ev.stream_id, None)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.closed = True
        # Responses whose headers came but whose body is still arriving: hand them out now.
        for sid in [sid for sid, st in self._streams.items() if st["status"] >= 200]:
            st = self._streams.pop(sid)
            body = Body(retain=0, length=_length(st["headers"]),
                        on_consumed=lambda n, sid=sid: self._ack(sid, n))
            for chunk in st["body"]:
                body.feed(chunk)
            body.acked = len(body.chunks)       # acknowledged on arrival
            body.acked_bytes = body.size
            self._live[sid] = body
            out.append(ResponseReady(sid, st["status"], st["headers"], b"", [], body))
        if self.closed:
            self.fail_all("closed")
        return out


_H2_FORBIDDEN = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                           "upgrade", "content-length", "te"})
