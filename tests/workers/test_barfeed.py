"""The bars stream: open while the minute runs, final once, revised by a
late trade; workers racing never publish an older state after a newer one;
a failed publication never loses or doubles a row; what is published ends
equal to the bars in PostgreSQL, which equal the raw trades."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis

from pricepipe.events import US_PER_MINUTE, Bar, BarState, Trade, bucket_of
from pricepipe.keys import Keys
from pricepipe.workers.barfeed import BarFeed, FinalPass, live_state
from pricepipe.workers.bars import BarStateRow, bar_event
from pricepipe.workers.consumer import GroupConsumer
from pricepipe.workers.persister import PersistWorker
from pricepipe.workers.sink import EventSink

from .helpers import (
    BASE_TS_US,
    bar_messages,
    fast_settings,
    make_quotes,
    make_trades,
    pending_count,
    publish,
    row_counts,
)

MINUTE = bucket_of(BASE_TS_US)  # 03:04:00
S = 1_000_000


class Clock:
    """The time the bar feed sees, in microseconds (set by the test)."""

    def __init__(self, now_us: int) -> None:
        self.now_us = now_us

    def __call__(self) -> int:
        return self.now_us


@pytest.fixture
def clock() -> Clock:
    return Clock(MINUTE + 30 * S)


@pytest.fixture
def feed(r: Any, keys: Keys, clock: Clock) -> BarFeed:
    return BarFeed(r, keys, grace_ms=2000, horizon_s=3600, clock=clock)


def _trades(n: int, start_us: int, *, step_us: int = 1 * S, symbol: str = "AAPL",
            first_id: int = 0) -> list[Trade]:
    return [Trade(symbol, start_us + i * step_us, 100.0 + i, float(i % 3 + 1), "test",
                  f"id{first_id + i}") for i in range(n)]


def _db_bar(db: Any, symbol: str, bucket_us: int) -> Bar:
    with db.cursor() as cur:
        cur.execute("SELECT symbol, (extract(epoch FROM bucket) * 1000000)::bigint, open, high,"
                    " low, close, volume, notional, trade_count FROM bars_1m"
                    " WHERE symbol = %s AND bucket = to_timestamp(%s / 1e6)",
                    (symbol, bucket_us))
        row = cur.fetchone()
    return bar_event(row, BarState.OPEN)


def _states(messages: list[tuple[str, Bar]], bucket_us: int) -> list[tuple[BarState, int]]:
    return [(bar.state, bar.trades) for _, bar in messages if bar.bucket_us == bucket_us]


def _same_bar(a: Bar, b: Bar) -> bool:
    """Equal but for the state (and float sums to the last bits)."""
    return ((a.symbol, a.bucket_us, a.open, a.high, a.low, a.close, a.trades)
            == (b.symbol, b.bucket_us, b.open, b.high, b.low, b.close, b.trades)
            and a.volume == pytest.approx(b.volume) and a.vwap == pytest.approx(b.vwap))


def test_the_state_a_commit_publishes_follows_the_clock() -> None:
    def state(now_us: int) -> BarState:
        return live_state(MINUTE, now_us, grace_us=2 * S, horizon_us=3600 * S)

    assert state(MINUTE + 30 * S) is BarState.OPEN
    assert state(MINUTE + 61 * S) is BarState.OPEN  # in the grace: trades still travel
    assert state(MINUTE + 62 * S) is BarState.FINAL
    assert state(MINUTE + 3000 * S) is BarState.FINAL
    assert state(MINUTE + 3700 * S) is BarState.REVISED  # past the horizon: long final


def test_a_bar_is_open_then_final_once_then_revised_by_a_late_trade(
        r: Any, keys: Keys, db: Any, database_url: str, clock: Clock, feed: BarFeed,
        run_worker: Callable[..., PersistWorker]) -> None:
    # The minute runs: every commit publishes the bar open, growing.
    publish(r, keys, [*_trades(20, MINUTE + 1 * S), *make_quotes(30, symbols=("AAPL",))])
    worker = run_worker(feed=feed, final_pass=True, batch_size=16)
    states = _states(bar_messages(r, keys, "AAPL"), MINUTE)
    assert len(states) >= 2 and {s for s, _ in states} == {BarState.OPEN}
    counts = [n for _, n in states]
    assert counts == sorted(set(counts)) and counts[-1] == 20
    assert worker.stats.bars_final == 0  # nothing has ended yet
    # The minute ended more than the grace ago: the worker's periodic pass
    # publishes it final, from the database, once.
    clock.now_us = MINUTE + 63 * S
    worker = run_worker(feed=feed, final_pass=True)
    assert worker.stats.bars_final == 1
    assert FinalPass(feed, database_url).run(["AAPL"]) == 0  # already final: never twice
    messages = bar_messages(r, keys, "AAPL")
    assert _states(messages, MINUTE)[-1] == (BarState.FINAL, 20)
    # A late trade of that minute (earlier than its close, a new high) revises it.
    clock.now_us = MINUTE + 90 * S
    late = Trade("AAPL", MINUTE + 500_000, 500.0, 2.0, "test", "late1")
    publish(r, keys, [late, *_trades(3, MINUTE + 61 * S, first_id=100)])
    run_worker(feed=feed, final_pass=True)
    messages = bar_messages(r, keys, "AAPL")
    states = _states(messages, MINUTE)
    assert states[-1] == (BarState.REVISED, 21)
    assert [s for s, _ in states].count(BarState.FINAL) == 1
    revised = [bar for _, bar in messages if bar.bucket_us == MINUTE][-1]
    assert (revised.open, revised.high) == (500.0, 500.0)
    # ... while the next minute, still running, is open.
    assert _states(messages, MINUTE + US_PER_MINUTE) == [(BarState.OPEN, 3)]
    # What the stream shows last for each bar is what PostgreSQL holds.
    for bucket in (MINUTE, MINUTE + US_PER_MINUTE):
        last = [bar for _, bar in messages if bar.bucket_us == bucket][-1]
        assert _same_bar(last, _db_bar(db, "AAPL", bucket))


def test_a_commit_after_the_minute_ended_publishes_it_final_then_revisions(
        r: Any, keys: Keys, clock: Clock, feed: BarFeed, database_url: str,
        run_worker: Callable[..., PersistWorker]) -> None:
    # A worker catching up: the minute has long ended when its trades commit.
    clock.now_us = MINUTE + 10 * US_PER_MINUTE
    publish(r, keys, _trades(30, MINUTE + 1 * S))
    run_worker(feed=feed, final_pass=True, batch_size=16)
    states = _states(bar_messages(r, keys, "AAPL"), MINUTE)
    assert states[0][0] is BarState.FINAL and states[-1] == (BarState.REVISED, 30)
    assert [s for s, _ in states].count(BarState.FINAL) == 1
    assert FinalPass(feed, database_url).run(["AAPL"]) == 0


def test_a_newer_state_is_never_followed_by_an_older_one(
        r: Any, keys: Keys, feed: BarFeed) -> None:
    def state(count: int, high: float = 101.0) -> BarStateRow:
        return ("AAPL", MINUTE, 100.0, high, 99.0, 100.5, float(count), 100.0 * count, count)

    assert feed.publish([state(5)]) == 1
    assert feed.publish([state(3)]) == 0  # older: a slower worker's commit
    assert feed.publish([state(5)]) == 0  # the same again (a retried call)
    assert feed.publish([state(7)]) == 1
    # The final pass read an older state than the one published meanwhile:
    # it is told to read again, and publishes nothing older.
    published, stale = feed.publish_final([state(6)])
    assert (published, stale) == (0, [("AAPL", MINUTE)])
    assert feed.publish_final([state(7)]) == (1, [])
    assert feed.publish_final([state(7)]) == (0, [])  # final once
    assert feed.publish([state(7)]) == 0
    assert feed.publish([state(8)]) == 1
    assert _states(bar_messages(r, keys, "AAPL"), MINUTE) == [
        (BarState.OPEN, 5), (BarState.OPEN, 7), (BarState.FINAL, 7), (BarState.REVISED, 8)]


def test_concurrent_publishers_keep_each_bar_in_order(r: Any, keys: Keys, feed: BarFeed
                                                      ) -> None:
    # Four publishers send the states 1..400 of two bars, each a different
    # interleaving: the stream only ever goes forward.
    def run(offset: int) -> None:
        for i in range(100):
            n = (i * 4 + offset) + 1
            feed.publish([("AAPL", MINUTE, 100.0, 101.0, 99.0, 100.0, 1.0, 100.0, n),
                          ("AAPL", MINUTE + US_PER_MINUTE, 100.0, 101.0, 99.0, 100.0, 1.0,
                           100.0, 401 - n)])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    messages = bar_messages(r, keys, "AAPL")
    for bucket in (MINUTE, MINUTE + US_PER_MINUTE):
        counts = [n for _, n in _states(messages, bucket)]
        assert counts == sorted(set(counts))  # strictly increasing
    assert [n for _, n in _states(messages, MINUTE)][-1] == 400


def test_two_workers_racing_never_publish_an_older_count_after_a_newer(
        r: Any, keys: Keys, db: Any, database_url: str, feed: BarFeed) -> None:
    trades = _trades(3000, MINUTE, step_us=30_000)  # 90 s: two bars, heavily shared
    publish(r, keys, trades)
    workers = [PersistWorker(r, EventSink(database_url), GroupConsumer(r, keys, name),
                             fast_settings(batch_size=20), burst=True, feed=feed)
               for name in ("w1", "w2")]
    threads = [threading.Thread(target=w.run, kwargs={"install_signals": False})
               for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(w.stats.rows_inserted > 0 for w in workers)  # they did share the work
    assert row_counts(db)["trades"] == 3000 and pending_count(r, keys, ("AAPL",)) == 0
    messages = bar_messages(r, keys, "AAPL")
    for bucket in (MINUTE, MINUTE + US_PER_MINUTE):
        counts = [n for _, n in _states(messages, bucket)]
        assert counts == sorted(set(counts)), counts
        last = [bar for _, bar in messages if bar.bucket_us == bucket][-1]
        assert _same_bar(last, _db_bar(db, "AAPL", bucket))
    assert sum(bar.trades for bar in {b.bucket_us: b for _, b in messages}.values()) == 3000


class _LosesTheFirstReply(BarFeed):
    """Publishes, then reports a connection error (the reply got lost)."""

    failures = 1

    def publish(self, bars: Any) -> int:
        n = super().publish(bars)
        if self.failures:
            self.failures -= 1
            raise redis.ConnectionError("connection lost after the script ran")
        return n


def test_a_lost_reply_is_retried_without_doubling_a_message(
        r: Any, keys: Keys, db: Any, clock: Clock,
        run_worker: Callable[..., PersistWorker]) -> None:
    flaky = _LosesTheFirstReply(r, keys, clock=clock)
    publish(r, keys, _trades(10, MINUTE + 1 * S))
    worker = run_worker(feed=flaky)
    assert worker.stats.retries >= 1 and flaky.failures == 0
    assert _states(bar_messages(r, keys, "AAPL"), MINUTE) == [(BarState.OPEN, 10)]
    assert row_counts(db)["trades"] == 10 and pending_count(r, keys, ("AAPL",)) == 0


def test_a_bar_redis_refuses_is_skipped_and_no_row_is_lost_or_doubled(
        r: Any, keys: Keys, db: Any, feed: BarFeed, caplog: pytest.LogCaptureFixture,
        run_worker: Callable[..., PersistWorker]) -> None:
    r.set(keys.bars("AAPL"), "not a stream")  # XADD fails there: WRONGTYPE
    publish(r, keys, [*make_trades(40, symbols=("AAPL", "MSFT")),
                      *make_quotes(40, symbols=("AAPL", "MSFT"))])
    with caplog.at_level("WARNING"):
        worker = run_worker(feed=feed)
    assert "not published" in caplog.text
    assert row_counts(db) == {"trades": 40, "quotes": 40}
    assert pending_count(r, keys, ("AAPL", "MSFT")) == 0
    assert worker.stats.duplicates == 0 and worker.stats.dead_letters == 0
    assert bar_messages(r, keys, "MSFT")  # the other symbol's bars went out
    # Later bars of the symbol go out again once Redis accepts them.
    r.delete(keys.bars("AAPL"))
    publish(r, keys, make_trades(5, symbols=("AAPL",), start_us=BASE_TS_US + 60 * S))
    run_worker(feed=feed)
    assert bar_messages(r, keys, "AAPL")


def test_a_crash_before_publishing_is_made_good_by_the_final_pass(
        r: Any, keys: Keys, db: Any, database_url: str, clock: Clock, feed: BarFeed,
        run_worker: Callable[..., PersistWorker]) -> None:
    class CrashAfterCommit(EventSink):
        def write(self, *args: Any, **kwargs: Any) -> Any:
            super().write(*args, **kwargs)
            raise SystemExit("crash between COMMIT and the bars stream")

    publish(r, keys, _trades(12, MINUTE + 1 * S))
    crashing = PersistWorker(r, CrashAfterCommit(database_url), GroupConsumer(r, keys, "w1"),
                             fast_settings(), burst=True, feed=feed)
    with pytest.raises(SystemExit):
        crashing.run(install_signals=False)
    assert bar_messages(r, keys, "AAPL") == []
    again = run_worker("w1", feed=feed, final_pass=True)  # redelivered: nothing new
    assert again.stats.duplicates == 12 and bar_messages(r, keys, "AAPL") == []
    clock.now_us = MINUTE + 70 * S  # the minute ended: the final pass reads the database
    run_worker("w1", feed=feed, final_pass=True)
    assert _states(bar_messages(r, keys, "AAPL"), MINUTE) == [(BarState.FINAL, 12)]
