"""Request metrics with Istio's names and labels, and trace propagation with a span per request.

Before: the proxy finished a request (or refused bytes that were not one). After: counters and
histograms in the waypoint's own `CollectorRegistry` (served on :15020 `/metrics`), a span
ended, and the upstream request carrying W3C `traceparent` and B3 headers.

Metrics (reporter="waypoint"): `istio_requests_total`, `istio_request_duration_milliseconds`,
`istio_request_bytes`, `istio_response_bytes` with Istio's standard labels; and the waypoint's
own `lacewing_waypoint_protocol_errors_total{protocol,kind}` (bad input answered and
counted), `lacewing_waypoint_upstream_overflow_total{cluster,limit}` (circuit breakers),
`lacewing_waypoint_outlier_ejections_total{cluster}`, `lacewing_waypoint_ratelimited_total`.
Labeled children are cached per label tuple, so the hot path does one dict lookup.

Tracing: OpenTelemetry SDK. The parent comes from `traceparent` (W3C), else from B3 (multi- or
single-header); sampling follows the parent's flag, else `sample_ratio` (Istio's default 1%).
An exporter is optional (none: spans are created and dropped).
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, Counter, Histogram

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


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("istio_requests_total", "Requests handled by the waypoint",
                                LABELS, registry=r)
        self.duration = Histogram("istio_request_duration_milliseconds",
                                  "Request duration in milliseconds", LABELS,
                                  buckets=DURATION_BUCKETS, registry=r)
        self.request_bytes = Histogram("istio_request_bytes", "Request sizes in bytes", LABELS,
                                       buckets=SIZE_BUCKETS, registry=r)
        self.response_bytes = Histogram("istio_response_bytes", "Response sizes in bytes",
                                        LABELS, buckets=SIZE_BUCKETS, registry=r)
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
        self._children: dict[tuple[str, ...], tuple] = {}

    def observe(self, labels: tuple[str, ...], duration_ms: float, request_bytes: int,
                response_bytes: int) -> None:
        children = self._children.get(labels)
        if children is None:
            children = (self.requests.labels(*labels), self.duration.labels(*labels),
                        self.request_bytes.labels(*labels), self.response_bytes.labels(*labels))
            if len(self._children) < 50000:
                self._children[labels] = children
        children[0].inc()
        children[1].observe(duration_ms)
        children[2].observe(request_bytes)
        children[3].observe(response_bytes)

    def protocol_error(self, protocol: str, kind: str) -> None:
        self.protocol_errors.labels(protocol, kind).inc()


_W3C = TraceContextTextMapPropagator()


def _b3_context(headers: Mapping[str, str]) -> SpanContext | None:
    single = headers.get("b3")
    if single:
        parts = single.split("-")
        if len(parts) < 2:
            return None
        trace_id, span_id = parts[0], parts[1]
        sampled = parts[2] if len(parts) > 2 else None
    else:
        trace_id, span_id = headers.get("x-b3-traceid"), headers.get("x-b3-spanid")
        sampled = headers.get("x-b3-sampled")
        if headers.get("x-b3-flags") == "1":
            sampled = "1"
    if not trace_id or not span_id:
        return None
    try:
        tid, sid = int(trace_id, 16), int(span_id, 16)
    except ValueError:
        return None
    if not tid or not sid:
        return None
    flags = TraceFlags(TraceFlags.SAMPLED if sampled in ("1", "d", "true") else 0)
    return SpanContext(trace_id=tid, span_id=sid, is_remote=True, trace_flags=flags)


class Tracing:
    def __init__(self, *, service_name: str = "waypoint", sample_ratio: float = 0.01,
                 exporter: SpanExporter | None = None) -> None:
        self.provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
            resource=Resource.create({"service.name": service_name}))
        if exporter is not None:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("lacewing.waypoint")

    def start(self, name: str, headers: Mapping[str, str]) -> trace.Span:
        ctx = None
        if "traceparent" in headers:
            ctx = _W3C.extract(headers)
        else:
            sc = _b3_context(headers)
            if sc is not None:
                ctx = trace.set_span_in_context(NonRecordingSpan(sc))
        return self.tracer.start_span(name, context=ctx, kind=SpanKind.SERVER)

    @staticmethod
    def propagation_headers(span: trace.Span, parent_headers: Mapping[str, str]
                            ) -> list[tuple[str, str]]:
        """The headers the upstream request carries: W3C and B3 for this span."""
        sc = span.get_span_context()
        tid, sid = f"{sc.trace_id:032x}", f"{sc.span_id:016x}"
        sampled = "1" if sc.trace_flags.sampled else "0"
        out = [("traceparent", f"00-{tid}-{sid}-0{sampled}"),
               ("x-b3-traceid", tid), ("x-b3-spanid", sid), ("x-b3-sampled", sampled)]
        if parent_headers.get("tracestate"):
            out.append(("tracestate", parent_headers["tracestate"]))
        parent = span.parent if hasattr(span, "parent") else None
        if parent is not None:
            out.append(("x-b3-parentspanid", f"{parent.span_id:016x}"))
        return out


TRACE_HEADERS = frozenset({"traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid",
                           "x-b3-sampled", "x-b3-parentspanid", "x-b3-flags"})
