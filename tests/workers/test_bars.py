"""1-minute bars from trades: the Python aggregation equals the SQL rule,
incremental upserts equal a recomputation from the raw trades (true volume,
notional for VWAP, trade count), late trades update their bar, quotes never
make one, and the SQL rollup finds and repairs drift."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pricepipe.events import BarState, Trade
from pricepipe.keys import Keys
from pricepipe.workers import rollup
from pricepipe.workers.bars import (
    US_PER_MINUTE,
    PartialBar,
    aggregate,
    bar_event,
    bar_rows,
    bucket_of,
    merge,
    vwap_of,
)
from pricepipe.workers.batch import TradeRow
from pricepipe.workers.persister import PersistWorker
from pricepipe.workers.sink import EventSink

from .helpers import BASE_TS_US, make_quotes, make_trades, publish

ROW = st.tuples(st.sampled_from(["A", "B"]),
                st.integers(BASE_TS_US, BASE_TS_US + 3 * US_PER_MINUTE),
                st.floats(0.01, 1e6), st.one_of(st.none(), st.floats(1e-6, 1e4)),
                st.sampled_from([None, "buy", "sell"]), st.none(), st.just("x"), st.none(),
                st.integers(-10**9, 10**9))


def _order_key(row: TradeRow) -> tuple[str, int, int]:
    return row[0], row[1], row[8]


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1)


def _same(a: PartialBar, b: PartialBar) -> bool:
    return ((a.open, a.high, a.low, a.close, a.trades, a.open_key, a.close_key)
            == (b.open, b.high, b.low, b.close, b.trades, b.open_key, b.close_key)
            and _close(a.volume, b.volume) and _close(a.notional, b.notional))


@given(st.lists(ROW, min_size=1, max_size=60, unique_by=_order_key), st.integers(1, 59))
def test_aggregating_in_parts_then_merging_equals_aggregating_at_once(
        rows: list[TradeRow], cut: int) -> None:
    whole = aggregate(rows)
    merged: dict[tuple[str, int], PartialBar] = {}
    for part in (aggregate(rows[:cut]), aggregate(rows[cut:])):
        for key, bar in part.items():
            merged[key] = bar if key not in merged else merge(merged[key], bar)
    assert merged.keys() == whole.keys()
    assert all(_same(merged[key], bar) for key, bar in whole.items())


@given(st.lists(ROW, max_size=80, unique_by=_order_key))
def test_hot_path_bar_rows_equal_the_reference_aggregation(rows: list[TradeRow]) -> None:
    want = aggregate(rows)
    got = bar_rows(rows)
    assert [(b[0], b[1]) for b in got] == sorted(want)  # sorted by (symbol, bucket)
    for b in got:
        ref = want[(b[0], b[1])]
        assert b[2:6] == (ref.open, ref.high, ref.low, ref.close)
        assert b[8:] == (ref.trades, *ref.open_key, *ref.close_key)
        assert _close(b[6], ref.volume) and _close(b[7], ref.notional)


def test_volume_is_traded_size_and_vwap_weighs_by_it() -> None:
    rows: list[TradeRow] = [("A", BASE_TS_US, 10.0, 1.0, None, None, "x", None, 1),
                            ("A", BASE_TS_US + 1, 20.0, 3.0, None, None, "x", None, 2),
                            ("A", BASE_TS_US + 2, 99.0, None, None, None, "x", None, 3)]
    (bar,) = aggregate(rows).values()
    assert (bar.volume, bar.notional, bar.trades, bar.high) == (4.0, 70.0, 3, 99.0)
    assert vwap_of(bar.volume, bar.notional) == 17.5
    assert vwap_of(0.0, 0.0) is None
    event = bar_event(("A", bucket_of(BASE_TS_US), 10.0, 99.0, 10.0, 99.0, 4.0, 70.0, 3),
                      BarState.OPEN)
    assert (event.vwap, event.trades, event.volume) == (17.5, 3, 4.0)


def test_bucket_is_the_utc_minute() -> None:
    assert bucket_of(BASE_TS_US) == BASE_TS_US - 5_000_000  # 03:04:05 -> 03:04:00
    assert bucket_of(-1) == -US_PER_MINUTE


def _db_bars(db: Any) -> dict[tuple[str, int], tuple[Any, ...]]:
    with db.cursor() as cur:
        cur.execute("SELECT symbol, (extract(epoch FROM bucket) * 1000000)::bigint, open, high,"
                    " low, close, volume, notional, trade_count,"
                    " (extract(epoch FROM open_ts) * 1000000)::bigint, open_entry,"
                    " (extract(epoch FROM close_ts) * 1000000)::bigint, close_entry"
                    " FROM bars_1m")
        return {(row[0], row[1]): row[2:] for row in cur.fetchall()}


def _db_trades(db: Any) -> list[TradeRow]:
    with db.cursor() as cur:
        cur.execute("SELECT symbol, (extract(epoch FROM ts) * 1000000)::bigint, price, size,"
                    " side, trade_id, source, NULL, entry_id FROM trades")
        return list(cur.fetchall())


def assert_bars_match_trades(db: Any) -> None:
    """Every stored bar is the Python aggregation of the stored trades."""
    expected = aggregate(_db_trades(db))
    actual = _db_bars(db)
    assert actual.keys() == expected.keys()
    for key, bar in expected.items():
        (o, h, lo, c, volume, notional, count, open_ts, open_entry, close_ts,
         close_entry) = actual[key]
        assert (o, h, lo, c, count) == (bar.open, bar.high, bar.low, bar.close, bar.trades)
        assert ((open_ts, open_entry), (close_ts, close_entry)) == (bar.open_key, bar.close_key)
        assert _close(volume, bar.volume) and _close(notional, bar.notional)


def test_the_sql_rule_equals_the_python_aggregation(database_url: str, db: Any) -> None:
    rng = random.Random(11)
    rows: list[TradeRow] = []
    for i in range(400):
        ts = BASE_TS_US + rng.randrange(0, 5 * US_PER_MINUTE, 250_000)  # many ties in ts
        size = None if rng.random() < 0.2 else rng.choice([0.5, 1.0, 7.25, 1e-3])
        rows.append((rng.choice(["A", "B", "C"]), ts, round(rng.uniform(1, 200), 2), size,
                     None, None, "x", None, rng.randrange(-10**6, 10**6) * 1000 + i))
    with EventSink(database_url) as sink:
        sink.write(rows[:150])  # the SQL path (idempotent), rows as stored
        sink.write(rows[150:], fresh=True)  # the Python path (first deliveries)
    assert_bars_match_trades(db)  # stored (SQL and Python merged) == Python over all rows
    span = (BASE_TS_US - US_PER_MINUTE, BASE_TS_US + 10 * US_PER_MINUTE)
    assert rollup.verify(db, *span) == []  # == the SQL recomputation over all rows


def test_incremental_bars_equal_bars_recomputed_from_trades_with_late_trades(
        r: Any, keys: Keys, db: Any, run_worker: Callable[..., PersistWorker]) -> None:
    trades = make_trades(900, step_us=700_000)  # ~10 minutes of 5 symbols
    rng = random.Random(7)
    on_time, late = trades[:600], trades[600:]
    rng.shuffle(late)
    # Late trades: events of every minute again, published after later ones.
    late += [Trade(t.symbol, t.ts_us - 1, t.price * 0.9, 2.0, "late") for t in trades[::37]]
    quotes = make_quotes(500, step_us=1_000_000)
    publish(r, keys, [*on_time, *quotes[:250]])
    run_worker(batch_size=97)
    publish(r, keys, [*late, *quotes[250:]])
    run_worker(batch_size=53)
    assert_bars_match_trades(db)
    with db.cursor() as cur:
        cur.execute("SELECT sum(trade_count), sum(volume) FROM bars_1m")
        count, volume = cur.fetchone()
    assert count == len(on_time) + len(late)  # quotes make no bar
    assert volume == pytest.approx(sum(t.size or 0.0 for t in [*on_time, *late]))
    assert rollup.verify(db, BASE_TS_US - US_PER_MINUTE, BASE_TS_US + 20 * US_PER_MINUTE) == []


def test_late_trade_replaces_open_and_extends_high_low(database_url: str, db: Any) -> None:
    minute = bucket_of(BASE_TS_US)

    def trade(offset_s: int, price: float, size: float | None, entry: int) -> TradeRow:
        return ("AAPL", minute + offset_s * 1_000_000, price, size, None, None, "x", None, entry)

    with EventSink(database_url) as sink:
        first = sink.write([trade(10, 100.0, 1.0, 5), trade(20, 101.0, 1.0, 6)])
        # Earlier event time, higher price, arriving later: new open and high.
        late = sink.write([trade(1, 150.0, 2.0, 9)])
        # Later event time, lowest price, no size: new close and low, same volume.
        sink.write([trade(59, 50.0, None, 10)], fresh=True)
        # Redelivery of the first trade: no change at all, and no bar reported.
        again = sink.write([trade(10, 100.0, 1.0, 5)])
    assert first.trades == 2 and [b[8] for b in first.bars] == [2]
    assert late.bars == [("AAPL", minute, 150.0, 150.0, 100.0, 101.0, 4.0, 501.0, 3)]
    assert again.trades == 0 and again.bars == []
    bar = _db_bars(db)[("AAPL", minute)]
    assert bar[:7] == (150.0, 150.0, 50.0, 50.0, 4.0, 501.0, 4)


def test_rollup_finds_and_repairs_drift(
        r: Any, keys: Keys, db: Any, run_worker: Callable[..., PersistWorker]) -> None:
    publish(r, keys, make_trades(300, step_us=1_000_000))
    run_worker()
    start, end = BASE_TS_US - US_PER_MINUTE, BASE_TS_US + 10 * US_PER_MINUTE
    assert rollup.verify(db, start, end) == []
    with db.cursor() as cur:  # drift: a bar lost, one miscounted, one's notional, trades deleted
        cur.execute("DELETE FROM bars_1m WHERE symbol = 'AAPL'")
        cur.execute("UPDATE bars_1m SET trade_count = trade_count + 1 WHERE symbol = 'MSFT'")
        cur.execute("UPDATE bars_1m SET notional = notional * 2 WHERE symbol = 'ETH-USD'")
        cur.execute("DELETE FROM trades WHERE symbol = 'SPY' AND price > 105")
    found = rollup.verify(db, start, end)
    assert {m.symbol for m in found} == {"AAPL", "MSFT", "ETH-USD", "SPY"}
    assert all(m.actual_trades is None for m in found if m.symbol == "AAPL")
    rollup.rebuild(db, start, end)
    assert rollup.verify(db, start, end) == []
    assert_bars_match_trades(db)
