"""Creating a partition on the hot path never queues the table's readers:
``CREATE TABLE ... PARTITION OF`` needs an ACCESS EXCLUSIVE lock on the parent,
and a request waiting behind a long read (a CSV export) would hold up every
later read and write. With ``lock_timeout`` the worker and the partitions job
withdraw the request and retry with backoff until the read ends."""

from __future__ import annotations

import threading
from typing import Any

import psycopg2
import psycopg2.errors
import pytest

from pricepipe.clock import now_ms, us_to_datetime, utcnow
from pricepipe.events import Trade
from pricepipe.keys import Keys
from pricepipe.workers import partitions
from pricepipe.workers.consumer import GroupConsumer
from pricepipe.workers.persister import PersistWorker
from pricepipe.workers.sink import EventSink, classify

from .helpers import US_PER_DAY, fast_settings, publish, row_counts, wait_until

#: Only a hang guard for the other readers: with the bug they would wait for
#: the whole long read (forever here), not for this long.
READER_STATEMENT_TIMEOUT_MS = 30_000


def _long_read(database_url: str) -> Any:
    """A transaction that has read ``trades`` and stays open (ACCESS SHARE held)."""
    conn = psycopg2.connect(database_url, application_name="long-export")
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM trades")
        cur.fetchone()
    return conn


def _reader(database_url: str) -> Any:
    conn = psycopg2.connect(database_url, application_name="other-reader")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT set_config('statement_timeout', %s, false)",
                    (str(READER_STATEMENT_TIMEOUT_MS),))
    return conn


def _read(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM trades")
        return int(cur.fetchone()[0])


def _lock_waiters(conn: Any) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a"
                    " ON a.pid = l.pid WHERE NOT l.granted")
        return [row[0] for row in cur.fetchall()]


def test_the_worker_waits_for_a_new_days_partition_without_blocking_readers(
        r: Any, keys: Keys, db: Any, database_url: str) -> None:
    # Events of a day with no partition yet (the template has yesterday to
    # a week ahead): the worker must create it while an export reads trades.
    day_us = (now_ms() * 1000 // US_PER_DAY - 3) * US_PER_DAY
    trades = [Trade("AAPL", day_us + i * 1000, 1.0 + i, 1.0, "test") for i in range(50)]
    name = f"trades_{us_to_datetime(day_us):%Y%m%d}"
    assert name not in partitions.list_partitions(db)
    publish(r, keys, trades)
    export = _long_read(database_url)
    worker = PersistWorker(r, EventSink(database_url, partition_lock_timeout_ms=100),
                           GroupConsumer(r, keys, "w1"), fast_settings(), burst=True)
    outcome: list[int] = []
    thread = threading.Thread(target=lambda: outcome.append(worker.run(install_signals=False)))
    thread.start()
    reader = _reader(database_url)
    try:
        # The worker asks for the lock (and gives the request up after its
        # lock timeout, again and again)...
        wait_until(lambda: "pricepipe-persist" in _lock_waiters(reader))
        # ...and other readers are served meanwhile, however often they come.
        for _ in range(20):
            assert _read(reader) == 0
        wait_until(lambda: worker.stats.retries >= 3)
        assert thread.is_alive() and outcome == []
    finally:
        export.rollback()  # the export ends
        export.close()
    thread.join(timeout=60)
    assert outcome == [0] and row_counts(db) == {"trades": 50, "quotes": 0}
    assert name in partitions.list_partitions(db)
    assert _read(reader) == 50 and _lock_waiters(reader) == []
    reader.close()


def test_the_partitions_job_gives_up_its_lock_request_and_retries(
        db: Any, database_url: str) -> None:
    today = utcnow().date()
    export = _long_read(database_url)
    conn = psycopg2.connect(database_url)
    reader = _reader(database_url)
    waits: list[int] = []

    def wait_s(attempt: int) -> float:
        waits.append(attempt)
        assert _read(reader) == 0  # between attempts nobody waits behind the job
        return 0.01

    try:
        with pytest.raises(psycopg2.errors.LockNotAvailable) as caught:
            partitions.ensure_ahead(conn, today=today, days_ahead=20, lock_timeout_ms=50,
                                    attempts=4, wait_s=wait_s)
        assert classify(caught.value) == "busy" and waits == [1, 2, 3]
    finally:
        export.rollback()
        export.close()
    # Once the export ends: days 8 to 20 ahead (the template has up to 7), both tables.
    assert partitions.ensure_ahead(conn, today=today, days_ahead=20) == 2 * 13
    conn.close()
    reader.close()
