"""The sample app's HTTP/1.1 server: sockets, threads, keep-alive and a graceful stop.

Before: an `Identity` and a `Behaviour` (see `behaviour.py`, which decides every answer),
an address to listen on. After: a running server whose responses are JSON documents
(`behaviour.response_document`), one log line per request on stderr, and — on `stop()` —
a listener that is closed at once, idle keep-alive connections closed, in-flight requests
answered (with `Connection: close`) within the drain timeout, and every connection closed.

Built on the standard library's `ThreadingHTTPServer` (one thread per connection) with
HTTP/1.1 framing; bodies sent with `Content-Length` or `Transfer-Encoding: chunked` are
read fully so keep-alive stays in step. Dropping a connection "without answering" uses
RST (SO_LINGER 0) by default, or a plain FIN in `fin` mode.
"""

from __future__ import annotations

import datetime as _dt
import random as _random
import select
import socket
import struct
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TextIO

from lacewing.sample_app.behaviour import (
    Behaviour,
    Plan,
    encode_body,
    header_map,
    plan_request,
    response_document,
)
from lacewing.sample_app.identity import Identity

IDLE_TIMEOUT = 300.0  # seconds a keep-alive connection may sit idle before the server closes it
LATE_CONNECTION_TIMEOUT = 1.0  # seconds a connection accepted as a stop begins may stay silent
MAX_BODY = 64 * 1024 * 1024  # request bodies above this are refused (413)
SERVER_NAME = "lacewing-sample-app"
_PEER_GONE = select.POLLRDHUP | select.POLLHUP | select.POLLERR


class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = SERVER_NAME
    sys_version = ""
    timeout = IDLE_TIMEOUT
    disable_nagle_algorithm = True  # answers go out at once, not after a delayed ACK
    server: _HTTPServer

    # -- connection lifecycle ------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self._busy = False
        self.server.track(self)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass

    def handle_one_request(self) -> None:
        # Mirrors BaseHTTPRequestHandler.handle_one_request, with the in-flight bookkeeping
        # that a graceful stop needs and one code path for every method.
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except (TimeoutError, OSError):
            self.close_connection = True
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        draining = self.server.begin_request(self)
        try:
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(414)
                return
            if not self.parse_request():
                return
            if draining:
                self.close_connection = True
            self._serve()
            if not self.wfile.closed:
                self.wfile.flush()
        except (TimeoutError, ConnectionError, OSError, ValueError):
            self.close_connection = True
        finally:
            self.server.end_request(self)

    # -- one request ---------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            body_bytes = self._read_body()
        except _BadRequest as exc:
            self.close_connection = True
            plan = Plan(status=exc.status, delay=0.0, failed=False, reason="bad-request", error=str(exc))
            self._answer(plan, body_bytes=0)
            return
        headers = list(self.headers.items())
        plan = plan_request(
            target=self.path,
            headers=header_map(headers),
            behaviour=self.server.behaviour,
            random=self.server.random,
        )
        if plan.delay > 0:
            interruption = self._wait(plan.delay)
            if interruption:
                self.server.log_request_line(self, None, plan, note=interruption)
                self._drop("reset")
                return
        if plan.closes:
            # Logged first, so that by the time the client sees the outcome the line exists.
            self.server.log_request_line(self, None, plan)
            self._drop(plan.close_mode)
            return
        self._answer(plan, body_bytes=body_bytes, headers=headers)

    def _answer(self, plan: Plan, *, body_bytes: int, headers: list | None = None) -> None:
        assert plan.status is not None
        if headers is None:  # a request that failed to parse may have none
            parsed = getattr(self, "headers", None)
            headers = list(parsed.items()) if parsed is not None else []
        doc = response_document(
            identity=self.server.identity,
            plan=plan,
            method=self.command or "",
            target=getattr(self, "path", ""),
            protocol=self.request_version,
            headers=headers,
            client=_format_address(self.client_address),
            local_ip=self.connection.getsockname()[0],
            body_bytes=body_bytes,
        )
        payload = encode_body(doc, size=plan.response_bytes)
        no_body = self.command == "HEAD" or plan.status in (204, 304)
        if self.server.draining:
            self.close_connection = True
        head = [
            f"{self.protocol_version} {plan.status} {_reason_phrase(plan.status)}",
            f"Server: {SERVER_NAME}",
            f"Date: {self.date_time_string()}",
            "Content-Type: application/json",
        ]
        if plan.status != 204:
            head.append(f"Content-Length: {len(payload)}")
        head.append(f"X-Sample-Pod: {self.server.identity.pod}")
        head.append(f"X-Sample-Version: {self.server.identity.version}")
        if self.close_connection:
            head.append("Connection: close")
        elif self.request_version == "HTTP/1.0":
            head.append("Connection: keep-alive")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace")
        self.server.log_request_line(self, plan.status, plan)  # before the answer, as above
        # Head and body in one write, so a small answer leaves in one segment.
        self.wfile.write(data if no_body else data + payload)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's malformed-request answers, as JSON like every other answer."""
        self.close_connection = True
        error = message or explain or _reason_phrase(code)
        self._answer(Plan(status=code, delay=0.0, failed=False, reason="bad-request", error=error),
                     body_bytes=0)

    def _wait(self, delay: float) -> str | None:
        """Sleep `delay` seconds; stop early, saying why, if the server aborts or the client
        goes away (it closed or reset its end, as a proxy that timed out does)."""
        deadline = time.monotonic() + delay
        poller = select.poll()
        poller.register(self.connection, _PEER_GONE)
        while (left := deadline - time.monotonic()) > 0:
            if self.server.aborting.wait(min(left, 0.05)):
                return "aborted at stop"
            if poller.poll(0):
                return "client went away"
        return None

    def _drop(self, mode: str) -> None:
        """Close the connection without a response: RST in `reset` mode, FIN in `fin` mode."""
        self.close_connection = True
        if mode == "reset":
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.rfile.close()
                self.wfile.close()
                self.connection.close()
            except OSError:
                pass

    def _read_body(self) -> int:
        te = self.headers.get("Transfer-Encoding")
        cl = self.headers.get("Content-Length")
        if te is not None:
            if cl is not None:
                raise _BadRequest(400, "both Content-Length and Transfer-Encoding sent")
            if te.strip().lower() != "chunked":
                raise _BadRequest(501, f"Transfer-Encoding {te!r} is not supported; use chunked")
            return self._read_chunked()
        if cl is None:
            return 0
        if not cl.strip().isdigit():
            raise _BadRequest(400, f"bad Content-Length {cl!r}")
        length = int(cl)
        if length > MAX_BODY:
            raise _BadRequest(413, f"body of {length} bytes is over the {MAX_BODY} allowed")
        self._discard(length)
        return length

    def _read_chunked(self) -> int:
        total = 0
        while True:
            line = self.rfile.readline(1024)
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _BadRequest(400, "malformed chunk size") from None
            if size == 0:
                break
            total += size
            if total > MAX_BODY:
                raise _BadRequest(413, f"chunked body over the {MAX_BODY} bytes allowed")
            self._discard(size)
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise _BadRequest(400, "chunk not followed by CRLF")
        while True:  # trailers, then the empty line
            line = self.rfile.readline(65537)
            if line in (b"\r\n", b"\n"):
                return total
            if not line:
                raise _BadRequest(400, "connection closed inside chunked body")

    def _discard(self, length: int) -> None:
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 65536))
            if not chunk:
                raise _BadRequest(400, "connection closed inside the request body")
            remaining -= len(chunk)

    # -- logging: our own one line per request, nothing from http.server -----------------
    def log_request(self, code="-", size="-") -> None:  # noqa: ARG002 - silenced on purpose
        pass

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        self.server.log(f"{_format_address(self.client_address)} {format % args}")


