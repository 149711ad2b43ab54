"""Human durations, as typed in flags, environment variables and the config file."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ca.core.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("24h", timedelta(hours=24), id="24h"),
        pytest.param("90d", timedelta(days=90), id="90d"),
        pytest.param("1h30m", timedelta(hours=1, minutes=30), id="1h30m"),
        pytest.param("3600", timedelta(seconds=3600), id="bare-seconds"),
        pytest.param("0", timedelta(0), id="zero"),
        pytest.param("45s", timedelta(seconds=45), id="45s"),
        pytest.param("500ms", timedelta(milliseconds=500), id="milliseconds"),
        pytest.param("5m", timedelta(minutes=5), id="m-is-minutes"),
        pytest.param("2w", timedelta(weeks=2), id="weeks"),
        pytest.param("1y", timedelta(days=365), id="year-is-365d"),
        pytest.param("1.5h", timedelta(minutes=90), id="fractional"),
        pytest.param("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4), id="all-units"),
        pytest.param("  24H\n", timedelta(hours=24), id="case-and-whitespace-insensitive"),
    ],
)
def test_parses(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("h", id="unit-without-number"),
        pytest.param("24x", id="unknown-unit"),
        pytest.param("-5s", id="negative"),
        pytest.param("+5s", id="explicit-sign"),
        pytest.param("1h 30m", id="inner-space"),
        pytest.param("1,5h", id="decimal-comma"),
        pytest.param("1.5", id="fraction-without-unit"),
        pytest.param("24hh", id="doubled-unit"),
        pytest.param("h24", id="unit-first"),
        pytest.param("1e3s", id="exponent"),
        pytest.param("24 hours", id="spelled-out-unit"),
    ],
)
def test_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["99999999999999999999d", "9" * 30], ids=["days", "seconds"])
def test_refuses_out_of_range_with_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(timedelta(0), id="zero"),
        pytest.param(timedelta(seconds=59), id="seconds"),
        pytest.param(timedelta(hours=24), id="a-day"),
        pytest.param(timedelta(days=90), id="90-days"),
        pytest.param(timedelta(days=1, hours=2, minutes=3, seconds=4), id="mixed"),
    ],
)
def test_format_round_trips_through_parse(value: timedelta) -> None:
    assert parse_duration(format_duration(value)) == value
