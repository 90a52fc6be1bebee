"""Tier 2: the stream idle timeout (waypoint/stream_idle.py) on requests the fast lane
serves: the same 408 `stream timeout` (nothing answered yet) or reset (mid-answer), the same
metrics, as on the Python path."""

from __future__ import annotations

import pytest

from tests.waypoint.conftest import make_snapshot
from tests.waypoint.lane_peers import RecordingUpstream, exchange
from tests.waypoint.test_fast_lane_resilience import raw_service
from waypoint import fastlane
from waypoint.proxy import WaypointThread

pytestmark = pytest.mark.skipif(fastlane.native is None, reason="fast lane not built")


def run(on: bool, path: str):
    up = RecordingUpstream()
    try:
        with WaypointThread(make_snapshot([raw_service(up.port)]), fast_lane=on,
                            metrics_port=None, stream_idle_timeout_s=0.3) as wp:
            out = exchange(wp.port, [f"GET {path} HTTP/1.1\r\nHost: web.demo\r\n\r\n"
                                     .encode()], 1, timeout=3)
            series = wp.call(lambda: {labels: (s.count, s.resp_sum)
                                      for labels, s in wp.metrics.series.items()})
            lane = wp.call(wp.waypoint.describe)["fastLane"]
    finally:
        up.close()
    return out, series, lane


def test_no_answer_for_the_idle_timeout_is_408_on_both_paths():
    on, off = run(True, "/stall"), run(False, "/stall")
    assert on[0] == off[0]
    assert on[0].startswith(b"HTTP/1.1 408 ") and on[0].endswith(b"stream timeout")
    assert on[1] == off[1]
    assert on[2]["answered"] == 1


def test_an_answer_that_stalls_midway_is_cut_on_both_paths():
    on, off = run(True, "/stall-body"), run(False, "/stall-body")
    assert on[0] == off[0]
    assert on[0].endswith(b"half")                 # what came, then the connection ended
    assert on[1] == off[1]
    assert [labels[17] for labels in on[1]] == ["SI"]
