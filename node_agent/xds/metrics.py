"""The xDS client's metrics, read at scrape time from the client and the state.

Before: a running `XdsClient` and its `XdsState`. After, on the node agent's metrics port:
`lacewing_xds_client_connected` (1 while a stream is up), `lacewing_xds_client_connects_total`,
`lacewing_xds_client_updates_total` (responses applied), `lacewing_xds_client_rejected_resources`
(kept out now), `lacewing_xds_client_last_update_timestamp_seconds`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from node_agent.xds.client import XdsClient


class XdsClientCollector(Collector):
    def __init__(self, client: XdsClient) -> None:
        self.client = client

    def collect(self):
        c, st = self.client, self.client.state
        yield GaugeMetricFamily("lacewing_xds_client_connected",
                                "1 while a stream to a control plane is up.",
                                value=1 if c.connected_to else 0)
        yield CounterMetricFamily("lacewing_xds_client_connects",
                                  "Streams established to a control plane.", value=c.connects)
        yield CounterMetricFamily("lacewing_xds_client_updates",
                                  "xDS responses applied to the node state.", value=st.updates)
        yield GaugeMetricFamily("lacewing_xds_client_rejected_resources",
                                "Resources rejected (NACKed) and kept out now.",
                                value=len(c.rejected))
        yield GaugeMetricFamily("lacewing_xds_client_last_update_timestamp_seconds",
                                "When the last xDS response was applied (Unix time).",
                                value=st.last_update or 0)


def register(registry: CollectorRegistry, client: XdsClient) -> None:
    registry.register(XdsClientCollector(client))