class _HTTPServer(ThreadingHTTPServer):
    # Connection threads are daemons so that a server someone forgot to stop never holds a
    # process open; a graceful stop waits for them through its own bookkeeping (drain()),
    # which lets a connection go only once its socket is closed.
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address, *, identity, behaviour, rng, quiet, log_stream, ipv6):
        self.address_family = socket.AF_INET6 if ipv6 else socket.AF_INET
        self.identity = identity
        self.behaviour = behaviour
        self._rng = rng
        self._rng_lock = threading.Lock()
        self.quiet = quiet
        self._log_stream = log_stream
        self._log_lock = threading.Lock()
        self._state = threading.Condition()
        self._handlers: dict[socket.socket, _Handler] = {}
        self._in_flight = 0
        self.draining = False
        self.aborting = threading.Event()
        self.requests_served = 0
        self.connections_accepted = 0
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            # "::" serves IPv4 too, as operators expect from a wildcard address.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def random(self) -> float:
        with self._rng_lock:
            return self._rng.random()

    # -- connection and request bookkeeping ----------------------------------------------
    def track(self, handler: _Handler) -> None:
        with self._state:
            self._handlers[handler.connection] = handler
            self.connections_accepted += 1
            if self.draining:
                # Accepted just before the stop: serve a request the client already sent, but
                # do not wait long for one.
                handler.connection.settimeout(LATE_CONNECTION_TIMEOUT)

    def shutdown_request(self, request) -> None:
        # The last step of every connection's thread: close the socket, then let go of it.
        try:
            super().shutdown_request(request)
        finally:
            with self._state:
                self._handlers.pop(request, None)
                self._state.notify_all()

    def begin_request(self, handler: _Handler) -> bool:
        with self._state:
            handler._busy = True
            self._in_flight += 1
            return self.draining

    def end_request(self, handler: _Handler) -> None:
        with self._state:
            handler._busy = False
            if self.draining:
                # The stop began while this request ran: drain() skipped this busy connection,
                # so it must not go back to waiting for another request.
                handler.close_connection = True
            self._in_flight -= 1
            self.requests_served += 1
            self._state.notify_all()

    @property
    def in_flight(self) -> int:
        with self._state:
            return self._in_flight

    @property
    def connections(self) -> int:
        with self._state:
            return len(self._handlers)

    def drain(self, timeout: float) -> bool:
        """Close idle connections, let busy ones finish; True if all ended within `timeout`."""
        with self._state:
            self.draining = True
            for handler in self._handlers.values():
                if not handler._busy:
                    _shutdown_read(handler.connection)
            done = self._state.wait_for(lambda: not self._handlers, timeout=timeout)
            if done:
                return True
            # Out of patience: wake delayed requests and cut every connection.
            self.aborting.set()
            for handler in self._handlers.values():
                _shutdown_read(handler.connection, how=socket.SHUT_RDWR)
            self._state.wait_for(lambda: not self._handlers, timeout=5.0)
            return False

    # -- logging -------------------------------------------------------------------------
    def log(self, line: str, *, always: bool = False) -> None:
        """Write one stamped line; per-request lines (the default) are muted by `quiet`."""
        if self.quiet and not always:
            return
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        with self._log_lock:
            try:
                self._log_stream.write(f"{stamp} {self.identity.pod} {line}\n")
                self._log_stream.flush()
            except (OSError, ValueError):
                pass

    def log_request_line(self, handler: _Handler, status: int | None, plan: Plan, note: str = "") -> None:
        if self.quiet:
            return
        outcome = str(status) if status is not None else f"dropped({plan.close_mode})"
        extra = f" delay={plan.delay * 1000:.0f}ms" if plan.delay else ""
        if plan.reason not in ("ok", "healthz"):
            extra += f" reason={plan.reason}"
        if note:
            extra += f" ({note})"
        self.log(f'{_format_address(handler.client_address)} "{handler.requestline}" {outcome}{extra}')

    def handle_error(self, request, client_address) -> None:
        # A client that vanished mid-request is not the server's problem; say so in one line.
        exc = sys.exc_info()[1]
        self.log(f"{_format_address(client_address)} connection error: {exc!r}")


