"""Envoy's stream idle timeout (HCM `stream_idle_timeout`, default 5 min, which Istio keeps):
a request/response stream with no bytes either way for that long is ended.

Before: `Waypoint.handle` starts serving a request (its task, its request body if it is still
arriving) on a waypoint whose `stream_idle_timeout_s` is set; later `Waypoint.relay` adds the
response body if that streams. After: if no byte moved for the timeout, the serving task is
cancelled with `fired` set; the proxy then answers 408 `stream timeout` when nothing was sent
downstream yet, else resets the stream (HTTP/2 RST_STREAM; HTTP/1.1 closes the connection),
flag `SI` as Envoy logs it.

No timer per byte or per chunk: the stream's bodies already count the bytes that arrived
(`Body.size`) and that were written onwards (`Body.acked_bytes`), on both sides. A check on the
proxy's one deadline heap (`proxy.Deadlines`) looks at those four counters every quarter of
the timeout; when they changed, the stream was active (at most a quarter ago); when they have
not changed for the whole timeout, it is idle. So a stream is ended after between 1 and 1.25
timeouts without a byte, never sooner. A whole request waiting for its answer moves no byte:
its wait counts as idle, as in Envoy.
"""

from __future__ import annotations

CHECKS_PER_TIMEOUT = 4


class StreamIdle:
    """One stream's idle watch. `Deadlines.arm(delay, task=watch)` makes the heap call
    `watch.cancel()` when the check is due (that is all the heap asks of a task)."""

    __slots__ = ("deadlines", "timeout", "task", "request", "response", "seen", "active_at",
                 "deadline", "fired")

    def __init__(self, deadlines, timeout_s: float, task, request=None) -> None:
        self.deadlines = deadlines
        self.timeout = timeout_s
        self.task = task               # what to cancel when the stream is idle
        self.request = request         # the request Body, if it was still arriving
        self.response = None           # the response Body, once one streams
        self.seen = self._counters()
        self.active_at = 0.0
        self.deadline = None
        self.fired = False

    def start(self) -> StreamIdle:
        """Arm the first check; the task to cancel is the current one unless given."""
        import asyncio

        self.deadline = self.deadlines.arm(self.timeout / CHECKS_PER_TIMEOUT, task=self)
        self.active_at = self.deadline.when - self.timeout / CHECKS_PER_TIMEOUT
        if self.task is None:   # (the heap's loop, looked up once: no getpid() per request)
            self.task = asyncio.current_task(self.deadlines.loop)
        return self

    def stop(self) -> None:
        if self.deadline is not None:
            self.deadlines.disarm(self.deadline)
            self.deadline = None

    def _counters(self) -> tuple[int, int, int, int]:
        rq, rs = self.request, self.response
        return ((rq.size, rq.acked_bytes) if rq is not None else (0, 0)) + (
            (rs.size, rs.acked_bytes) if rs is not None else (0, 0))

    def cancel(self) -> None:
        """The check is due (called by the deadline heap)."""
        self.deadline = None
        now = self.deadlines.loop.time()
        counters = self._counters()
        if counters != self.seen:
            self.seen, self.active_at = counters, now
        idle = now - self.active_at
        if idle >= self.timeout:
            self.fired = True
            self.task.cancel()
            return
        step = min(self.timeout / CHECKS_PER_TIMEOUT, self.timeout - idle)
        self.deadline = self.deadlines.arm(step, task=self)
