"""HTTP/2 server side, sans-IO over `h2`: bytes in, whole requests out, responses to bytes.

Before: a downstream connection that began with the HTTP/2 preface (prior knowledge, h2c) or
negotiated `h2` by ALPN. After: `RequestReady(stream_id, headers, body)` per complete
request, each routed on its own (so one long-lived gRPC/HTTP/2 connection still spreads over
endpoints); `respond()` queues the answer, honouring flow control; `data_to_send()` is what
to write. Bad input never raises out of here:

- a frame that breaks the protocol → GOAWAY(PROTOCOL_ERROR) and `closed` (h2 decides);
- a rapid-reset flood (CVE-2023-44487: streams opened and reset by the client faster than
  `max_resets` per `reset_window_s`) → GOAWAY(ENHANCE_YOUR_CALM) and `closed`;
- a stream whose headers exceed `max_head` bytes → RST_STREAM(REFUSED... ) answered 431;
- more than `max_concurrent` open streams is refused by SETTINGS (h2 enforces it).
Each refusal is reported in `errors` for the proxy to count.

`H2Client` is the upstream side (gRPC and HTTP/2 services): requests become streams on one
connection per endpoint, responses (with trailers) come back whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass(slots=True)
class RequestReady:
    stream_id: int
    headers: list[tuple[str, str]]   # pseudo-headers included, names lower-case
    body: bytes

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


class H2Server:
    def __init__(self, *, max_concurrent: int = 100, max_head: int = 65536,
                 max_body: int = 16 * 1024 * 1024, max_resets: int = 200,
                 reset_window_s: float = 1.0) -> None:
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8",
                                        validate_inbound_headers=True,
                                        normalize_inbound_headers=True)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.local_settings = h2.settings.Settings(
            client=False, initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: max_head,
            })
        self.conn.initiate_connection()
        self.max_head = max_head
        self.max_body = max_body
        self.max_resets = max_resets
        self.reset_window_s = reset_window_s
        self._resets: list[float] = []
        self._streams: dict[int, _Stream] = {}
        self._pending: dict[int, tuple[memoryview, list | None]] = {}  # not yet sent
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
        """Returns complete requests, and the ids (ints) of streams the client reset."""
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
                st = self._streams.get(ev.stream_id)
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if st is None:
                    continue
                st.size += len(ev.data)
                if st.size > self.max_body:
                    self.errors.append("body_too_large")
                    del self._streams[ev.stream_id]
                    self._respond_now(ev.stream_id, 413)
                    continue
                st.body.append(ev.data)
                if ev.stream_ended is not None:
                    out.append(self._complete(ev.stream_id))
            elif isinstance(ev, h2.events.StreamEnded):
                if ev.stream_id in self._streams:
                    out.append(self._complete(ev.stream_id))
            elif isinstance(ev, h2.events.StreamReset):
                self._streams.pop(ev.stream_id, None)
                self._pending.pop(ev.stream_id, None)
                out.append(ev.stream_id)
                self._resets.append(now)
                cutoff = now - self.reset_window_s
                while self._resets and self._resets[0] < cutoff:
                    self._resets.pop(0)
                if len(self._resets) > self.max_resets:
                    self._goaway(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, "rapid_reset")
                    return out
            elif isinstance(ev, h2.events.WindowUpdated):
                self._flush()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.closed = True
        return [x for x in out if x is not None]

    def _complete(self, stream_id: int) -> RequestReady | None:
        st = self._streams.pop(stream_id, None)
        if st is None:
            return None
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
            self._pending[stream_id] = (memoryview(body), trailers or None)
            self._flush()

    def _flush(self) -> None:
        flush(self.conn, self._pending)


def flush(conn: h2.connection.H2Connection,
          pending: dict[int, tuple[memoryview, list | None]]) -> None:
    """Send queued bodies as far as flow control allows; trailers (if any) end the stream."""
    for sid in list(pending):
        view, trailers = pending[sid]
        try:
            window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            while window > 0 and view:
                chunk, view = view[:window], view[window:]
                conn.send_data(sid, bytes(chunk), end_stream=not view and not trailers)
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if not view and trailers:
                conn.send_headers(sid, trailers, end_stream=True)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            pending.pop(sid, None)
            continue
        if view:
            pending[sid] = (view, trailers)
        else:
            del pending[sid]


@dataclass(slots=True)
class ResponseReady:
    stream_id: int
    status: int
    headers: list[tuple[str, str]]     # without pseudo-headers
    body: bytes
    trailers: list[tuple[str, str]]


class H2Client:
    """The upstream side: requests as streams on one connection, whole responses back."""

    def __init__(self) -> None:
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                        validate_inbound_headers=True,
                                        normalize_inbound_headers=True)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        self._streams: dict[int, dict] = {}
        self._pending: dict[int, tuple[memoryview, list | None]] = {}
        self.closed = False

    def data_to_send(self) -> bytes:
        return self.conn.data_to_send()

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def request(self, headers: list[tuple[str, str]], body: bytes) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=not body)
        self._streams[sid] = {"status": 0, "headers": [], "body": [], "trailers": []}
        if body:
            self._pending[sid] = (memoryview(body), None)
            flush(self.conn, self._pending)
        return sid

    def cancel(self, sid: int) -> None:
        self._streams.pop(sid, None)
        self._pending.pop(sid, None)
        try:
            self.conn.reset_stream(sid, error_code=h2.errors.ErrorCodes.CANCEL)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            pass

    def feed(self, data: bytes) -> list[ResponseReady | int]:
        """Complete responses, and the ids (ints) of streams the server reset."""
        if self.closed:
            return []
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
            return []
        out: list[ResponseReady | int] = []
        for ev in events:
            st = self._streams.get(getattr(ev, "stream_id", 0) or 0)
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
            elif isinstance(ev, h2.events.WindowUpdated):
                flush(self.conn, self._pending)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.closed = True
        return out


_H2_FORBIDDEN = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                           "upgrade", "content-length", "te"})
