"""The node agent's certificate metrics, in a registry the caller passes (never the global one).

Before: the certificate manager's cache and fetch results. After, on the agent's metrics port:
`lacewing_certificate_expiry_seconds{identity}` — seconds until notAfter of the certificate the
node would present now, computed at scrape time — and
`lacewing_certificate_requests_total{result}` (issued | refused | unavailable | error).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

RESULTS = ("issued", "refused", "unavailable", "error")


class _ExpiryCollector(Collector):
    def __init__(self, source: Callable[[], Iterable[tuple[str, float]]]) -> None:
        self._source = source

    def collect(self):
        g = GaugeMetricFamily(
            "lacewing_certificate_expiry_seconds",
            "Seconds until the current certificate of an identity on this node expires.",
            labels=["identity"],
        )
        for identity, seconds in self._source():
            g.add_metric([identity], seconds)
        yield g


class CertMetrics:
    def __init__(self, registry: CollectorRegistry,
                 expiry_source: Callable[[], Iterable[tuple[str, float]]]) -> None:
        self.requests = Counter(
            "lacewing_certificate_requests", "Certificate requests made to the CA, by result.",
            ["result"], registry=registry,
        )
        for r in RESULTS:
            self.requests.labels(result=r)
        registry.register(_ExpiryCollector(expiry_source))
