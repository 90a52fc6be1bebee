"""Fixtures for the sample-app tests: real servers on 127.0.0.1 with ephemeral ports.

Before: a test asks for `start_server`. After: every server it started is stopped (listener
closed, connections drained, threads joined) when the test ends, whether it passed or not.
"""

from __future__ import annotations

import io

import pytest

from lacewing.sample_app import Behaviour, Identity, SampleServer


@pytest.fixture
def start_server():
    servers: list[SampleServer] = []

    def start(*, pod: str = "web-1", version: str = "v1", namespace: str = "shop", node: str = "node-a",
              pod_ip: str = "", seed: int | None = 7, log: io.StringIO | None = None,
              drain_timeout: float = 10.0, **behaviour) -> SampleServer:
        server = SampleServer(
            identity=Identity(pod=pod, namespace=namespace, node=node, version=version, pod_ip=pod_ip),
            behaviour=Behaviour(**behaviour),
            host="127.0.0.1", port=0, seed=seed,
            quiet=log is None, log_stream=log, drain_timeout=drain_timeout,
        )
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop(drain_timeout=2.0)
