"""Pure parameter parsing: no servers."""

from __future__ import annotations

import pytest

from pricepipe.api import params
from pricepipe.exceptions import InvalidParameterError

NOW_US = 1_767_571_200_000_000
DAY_US = params.US_PER_DAY


def test_times_in_every_accepted_form_mean_the_same_instant() -> None:
    forms = ["2026-01-05T00:00:00Z", "2026-01-05T01:00:00+01:00", "2026-01-05 00:00:00",
             "1767571200", "1767571200000", "1767571200000000"]
    assert {params.parse_time(f, "start") for f in forms} == {NOW_US}


@pytest.mark.parametrize("text", ["", "tomorrow", "1e400", "nan", "10", "2200-01-01",
                                  "2026-13-01", "-5"])
def test_unreadable_or_out_of_range_times_name_the_parameter(text: str) -> None:
    with pytest.raises(InvalidParameterError) as info:
        params.parse_time(text, "end")
    assert info.value.param == "end" and str(info.value).startswith("end:")


def test_range_defaults_order_and_cap() -> None:
    span = params.parse_range(None, None, now_us=NOW_US, default_span_us=DAY_US,
                              max_span_us=2 * DAY_US)
    assert (span.start_us, span.end_us) == (NOW_US - DAY_US, NOW_US)
    with pytest.raises(InvalidParameterError, match="before"):
        params.parse_range(str(NOW_US), str(NOW_US), now_us=NOW_US, default_span_us=DAY_US,
                           max_span_us=DAY_US)
    with pytest.raises(InvalidParameterError, match="at most 2 days"):
        params.parse_range(str(NOW_US - 3 * DAY_US), None, now_us=NOW_US,
                           default_span_us=DAY_US, max_span_us=2 * DAY_US)


def test_cursor_round_trip_and_garbage() -> None:
    cursor = params.Cursor(NOW_US, 12345)
    assert params.parse_cursor(cursor.encode()) == cursor
    backfilled = params.Cursor(NOW_US, -(NOW_US * 1024) - 1)  # a backfilled row's key
    assert params.parse_cursor(backfilled.encode()) == backfilled
    assert params.parse_cursor(None) is None and params.parse_cursor("") is None
    for bad in ("abc", "1_2_3", f"{NOW_US}_{1 << 63}", f"{NOW_US}_-{(1 << 63) + 1}", "5_1",
                f"{NOW_US}-1", f"{NOW_US}_--1", f"-{NOW_US}_1"):
        with pytest.raises(InvalidParameterError):
            params.parse_cursor(bad)


def test_symbols_are_upper_cased_deduplicated_and_capped() -> None:
    assert params.parse_symbols(" aapl, MSFT ,aapl,,", most=5) == ["AAPL", "MSFT"]
    with pytest.raises(InvalidParameterError, match="at most 2"):
        params.parse_symbols("A,B,C", most=2)
    for bad in ("A{1}", "A/B", "é", "X" * 33):
        with pytest.raises(InvalidParameterError):
            params.parse_symbol(bad)


def test_csv_negotiation() -> None:
    assert params.wants_csv("csv", None) and not params.wants_csv("json", "text/csv")
    assert params.wants_csv(None, "text/csv")
    assert not params.wants_csv(None, "*/*") and not params.wants_csv(None, None)
    assert not params.wants_csv(None, "text/csv;q=0.5, application/json")
    assert params.wants_csv(None, "application/json;q=0.1, text/csv")
    with pytest.raises(InvalidParameterError):
        params.wants_csv("xml", None)


def test_bar_alignment_and_count() -> None:
    hour = params.parse_interval("1h")
    assert params.align_down(NOW_US + 3599 * 10**6, hour) == NOW_US
    params.check_bar_count(params.TimeRange(NOW_US, NOW_US + 10 * hour), hour, 10)
    with pytest.raises(InvalidParameterError):
        params.check_bar_count(params.TimeRange(NOW_US, NOW_US + 10 * hour + 1), hour, 10)
    with pytest.raises(InvalidParameterError):
        params.parse_interval("7m")
