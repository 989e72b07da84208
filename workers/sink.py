"""The PostgreSQL side of persisting: one transaction per batch.

:meth:`TickSink.write` copies the rows into a session-local staging table
(``COPY``, the fastest way in), then moves them into ``ticks`` with
``INSERT ... ON CONFLICT DO NOTHING`` and folds exactly the rows that were
new into ``bars_1m``, all in one statement and one transaction. So:

* writing the same rows again (a redelivery, a retried batch, two workers
  racing for the same entry) adds no row and does not count a tick twice in
  its bar;
* either the rows and their bars are committed together, or neither is.

Errors are sorted in :func:`classify`: connection-level ones are worth a
retry after reconnecting; a data error names a row that can never be written
(the caller splits the batch to find it); anything else is a bug or a missing
migration, which the caller also retries, loudly, rather than dropping rows.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any, Literal

import psycopg2
import psycopg2.extensions
from psycopg2.extras import execute_values

from pricepipe.connections import pg_connect

from .bars import BARS_SELECT_SQL, BINNED_TO_BARS_CTES, bar_rows
from .batch import TickRow, copy_text, days_of

log = logging.getLogger(__name__)

EPOCH_DAY = date(1970, 1, 1)

STAGE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS tick_stage (
    symbol      text             NOT NULL,
    ts_us       bigint           NOT NULL,
    price       double precision NOT NULL,
    size        double precision,
    source      text             NOT NULL,
    recv_ts_us  bigint,
    entry_id    bigint           NOT NULL
) ON COMMIT DELETE ROWS
"""

COPY_SQL = "COPY tick_stage (symbol, ts_us, price, size, source, recv_ts_us, entry_id) FROM STDIN"

# How a bar computed from new rows merges into the stored one: open/close by
# the order key (ts, entry_id), so a late tick moves them only if it really
# is earlier/later; high/low widen; volume and count add up.
BAR_CONFLICT_SQL = """
    ON CONFLICT (symbol, bucket) DO UPDATE SET
        open = CASE WHEN (EXCLUDED.open_ts, EXCLUDED.open_entry) < (b.open_ts, b.open_entry)
                    THEN EXCLUDED.open ELSE b.open END,
        open_ts = CASE WHEN (EXCLUDED.open_ts, EXCLUDED.open_entry) < (b.open_ts, b.open_entry)
                       THEN EXCLUDED.open_ts ELSE b.open_ts END,
        open_entry = CASE WHEN (EXCLUDED.open_ts, EXCLUDED.open_entry)
                               < (b.open_ts, b.open_entry)
                          THEN EXCLUDED.open_entry ELSE b.open_entry END,
        close = CASE WHEN (EXCLUDED.close_ts, EXCLUDED.close_entry)
                          > (b.close_ts, b.close_entry)
                     THEN EXCLUDED.close ELSE b.close END,
        close_ts = CASE WHEN (EXCLUDED.close_ts, EXCLUDED.close_entry)
                             > (b.close_ts, b.close_entry)
                        THEN EXCLUDED.close_ts ELSE b.close_ts END,
        close_entry = CASE WHEN (EXCLUDED.close_ts, EXCLUDED.close_entry)
                                > (b.close_ts, b.close_entry)
                           THEN EXCLUDED.close_entry ELSE b.close_entry END,
        high = greatest(b.high, EXCLUDED.high),
        low = least(b.low, EXCLUDED.low),
        volume = b.volume + EXCLUDED.volume,
        tick_count = b.tick_count + EXCLUDED.tick_count
"""

# Microseconds become timestamptz in the server (no per-row datetime objects
# in Python). date_bin against the epoch is independent of the session's
# TimeZone, unlike date_trunc on a timestamptz. Bars are upserted in (symbol,
# bucket) order so concurrent workers lock bar rows in the same order.
MOVE_SQL = """
WITH ins AS (
    INSERT INTO ticks (symbol, ts, price, size, source, recv_ts, entry_id)
    SELECT symbol,
           timestamptz 'epoch' + ts_us * interval '1 microsecond',
           price, size, source,
           timestamptz 'epoch' + recv_ts_us * interval '1 microsecond',
           entry_id
    FROM tick_stage
    ON CONFLICT DO NOTHING
    RETURNING symbol, ts, price, size, entry_id
), binned AS (
    SELECT symbol, date_bin(interval '1 minute', ts, timestamptz 'epoch') AS bucket,
           ts, entry_id, price, size
    FROM ins
),""" + BINNED_TO_BARS_CTES + """, bars AS (
    INSERT INTO bars_1m AS b (symbol, bucket, open, high, low, close, volume, tick_count,
                             open_ts, open_entry, close_ts, close_entry)
""" + BARS_SELECT_SQL + """
    ORDER BY a.symbol, a.bucket
""" + BAR_CONFLICT_SQL + """)
SELECT count(*) FROM ins
"""

# First deliveries almost never collide with existing rows. For them the
# rows go in with a plain INSERT (ON CONFLICT's speculative insertion costs
# about as much as the insert itself) and their bars, all new rows, are
# aggregated in Python (workers.bars.bar_rows) and upserted from VALUES,
# instead of being sorted twice in SQL. Should a duplicate turn up after all,
# the primary key fails the transaction, which is rolled back and run again
# as MOVE_SQL. The result is the same either way; only the cost differs.
FRESH_INSERT_SQL = """
INSERT INTO ticks (symbol, ts, price, size, source, recv_ts, entry_id)
SELECT symbol,
       timestamptz 'epoch' + ts_us * interval '1 microsecond',
       price, size, source,
       timestamptz 'epoch' + recv_ts_us * interval '1 microsecond',
       entry_id
FROM tick_stage
"""

