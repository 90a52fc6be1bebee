"""Tier-2 fixtures: real sample-app servers on loopback, and a real waypoint in front of them.

`backends(("v1", Behaviour()), ("v2", Behaviour(fail_rate=0.3)), ...)` starts one sample-app
server per entry (pods `web-v1-0`, ... with `version` labels) and stops them all at teardown;
`waypoint_for(backends, config_yaml)` builds a `WaypointSnapshot` from their addresses and the
YAML (validated by control.config, as users' files are) and starts a waypoint on loopback.
Snapshots are data built from control.snapshot dataclasses — nothing is mocked.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pytest

from lacewing.sample_app import Behaviour, Identity, SampleServer
from waypoint import bootstrap
from waypoint.proxy import WaypointThread


@dataclass
class Backend:
    name: str
    version: str
    server: SampleServer

    @property
    def port(self) -> int:
        return self.server.port


@pytest.fixture
def backends():
    started: list[Backend] = []

    def start(*specs: tuple[str, Behaviour], service: str = "web", namespace: str = "demo",
              seed: int | None = 7) -> list[Backend]:
        out = []
        counts: dict[str, int] = {}
        for version, behaviour in specs:
            i = counts.get(version, 0)
            counts[version] = i + 1
            name = f"{service}-{version}-{i}"
            srv = SampleServer(identity=Identity(pod=name, namespace=namespace, node="n1",
                                                 version=version),
                               behaviour=behaviour, host="127.0.0.1", port=0, quiet=True,
                               seed=None if seed is None else seed + len(started),
                               drain_timeout=1.0)
            srv.start()
            b = Backend(name, version, srv)
            started.append(b)
            out.append(b)
        return out

    try:
        yield start
    finally:
        for b in started:
            with contextlib.suppress(Exception):
                b.server.stop()


def service_dict(backs: list[Backend], *, name: str = "web", namespace: str = "demo",
                 port: int = 80, app: str | None = None, sa: str | None = None) -> dict:
    return {
        "name": name, "namespace": namespace, "ports": [{"port": port}],
        "endpoints": [{"name": b.name, "ip": "127.0.0.1", "port": b.port,
                       "serviceAccount": sa or name,
                       "labels": {"app": app or name, "version": b.version}} for b in backs],
    }


def make_snapshot(services: list[dict], config: str = "", *, waypoint=("demo", "waypoint"),
                  version: str = "1"):
    resources = bootstrap.parse_resources(config) if config.strip() else []
    return bootstrap.snapshot(waypoint=waypoint, services=services, resources=resources,
                              version=version)


@pytest.fixture
def waypoint_for():
    running: list[WaypointThread] = []

    def start(services: list[dict], config: str = "", **options) -> WaypointThread:
        snap = make_snapshot(services, config)
        wp = WaypointThread(snap, **options).start()
        running.append(wp)
        return wp

    try:
        yield start
    finally:
        for wp in running:
            wp.stop()


def get(port: int, path: str = "/", *, host: str = "web.demo", headers: dict | None = None,
        method: str = "GET", context=None, body: bytes | None = None):
    """One request on a fresh connection: (status, headers dict lower-cased, body bytes)."""
    import http.client

    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


SUBSETS = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: demo}
spec:
  host: web
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def eventually(predicate, *, timeout: float = 5.0) -> bool:
    """Poll a condition (a server's counters are updated just after it answers)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
