"""The canary tour runs end to end and shows what it promises."""

from lacewing.commands.waypoint import run_canary as run


def test_canary_tour():
    lines: list[str] = []
    r = run(requests=600, out=lines.append)
    assert r["tester_v2_percent"] == 100.0
    assert r["success_percent"] >= 99.0 and r["flaky_pod_direct_success_percent"] < 90
    assert 4.0 <= r["v2_percent"] <= 16.0
    assert lines[0].startswith("canary through the waypoint")
