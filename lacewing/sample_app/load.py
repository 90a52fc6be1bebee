"""The load client: send a bounded stream of HTTP requests and report what came back.

Before: a URL and options (how many requests or for how long, at what rate, how many at
once, which headers, keep-alive or not). After: a `LoadReport` (see `report.py`). Every run
stops by itself: after `requests` requests, or when `duration` has passed, whichever comes
first (100 requests if neither is given); each request is bounded by `timeout` on connect
and on every read; `stop` (an Event) ends a run early.

Workers are threads, each with its own `http.client` connection that it reuses when
keep-alive is on. A pooled connection that the server closed while it sat idle is noticed
before reuse (as urllib3 does) and replaced, so an idle close is not miscounted as a reset.
With `rate`, requests are scheduled at fixed intervals from the start (open loop); a worker
that falls behind sends at once, and latency is measured from the actual send.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from lacewing.sample_app.report import (
    CONNECT_ERROR,
    CONNECT_REFUSED,
    OTHER,
    PROTOCOL_ERROR,
    RESET,
    TIMEOUT,
    LoadReport,
    Outcome,
    Recorder,
)

DEFAULT_REQUESTS = 100
USER_AGENT = "lacewing-sample-app-load/1"
MAX_IDENTIFY_BYTES = 1 << 20  # bodies larger than this are not parsed for pod/version


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str  # with query
    url: str


def parse_target(url: str) -> Target:
    """Split an `http://host[:port]/path?query` URL; ValueError with advice otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"{url!r}: only http:// URLs are supported (the mesh adds TLS itself)")
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host; use http://HOST[:PORT]/PATH")
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"{url!r} has a bad port; use 1 to 65535") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(host=parts.hostname, port=port, path=path, url=url)


def classify_error(exc: BaseException, *, connected: bool) -> str:
    """The report's error kind for an exception raised while connecting or exchanging."""
    if not connected:
        if isinstance(exc, ConnectionRefusedError):
            return CONNECT_REFUSED
        if isinstance(exc, TimeoutError):
            return TIMEOUT
        return CONNECT_ERROR
    if isinstance(exc, TimeoutError):
        return TIMEOUT
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError,
                        http.client.RemoteDisconnected, http.client.IncompleteRead)):
        return RESET
    if isinstance(exc, http.client.HTTPException):
        return PROTOCOL_ERROR
    return OTHER


class _Schedule:
    """Hands out send times to workers until the request count or the deadline is reached."""

    def __init__(self, *, requests: int | None, deadline: float | None, rate: float | None,
                 start: float, stop: threading.Event):
        self._lock = threading.Lock()
        self._issued = 0
        self._requests = requests
        self._deadline = deadline
        self._rate = rate
        self._start = start
        self._stop = stop

    def next(self) -> float | None:
        """The monotonic time to send the next request at, or None when the run is over."""
        with self._lock:
            if self._stop.is_set():
                return None
            if self._requests is not None and self._issued >= self._requests:
                return None
            now = time.monotonic()
            if self._deadline is not None and now >= self._deadline:
                return None
            at = now if self._rate is None else self._start + self._issued / self._rate
            if self._deadline is not None and at >= self._deadline:
                return None
            self._issued += 1
            return at


def _dropped(sock: socket.socket | None) -> bool:
    """True if an idle pooled connection was closed by the peer (or has stray bytes)."""
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


