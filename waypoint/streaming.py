"""A message body that arrives in pieces, sans-IO: the buffer between two connections.

Before: a request whose headers are complete but whose body is still arriving (HTTP/1.1
`Content-Length` or chunked, an HTTP/2 stream without END_STREAM — gRPC streaming), or a
response whose status and headers came before its body. The parser that reads the bytes
`feed`s the pieces, then `end`s the body (with trailers, if any) or `fail`s it (a reset or a
closed connection). After: the proxy reads the pieces from a position (`read`), writes them
to the other side and reports how far it got (`consumed`); that report is what acknowledges
the bytes to their sender (HTTP/2 WINDOW_UPDATE, or resuming an HTTP/1.1 socket), so a slow
reader back-pressures the writer instead of filling memory.

Retry buffer (Envoy's `per_request_buffer_limit_bytes`): a body keeps every piece while its
size stays within `retain` bytes, so another try can replay it from the start. Once it grows
past that, it keeps only what has not been consumed yet and `replayable` turns false for
good — the request is then neither retried nor mirrored. A response body is made with
`retain=0`: pieces are dropped as soon as they are written.

`waiters` (callables added by readers while they wait) are called, once, on the next change;
nothing here knows about sockets or event loops.
"""

from __future__ import annotations

from collections.abc import Callable

RETRY_BUFFER_BYTES = 1024 * 1024     # Envoy's per-request buffer limit, roughly; a setting
HIGH_WATER_BYTES = 256 * 1024        # unconsumed bytes beyond which the sender is paused


class Body:
    __slots__ = ("chunks", "base", "size", "ended", "trailers", "error", "retain",
                 "replayable", "length", "acked", "acked_bytes", "on_consumed", "waiters",
                 "on_done")

    def __init__(self, *, retain: int = RETRY_BUFFER_BYTES, length: int | None = None,
                 on_consumed: Callable[[int], None] | None = None) -> None:
        self.chunks: list[bytes] = []
        self.base = 0                  # index (over all pieces ever fed) of chunks[0]
        self.size = 0                  # bytes fed so far
        self.ended = False
        self.trailers: list[tuple[str, str]] | None = None
        self.error: str | None = None  # "reset", "closed", ... : the body will not complete
        self.retain = retain
        self.replayable = True
        self.length = length           # the declared length (Content-Length), if any
        self.acked = 0                 # pieces acknowledged to the sender so far
        self.acked_bytes = 0
        self.on_consumed = on_consumed # called with a byte count as pieces are consumed
        self.waiters: list[Callable[[], None]] = []
        self.on_done: list[Callable[[bool], None]] = []  # called once: ended (True) or failed

    # --- the writer side (the parser that reads the sender's bytes) -----------------------
    def feed(self, data: bytes) -> None:
        if not data or self.ended or self.error:
            return
        self.chunks.append(data)
        self.size += len(data)
        if self.replayable and self.size > self.retain:
            self.replayable = False
            self._drop_consumed()
        self._wake()

    def end(self, trailers: list[tuple[str, str]] | None = None) -> None:
        if self.ended or self.error:
            return
        self.ended = True
        self.trailers = trailers or None
        self._wake()
        self._done(True)

    def fail(self, reason: str) -> None:
        if self.ended or self.error:
            return
        self.error = reason
        self._wake()
        self._done(False)

    def when_done(self, cb: Callable[[bool], None]) -> None:
        """Call `cb(ended)` once the body has ended (True) or failed (False) — at once if it
        already has."""
        if self.finished:
            cb(self.ended)
        else:
            self.on_done.append(cb)

    # --- the reader side (the proxy) ------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.ended or self.error is not None

    def read(self, pos: int) -> tuple[list[bytes], int]:
        """The pieces from position `pos` (0 = the start) on, and the position after them."""
        if pos < self.base:
            raise ValueError("body is no longer replayable from this position")
        end = self.base + len(self.chunks)
        return self.chunks[pos - self.base:], end

    def consumed(self, pos: int) -> None:
        """The reader has written every piece before `pos` to the other side."""
        if pos > self.acked:
            n = sum(len(c) for c in self.chunks[self.acked - self.base:pos - self.base])
            self.acked = pos
            self.acked_bytes += n
            if self.on_consumed is not None and n:
                self.on_consumed(n)
        if not self.replayable:
            self._drop_consumed()

    @property
    def unconsumed(self) -> int:
        """Bytes fed but not yet written onwards (what back-pressure looks at)."""
        return self.size - self.acked_bytes

    def release(self) -> None:
        """Nobody will read the rest: acknowledge what was fed, so the sender's windows
        (HTTP/2 connection flow control) are not lost with this body."""
        n = self.size - self.acked_bytes
        self.acked = self.base + len(self.chunks)
        self.acked_bytes = self.size
        if n and self.on_consumed is not None:
            self.on_consumed(n)
        self.on_consumed = None

    def whole(self) -> bytes | None:
        """The complete body, if it ended and is still held entirely (for a mirror)."""
        if self.ended and self.replayable:
            return b"".join(self.chunks)
        return None

    # --------------------------------------------------------------------------------------
    def _drop_consumed(self) -> None:
        drop = self.acked - self.base
        if drop > 0:
            del self.chunks[:drop]
            self.base = self.acked

    def _wake(self) -> None:
        if self.waiters:
            waiters, self.waiters = self.waiters, []
            for w in waiters:
                w()

    def _done(self, ok: bool) -> None:
        callbacks, self.on_done = self.on_done, []
        for cb in callbacks:
            cb(ok)
