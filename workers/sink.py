"""The PostgreSQL side of persisting: one transaction per batch.

:meth:`EventSink.write` copies a batch's trades and quotes into
session-local staging tables (``COPY``, the fastest way in), then moves
them into ``trades`` and ``quotes`` with ``INSERT ... ON CONFLICT DO
NOTHING`` and folds exactly the trades that were new into ``bars_1m``, all
in one transaction. So:

* writing the same rows again (a redelivery, a retried batch, two workers
  racing for the same entry) adds no row and does not count a trade twice
  in its bar, and changes no bar;
* either the rows and their bars are committed together, or none is;
* the write reports the bars it changed, each in its new state (the
  upsert's ``RETURNING``), for the bars stream.

Errors are sorted in :func:`classify`: connection-level ones are worth a
retry after reconnecting; a data error names a row that can never be written
(the caller splits the batch to find it); anything else is a bug or a missing
migration, which the caller also retries, loudly, rather than dropping rows.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Literal

import psycopg2
import psycopg2.extensions
from psycopg2.extras import execute_values

from pricepipe.connections import pg_connect

from .bars import (
    BAR_COLUMNS,
    BAR_STATE_COLUMNS_SQL,
    BARS_SELECT_SQL,
    BINNED_TO_BARS_CTES,
    BarStateRow,
    bar_rows,
    bar_state,
)
from .batch import (
    COPY_OPTIONS_SQL,
    QuoteRow,
    TradeRow,
    days_of,
    quote_copy_text,
    trade_copy_text,
)
from .partitions import LOCK_TIMEOUT_MS, create_partitions

log = logging.getLogger(__name__)

EPOCH_DAY = date(1970, 1, 1)

STAGE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS trade_stage (
    symbol      text             NOT NULL,
    ts_us       bigint           NOT NULL,
    price       double precision NOT NULL,
    size        double precision,
    side        text,            -- the wire's code: b, s or NULL
    trade_id    text,
    source      text             NOT NULL,
    recv_ts_us  bigint,
    entry_id    bigint           NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS quote_stage (
    symbol      text             NOT NULL,
    ts_us       bigint           NOT NULL,
    bid         double precision,
    bid_size    double precision,
    ask         double precision,
    ask_size    double precision,
    source      text             NOT NULL,
    recv_ts_us  bigint,
    entry_id    bigint           NOT NULL
) ON COMMIT DELETE ROWS
"""

TRADE_COPY_SQL = ("COPY trade_stage (symbol, ts_us, price, size, side, trade_id, source,"
                  " recv_ts_us, entry_id) FROM STDIN " + COPY_OPTIONS_SQL)
QUOTE_COPY_SQL = ("COPY quote_stage (symbol, ts_us, bid, bid_size, ask, ask_size, source,"
                  " recv_ts_us, entry_id) FROM STDIN " + COPY_OPTIONS_SQL)

# Microseconds become timestamptz in the server (no per-row datetime objects
# in Python), and the wire's side codes their names (the COPY lines are most
# often the entries' own bytes).
TRADES_FROM_STAGE_SQL = """
INSERT INTO trades (symbol, ts, price, size, side, trade_id, source, recv_ts, entry_id)
SELECT symbol,
       timestamptz 'epoch' + ts_us * interval '1 microsecond',
       price, size, CASE side WHEN 'b' THEN 'buy' WHEN 's' THEN 'sell' END,
       trade_id, source,
       timestamptz 'epoch' + recv_ts_us * interval '1 microsecond',
       entry_id
FROM trade_stage
"""

QUOTES_FROM_STAGE_SQL = """
INSERT INTO quotes (symbol, ts, bid, bid_size, ask, ask_size, source, recv_ts, entry_id)
SELECT symbol,
       timestamptz 'epoch' + ts_us * interval '1 microsecond',
       bid, bid_size, ask, ask_size, source,
       timestamptz 'epoch' + recv_ts_us * interval '1 microsecond',
       entry_id
FROM quote_stage
"""