class _Worker:
    def __init__(self, *, target: Target, method: str, headers: dict[str, str], body: bytes | None,
                 keepalive: bool, timeout: float, schedule: _Schedule, recorder: Recorder,
                 stop: threading.Event):
        self.target = target
        self.method = method
        self.headers = dict(headers)
        if not any(name.lower() == "user-agent" for name in self.headers):
            self.headers["User-Agent"] = USER_AGENT
        if not keepalive:
            self.headers["Connection"] = "close"
        self.body = body
        self.keepalive = keepalive
        self.timeout = timeout
        self.schedule = schedule
        self.recorder = recorder
        self.stop = stop
        self.conn: http.client.HTTPConnection | None = None

    def run(self) -> None:
        try:
            while True:
                at = self.schedule.next()
                if at is None:
                    return
                wait = at - time.monotonic()
                if wait > 0 and self.stop.wait(wait):
                    return
                self.recorder.add(self.one())
        finally:
            self._close()

    def _close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def one(self) -> Outcome:
        started = time.monotonic()
        if self.conn is not None and (not self.keepalive or _dropped(self.conn.sock)):
            self._close()
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.target.host, self.target.port, timeout=self.timeout)
            try:
                self.conn.connect()
            except Exception as exc:  # noqa: BLE001 - every failure is counted by kind
                self._close()
                return Outcome(sent=False, error=classify_error(exc, connected=False),
                               error_detail=_describe(exc))
        try:
            self.conn.request(self.method, self.target.path, body=self.body, headers=self.headers)
            response = self.conn.getresponse()
            payload = response.read()
        except Exception as exc:  # noqa: BLE001 - every failure is counted by kind
            self._close()
            return Outcome(sent=True, error=classify_error(exc, connected=True),
                           error_detail=_describe(exc))
        latency = time.monotonic() - started
        if response.will_close:
            self._close()
        pod, version = _identify(payload)
        return Outcome(sent=True, status=response.status, latency=latency, pod=pod, version=version)


def _identify(payload: bytes) -> tuple[str | None, str | None]:
    """The sample app's `pod` and `version` fields, if the body is its JSON document."""
    if not payload or len(payload) > MAX_IDENTIFY_BYTES or payload[:1] != b"{":
        return None, None
    try:
        doc = json.loads(payload)
    except ValueError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    pod, version = doc.get("pod"), doc.get("version")
    return (pod if isinstance(pod, str) else None, version if isinstance(version, str) else None)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _normalize_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> dict[str, str]:
    if headers is None:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for name, value in items:
        out[name] = value
    return out


def run_load(
    url: str,
    *,
    requests: int | None = None,
    duration: float | None = None,
    rate: float | None = None,
    concurrency: int = 1,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    keepalive: bool = True,
    timeout: float = 5.0,
    method: str = "GET",
    body: bytes | None = None,
    stop: threading.Event | None = None,
) -> LoadReport:
    """Send requests to `url` and report the outcome; see the module docstring for bounds.

    Raises ValueError for a bad URL or option; never for what the server does.
    """
    target = parse_target(url)
    if requests is None and duration is None:
        requests = DEFAULT_REQUESTS
    if requests is not None and requests < 1:
        raise ValueError(f"requests must be at least 1, got {requests}")
    if duration is not None and not duration > 0:
        raise ValueError(f"duration must be above zero, got {duration}")
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be above zero, got {rate}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    if not timeout > 0:
        raise ValueError(f"timeout must be above zero, got {timeout}")
    if requests is not None:
        concurrency = min(concurrency, requests)

    stop = stop if stop is not None else threading.Event()
    recorder = Recorder()
    start = time.monotonic()
    schedule = _Schedule(
        requests=requests, deadline=None if duration is None else start + duration,
        rate=rate, start=start, stop=stop,
    )
    header_dict = _normalize_headers(headers)
    workers = [
        _Worker(target=target, method=method.upper(), headers=header_dict, body=body,
                keepalive=keepalive, timeout=timeout, schedule=schedule, recorder=recorder, stop=stop)
        for _ in range(concurrency)
    ]
    threads = [threading.Thread(target=w.run, name=f"load-{i}", daemon=True) for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    interrupted = False
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
        for t in threads:
            t.join(timeout + 1.0)
    if stop.is_set():
        interrupted = True
    return recorder.report(
        url=url, method=method.upper(), concurrency=concurrency, keepalive=keepalive,
        target_rate=rate, duration=time.monotonic() - start, interrupted=interrupted,
    )
