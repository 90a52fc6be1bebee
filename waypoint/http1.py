"""HTTP/1.1, sans-IO: bytes in, requests (or a protocol error) out; responses to bytes.

Before: bytes from a downstream connection (`RequestReader.feed`) or an upstream one
(`ResponseReader.feed`). After: `Request`/`Response` objects with lower-case header names and
the whole body when it arrived with the head (the common case), or — when the head is
complete and the body is still arriving — with `stream`, a `streaming.Body` that the rest of
the body goes into (then its end, with a chunked body's trailers; a whole chunked request
with trailers comes as a `stream` that has already ended with them, so that they are sent
on); or a `ProtocolError`
carrying the status to answer (the connection is then closed). `serialize_*_head`, `chunk`
and `last_chunk` write a streamed message. The proxy does the I/O; nothing here touches a
socket.

Parsing is llhttp (via httptools) in its strict mode, which already refuses the smuggling
shapes — Content-Length with Transfer-Encoding, duplicate Content-Length, obs-fold, invalid
characters in names and values, bare LF — and this layer adds what llhttp leaves to the
application: a Transfer-Encoding other than `chunked` (501), a missing or repeated Host (400),
a head larger than `max_head` bytes or with more than `max_headers` fields (431), a body over
`max_body` if one is set (413; the proxy sets none: bodies stream). An `Upgrade` request is served as a plain request (RFC 9110 lets a server
ignore Upgrade); the hop-by-hop headers are never forwarded (`HOP_BY_HOP`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import httptools

from waypoint.streaming import RETRY_BUFFER_BYTES, Body

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
    "upgrade", "proxy-authenticate", "proxy-authorization", "content-length", "host",
    "http2-settings", "expect",
})

REASONS = {
    200: "OK", 204: "No Content", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
    408: "Request Timeout", 413: "Content Too Large", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout",
}


class ProtocolError(Exception):
    """The peer broke HTTP/1.1. `status` is what to answer (0: just close); `kind` counts it.
    `ready`: the requests that arrived whole before the bad bytes (`RequestReader.feed`):
    they are answered first, in order, and the error answer after them."""

    ready: list[Request] = []

    def __init__(self, status: int, kind: str, detail: str = "") -> None:
        super().__init__(f"{status} {kind}: {detail}" if detail else f"{status} {kind}")
        self.status = status
        self.kind = kind
        self.detail = detail


class _OutOfStep(Exception):
    """Raised from a `ResponseReader` callback to stop llhttp at bytes that follow a
    complete answer (it would go on parsing them as the next message, or a HEAD body)."""


@dataclass(slots=True)
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]            # lower-case names, in order
    body: bytes = b""
    keep_alive: bool = True
    version: str = "1.1"
    authority: str = ""
    stream: Body | None = None                # the body, when it was still arriving
    expect_continue: bool = False             # streamed, and its sender waits for 100

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    keep_alive: bool = True
    trailers: list[tuple[str, str]] = field(default_factory=list)
    stream: Body | None = None                # the body, when it was still arriving


class ContinueBody(Body):
    """The body of a request whose sender waits for `100 Continue` before sending it
    (`Expect: 100-continue`). `on_wanted` is called once, the first time a reader asks for
    the body: the proxy reads it only once the request has been authorized, routed and
    admitted and is being sent upstream, so that is when the client is asked for it. A
    request refused before never calls it (and gets its final answer without a 100)."""

    __slots__ = ("on_wanted",)

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.on_wanted: Callable[[], None] | None = None

    def read(self, pos: int) -> tuple[list[bytes], int]:
        wanted = self.on_wanted
        if wanted is not None:
            self.on_wanted = None
            wanted()
        return Body.read(self, pos)


class RequestReader:
    """Feed bytes from a client; get complete requests. One reader per connection."""

    def __init__(self, *, max_head: int = 65536, max_headers: int = 100,
                 max_body: int | None = None, retain: int = RETRY_BUFFER_BYTES) -> None:
        self.max_head = max_head
        self.max_headers = max_headers
        self.max_body = max_body
        self.retain = retain
        self._parser = self._new_parser()
        self._ready: list[Request] = []
        self._head_raw = 0
        self.expect_continue = False
        self._reset()

    def _new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        # After a request with `Connection: close` (or HTTP/1.0 without keep-alive) the rest
        # of the input is never processed (RFC 9112 §9.6): llhttp skips it, not an error.
        parser.set_dangerous_leniencies(lenient_data_after_close=True)
        return parser

    def _reset(self) -> None:
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._body_len = 0
        self._head_bytes = 0
        self._in_head = False
        self._head_done = False
        self._stream: Body | None = None
        self._trailers: list[tuple[str, str]] | None = None
        self._authority = ""
        self._expect = False

    # httptools callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if len(self._headers) >= self.max_headers or self._head_bytes > self.max_head:
            raise ProtocolError(431, "headers_too_large")
        if self._head_done:                 # a chunked body's trailer section
            if self._trailers is None:
                self._trailers = []
            self._trailers.append((name.decode("latin-1").lower(), value.decode("latin-1")))
            if len(self._headers) + len(self._trailers) > self.max_headers:
                raise ProtocolError(431, "headers_too_large")
            return
        # trailing whitespace is not part of a field value (RFC 9110 §5.5; llhttp keeps it):
        # `Host: web.demo ` must be matched by authorization as `web.demo`, as Envoy does
        self._headers.append((name.decode("latin-1").lower(),
                              value.rstrip(b" \t").decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_done = True
        self._head_raw = 0
        hosts = tes = 0
        te = authority = ""
        expect = False
        for n, v in self._headers:      # one pass over the head for all the checks below
            if n == "host":
                hosts += 1
                if hosts == 1:
                    authority = v
            elif n == "transfer-encoding":
                tes += 1
                te = v
            elif n == "expect" and v.strip().lower() == "100-continue":
                expect = True
        if hosts > 1:
            raise ProtocolError(400, "duplicate_host")
        if tes and (tes > 1 or te.strip().lower() != "chunked"):
            raise ProtocolError(501, "unsupported_transfer_encoding", te)
        if not hosts and self._parser.get_http_version() == "1.1":
            raise ProtocolError(400, "missing_host")
        self._authority = authority
        if expect:   # the proxy sends 100 once it wants the body (`ContinueBody`)
            self._expect = self.expect_continue = True

    def on_body(self, data: bytes) -> None:
        self._body_len += len(data)
        if self.max_body is not None and self._body_len > self.max_body:
            raise ProtocolError(413, "body_too_large")
        if self._stream is not None:
            self._stream.feed(data)
        else:
            self._body.append(data)

    def on_message_complete(self) -> None:
        stream = self._stream
        if stream is not None:       # handed out already: its body is complete now
            stream.end(self._trailers)
            self._stream = None
        elif self._trailers:         # whole, but with trailers: handed out as a body that
            body = Body(retain=self.retain)    # has ended with them, so they are sent on
            for chunk in self._body:           # (chunked upstream, or HTTP/2 trailers)
                body.feed(chunk)
            body.end(self._trailers)
            self._ready.append(self._request(b"", body))
        else:                        # the whole request arrived together (the common case)
            p = self._parser
            body = self._body
            self._ready.append(Request(
                p.get_method().decode("ascii"), self._url.decode("latin-1"), self._headers,
                (body[0] if len(body) == 1 else b"".join(body)) if body else b"",
                p.should_keep_alive(), p.get_http_version(), self._authority))
        self._head_done = False
        self._head_raw = 0

    def _request(self, body: bytes, stream: Body | None) -> Request:
        p = self._parser
        return Request(
            method=p.get_method().decode("ascii"),
            target=self._url.decode("latin-1"),
            headers=self._headers,
            body=body,
            keep_alive=p.should_keep_alive(),
            version=p.get_http_version(),
            authority=self._authority,
            stream=stream,
            expect_continue=isinstance(stream, ContinueBody),
        )

    def _start_stream(self) -> None:
        """The head is complete but the body is still arriving: hand the request out now,
        its body as a `Body` that the rest of the bytes go into (streaming)."""
        length = None
        for n, v in self._headers:
            if n == "content-length":
                length = int(v)
        kind = ContinueBody if self._expect else Body
        body = self._stream = kind(retain=self.retain, length=length)
        for chunk in self._body:
            body.feed(chunk)
        self._body = []
        self._ready.append(self._request(b"", body))

    # --------------------------------------------------------------------------------------
    @property
    def mid_request(self) -> bool:
        """Some of a request has arrived but not all."""
        return self._in_head or self._head_done

    @property
    def in_head(self) -> bool:
        """Part of a request head has arrived, not all of it (for the slow-client timer)."""
        return self._in_head

    @property
    def streaming(self) -> Body | None:
        """The body of the request being received, if it was handed out before it ended."""
        return self._stream

    def feed(self, data: bytes) -> list[Request]:
        if not self._head_done:
            self._head_raw += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as up:
            # The request before the upgrade point is complete; ignore the Upgrade and go on
            # with a fresh parser for whatever follows.
            offset = up.args[0] if up.args else len(data)
            self._parser = self._new_parser()
            rest = data[offset:]
            if rest:
                return self.feed(rest)  # returns everything ready, the upgrade request too
        except httptools.HttpParserError as e:
            cause = e.__context__
            if isinstance(cause, ProtocolError):
                raise self._with_ready(cause) from None
            raise self._with_ready(ProtocolError(400, "malformed", str(e))) from None
        if self._in_head and self._head_raw > self.max_head + 8192:
            raise self._with_ready(ProtocolError(431, "headers_too_large"))
        if self._head_done and self._stream is None:
            self._start_stream()
        ready, self._ready = self._ready, []
        return ready

    def _with_ready(self, error: ProtocolError) -> ProtocolError:
        """The error, carrying the requests that were whole before it (answered first)."""
        error.ready, self._ready = self._ready, []
        return error

    def fail(self, reason: str) -> None:
        """The connection ended (or broke) in the middle of a streamed body."""
        if self._stream is not None:
            self._stream.fail(reason)
            self._stream = None


class ResponseReader:
    """Feed bytes from an upstream; `done` once a whole response has arrived.

    Exactly one response per request: bytes after a complete one in the same read (a second
    response, junk, a body after a HEAD/204/304 answer) are not parsed — they mean the
    connection is out of step, so `keep_alive` turns False (never pooled). Refused as
    `ProtocolError` (the proxy's failed try, 503 UC): a status outside 100..599, a 101 (the
    proxy never asks for an upgrade), a version other than HTTP/1.0 or 1.1, a
    Transfer-Encoding other than exactly `chunked` (as Envoy does: a coding would be lost).
    A HEAD answer has no body (RFC 9112 §6.3), with or without a length: it keeps the
    connection unless it says close.
    """

    __slots__ = ("_parser", "status", "headers", "_body", "done", "keep_alive", "head_only",
                 "_started", "head_complete", "stream", "trailers")

    def __init__(self, *, head_only: bool = False) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.head_only = head_only
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self.done = False
        self.keep_alive = True
        self._started = False
        self.head_complete = False
        self.stream: Body | None = None
        self.trailers: list[tuple[str, str]] | None = None   # a chunked body's, if any

    def reset(self) -> None:
        """Ready for the next response on the same keep-alive connection (same parser)."""
        self.status = 0
        self.headers = []
        self._body = []
        self.done = False
        self.keep_alive = True
        self._started = False
        self.head_complete = False
        self.stream = None
        self.trailers = None

    def on_message_begin(self) -> None:
        if self.done:
            raise _OutOfStep   # a second message after the answer: never parsed
        self._started = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_complete:             # a chunked body's trailer section
            if self.trailers is None:
                self.trailers = []
            self.trailers.append((name.decode("latin-1").lower(), value.decode("latin-1")))
            return
        n = name.decode("latin-1").lower()
        if n == "transfer-encoding":
            self._transfer_encoding(value)
        self.headers.append((n, value.decode("latin-1")))

    def _transfer_encoding(self, value: bytes) -> None:
        if value.strip(b" \t").lower() != b"chunked" or any(
                n == "transfer-encoding" for n, _ in self.headers):
            raise ProtocolError(502, "upstream_transfer_encoding",
                                value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        p = self._parser
        status = self.status = p.get_status_code()
        if status < 200:
            if status >= 100 and status != 101:
                return  # informational (100 Continue, 103 Early Hints): the real one follows
            raise ProtocolError(502, "upstream_status", str(status))   # (101: never asked)
        if status > 599:
            raise ProtocolError(502, "upstream_status", str(status))
        version = p.get_http_version()
        if version != "1.1" and version != "1.0":
            raise ProtocolError(502, "upstream_version", version)
        self.head_complete = True
        if self.head_only or status == 204 or status == 304:
            keep = p.should_keep_alive()
            if not keep and self.head_only:
                keep = self._head_keeps_alive(version)
            self.keep_alive = keep
            self.done = True

    def _head_keeps_alive(self, version: str) -> bool:
        """llhttp does not know the request was HEAD: an answer without a length looks
        close-delimited to it. It is not (no body): only `Connection` decides."""
        tokens: set[str] = set()
        for n, v in self.headers:
            if n == "connection":
                tokens.update(t.strip().lower() for t in v.split(","))
        if "close" in tokens:
            return False
        return version == "1.1" or "keep-alive" in tokens

    def on_body(self, data: bytes) -> None:
        if self.done:
            raise _OutOfStep   # a body after a HEAD answer: never counted or relayed
        if self.stream is not None:
            self.stream.feed(data)
        else:
            self._body.append(data)

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200 and self.status != 101:
            self.status = 0          # forget the informational answer; wait for the final one
            self.headers = []
            self._body = []
            return
        self.keep_alive = self._parser.should_keep_alive()
        self.done = True
        if self.stream is not None:
            self.stream.end(self.trailers)

    def start_stream(self) -> Response:
        """Status and headers are complete, the body is not: the response to forward now,
        its body a `Body` that the rest of the bytes go into."""
        length = None
        for n, v in self.headers:
            if n == "content-length":
                length = int(v)
        body = self.stream = Body(retain=0, length=length)
        for chunk in self._body:
            body.feed(chunk)
        self._body = []
        return Response(self.status, self.headers, b"", True, stream=body)

    @property
    def started(self) -> bool:
        return self._started

    def feed(self, data: bytes) -> None:
        if self.done:
            self.keep_alive = False    # bytes after the answer: out of step
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            if self.done:
                self.keep_alive = False   # bytes after the answer: out of step
                return
            cause = e.__context__
            if isinstance(cause, ProtocolError):
                raise cause from None
            raise ProtocolError(502, "upstream_malformed", str(e)) from None
        except httptools.HttpParserUpgrade:
            raise ProtocolError(502, "upstream_status", "101") from None

    def feed_eof(self) -> bool:
        """The upstream closed: a response delimited by close is complete now."""
        if self.done:
            return True
        if self._started and self.status and not any(
                n in ("content-length", "transfer-encoding") for n, _ in self.headers):
            self.keep_alive = False
            self.done = True
            if self.stream is not None:
                self.stream.end()
        elif self.stream is not None:
            self.stream.fail("closed")
        return self.done

    def response(self) -> Response:
        return Response(self.status, self.headers, b"".join(self._body), self.keep_alive)


def _fields(headers: list[tuple[str, str]]) -> str:
    """`name: value\r\n` for each header, as one string (encoded once by the caller)."""
    return "".join([f"{n}: {v}\r\n" for n, v in headers])


def serialize_request(method: str, target: str, authority: str,
                      headers: list[tuple[str, str]], body: bytes) -> bytes:
    length = f"content-length: {len(body)}\r\n" if body or method in (
        "POST", "PUT", "PATCH") else ""
    head = (f"{method} {target} HTTP/1.1\r\nhost: {authority}\r\n{_fields(headers)}"
            f"{length}\r\n").encode("latin-1")
    return head + body if body else head


def serialize_request_head(method: str, target: str, authority: str,
                           headers: list[tuple[str, str]], length: int | None) -> bytes:
    """The head of a request whose body follows as it arrives: `Content-Length` when the
    length is known, else chunked."""
    out = bytearray(f"{method} {target} HTTP/1.1\r\nhost: {authority}\r\n".encode("latin-1"))
    for n, v in headers:
        out += f"{n}: {v}\r\n".encode("latin-1")
    out += (b"transfer-encoding: chunked\r\n" if length is None
            else b"content-length: %d\r\n" % length)
    out += b"\r\n"
    return bytes(out)


def serialize_response_head(status: int, headers: list[tuple[str, str]], *,
                            length: int | None, keep_alive: bool, chunked: bool) -> bytes:
    """The head of a response whose body follows as it arrives: `Content-Length` when known,
    else chunked (HTTP/1.1 clients) or delimited by closing (`chunked=False`)."""
    reason = REASONS.get(status, "")
    out = bytearray(f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1"))
    for n, v in headers:
        out += f"{n}: {v}\r\n".encode("latin-1")
    if length is not None:
        out += b"content-length: %d\r\n" % length
    elif chunked:
        out += b"transfer-encoding: chunked\r\n"
    if not keep_alive:
        out += b"connection: close\r\n"
    out += b"\r\n"
    return bytes(out)


def chunk(data: bytes) -> bytes:
    """One piece of a chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def last_chunk(trailers: list[tuple[str, str]] | None = None) -> bytes:
    """The end of a chunked body, with its trailer section."""
    out = bytearray(b"0\r\n")
    for n, v in trailers or ():
        out += f"{n}: {v}\r\n".encode("latin-1")
    out += b"\r\n"
    return bytes(out)


def serialize_response(status: int, headers: list[tuple[str, str]], body: bytes, *,
                       keep_alive: bool, head: bool = False) -> bytes:
    reason = REASONS.get(status, "")
    length = f"content-length: {len(body)}\r\n" if status >= 200 and status not in (
        204, 304) and not (head and any(n == "content-length" for n, _ in headers)) else ""
    # (HEAD: the upstream's content-length, kept)
    close = "" if keep_alive else "connection: close\r\n"
    out = f"HTTP/1.1 {status} {reason}\r\n{_fields(headers)}{length}{close}\r\n".encode(
        "latin-1")
    return out + body if body and not head else out


def error_response(status: int, body: bytes = b"", *, extra: list[tuple[str, str]] | None = None
                   ) -> bytes:
    headers = [("content-type", "text/plain")] + (extra or [])
    return serialize_response(status, headers, body, keep_alive=False)
