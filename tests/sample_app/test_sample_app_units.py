"""Flag and header values: durations, fractions, rates, statuses and ports."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lacewing.sample_app.units import (
    format_duration,
    parse_duration,
    parse_fraction,
    parse_port,
    parse_rate,
    parse_status,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0.0), ("200ms", 0.2), ("1.5s", 1.5), ("1m30s", 90.0), ("2h", 7200.0), ("250us", 0.00025),
     (" 10ms ", 0.01), (".5s", 0.5)],
)
def test_durations_are_read_in_seconds(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "200", "1.5", "ms", "10 ms", "10sec", "-1s", "1s 2s", "abc", "1m30"])
def test_durations_without_a_unit_or_malformed_are_refused_with_advice(text):
    with pytest.raises(ValueError, match="unit"):
        parse_duration(text)


@settings(max_examples=60)
@given(st.floats(min_value=0, max_value=10_000, allow_nan=False))
def test_format_duration_reads_back(seconds):
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=1e-5, abs=1e-9)


def test_fractions_accept_decimals_and_percentages_within_bounds():
    assert parse_fraction("0.3") == 0.3
    assert parse_fraction("30%") == pytest.approx(0.3)
    assert parse_fraction("1") == 1.0
    for bad in ("1.5", "-0.1", "x", "150%"):
        with pytest.raises(ValueError, match="0 to 1|0..1"):
            parse_fraction(bad)


def test_statuses_must_be_final_http_codes():
    assert parse_status("503") == 503
    for bad in ("100", "600", "5xx", "", "-503"):
        with pytest.raises(ValueError, match="200 to 599"):
            parse_status(bad)


def test_rates_are_per_second_with_optional_unit():
    assert parse_rate("100") == 100.0
    assert parse_rate("100/s") == 100.0
    assert parse_rate("6000/m") == 100.0
    for bad in ("0", "-5", "10/d", "fast", "nan"):
        with pytest.raises(ValueError, match="requests per second"):
            parse_rate(bad)


def test_ports():
    assert parse_port("0") == 0
    assert parse_port("8080") == 8080
    for bad in ("65536", "-1", "http"):
        with pytest.raises(ValueError, match="0 to 65535"):
            parse_port(bad)