class SampleServer:
    """A sample-app server on its own threads; `with SampleServer(...) as s:` stops it on exit.

    Construction binds the socket (so `port` is known at once, even with port 0); `start()`
    begins serving; `stop()` stops gracefully (see the module docstring) and is idempotent.
    """

    def __init__(
        self,
        *,
        identity: Identity,
        behaviour: Behaviour | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        quiet: bool = False,
        log_stream: TextIO | None = None,
        seed: int | None = None,
        drain_timeout: float = 30.0,
    ):
        self.drain_timeout = drain_timeout
        self._httpd = _HTTPServer(
            (host, port),
            identity=identity,
            behaviour=behaviour or Behaviour(),
            rng=_random.Random(seed),
            quiet=quiet,
            log_stream=log_stream if log_stream is not None else sys.stderr,
            ipv6=":" in host,
        )
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._stop_lock = threading.Lock()

    @property
    def host(self) -> str:
        return self._httpd.server_address[0]

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def in_flight(self) -> int:
        """Requests read but not yet answered."""
        return self._httpd.in_flight

    @property
    def connections(self) -> int:
        """Open client connections."""
        return self._httpd.connections

    @property
    def requests_served(self) -> int:
        """Requests read so far (answered, refused or dropped)."""
        return self._httpd.requests_served

    @property
    def connections_accepted(self) -> int:
        """Connections accepted since the start."""
        return self._httpd.connections_accepted

    def log(self, line: str) -> None:
        """A lifecycle line (listening, stopping): written even when per-request logs are quiet."""
        self._httpd.log(line, always=True)

    def start(self) -> SampleServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                name=f"sample-app:{self.port}", daemon=True,
            )
            self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, *, drain_timeout: float | None = None) -> bool:
        """Stop accepting, close idle connections, finish in-flight requests; on return every
        connection is closed.

        Returns True if every in-flight request finished within the drain timeout.
        """
        with self._stop_lock:
            if self._stopped:
                return True
            self._stopped = True
            if self._thread is not None:
                self._httpd.shutdown()
                self._thread.join()
            self._httpd.socket.close()  # refuse new connections from here on
            clean = self._httpd.drain(self.drain_timeout if drain_timeout is None else drain_timeout)
            self._httpd.server_close()
            return clean

    def __enter__(self) -> SampleServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _shutdown_read(sock: socket.socket, how: int = socket.SHUT_RD) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass


def _reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _format_address(address) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