# How a bar computed from new trades merges into the stored one: open/close
# by the order key (ts, entry_id), so a late trade moves them only if it
# really is earlier/later; high/low widen; volume, notional and count add up.
# RETURNING gives the bar's whole new state, which goes to the bars stream.
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
        notional = b.notional + EXCLUDED.notional,
        trade_count = b.trade_count + EXCLUDED.trade_count
    RETURNING""" + BAR_STATE_COLUMNS_SQL

# The idempotent path: only the trades that were new (RETURNING of the
# insert) are folded into their bars, in the same statement. date_bin
# against the epoch is independent of the session's TimeZone, unlike
# date_trunc on a timestamptz. Bars are upserted in (symbol, bucket) order so
# concurrent workers lock bar rows in the same order. Each row returned is
# a changed bar, with the number of new trades beside it.
MOVE_TRADES_SQL = """
WITH ins AS (""" + TRADES_FROM_STAGE_SQL + """
    ON CONFLICT DO NOTHING
    RETURNING symbol, ts, price, size, entry_id
), binned AS (
    SELECT symbol, date_bin(interval '1 minute', ts, timestamptz 'epoch') AS bucket,
           ts, entry_id, price, size
    FROM ins
),""" + BINNED_TO_BARS_CTES + """, bars AS (
    INSERT INTO bars_1m AS b (""" + BAR_COLUMNS + """)
""" + BARS_SELECT_SQL + """
    ORDER BY a.symbol, a.bucket
""" + BAR_CONFLICT_SQL + """
)
SELECT bars.*, (SELECT count(*) FROM ins) FROM bars
"""

MOVE_QUOTES_SQL = QUOTES_FROM_STAGE_SQL + "ON CONFLICT DO NOTHING"

# First deliveries almost never collide with existing rows. For them the
# rows go in with a plain INSERT (ON CONFLICT's speculative insertion costs
# about as much as the insert itself) and their bars, all of new trades, are
# aggregated in Python (workers.bars.bar_rows) and upserted from VALUES,
# instead of being sorted twice in SQL. Should a duplicate turn up after all
# (a primary key, or a venue trade id already stored), the unique index
# fails the transaction, which is rolled back and run again the idempotent
# way. The result is the same either way; only the cost differs.
BARS_UPSERT_SQL = """
INSERT INTO bars_1m AS b (""" + BAR_COLUMNS + """)
VALUES %s
""" + BAR_CONFLICT_SQL

#: execute_values template of one workers.bars.BarRow (microseconds -> timestamptz).
BAR_TEMPLATE = (
    "(%s, timestamptz 'epoch' + %s * interval '1 microsecond', %s, %s, %s, %s, %s, %s, %s,"
    " timestamptz 'epoch' + %s * interval '1 microsecond', %s,"
    " timestamptz 'epoch' + %s * interval '1 microsecond', %s)"
)

#: The event tables, each partitioned by day (``ensure_partitions``).
TRADES = "trades"
QUOTES = "quotes"


@dataclass(slots=True)
class WriteResult:
    """What one committed write changed."""

    #: New rows (duplicates are not counted).
    trades: int = 0
    quotes: int = 0
    #: The bars the new trades changed, each in its new state, by (symbol, bucket).
    bars: list[BarStateRow] = field(default_factory=list)

    def add(self, other: WriteResult) -> None:
        self.trades += other.trades
        self.quotes += other.quotes
        self.bars.extend(other.bars)


ErrorKind = Literal["busy", "connection", "data", "other"]


def classify(exc: BaseException) -> ErrorKind:
    """Decide what a failed write means.

    * ``"busy"``: a lock was not granted within ``lock_timeout`` (a partition
      to create behind a long read): retry later, on the same connection.
    * ``"connection"``: the server went away, refused us, or rolled us back
      (deadlock, serialization, admin shutdown): reconnect and retry.
    * ``"data"``: PostgreSQL rejected a value (SQLSTATE classes 22 and 23):
      some row of the batch can never be written as is.
    * ``"other"``: a bug or a missing migration: retry with backoff, loudly.
    """
    if isinstance(exc, psycopg2.errors.LockNotAvailable):
        return "busy"
    if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError):
        return "connection"
    if isinstance(exc, psycopg2.DataError | psycopg2.IntegrityError):
        return "data"
    return "other"


def day_date(day: int) -> date:
    return EPOCH_DAY + timedelta(days=day)


class EventSink:
    """Writes batches of trades and quotes into ``trades``, ``quotes`` and
    ``bars_1m``.

    Owns one connection, (re)opened lazily: after a connection error the
    next :meth:`write` reconnects. Not thread-safe.
    """

    def __init__(self, database_url: str, *, application_name: str = "pricepipe-persist",
                 partition_lock_timeout_ms: int = LOCK_TIMEOUT_MS) -> None:
        self._url = database_url
        self._application_name = application_name
        self._partition_lock_timeout_ms = partition_lock_timeout_ms
        self._conn: psycopg2.extensions.connection | None = None
        #: (table, day) partitions known to exist.
        self._days: set[tuple[str, int]] = set()

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

    def ensure_days(self, needed: Iterable[tuple[str, int]]) -> None:
        """Create the daily partitions ``(table, day)`` this sink has not seen yet.

        Each day is created alone (not the range between the first and the
        last: one stray trade from 2090 must not create 60 years of tables),
        and committed alone, before the batch: creating a partition locks its
        parent table exclusively, and a transaction holding the locks of both
        tables at once could deadlock with a reader of both (an API query);
        the batch transaction itself never holds such a lock.

        The lock is waited for ``partition_lock_timeout_ms`` at most (see
        :func:`.partitions.create_partitions`): behind a long read it raises
        ``psycopg2.errors.LockNotAvailable`` (:func:`classify`: ``"busy"``)
        rather than queue every other reader behind it; the caller retries.
        """
        for key in sorted(set(needed) - self._days):
            table, day = key
            d = day_date(day)
            for attempt in range(3):
                conn = self.connect()
                try:
                    with conn.cursor() as cur:
                        create_partitions(cur, table, d, d,
                                          lock_timeout_ms=self._partition_lock_timeout_ms)
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
            self._days.add(key)

    def write(self, trades: Sequence[TradeRow] = (), quotes: Sequence[QuoteRow] = (), *,
              fresh: bool = False, trade_lines: Sequence[bytes] | None = None,
              quote_lines: Sequence[bytes] | None = None) -> WriteResult:
        """Persist ``trades`` and ``quotes`` in one transaction.

        Idempotent: rows already stored (same symbol, ts, entry_id; for
        trades also the same venue trade id at the same time) are skipped
        and not counted into their bars again. ``fresh=True`` says the rows
        are probably all new (first deliveries), which picks a cheaper plan
        with a fallback (see :data:`BARS_UPSERT_SQL`); the outcome is the
        same. ``trade_lines`` and ``quote_lines``, when given, are the rows'
        COPY lines (:attr:`.batch.Batch.trade_lines`), one per row, same
        order; else they are made from the rows. Returns the new rows per
        table and the bars changed. Raises ``psycopg2.Error`` (see
        :func:`classify`); then nothing of the batch was committed.
        """
        if not trades and not quotes:
            return WriteResult()
        needed = {(TRADES, d) for d in days_of(trades)} | {(QUOTES, d) for d in days_of(quotes)}
        self.ensure_days(needed)
        if trade_lines is not None and len(trade_lines) != len(trades):
            raise ValueError(f"{len(trade_lines)} trade lines for {len(trades)} rows")
        if quote_lines is not None and len(quote_lines) != len(quotes):
            raise ValueError(f"{len(quote_lines)} quote lines for {len(quotes)} rows")
        trade_text = (b"" if not trades else trade_copy_text(trades) if trade_lines is None
                      else b"".join(trade_lines))
        quote_text = (b"" if not quotes else quote_copy_text(quotes) if quote_lines is None
                      else b"".join(quote_lines))
        try:
            return self._write_text(trade_text, quote_text, trades, fresh=fresh)
        except psycopg2.errors.CheckViolation:
            # "no partition of relation ... found for row": a partition we
            # had cached was dropped meanwhile (retention). Forget and retry
            # once (a row a CHECK constraint refuses fails again: a data error).
            self._days.clear()
            self.ensure_days(needed)
            return self._write_text(trade_text, quote_text, trades, fresh=fresh)

    def _write_text(self, trade_text: bytes, quote_text: bytes, trades: Sequence[TradeRow], *,
                    fresh: bool) -> WriteResult:
        if fresh:
            try:
                return self._write_fresh(trade_text, quote_text, trades)
            except psycopg2.errors.UniqueViolation:
                log.debug("batch holds rows already written: inserting with ON CONFLICT")
        return self._write_idempotent(trade_text, quote_text)

    def _copy(self, cur: Any, trade_text: bytes, quote_text: bytes) -> None:
        if trade_text:
            cur.copy_expert(TRADE_COPY_SQL, io.BytesIO(trade_text))
        if quote_text:
            cur.copy_expert(QUOTE_COPY_SQL, io.BytesIO(quote_text))

    def _write_fresh(self, trade_text: bytes, quote_text: bytes, trades: Sequence[TradeRow]
                     ) -> WriteResult:
        conn = self.connect()
        result = WriteResult()
        try:
            with conn.cursor() as cur:
                self._copy(cur, trade_text, quote_text)
                if trade_text:
                    cur.execute(TRADES_FROM_STAGE_SQL)
                    result.trades = int(cur.rowcount)
                    bars = bar_rows(trades)
                    result.bars = [bar_state(row) for row in execute_values(
                        cur, BARS_UPSERT_SQL, bars, template=BAR_TEMPLATE,
                        page_size=max(len(bars), 1), fetch=True)]
                if quote_text:
                    cur.execute(QUOTES_FROM_STAGE_SQL)
                    result.quotes = int(cur.rowcount)
            conn.commit()
        except BaseException:
            self._rollback_quietly()
            raise
        return result

    def _write_idempotent(self, trade_text: bytes, quote_text: bytes) -> WriteResult:
        conn = self.connect()
        result = WriteResult()
        try:
            with conn.cursor() as cur:
                self._copy(cur, trade_text, quote_text)
                if trade_text:
                    cur.execute(MOVE_TRADES_SQL)
                    for row in cur.fetchall():
                        result.trades = int(row[-1])
                        result.bars.append(bar_state(row))
                if quote_text:
                    cur.execute(MOVE_QUOTES_SQL)
                    result.quotes = int(cur.rowcount)
            conn.commit()
        except BaseException:
            self._rollback_quietly()
            raise
        return result

    def _rollback_quietly(self) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            self._conn = None
            return
        try:
            conn.rollback()
        except psycopg2.Error:
            self.reset()

    def __enter__(self) -> EventSink:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
