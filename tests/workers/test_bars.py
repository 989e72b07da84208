"""1-minute bars: incremental upserts equal a recomputation from the raw ticks,
late ticks update their bar, and the SQL rollup finds and repairs drift."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from pricepipe.workers import rollup
from pricepipe.workers.bars import US_PER_MINUTE, Bar, aggregate, bar_rows, bucket_of, merge
from pricepipe.workers.batch import TickRow
from pricepipe.workers.persister import PersistWorker
from pricepipe.workers.sink import TickSink

from pricepipe.keys import Keys
from pricepipe.tick import Tick

from .helpers import BASE_TS_US, make_ticks, publish

ROW = st.tuples(st.sampled_from(["A", "B"]),
                st.integers(BASE_TS_US, BASE_TS_US + 3 * US_PER_MINUTE),
                st.floats(0.01, 1e6), st.one_of(st.none(), st.floats(0, 1e4)),
                st.just("x"), st.none(), st.integers(0, 10**9))


@given(st.lists(ROW, min_size=1, max_size=60, unique_by=lambda r: (r[0], r[1], r[6])),
       st.integers(1, 59))
def test_aggregating_in_parts_then_merging_equals_aggregating_at_once(
        rows: list[TickRow], cut: int) -> None:
    whole = aggregate(rows)
    parts = [aggregate(rows[:cut]), aggregate(rows[cut:])]
    merged: dict[tuple[str, int], Bar] = {}
    for part in parts:
        for key, bar in part.items():
            merged[key] = bar if key not in merged else merge(merged[key], bar)
    assert merged.keys() == whole.keys()
    for key, bar in whole.items():
        other = merged[key]
        assert (other.open, other.high, other.low, other.close, other.tick_count,
                other.open_key, other.close_key) == (bar.open, bar.high, bar.low, bar.close,
                                                     bar.tick_count, bar.open_key,
                                                     bar.close_key)
        assert abs(other.volume - bar.volume) <= 1e-9 * max(abs(bar.volume), 1)


@given(st.lists(ROW, max_size=80, unique_by=lambda r: (r[0], r[1], r[6])))
def test_hot_path_bar_rows_equal_the_reference_aggregation(rows: list[TickRow]) -> None:
    want = aggregate(rows)
    got = bar_rows(rows)
    assert [(b[0], b[1]) for b in got] == sorted(want)  # sorted by (symbol, bucket)
    for b in got:
        ref = want[(b[0], b[1])]
        assert b[2:6] == (ref.open, ref.high, ref.low, ref.close)
        assert b[7:] == (ref.tick_count, *ref.open_key, *ref.close_key)
        assert abs(b[6] - ref.volume) <= 1e-9 * max(abs(ref.volume), 1)


def test_bucket_is_the_utc_minute() -> None:
    assert bucket_of(BASE_TS_US) == BASE_TS_US - 5_000_000  # 03:04:05 -> 03:04:00
    assert bucket_of(-1) == -US_PER_MINUTE


def _db_bars(db: Any) -> dict[tuple[str, int], tuple[Any, ...]]:
    with db.cursor() as cur:
        cur.execute("SELECT symbol, (extract(epoch FROM bucket) * 1000000)::bigint, open, high,"
                    " low, close, volume, tick_count,"
                    " (extract(epoch FROM open_ts) * 1000000)::bigint, open_entry,"
                    " (extract(epoch FROM close_ts) * 1000000)::bigint, close_entry"
                    " FROM bars_1m")
        return {(row[0], row[1]): row[2:] for row in cur.fetchall()}


def _db_rows(db: Any) -> list[TickRow]:
    with db.cursor() as cur:
        cur.execute("SELECT symbol, (extract(epoch FROM ts) * 1000000)::bigint, price, size,"
                    " source, NULL, entry_id FROM ticks")
        return list(cur.fetchall())


def _assert_bars_match_ticks(db: Any) -> None:
    expected = aggregate(_db_rows(db))
    actual = _db_bars(db)
    assert actual.keys() == expected.keys()
    for key, bar in expected.items():
        o, h, lo, c, volume, count, open_ts, open_entry, close_ts, close_entry = actual[key]
        assert (o, h, lo, c, count) == (bar.open, bar.high, bar.low, bar.close, bar.tick_count)
        assert ((open_ts, open_entry), (close_ts, close_entry)) == (bar.open_key, bar.close_key)
        assert abs(volume - bar.volume) <= 1e-9 * max(abs(bar.volume), 1)


def test_incremental_bars_equal_bars_recomputed_from_ticks_with_late_ticks(
        r: Any, keys: Keys, db: Any, run_worker: Callable[..., PersistWorker]) -> None:
    ticks = make_ticks(900, step_us=700_000)  # ~10 minutes of 5 symbols
    rng = random.Random(7)
    on_time, late = ticks[:600], ticks[600:]
    rng.shuffle(late)
    # Late ticks: events of every minute again, published after later ones.
    late += [Tick(t.symbol, t.ts_us - 1, t.price * 0.9, 2.0, "late") for t in ticks[::37]]
    publish(r, keys, on_time)
    run_worker(batch_size=97)
    publish(r, keys, late)
    run_worker(batch_size=53)
    _assert_bars_match_ticks(db)
    with db.cursor() as cur:
        cur.execute("SELECT sum(tick_count) FROM bars_1m")
        assert cur.fetchone()[0] == len(on_time) + len(late)
    assert rollup.verify(db, BASE_TS_US - US_PER_MINUTE, BASE_TS_US + 20 * US_PER_MINUTE) == []


def test_late_tick_replaces_open_and_extends_high_low(database_url: str, db: Any) -> None:
    minute = bucket_of(BASE_TS_US)
    with TickSink(database_url) as sink:
        sink.write([("AAPL", minute + 10_000_000, 100.0, 1.0, "x", None, 5),
                    ("AAPL", minute + 20_000_000, 101.0, 1.0, "x", None, 6)])
        # Earlier event time, higher price, arriving later: new open and high.
        sink.write([("AAPL", minute + 1_000_000, 150.0, 2.0, "x", None, 9)])
        # Later event time, lowest price: new close and low.
        sink.write([("AAPL", minute + 59_000_000, 50.0, None, "x", None, 10)])
        # Redelivery of the first tick: no change at all.
        sink.write([("AAPL", minute + 10_000_000, 100.0, 1.0, "x", None, 5)])
    bar = _db_bars(db)[("AAPL", minute)]
    assert bar[:6] == (150.0, 150.0, 50.0, 50.0, 4.0, 4)


def test_rollup_finds_and_repairs_drift(
        r: Any, keys: Keys, db: Any, run_worker: Callable[..., PersistWorker]) -> None:
    publish(r, keys, make_ticks(300, step_us=1_000_000))
    run_worker()
    start, end = BASE_TS_US - US_PER_MINUTE, BASE_TS_US + 10 * US_PER_MINUTE
    assert rollup.verify(db, start, end) == []
    with db.cursor() as cur:  # drift: a bar lost, another miscounted, ticks deleted
        cur.execute("DELETE FROM bars_1m WHERE symbol = 'AAPL'")
        cur.execute("UPDATE bars_1m SET tick_count = tick_count + 1 WHERE symbol = 'MSFT'")
        cur.execute("DELETE FROM ticks WHERE symbol = 'SPY' AND price > 105")
    found = rollup.verify(db, start, end)
    assert {m.symbol for m in found} == {"AAPL", "MSFT", "SPY"}
    assert all(m.actual_ticks is None for m in found if m.symbol == "AAPL")
    rollup.rebuild(db, start, end)
    assert rollup.verify(db, start, end) == []
    _assert_bars_match_ticks(db)
