"""Request metrics with Istio's names and labels, and trace propagation with a span per request.

Before: the proxy finished a request (or refused bytes that were not one). After: counters and
histograms in the waypoint's own `CollectorRegistry` (served on :15020 `/metrics`), a span
ended, and the upstream request carrying W3C `traceparent` and B3 headers.

Metrics (reporter="waypoint"): `istio_requests_total`, `istio_request_duration_milliseconds`,
`istio_request_bytes`, `istio_response_bytes` with Istio's standard labels; and the waypoint's
own `lacewing_waypoint_protocol_errors_total{protocol,kind}` (bad input answered and
counted), `lacewing_waypoint_upstream_overflow_total{cluster,limit}` (circuit breakers),
`lacewing_waypoint_outlier_ejections_total{cluster}`, `lacewing_waypoint_ratelimited_total`.
The request series are plain integers per label tuple, exposed by a collector at scrape
time, so the hot path does one dict lookup and a few additions.

Tracing: OpenTelemetry SDK. The parent comes from `traceparent` (W3C), else from B3 (multi- or
single-header); sampling follows the parent's flag, else `sample_ratio` (Istio's default 1%).
An exporter is optional (none: spans are created and dropped).
"""

from __future__ import annotations

import os
import random
from bisect import bisect_left
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from waypoint.fastlane import native as _native

LABELS = (
    "reporter", "source_workload", "source_workload_namespace", "source_principal",
    "source_app", "source_version", "destination_workload", "destination_workload_namespace",
    "destination_principal", "destination_app", "destination_version", "destination_service",
    "destination_service_name", "destination_service_namespace", "request_protocol",
    "response_code", "grpc_response_status", "response_flags", "connection_security_policy",
)
DURATION_BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
                    60000, 300000, 600000, 1800000, 3600000)
SIZE_BUCKETS = tuple(float(10 ** i) for i in range(0, 9))
MAX_SERIES = 50000  # label sets kept; beyond, new ones are counted as dropped


class _PySeries:
    """Counts for one label set: requests, and three histograms (duration, sizes)."""

    __slots__ = ("count", "dur_sum", "dur", "req_sum", "req", "resp_sum", "resp")

    def __init__(self) -> None:
        self.count = 0
        self.dur_sum = 0.0
        self.dur = [0] * (len(DURATION_BUCKETS) + 1)
        self.req_sum = 0.0
        self.req = [0] * (len(SIZE_BUCKETS) + 1)
        self.resp_sum = 0.0
        self.resp = [0] * (len(SIZE_BUCKETS) + 1)

    def observe(self, duration_ms: float, request_bytes: int, response_bytes: int) -> None:
        self.count += 1
        self.dur_sum += duration_ms
        self.dur[bisect_left(DURATION_BUCKETS, duration_ms)] += 1
        self.req_sum += request_bytes
        self.req[bisect_left(SIZE_BUCKETS, request_bytes)] += 1
        self.resp_sum += response_bytes
        self.resp[bisect_left(SIZE_BUCKETS, response_bytes)] += 1


# The series is the fast lane's native object when it is built (one object both paths add
# to, the lane without Python calls); the same attributes and `observe` otherwise.
_RequestSeries = _native.Series if _native is not None else _PySeries


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    out, total = [], 0
    for bound, n in zip(bounds, counts, strict=False):
        total += n
        out.append((floatToGoString(bound), total))
    out.append(("+Inf", total + counts[-1]))
    return out