BARS_UPSERT_SQL = """
INSERT INTO bars_1m AS b (symbol, bucket, open, high, low, close, volume, tick_count,
                         open_ts, open_entry, close_ts, close_entry)
VALUES %s
""" + BAR_CONFLICT_SQL

#: execute_values template of one workers.bars.BarRow (microseconds -> timestamptz).
BAR_TEMPLATE = (
    "(%s, timestamptz 'epoch' + %s * interval '1 microsecond', %s, %s, %s, %s, %s, %s,"
    " timestamptz 'epoch' + %s * interval '1 microsecond', %s,"
    " timestamptz 'epoch' + %s * interval '1 microsecond', %s)"
)

ErrorKind = Literal["connection", "data", "other"]


def classify(exc: BaseException) -> ErrorKind:
    """Decide what a failed write means.

    * ``"connection"``: the server went away, refused us, or rolled us back
      (deadlock, serialization, admin shutdown): reconnect and retry.
    * ``"data"``: PostgreSQL rejected a value (SQLSTATE classes 22 and 23):
      some row of the batch can never be written as is.
    * ``"other"``: a bug or a missing migration: retry with backoff, loudly.
    """
    if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError):
        return "connection"
    if isinstance(exc, psycopg2.DataError | psycopg2.IntegrityError):
        return "data"
    return "other"


def day_date(day: int) -> date:
    return EPOCH_DAY + timedelta(days=day)


class TickSink:
    """Writes batches of rows into ``ticks`` and ``bars_1m``.

    Owns one connection, (re)opened lazily: after a connection error the
    next :meth:`write` reconnects. Not thread-safe.
    """

    def __init__(self, database_url: str, *, application_name: str = "pricepipe-persist") -> None:
        self._url = database_url
        self._application_name = application_name
        self._conn: psycopg2.extensions.connection | None = None
        self._days: set[int] = set()

    # Connection

    def connect(self) -> psycopg2.extensions.connection:
        """The open connection, opening one if needed. Raises ``psycopg2.Error``."""
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        conn = pg_connect(self._url, application_name=self._application_name)
        try:
            with conn.cursor() as cur:
                cur.execute(STAGE_DDL)
            conn.commit()
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def reset(self) -> None:
        """Drop the connection (after a connection error) and forget cached partitions
        (a retention job may have dropped some meanwhile)."""
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
        self._conn = None
        self._days.clear()

    # Writing

    def ensure_days(self, days: set[int]) -> None:
        """Create the daily partitions of ``days`` that this sink has not seen yet.

        Each day is created alone (not the range between the first and the
        last: one stray tick from 2090 must not create 60 years of tables).
        Committed on its own, before the batch, so the batch transaction never
        holds the parent-table lock that creating a partition needs.
        """
        missing = sorted(days - self._days)
        if not missing:
            return
        for attempt in range(3):
            conn = self.connect()
            try:
                with conn.cursor() as cur:
                    for day in missing:
                        d = day_date(day)
                        cur.execute("SELECT ensure_tick_partitions(%s, %s)", (d, d))
                conn.commit()
                break
            except (psycopg2.errors.DuplicateTable, psycopg2.errors.UniqueViolation):
                # Another worker created the same partition between the
                # function's check and its CREATE: it exists now, look again.
                self._rollback_quietly()
                if attempt == 2:
                    raise
            except BaseException:
                self._rollback_quietly()
                raise
        self._days.update(missing)

    def write(self, rows: Sequence[TickRow], *, fresh: bool = False) -> int:
        """Persist ``rows`` in one transaction; returns how many were new.

        Idempotent: rows already in ``ticks`` (same symbol, ts, entry_id) are
        skipped and not counted into their bars again. ``fresh=True`` says the
        rows are probably all new (first deliveries), which picks a cheaper
        plan with a fallback (see :data:`FRESH_INSERT_SQL`); the outcome is the
        same. Raises ``psycopg2.Error`` (see :func:`classify`); then nothing
        of the batch was committed.
        """
        if not rows:
            return 0
        self.ensure_days(days_of(rows))
        text = copy_text(rows)
        try:
            return self._write_text(text, rows, fresh=fresh)
        except psycopg2.errors.CheckViolation:
            # "no partition of relation ticks found for row": a partition we
            # had cached was dropped meanwhile (retention). Forget and retry once.
            self._days.clear()
            self.ensure_days(days_of(rows))
            return self._write_text(text, rows, fresh=fresh)

    def _write_text(self, text: str, rows: Sequence[TickRow], *, fresh: bool) -> int:
        if fresh:
            try:
                return self._write_fresh(text, rows)
            except psycopg2.errors.UniqueViolation:
                log.debug("batch holds rows already written: inserting with ON CONFLICT")
        return self._write_idempotent(text)

    def _write_fresh(self, text: str, rows: Sequence[TickRow]) -> int:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.copy_expert(COPY_SQL, io.StringIO(text))
                cur.execute(FRESH_INSERT_SQL)
                inserted = cur.rowcount
                bars = bar_rows(rows)
                execute_values(cur, BARS_UPSERT_SQL, bars, template=BAR_TEMPLATE,
                               page_size=max(len(bars), 1))
            conn.commit()
        except BaseException:
            self._rollback_quietly()
            raise
        return int(inserted)

    def _write_idempotent(self, text: str) -> int:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.copy_expert(COPY_SQL, io.StringIO(text))
                cur.execute(MOVE_SQL)
                row = cur.fetchone()
            conn.commit()
        except BaseException:
            self._rollback_quietly()
            raise
        return int(row[0]) if row else 0

    def _rollback_quietly(self) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            self._conn = None
            return
        try:
            conn.rollback()
        except psycopg2.Error:
            self.reset()

    def __enter__(self) -> TickSink:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
