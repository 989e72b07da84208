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


def test_entry_id_ranges_and_the_event_times_they_can_hold() -> None:
    from pricepipe import codec
    from pricepipe.events import (
        MAX_EVENT_AGE_AT_APPEND_US,
        MAX_EVENT_LEAD_AT_APPEND_US,
        MAX_TS_US,
        MIN_TS_US,
    )

    ms = NOW_US // 1000
    rng = params.parse_id_range(f"{ms}-7", f"{ms + 60_000}-0", max_span_us=DAY_US)
    assert rng == params.IdRange(codec.pack_entry_id(f"{ms}-7"),
                                 codec.pack_entry_id(f"{ms + 60_000}-0"))
    assert (rng.after_ms, rng.until_ms) == (ms, ms + 60_000)
    times = rng.event_times()
    assert times.start_us == NOW_US - MAX_EVENT_AGE_AT_APPEND_US
    # until's whole millisecond, then the lead.
    assert times.end_us == NOW_US + 60_001_000 + MAX_EVENT_LEAD_AT_APPEND_US
    # Past a cursor, only the cursor's entry and later can come.
    cursor = params.Cursor(NOW_US, codec.pack_entry_id(f"{ms + 5_000}-3"), stream_order=True)
    assert rng.event_times(cursor).start_us == NOW_US + 5_000_000 - MAX_EVENT_AGE_AT_APPEND_US
    # Clamped to the times an event may carry.
    early = params.IdRange(codec.pack_entry_id("1-0"), codec.pack_entry_id("2-0"))
    assert early.event_times().start_us == MIN_TS_US
    late = params.IdRange(codec.pack_entry_id(f"{MAX_TS_US // 1000}-0"),
                          codec.pack_entry_id(f"{MAX_TS_US // 1000 + 1}-0"))
    assert late.event_times().end_us == MAX_TS_US
    assert params.parse_id_range(None, None, max_span_us=DAY_US) is None
    # Numeric comparison, not text: 9 ms is before 10 ms, seq 9 before seq 10.
    assert params.parse_id_range(f"{ms}-9", f"{ms}-10", max_span_us=DAY_US) is not None
    assert params.parse_id_range("9-0", "10-0", max_span_us=DAY_US) is not None
    for after, until, param in ((f"{ms}-10", f"{ms}-9", "after_id"),
                                (f"{ms}-0", None, "until_id"), (None, f"{ms}-0", "after_id"),
                                (f"{ms}", f"{ms + 1}-0", "after_id"),
                                (f"{ms}-0", f"{ms + 86_400_001}-0", "until_id"),
                                ("0-0", f"{ms}-0", "until_id")):
        with pytest.raises(InvalidParameterError) as info:
            params.parse_id_range(after, until, max_span_us=DAY_US)
        assert info.value.param == param, (after, until, str(info.value))
    # At the cap exactly is fine.
    assert params.parse_id_range(f"{ms}-0", f"{ms + 86_400_000}-5", max_span_us=DAY_US)


def test_stream_order_cursors_round_trip_and_never_pass_for_time_cursors() -> None:
    from pricepipe import codec

    cursor = params.Cursor(NOW_US, codec.pack_entry_id("1767571200120-3"), stream_order=True)
    assert cursor.encode() == f"1767571200120-3_{NOW_US}"
    assert params.parse_cursor(cursor.encode(), stream_order=True) == cursor
    time_cursor = params.Cursor(NOW_US, 12345)
    for text, stream_order in ((cursor.encode(), False), (time_cursor.encode(), True)):
        with pytest.raises(InvalidParameterError) as info:
            params.parse_cursor(text, stream_order=stream_order)
        assert info.value.param == "cursor"
    for bad in (f"{1 << 42}-0_{NOW_US}", f"1-{1 << 21}_{NOW_US}", "1-0_5", "1-0_", "1-0-0_5",
                f"1-0_{NOW_US}_1"):
        with pytest.raises(InvalidParameterError):
            params.parse_cursor(bad, stream_order=True)