class _RequestCollector:
    """Exposes the request series in Prometheus' data model at scrape time (the hot path only
    increments integers; prometheus_client's per-call locking is kept off it)."""

    def __init__(self, series: dict[tuple[str, ...], _RequestSeries]) -> None:
        self.series = series

    def describe(self):
        return []

    def collect(self):
        requests = CounterMetricFamily("istio_requests", "Requests handled by the waypoint",
                                       labels=LABELS)
        duration = HistogramMetricFamily("istio_request_duration_milliseconds",
                                         "Request duration in milliseconds", labels=LABELS)
        req = HistogramMetricFamily("istio_request_bytes", "Request sizes in bytes",
                                    labels=LABELS)
        resp = HistogramMetricFamily("istio_response_bytes", "Response sizes in bytes",
                                     labels=LABELS)
        for labels, s in list(self.series.items()):
            values = list(labels)
            requests.add_metric(values, s.count)
            duration.add_metric(values, _cumulative(DURATION_BUCKETS, s.dur), s.dur_sum)
            req.add_metric(values, _cumulative(SIZE_BUCKETS, s.req), s.req_sum)
            resp.add_metric(values, _cumulative(SIZE_BUCKETS, s.resp), s.resp_sum)
        yield from (requests, duration, req, resp)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.series: dict[tuple[str, ...], _RequestSeries] = {}
        r.register(_RequestCollector(self.series))
        self.protocol_errors = Counter("lacewing_waypoint_protocol_errors_total",
                                       "Bad input answered and refused", ("protocol", "kind"),
                                       registry=r)
        self.overflow = Counter("lacewing_waypoint_upstream_overflow_total",
                                "Requests refused by connection-pool limits",
                                ("cluster", "limit"), registry=r)
        self.ejections = Counter("lacewing_waypoint_outlier_ejections_total",
                                 "Hosts ejected by outlier detection", ("cluster",), registry=r)
        self.ratelimited = Counter("lacewing_waypoint_ratelimited_total",
                                   "Requests refused by a RateLimitPolicy", ("policy",),
                                   registry=r)
        self.dropped_series = 0

    def observe(self, labels: tuple[str, ...], duration_ms: float, request_bytes: int,
                response_bytes: int) -> None:
        s = self.series_for(labels)
        if s is None:
            self.dropped_series += 1
            return
        self.observe_series(s, duration_ms, request_bytes, response_bytes)

    def series_for(self, labels: tuple[str, ...]) -> _RequestSeries | None:
        """The series of a label set (made on first use), None beyond `MAX_SERIES`. A caller
        may keep it and `observe_series` on it: series are never dropped once made."""
        s = self.series.get(labels)
        if s is None:
            if len(self.series) >= MAX_SERIES:
                return None
            s = self.series[labels] = _RequestSeries()
        return s

    @staticmethod
    def observe_series(s: _RequestSeries, duration_ms: float, request_bytes: int,
                       response_bytes: int) -> None:
        s.observe(duration_ms, request_bytes, response_bytes)

    def protocol_error(self, protocol: str, kind: str) -> None:
        self.protocol_errors.labels(protocol, kind).inc()


_HEX = frozenset("0123456789abcdef")


def _hex_id(text: str | None, size: int) -> int:
    if not text or len(text) != size or not set(text) <= _HEX:
        return 0
    return int(text, 16)


def _parent(headers: Mapping[str, str]) -> tuple[int, int, bool] | None:
    """(trace id, span id, sampled) from W3C `traceparent`, else B3; None when absent/invalid."""
    tp = headers.get("traceparent")
    if tp is not None:
        parts = tp.strip().lower().split("-")
        if len(parts) >= 4 and parts[0] != "ff" and len(parts[0]) == 2:
            tid, sid = _hex_id(parts[1], 32), _hex_id(parts[2], 16)
            if tid and sid and len(parts[3]) == 2 and set(parts[3]) <= _HEX:
                return tid, sid, bool(int(parts[3], 16) & 1)
        return None
    single = headers.get("b3")
    if single:
        parts = single.strip().lower().split("-")
        if len(parts) < 2:
            return None
        trace_id, span_id = parts[0], parts[1]
        sampled = parts[2] if len(parts) > 2 else None
    else:
        trace_id, span_id = headers.get("x-b3-traceid"), headers.get("x-b3-spanid")
        if trace_id is None:
            return None
        sampled = headers.get("x-b3-sampled")
        if headers.get("x-b3-flags") == "1":
            sampled = "1"
    trace_id = (trace_id or "").lower()
    if len(trace_id) == 16:
        trace_id = "0" * 16 + trace_id
    tid, sid = _hex_id(trace_id, 32), _hex_id((span_id or "").lower(), 16)
    if not tid or not sid:
        return None
    return tid, sid, sampled in ("1", "d", "true")


class RandomHex:
    """Random lower-case hex digits for trace, span and request ids, cut from one
    `os.urandom` block at a time (one system call per few hundred requests, no formatting
    of integers per request). Not thread-safe: one per event loop's user (a `Tracing`)."""

    __slots__ = ("buf", "pos")

    def __init__(self) -> None:
        self.buf = ""
        self.pos = 0

    def take(self, n: int) -> str:
        pos = self.pos
        end = pos + n
        if end > len(self.buf):
            self.buf = os.urandom(4096).hex()
            pos, end = 0, n
        self.pos = end
        return self.buf[pos:end]

    def nonzero(self, n: int) -> str:
        """`n` digits, not all zero (W3C: an all-zero trace or span id is invalid)."""
        x = self.take(n)
        while x == _ZEROS[n]:
            x = self.take(n)
        return x


