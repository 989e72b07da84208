"""How history is read back from PostgreSQL, where more than one role reads
it: the bar widths served, exact epoch microseconds, and the rule that
makes bars of any width from the stored one-minute rollups and raw trades.

The HTTP API (``/v1/bars``) and the client library's DataFrames
(:mod:`pricepipe.subscriber.client.frames`) both wrap :func:`bars_query`,
so the two can never disagree on a bar. SQL text only: the values are
bound by the caller (``%(name)s`` parameters).
"""

from __future__ import annotations

from pricepipe.events import US_PER_MINUTE

#: Bar widths served, in microseconds; buckets are aligned to the Unix
#: epoch in UTC (a 1d bar runs from midnight UTC to midnight UTC).
INTERVALS_US: dict[str, int] = {
    "1m": US_PER_MINUTE,
    "5m": 5 * US_PER_MINUTE,
    "15m": 15 * US_PER_MINUTE,
    "1h": 60 * US_PER_MINUTE,
    "1d": 1440 * US_PER_MINUTE,
}

#: ``to_char`` pattern of :func:`pricepipe.clock.format_us`.
ISO_PATTERN = """'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"""


def epoch_us(column: str) -> str:
    """Epoch microseconds of a timestamptz column, exact, in float8.

    ``date_part('epoch', ts)`` is ``(µs since 2000 - offset) / 1e6`` in float8:
    one rounding of at most half an ulp, 2.4e-7 s below 2^32 s (year 2106).
    Times 1e6 adds at most half an ulp of the product, 0.25 µs; the sum stays
    under 0.5 µs, so ``round`` recovers the exact integer for every time an
    event may carry (before 2100). Twice as fast as ``extract(epoch ...)``,
    which is ``numeric`` since PostgreSQL 14.
    """
    return f"round(date_part('epoch', {column}) * 1000000)::bigint"


# One-minute bars: the stored rollups where the persist workers wrote them,
# computed from raw trades before the first and after the last stored minute
# of the range (data persisted before rollups existed, or not yet rolled up).
# Inside that span a minute without a stored bar had no trades: the workers
# write a trade and its bar in one transaction. The trade ranges are scalar
# subqueries so PostgreSQL prunes partitions and uses the primary key.
# volume and notional count only trades with a size.
_MINUTES = """
    WITH stored AS (
        SELECT bucket, open, high, low, close, volume, notional, trade_count,
               open_ts, open_entry, close_ts, close_entry
          FROM bars_1m
         WHERE symbol = %(symbol)s AND bucket >= %(start)s AND bucket < %(end)s
    ), covered AS (
        SELECT coalesce(min(bucket), %(end)s) AS first_bucket,
               coalesce(max(bucket) + interval '1 minute', %(end)s) AS after_bucket
          FROM stored
    ), raw AS (
        SELECT ts, entry_id, price, size FROM trades
         WHERE symbol = %(symbol)s AND ts >= %(start)s
           AND ts < (SELECT first_bucket FROM covered)
        UNION ALL
        SELECT ts, entry_id, price, size FROM trades
         WHERE symbol = %(symbol)s AND ts >= (SELECT after_bucket FROM covered)
           AND ts < %(end)s
    ), computed AS (
        SELECT date_trunc('minute', ts) AS bucket,
               (array_agg(price ORDER BY ts, entry_id))[1] AS open,
               max(price) AS high, min(price) AS low,
               (array_agg(price ORDER BY ts DESC, entry_id DESC))[1] AS close,
               coalesce(sum(size), 0) AS volume, coalesce(sum(price * size), 0) AS notional,
               count(*) AS trade_count,
               min(ts) AS open_ts, (array_agg(entry_id ORDER BY ts, entry_id))[1] AS open_entry,
               max(ts) AS close_ts,
               (array_agg(entry_id ORDER BY ts DESC, entry_id DESC))[1] AS close_entry
          FROM raw GROUP BY 1
    ), minutes AS (
        SELECT * FROM stored UNION ALL SELECT * FROM computed
    )
"""

# Wider bars regroup the minutes: open of the earliest, close of the latest.
_REGROUP = """
    SELECT date_bin(%(width)s, bucket, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS bucket,
           (array_agg(open ORDER BY open_ts, open_entry))[1] AS open,
           max(high) AS high, min(low) AS low,
           (array_agg(close ORDER BY close_ts DESC, close_entry DESC))[1] AS close,
           sum(volume) AS volume, sum(notional) AS notional,
           sum(trade_count)::bigint AS trade_count
      FROM minutes GROUP BY 1
"""

_AS_IS = """
    SELECT bucket, open, high, low, close, volume, notional, trade_count FROM minutes
"""


def bars_query(width_us: int) -> str:
    """A query of ``symbol``'s bars of ``width_us`` with ``start <= bucket <
    end`` (parameters ``symbol``, ``start``, ``end``, whole minutes, and
    ``width``, an interval, for wider bars): columns ``bucket, open, high,
    low, close, volume, notional, trade_count``, unordered. ``vwap`` is
    ``notional / volume`` where volume > 0. Wrap it to order and format."""
    return _MINUTES + (_AS_IS if width_us == US_PER_MINUTE else _REGROUP)
