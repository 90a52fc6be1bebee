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
        self._pending: dict[int, tuple[memoryview, bool]] = {}  # body not yet sent
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
                body: bytes) -> None:
        if self.closed:
            return
        hs = [(":status", str(status))] + [(n, v) for n, v in headers
                                             if n not in _H2_FORBIDDEN]
        hs.append(("content-length", str(len(body))))
        try:
            self.conn.send_headers(stream_id, hs, end_stream=not body)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            return  # the client reset the stream meanwhile
        if body:
            self._pending[stream_id] = (memoryview(body), True)
            self._flush()

    def _flush(self) -> None:
        for sid in list(self._pending):
            view, end = self._pending[sid]
            try:
                window = min(self.conn.local_flow_control_window(sid),
                             self.conn.max_outbound_frame_size)
                while window > 0 and view:
                    chunk, view = view[:window], view[window:]
                    self.conn.send_data(sid, bytes(chunk), end_stream=end and not view)
                    window = min(self.conn.local_flow_control_window(sid),
                                 self.conn.max_outbound_frame_size)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
                self._pending.pop(sid, None)
                continue
            if view:
                self._pending[sid] = (view, end)
            else:
                del self._pending[sid]


_H2_FORBIDDEN = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                           "upgrade", "content-length", "te"})