_ZEROS = {16: "0" * 16, 32: "0" * 32}
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}   # RFC 4122 variant



class LightSpan:
    """A span that is not sampled: its ids (kept as hex, as they are sent) are propagated,
    nothing is recorded."""

    __slots__ = ("trace_hex", "span_hex", "parent_span_id", "sampled")

    def __init__(self, trace_hex: str, span_hex: str, parent_span_id: int | None) -> None:
        self.trace_hex = trace_hex       # 32 hex digits
        self.span_hex = span_hex         # 16 hex digits
        self.parent_span_id = parent_span_id
        self.sampled = False

    @property
    def trace_id(self) -> int:
        return int(self.trace_hex, 16)

    @property
    def span_id(self) -> int:
        return int(self.span_hex, 16)

    def set_attribute(self, key: str, value: object) -> None:
        pass

    def end(self) -> None:
        pass


class Tracing:
    """Spans per request. Sampling is decided here (parent's flag, else `sample_ratio`, like
    Istio's ParentBased ratio sampler); only sampled requests pay for an SDK span."""

    def __init__(self, *, service_name: str = "waypoint", sample_ratio: float = 0.01,
                 exporter: SpanExporter | None = None) -> None:
        self.sample_ratio = sample_ratio
        self.provider = TracerProvider(sampler=ALWAYS_ON,
                                       resource=Resource.create({"service.name": service_name}))
        if exporter is not None:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("lacewing.waypoint")
        self._random = random.random
        self._hex = RandomHex()

    def start(self, name: str, headers: Mapping[str, str]):
        parent = _parent(headers) if ("traceparent" in headers or "b3" in headers
                                      or "x-b3-traceid" in headers) else None
        if parent is not None:
            sampled = parent[2]
        else:
            sampled = self.sample_ratio > 0 and self._random() < self.sample_ratio
        if not sampled:
            if parent is None:
                x = self._hex.take(48)           # a new trace id and span id at once
                tid, sid = x[:32], x[32:]
                if tid == _ZEROS[32] or sid == _ZEROS[16]:   # (W3C: never all zero)
                    tid, sid = self._hex.nonzero(32), self._hex.nonzero(16)
                return LightSpan(tid, sid, None)
            return LightSpan(f"{parent[0]:032x}", self._hex.nonzero(16), parent[1])
        return self._sdk_span(name, parent)

    def start_sampled(self, name: str, headers: Mapping[str, str]):
        """The SDK span of a request already known to be sampled (the fast lane drew
        the sample or read the parent's flag): its parent from `traceparent`, if any."""
        return self._sdk_span(name, _parent(headers) if "traceparent" in headers else None)

    def _sdk_span(self, name: str, parent: tuple[int, int, bool] | None):
        ctx = None
        if parent is not None:
            sc = SpanContext(trace_id=parent[0], span_id=parent[1], is_remote=True,
                             trace_flags=TraceFlags(TraceFlags.SAMPLED))
            ctx = trace.set_span_in_context(NonRecordingSpan(sc))
        return self.tracer.start_span(name, context=ctx, kind=SpanKind.SERVER)

    def request_id(self) -> str:
        """A version-4 UUID, as Envoy sets `x-request-id` (without uuid.UUID's overhead)."""
        x = self._hex.take(32)
        return f"{x[:8]}-{x[8:12]}-4{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:]}"

    @staticmethod
    def propagation_headers(span, parent_headers: Mapping[str, str]) -> list[tuple[str, str]]:
        """The headers the upstream request carries: W3C and B3 for this span."""
        if isinstance(span, LightSpan):
            t, s_, sampled, parent_id = (span.trace_hex, span.span_hex, "0",
                                         span.parent_span_id)
        else:
            sc = span.get_span_context()
            t, s_ = f"{sc.trace_id:032x}", f"{sc.span_id:016x}"
            sampled = "1" if sc.trace_flags.sampled else "0"
            parent_id = span.parent.span_id if getattr(span, "parent", None) else None
        out = [("traceparent", f"00-{t}-{s_}-0{sampled}"),
               ("x-b3-traceid", t), ("x-b3-spanid", s_), ("x-b3-sampled", sampled)]
        if parent_id:
            out.append(("x-b3-parentspanid", f"{parent_id:016x}"))
        ts = parent_headers.get("tracestate")
        if ts:
            out.append(("tracestate", ts))
        return out


TRACE_HEADERS = frozenset({"traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid",
                           "x-b3-sampled", "x-b3-parentspanid", "x-b3-flags"})
