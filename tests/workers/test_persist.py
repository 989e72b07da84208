"""The persist worker on real Redis and PostgreSQL: every tick once, redelivery
harmless, crashes lose nothing, SIGTERM finishes the batch."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest
from pricepipe.workers.consumer import GroupConsumer
from pricepipe.workers.persister import PersistWorker
from pricepipe.workers.sink import TickSink

from pricepipe import codec
from pricepipe.keys import PERSIST_GROUP, Keys

from .helpers import (
    SYMBOLS,
    duplicate_count,
    fast_settings,
    make_ticks,
    pending_count,
    publish,
    row_count,
    wait_until,
)


def test_n_published_ticks_become_exactly_n_rows(r: Any, keys: Keys, db: Any,
                                                 run_worker: Callable[..., PersistWorker]
                                                 ) -> None:
    ticks = make_ticks(1200)
    ids = publish(r, keys, ticks)
    worker = run_worker(batch_size=300)
    assert worker.stats.rows_inserted == 1200
    assert row_count(db) == 1200
    assert duplicate_count(db) == 0
    assert pending_count(r, keys) == 0
    # The rows are the ticks, with the packed entry ID of their stream entry.
    with db.cursor() as cur:
        cur.execute("SELECT symbol, (extract(epoch FROM ts) * 1000000)::bigint, price, size,"
                    " source, entry_id FROM ticks")
        got = set(cur.fetchall())
    want = {(t.symbol, t.ts_us, t.price, t.size, t.source, codec.pack_entry_id(i))
            for t, i in zip(ticks, ids, strict=True)}
    assert got == want


def test_one_transaction_takes_what_every_shard_had(
        r: Any, keys: Keys, db: Any, run_worker: Callable[..., PersistWorker]) -> None:
    assert len({keys.shard(s) for s in SYMBOLS}) > 1  # the ticks span several shards
    publish(r, keys, make_ticks(40))
    worker = run_worker(batch_size=1000)
    assert worker.stats.batches == 1 and row_count(db) == 40
    # ... but a transaction is written as soon as it holds batch_size.
    publish(r, keys, make_ticks(40, start_us=make_ticks(41)[-1].ts_us))
    worker = run_worker(name="w2", batch_size=16)
    assert worker.stats.batches >= 2 and row_count(db) == 80


def test_redelivered_entries_add_no_rows_and_do_not_recount_bars(
        r: Any, keys: Keys, db: Any, run_worker: Callable[..., PersistWorker]) -> None:
    publish(r, keys, make_ticks(500))
    run_worker(batch_size=100)
    with db.cursor() as cur:
        cur.execute("SELECT * FROM bars_1m ORDER BY symbol, bucket")
        bars_before = cur.fetchall()
    assert sum(b[7] for b in bars_before) == 500  # tick_count
    # Rewind the group: every entry is delivered again, as after a lost XACK.
    for symbol in SYMBOLS:
        r.xgroup_setid(keys.stream(symbol), PERSIST_GROUP, "0")
    again = run_worker("w2", batch_size=100)
    assert again.stats.entries == 500
    assert again.stats.rows_inserted == 0 and again.stats.duplicates == 500
    assert row_count(db) == 500 and duplicate_count(db) == 0
    with db.cursor() as cur:
        cur.execute("SELECT * FROM bars_1m ORDER BY symbol, bucket")
        assert cur.fetchall() == bars_before


class _CrashAfterCommit(TickSink):
    """Commits, then dies before the worker can acknowledge: the widest window."""

    def write(self, rows: Any, *, fresh: bool = False) -> int:
        super().write(rows, fresh=fresh)
        raise SystemExit("simulated crash between COMMIT and XACK")


def test_crash_between_commit_and_ack_loses_and_doubles_nothing(
        r: Any, keys: Keys, db: Any, database_url: str,
        run_worker: Callable[..., PersistWorker]) -> None:
    publish(r, keys, make_ticks(400))
    crashing = PersistWorker(r, _CrashAfterCommit(database_url), GroupConsumer(r, keys, "w1"),
                             fast_settings(batch_size=50), burst=True)
    with pytest.raises(SystemExit):
        crashing.run(install_signals=False)
    committed = row_count(db)
    assert committed > 0
    assert pending_count(r, keys) >= committed  # delivered, committed, never acknowledged
    # The same consumer name comes back: it reads its own pending entries first.
    worker = run_worker("w1", batch_size=50)
    assert worker.stats.duplicates >= committed
    assert row_count(db) == 400 and duplicate_count(db) == 0
    assert pending_count(r, keys) == 0


def test_dead_consumers_pending_entries_are_claimed_by_another(
        r: Any, keys: Keys, db: Any, run_worker: Callable[..., PersistWorker]) -> None:
    publish(r, keys, make_ticks(300))
    # "ghost" takes entries and dies without acknowledging them.
    ghost = GroupConsumer(r, keys, "ghost")
    ghost.refresh()
    for shard in ghost.streams:
        ghost.read_new(shard, count=1000)
    assert pending_count(r, keys) == 300
    worker = run_worker("w2", claim_idle_ms=0)
    assert worker.stats.claimed == 300
    assert row_count(db) == 300 and pending_count(r, keys) == 0
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM bars_1m WHERE tick_count > 0")
        assert cur.fetchone()[0] > 0


def test_sigkill_mid_run_then_restart_persists_every_tick_once(
        r: Any, keys: Keys, db: Any, pipeline_env: dict[str, str],
        spawn: Callable[..., Any]) -> None:
    n = 20_000
    publish(r, keys, make_ticks(n))
    proc = spawn(["persist", "--name", "crashy", "--batch-size", "500"], env=pipeline_env)
    wait_until(lambda: row_count(db) > 0, proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert row_count(db) < n  # it really died mid-run
    again = spawn(["persist", "--name", "crashy", "--burst"], env=pipeline_env)
    out = again.communicate(timeout=100)[0].decode()
    assert again.returncode == 0, out
    assert row_count(db) == n and duplicate_count(db) == 0
    assert pending_count(r, keys) == 0


def test_sigterm_finishes_the_batch_in_hand_and_exits_0(
        r: Any, keys: Keys, db: Any, pipeline_env: dict[str, str],
        spawn: Callable[..., Any]) -> None:
    n = 20_000
    publish(r, keys, make_ticks(n))
    proc = spawn(["persist", "--name", "polite", "--batch-size", "500"], env=pipeline_env)
    wait_until(lambda: row_count(db) > 0, proc=proc)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, out
    # Whatever it had read is committed and acknowledged: nothing left pending,
    # and the rows are exactly the entries the group handed out.
    assert pending_count(r, keys) == 0
    delivered = sum(int(g["entries-read"] or 0) for s in SYMBOLS
                    for g in r.xinfo_groups(keys.stream(s)))
    assert row_count(db) == delivered
    assert duplicate_count(db) == 0
