"""The persist worker on real Redis and PostgreSQL: every trade and quote
once, redelivery harmless, crashes lose nothing, SIGTERM finishes the batch."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

import pytest

from pricepipe import codec
from pricepipe.events import Quote, Trade
from pricepipe.keys import PERSIST_GROUP, Keys
from pricepipe.workers.consumer import GroupConsumer
from pricepipe.workers.persister import PersistWorker
from pricepipe.workers.sink import EventSink, WriteResult

from .helpers import (
    SYMBOLS,
    duplicate_count,
    entries_added,
    fast_settings,
    kinds,
    make_events,
    make_trades,
    pending_count,
    persisted_streams,
    publish,
    row_count,
    row_counts,
    wait_until,
)


def test_n_published_events_become_exactly_n_rows_per_type(
        r: Any, keys: Keys, db: Any, run_worker: Callable[..., PersistWorker]) -> None:
    events = make_events(1200)
    ids = publish(r, keys, events)
    worker = run_worker(batch_size=300)
    want = kinds(events)
    assert want["quotes"] == 5 * want["trades"]
    assert (worker.stats.trades_inserted, worker.stats.quotes_inserted) == (
        want["trades"], want["quotes"])
    assert row_counts(db) == want == entries_added(r, keys)
    assert duplicate_count(db) == 0 and pending_count(r, keys) == 0
    # The rows are the events, with the packed entry ID of their stream entry.
    with db.cursor() as cur:
        cur.execute("SELECT symbol, (extract(epoch FROM ts) * 1000000)::bigint, price, size,"
                    " side, trade_id, source, entry_id FROM trades")
        trades = set(cur.fetchall())
        cur.execute("SELECT symbol, (extract(epoch FROM ts) * 1000000)::bigint, bid, bid_size,"
                    " ask, ask_size, source, entry_id FROM quotes")
        quotes = set(cur.fetchall())
    assert trades == {(e.symbol, e.ts_us, e.price, e.size, str(e.side), e.trade_id, e.source,
                       codec.pack_entry_id(i))
                      for e, i in zip(events, ids, strict=True) if isinstance(e, Trade)}
    assert quotes == {(e.symbol, e.ts_us, e.bid, e.bid_size, e.ask, e.ask_size, e.source,
                       codec.pack_entry_id(i))
                      for e, i in zip(events, ids, strict=True) if isinstance(e, Quote)}


def test_one_transaction_takes_trades_and_quotes_of_every_shard(
        r: Any, keys: Keys, db: Any, run_worker: Callable[..., PersistWorker]) -> None:
    assert len({keys.shard(s) for s in SYMBOLS}) > 1  # the events span several shards
    first = make_events(60)
    publish(r, keys, first)
    worker = run_worker(batch_size=1000)
    assert worker.stats.batches == 1 and row_counts(db) == kinds(first)
    # ... but a transaction is written as soon as it holds batch_size.
    publish(r, keys, make_events(60, start_us=first[-1].ts_us + 1_000_000))
    worker = run_worker(name="w2", batch_size=16)
    assert worker.stats.batches >= 2 and row_count(db) == 120


def _bars(db: Any) -> list[Any]:
    with db.cursor() as cur:
        cur.execute("SELECT * FROM bars_1m ORDER BY symbol, bucket")
        return cur.fetchall()


def test_redelivered_entries_add_no_rows_change_no_bar_publish_nothing(
        r: Any, keys: Keys, db: Any, run_worker: Callable[..., PersistWorker]) -> None:
    events = make_events(600)
    publish(r, keys, events)
    first = run_worker(batch_size=100)
    bars_before = _bars(db)
    assert sum(b[8] for b in bars_before) == kinds(events)["trades"]  # trade_count
    assert first.stats.bars_published > 0
    published = {s: r.xlen(keys.bars(s)) for s in SYMBOLS}
    # Rewind the group: every entry is delivered again, as after a lost XACK.
    for stream in persisted_streams(keys, SYMBOLS):
        r.xgroup_setid(stream, PERSIST_GROUP, "0")
    again = run_worker("w2", batch_size=100)
    assert again.stats.entries == 600
    assert again.stats.rows_inserted == 0 and again.stats.duplicates == 600
    assert row_counts(db) == kinds(events) and duplicate_count(db) == 0
    assert _bars(db) == bars_before
    assert again.stats.bars_published == 0
    assert {s: r.xlen(keys.bars(s)) for s in SYMBOLS} == published


def test_a_trade_stored_before_under_its_venue_id_is_not_stored_twice(
        r: Any, keys: Keys, db: Any, database_url: str,
        run_worker: Callable[..., PersistWorker]) -> None:
    trades = make_trades(40, symbols=("AAPL",))
    # The same trades arrived earlier another way (a gap repair, a backfill).
    with EventSink(database_url) as sink:
        sink.write([(t.symbol, t.ts_us, t.price, t.size, None, t.trade_id, "repair", None,
                     -i - 1) for i, t in enumerate(trades[:10])])
    publish(r, keys, trades)
    worker = run_worker()
    assert worker.stats.trades_inserted == 30 and worker.stats.duplicates == 10
    assert row_counts(db)["trades"] == 40 and pending_count(r, keys, ("AAPL",)) == 0
    with db.cursor() as cur:
        cur.execute("SELECT sum(trade_count) FROM bars_1m")
        assert cur.fetchone()[0] == 40


class _CrashAfterCommit(EventSink):
    """Commits, then dies before the worker can publish or acknowledge: the widest window."""

    def write(self, trades: Any = (), quotes: Any = (), **kwargs: Any) -> WriteResult:
        super().write(trades, quotes, **kwargs)
        raise SystemExit("simulated crash between COMMIT and XACK")


def test_crash_between_commit_and_ack_loses_and_doubles_nothing(
        r: Any, keys: Keys, db: Any, database_url: str,
        run_worker: Callable[..., PersistWorker]) -> None:
    events = make_events(600)
    publish(r, keys, events)
    crashing = PersistWorker(r, _CrashAfterCommit(database_url), GroupConsumer(r, keys, "w1"),
                             fast_settings(batch_size=50), burst=True)
    with pytest.raises(SystemExit):
        crashing.run(install_signals=False)
    committed = row_count(db)
    assert committed > 0
    assert pending_count(r, keys) >= committed  # delivered, committed, never acknowledged
    bars_after_crash = _bars(db)
    # The same consumer name comes back: it reads its own pending entries first.
    worker = run_worker("w1", batch_size=50)
    assert worker.stats.duplicates >= committed
    assert row_counts(db) == kinds(events) and duplicate_count(db) == 0
    assert pending_count(r, keys) == 0
    # The redelivered part changed no bar: the bars hold every trade once.
    with db.cursor() as cur:
        cur.execute("SELECT sum(trade_count) FROM bars_1m")
        assert cur.fetchone()[0] == kinds(events)["trades"]
    assert sum(b[8] for b in bars_after_crash) <= kinds(events)["trades"]


def test_dead_consumers_pending_entries_are_claimed_by_another(
        r: Any, keys: Keys, db: Any, run_worker: Callable[..., PersistWorker]) -> None:
    events = make_events(300)
    publish(r, keys, events)
    # "ghost" takes entries and dies without acknowledging them.
    ghost = GroupConsumer(r, keys, "ghost")
    ghost.refresh()
    for shard in ghost.streams:
        ghost.read_new(shard, count=1000)
    assert pending_count(r, keys) == 300
    worker = run_worker("w2", claim_idle_ms=0)
    assert worker.stats.claimed == 300
    assert row_counts(db) == kinds(events) and pending_count(r, keys) == 0
    with db.cursor() as cur:
        cur.execute("SELECT sum(trade_count) FROM bars_1m")
        assert cur.fetchone()[0] == kinds(events)["trades"]


class _HeldSink(EventSink):
    """Holds its first write until the worker has handed over another batch."""

    def __init__(self, database_url: str, handed: threading.Event) -> None:
        super().__init__(database_url)
        self.handed = handed
        self.overlapped: bool | None = None

    def write(self, *args: Any, **kwargs: Any) -> WriteResult:
        if self.overlapped is None:
            # A generous bound, only so that a worker that never reads on
            # fails the test instead of hanging it.
            self.overlapped = self.handed.wait(30)
        return super().write(*args, **kwargs)


class _HandingWorker(PersistWorker):
    def __init__(self, *args: Any, handed: threading.Event, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handed = handed
        self.handed_over = 0

    def process(self, batch: Any, *, redelivered: bool) -> None:
        self.handed_over += 1
        if self.handed_over == 2:
            self.handed.set()
        super().process(batch, redelivered=redelivered)


def test_a_burst_reads_the_next_batch_while_the_last_one_is_written(
        r: Any, keys: Keys, db: Any, database_url: str) -> None:
    # One symbol's trades, 16 a round: a round is one batch, so the second
    # batch is read in the second round. A burst that waited for its writer
    # at the start of every round (it used to, to claim idle entries) would
    # only read it once the first was committed.
    trades = make_trades(80, symbols=("AAPL",))
    publish(r, keys, trades)
    handed = threading.Event()
    sink = _HeldSink(database_url, handed)
    worker = _HandingWorker(r, sink, GroupConsumer(r, keys, "w1"),
                            fast_settings(batch_size=16, pipeline=True), burst=True,
                            handed=handed)
    assert worker.run(install_signals=False) == 0
    assert sink.overlapped is True
    assert worker.handed_over == 5 and row_count(db) == 80
    assert pending_count(r, keys, ("AAPL",)) == 0


def test_sigkill_mid_run_then_restart_persists_every_event_once(
        r: Any, keys: Keys, db: Any, pipeline_env: dict[str, str],
        spawn: Callable[..., Any]) -> None:
    events = make_events(24_000)
    publish(r, keys, events)
    proc = spawn(["persist", "--name", "crashy", "--batch-size", "500"], env=pipeline_env)
    wait_until(lambda: row_count(db) > 0, proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert row_count(db) < len(events)  # it really died mid-run
    again = spawn(["persist", "--name", "crashy", "--burst"], env=pipeline_env)
    out = again.communicate(timeout=100)[0].decode()
    assert again.returncode == 0, out
    assert row_counts(db) == kinds(events) == entries_added(r, keys)
    assert duplicate_count(db) == 0 and pending_count(r, keys) == 0


def test_sigterm_finishes_the_batch_in_hand_and_exits_0(
        r: Any, keys: Keys, db: Any, pipeline_env: dict[str, str],
        spawn: Callable[..., Any]) -> None:
    publish(r, keys, make_events(24_000))
    proc = spawn(["persist", "--name", "polite", "--batch-size", "500"], env=pipeline_env)
    wait_until(lambda: row_count(db) > 0, proc=proc)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, out
    # Whatever it had read is committed and acknowledged: nothing left pending,
    # and the rows of each table are exactly the entries the group handed out.
    assert pending_count(r, keys) == 0
    delivered = {"trades": 0, "quotes": 0}
    for symbol in SYMBOLS:
        for table in delivered:
            stream = keys.trades(symbol) if table == "trades" else keys.quotes(symbol)
            delivered[table] += sum(int(g["entries-read"] or 0) for g in r.xinfo_groups(stream))
    assert row_counts(db) == delivered
    assert duplicate_count(db) == 0
