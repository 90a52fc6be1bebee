"""Pure timing rules: renewal at half-life with bounded jitter, capped exponential backoff."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.certs.schedule import Backoff, is_usable, renewal_delay, renewal_time

unit = st.floats(min_value=0, max_value=0.999999)


@settings(max_examples=100, deadline=None)
@given(nb=st.floats(0, 2e9), life=st.floats(1, 1e7), r=unit, jitter=st.floats(0, 0.2))
def test_renewal_within_half_life_plus_minus_jitter(nb, life, r, jitter):
    t = renewal_time(not_before=nb, not_after=nb + life, jitter=jitter, rand=lambda: r)
    assert nb + life * (0.5 - jitter) - 1e-6 <= t <= nb + life * (0.5 + jitter) + 1e-6
    assert t < nb + life  # always before expiry


def test_no_jitter_is_exactly_half_life():
    assert renewal_time(not_before=100, not_after=200, jitter=0, rand=lambda: 0.9) == 150


def test_jitter_spreads_renewals():
    times = {renewal_time(not_before=0, not_after=1000, rand=lambda r=r: r)
             for r in (0.0, 0.25, 0.5, 0.75, 0.99)}
    assert len(times) == 5


def test_delay_is_never_negative():
    assert renewal_delay(now=10_000, not_before=0, not_after=100, rand=lambda: 0.5) == 0


def test_rejects_nonsense_fractions():
    with pytest.raises(ValueError):
        renewal_time(not_before=0, not_after=10, fraction=0.5, jitter=0.6, rand=lambda: 0)


@settings(max_examples=100, deadline=None)
@given(attempt=st.integers(1, 200), r=unit)
def test_backoff_grows_and_is_capped(attempt, r):
    b = Backoff(initial=0.5, maximum=30)
    d = b.delay(attempt, rand=lambda: r)
    base = min(30, 0.5 * 2 ** (attempt - 1))
    assert base / 2 <= d <= base
    assert d <= 30


def test_backoff_counts_from_one():
    with pytest.raises(ValueError):
        Backoff().delay(0, rand=lambda: 0)


def test_usable_strictly_before_not_after():
    assert is_usable(now=99.999, not_after=100)
    assert not is_usable(now=100, not_after=100)
