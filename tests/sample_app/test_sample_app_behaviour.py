"""The sans-IO rules: which requests fail, wait or are dropped, and what the JSON says."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lacewing.sample_app.behaviour import (
    Behaviour,
    Plan,
    encode_body,
    header_map,
    plan_request,
    response_document,
)
from lacewing.sample_app.identity import Identity, resolve_identity


def _plan(behaviour, target="/", headers=None, seed=1):
    rng = random.Random(seed)
    return plan_request(target=target, headers=header_map((headers or {}).items()), behaviour=behaviour,
                        random=rng.random)


def _many(behaviour, n, target="/", headers=None):
    rng = random.Random(1234)
    hdrs = header_map((headers or {}).items())
    return [plan_request(target=target, headers=hdrs, behaviour=behaviour, random=rng.random) for _ in range(n)]


def test_a_well_behaved_server_answers_200_at_once():
    plan = _plan(Behaviour())
    assert plan == Plan(status=200, delay=0.0, failed=False, reason="ok")


def test_fail_rate_answers_that_fraction_with_the_fail_status():
    plans = _many(Behaviour(fail_rate=0.3, fail_status=502), 4000)
    failed = [p for p in plans if p.failed]
    assert {p.status for p in failed} == {502}
    assert {p.status for p in plans if not p.failed} == {200}
    assert 0.25 < len(failed) / len(plans) < 0.35


def test_fail_rate_extremes_are_exact():
    assert all(p.status == 503 for p in _many(Behaviour(fail_rate=1.0), 200))
    assert all(p.status == 200 for p in _many(Behaviour(fail_rate=0.0), 200))


def test_close_rate_drops_that_fraction_in_the_configured_mode():
    plans = _many(Behaviour(close_rate=0.2, close_mode="fin"), 4000)
    dropped = [p for p in plans if p.closes]
    assert 0.16 < len(dropped) / len(plans) < 0.24
    assert {p.close_mode for p in dropped} == {"fin"}
    assert {p.reason for p in dropped} == {"close-rate"}


def test_latency_and_jitter_bound_the_delay():
    plans = _many(Behaviour(latency=0.1, latency_jitter=0.05), 500)
    delays = [p.delay for p in plans]
    assert min(delays) >= 0.1
    assert max(delays) <= 0.15
    assert len(set(delays)) > 100  # jitter really varies


def test_the_same_seed_repeats_the_same_faults():
    b = Behaviour(fail_rate=0.5, close_rate=0.1, latency_jitter=0.01)
    assert _many(b, 300) == _many(b, 300)


def test_override_headers_force_status_delay_and_close():
    b = Behaviour(latency=1.0)
    assert _plan(b, headers={"X-Sample-Status": "418"}) == Plan(418, 1.0, True, "forced")
    assert _plan(b, headers={"x-sample-delay": "20ms"}).delay == pytest.approx(0.02)
    forced = _plan(b, headers={"x-sample-close": "fin"})
    assert forced.closes and forced.close_mode == "fin"
    assert _plan(b, headers={"x-sample-close": "true"}).close_mode == "reset"
    assert not _plan(b, headers={"x-sample-close": "false"}).closes


@pytest.mark.parametrize(
    ("name", "value", "mentions"),
    [("x-sample-status", "99", "x-sample-status"), ("x-sample-delay", "200", "x-sample-delay"),
     ("x-sample-delay", "2h", "longer"), ("x-sample-close", "maybe", "x-sample-close")],
)
def test_a_bad_override_is_a_400_naming_the_header(name, value, mentions):
    plan = _plan(Behaviour(fail_rate=1.0), headers={name: value})
    assert plan.status == 400
    assert plan.reason == "bad-override"
    assert mentions in plan.error


def test_healthz_ignores_injected_faults_but_not_overrides():
    b = Behaviour(fail_rate=1.0, close_rate=1.0, latency=5.0)
    for target in ("/healthz", "/healthz?probe=1"):
        assert _plan(b, target=target) == Plan(200, 0.0, False, "healthz")
    assert _plan(b, target="/healthz", headers={"x-sample-status": "500"}).status == 500
    assert _plan(b, target="/healthzz").closes  # only the exact path is exempt


def test_fail_healthz_makes_the_probe_fail():
    plan = _plan(Behaviour(fail_healthz=True, fail_status=500), target="/healthz")
    assert (plan.status, plan.failed) == (500, True)


def test_behaviour_refuses_impossible_settings():
    for kwargs in ({"fail_rate": 1.5}, {"close_rate": -0.1}, {"latency": -1}, {"fail_status": 99},
                   {"close_mode": "explode"}):
        with pytest.raises(ValueError):
            Behaviour(**kwargs)


def test_response_document_reports_identity_request_and_repeated_headers():
    doc = response_document(
        identity=Identity(pod="web-1", namespace="shop", node="node-a", version="v2"),
        plan=Plan(503, 0.25, True, "fail-rate"),
        method="POST", target="/cart?id=3", protocol="HTTP/1.1",
        headers=[("Host", "web"), ("X-B3-TraceId", "abc"), ("Cookie", "a=1"), ("cookie", "b=2")],
        client="10.0.0.9:4000", local_ip="10.1.0.5", body_bytes=12,
    )
    assert doc["pod"] == "web-1" and doc["namespace"] == "shop" and doc["node"] == "node-a"
    assert doc["version"] == "v2"
    assert doc["pod_ip"] == "10.1.0.5"  # no configured IP: the address the connection reached
    assert doc["headers"] == {"host": "web", "x-b3-traceid": "abc", "cookie": "a=1, b=2"}
    assert (doc["method"], doc["path"], doc["status"], doc["failed"]) == ("POST", "/cart?id=3", 503, True)
    assert doc["delay_ms"] == 250.0
    assert doc["body_bytes"] == 12


def test_identity_prefers_flags_then_environment_then_defaults():
    env = {"POD_NAME": "env-pod", "POD_NAMESPACE": "env-ns", "NODE_NAME": "env-node",
           "POD_IP": "10.0.0.7", "POD_VERSION": "v9"}
    assert resolve_identity(environ=env, hostname="h") == Identity("env-pod", "env-ns", "env-node", "v9", "10.0.0.7")
    assert resolve_identity(pod="flag", version="v1", environ=env, hostname="h").pod == "flag"
    assert resolve_identity(pod="flag", version="v1", environ=env, hostname="h").version == "v1"
    assert resolve_identity(environ={}, hostname="h") == Identity("h", "default", "h", "unknown", "")

_behaviours = st.builds(
    Behaviour,
    fail_rate=st.floats(0, 1), fail_status=st.integers(200, 599),
    latency=st.floats(0, 10), latency_jitter=st.floats(0, 10),
    close_rate=st.floats(0, 1), close_mode=st.sampled_from(["reset", "fin"]),
)


@settings(max_examples=80, deadline=None)
@given(behaviour=_behaviours, draws=st.lists(st.floats(0, 1, exclude_max=True), min_size=3, max_size=3),
       target=st.sampled_from(["/", "/api/x?y=1", "/healthz"]))
def test_every_plan_is_one_the_configuration_allows(behaviour, draws, target):
    it = iter(draws)
    plan = plan_request(target=target, headers={}, behaviour=behaviour, random=lambda: next(it))
    if target == "/healthz":
        assert plan == Plan(200, 0.0, False, "healthz")
        return
    assert behaviour.latency <= plan.delay <= behaviour.latency + behaviour.latency_jitter
    if plan.closes:
        assert behaviour.close_rate > 0 and plan.close_mode == behaviour.close_mode and plan.failed
    elif plan.failed:
        assert behaviour.fail_rate > 0 and plan.status == behaviour.fail_status
    else:
        assert plan.status == 200 and behaviour.fail_rate < 1 and behaviour.close_rate < 1


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 5000), pod=st.text(max_size=30))
def test_encode_body_pads_to_the_asked_size(size, pod):
    import json

    doc = {"pod": pod, "status": 200}
    body = encode_body(doc, size=size)
    plain = encode_body(doc)
    assert json.loads(body)["pod"] == pod
    if size <= len(plain):
        assert body == plain
    elif size >= len(plain) + 16:
        assert len(body) == size
    else:
        # Too little room for padding: the smallest padded body (an empty "padding"), which
        # may happen to be exactly `size`.
        assert size <= len(body) <= size + 16


def test_response_bytes_come_from_the_behaviour_or_a_header():
    assert _plan(Behaviour(response_bytes=2000)).response_bytes == 2000
    assert _plan(Behaviour(response_bytes=2000), headers={"x-sample-response-bytes": "10"}).response_bytes == 10
    bad = _plan(Behaviour(), headers={"x-sample-response-bytes": "lots"})
    assert bad.status == 400 and "x-sample-response-bytes" in bad.error
