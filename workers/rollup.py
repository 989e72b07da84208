"""Bars in PostgreSQL recomputed from the raw trades: verify and rebuild a range.

The persist workers keep ``bars_1m`` up to date incrementally; these are the
safety net (an rq job verifies recent minutes on a schedule and repairs any
difference, e.g. after rows were deleted or loaded by hand). Quotes never
make a bar. A rebuild changes PostgreSQL only: the bars stream shows the
repaired bar with the next trade of its minute, if any.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pricepipe.clock import us_to_datetime

from .bars import BAR_COLUMNS, BARS_SELECT_SQL, BINNED_TO_BARS_CTES, US_PER_MINUTE

# Bars as they should be, from trades in [start, end) (minute-aligned bounds),
# optionally of one symbol. Same ordering rules as the incremental upsert.
EXPECTED_SQL = """
    WITH binned AS (
        SELECT symbol, date_bin(interval '1 minute', ts, timestamptz 'epoch') AS bucket,
               ts, entry_id, price, size
        FROM trades
        WHERE ts >= %(start)s AND ts < %(end)s
          AND (%(symbol)s::text IS NULL OR symbol = %(symbol)s::text)
    ),""" + BINNED_TO_BARS_CTES + BARS_SELECT_SQL

# Composed from constants only (no values): parameters are bound by psycopg2.
VERIFY_SQL = """
    WITH expected AS (""" + EXPECTED_SQL + """),
    actual AS (
        SELECT * FROM bars_1m
        WHERE bucket >= %(start)s AND bucket < %(end)s
          AND (%(symbol)s::text IS NULL OR symbol = %(symbol)s::text)
    )
    SELECT coalesce(e.symbol, a.symbol), coalesce(e.bucket, a.bucket),
           e.trade_count, a.trade_count
    FROM expected e FULL JOIN actual a ON a.symbol = e.symbol AND a.bucket = e.bucket
    WHERE e.symbol IS NULL OR a.symbol IS NULL
       OR (e.open, e.high, e.low, e.close, e.trade_count, e.open_ts, e.open_entry,
           e.close_ts, e.close_entry)
          IS DISTINCT FROM
          (a.open, a.high, a.low, a.close, a.trade_count, a.open_ts, a.open_entry,
           a.close_ts, a.close_entry)
       -- volume and notional are float sums: added batch by batch they may
       -- differ in the last bits
       OR abs(e.volume - a.volume) > 1e-9 * greatest(abs(e.volume), abs(a.volume), 1)
       OR abs(e.notional - a.notional) > 1e-9 * greatest(abs(e.notional), abs(a.notional), 1)
    ORDER BY 1, 2
"""

REBUILD_SQL = """
    INSERT INTO bars_1m (""" + BAR_COLUMNS + """)
""" + EXPECTED_SQL + """
    ORDER BY 1, 2
"""

DELETE_SQL = """
    DELETE FROM bars_1m
    WHERE bucket >= %(start)s AND bucket < %(end)s
      AND (%(symbol)s::text IS NULL OR symbol = %(symbol)s::text)
"""


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A bar that differs from its recomputation (``None`` count: bar missing,
    or no trades left for it)."""

    symbol: str
    bucket: Any
    expected_trades: int | None
    actual_trades: int | None


def minute_range(start_us: int, end_us: int) -> dict[str, Any]:
    """Query parameters covering whole minutes: start floored, end ceiled."""
    start = start_us - start_us % US_PER_MINUTE
    end = end_us + (-end_us) % US_PER_MINUTE
    return {"start": us_to_datetime(start), "end": us_to_datetime(end)}


def verify(conn: Any, start_us: int, end_us: int, symbol: str | None = None) -> list[Mismatch]:
    """Bars of the range that differ from the trades (empty: all consistent)."""
    params = {**minute_range(start_us, end_us), "symbol": symbol}
    with conn.cursor() as cur:
        cur.execute(VERIFY_SQL, params)
        rows = cur.fetchall()
    conn.commit()
    return [Mismatch(*row) for row in rows]


def rebuild(conn: Any, start_us: int, end_us: int, symbol: str | None = None) -> int:
    """Replace the bars of the range by their recomputation; returns bars written.

    Takes ``SHARE ROW EXCLUSIVE`` on ``bars_1m`` for the transaction: a persist
    worker's bar upsert waits until the rebuild commits and then adds its
    trades on top, and a worker that upserted before holds a lock the rebuild
    waits for, so its trades are in the rebuild's snapshot. No trade is
    counted twice or missed either way.
    """
    params = {**minute_range(start_us, end_us), "symbol": symbol}
    autocommit = conn.autocommit
    conn.autocommit = False  # the lock, the delete and the insert are one transaction
    try:
        with conn.cursor() as cur:
            cur.execute("LOCK TABLE bars_1m IN SHARE ROW EXCLUSIVE MODE")
            cur.execute(DELETE_SQL, params)
            cur.execute(REBUILD_SQL, params)
            written = cur.rowcount
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.autocommit = autocommit
    return int(written)
