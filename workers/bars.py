"""One-minute OHLCV bars from ticks. Pure: no I/O.

A bar's open and close are the prices of its earliest and latest tick by the
order key ``(ts_us, entry_id)`` - the same order the database uses - so a late
tick (an earlier event time arriving after later ones) replaces the open only
when it really is earlier. :func:`merge` combines two partial bars of the
same minute exactly like the upsert in :mod:`pricepipe.workers.sink`, which is what
makes the incremental bars equal to bars recomputed from scratch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .batch import TickRow

US_PER_MINUTE = 60_000_000


def bucket_of(ts_us: int) -> int:
    """Start of the UTC minute holding ``ts_us`` (floor, also before 1970)."""
    return ts_us - ts_us % US_PER_MINUTE


# The bar rule in SQL, the same as :func:`bar_rows` in Python: from a CTE
# named ``binned`` (symbol, bucket, ts, entry_id, price, size), open and close
# are the first and last tick by the order key (ts, entry_id). Composed into
# queries from constants only; values are always bound parameters.
BINNED_TO_BARS_CTES = """
    agg AS (
        SELECT symbol, bucket, max(price) AS high, min(price) AS low,
               coalesce(sum(size), 0) AS volume, count(*) AS tick_count
        FROM binned GROUP BY symbol, bucket
    ), firsts AS (
        SELECT DISTINCT ON (symbol, bucket) symbol, bucket, price, ts, entry_id
        FROM binned ORDER BY symbol, bucket, ts, entry_id
    ), lasts AS (
        SELECT DISTINCT ON (symbol, bucket) symbol, bucket, price, ts, entry_id
        FROM binned ORDER BY symbol, bucket, ts DESC, entry_id DESC
    )"""

#: Columns in ``bars_1m`` order, from the CTEs above.
BARS_SELECT_SQL = """
    SELECT a.symbol, a.bucket, f.price AS open, a.high, a.low, l.price AS close, a.volume,
           a.tick_count, f.ts AS open_ts, f.entry_id AS open_entry, l.ts AS close_ts,
           l.entry_id AS close_entry
    FROM agg a
    JOIN firsts f ON f.symbol = a.symbol AND f.bucket = a.bucket
    JOIN lasts l ON l.symbol = a.symbol AND l.bucket = a.bucket
"""

@dataclass(frozen=True, slots=True)
class Bar:
    symbol: str
    bucket_us: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    tick_count: int
    open_key: tuple[int, int]  # (ts_us, entry_id) of the opening tick
    close_key: tuple[int, int]  # (ts_us, entry_id) of the closing tick


def merge(a: Bar, b: Bar) -> Bar:
    """Two partial bars of the same symbol and minute as one."""
    first = a if a.open_key <= b.open_key else b
    last = a if a.close_key >= b.close_key else b
    return Bar(a.symbol, a.bucket_us, first.open, max(a.high, b.high), min(a.low, b.low),
               last.close, a.volume + b.volume, a.tick_count + b.tick_count,
               first.open_key, last.close_key)


def aggregate(rows: Iterable[TickRow]) -> dict[tuple[str, int], Bar]:
    """Bars of ``rows`` keyed by ``(symbol, bucket_us)``. Rows are assumed
    distinct (as the ``ticks`` table guarantees); a missing size counts as 0."""
    bars: dict[tuple[str, int], Bar] = {}
    for symbol, ts_us, price, size, _source, _recv, entry_id in rows:
        key = (symbol, bucket_of(ts_us))
        order = (ts_us, entry_id)
        bar = Bar(symbol, key[1], price, price, price, price, size or 0.0, 1, order, order)
        old = bars.get(key)
        bars[key] = bar if old is None else merge(old, bar)
    return bars


#: ``(symbol, bucket_us, open, high, low, close, volume, tick_count,
#: open_ts_us, open_entry, close_ts_us, close_entry)``: a bar as a row for SQL.
BarRow = tuple[str, int, float, float, float, float, float, int, int, int, int, int]


def bar_rows(rows: Iterable[TickRow]) -> list[BarRow]:
    """The bars of ``rows`` as SQL rows, sorted by (symbol, bucket).

    Same result as :func:`aggregate` (the tests hold them equal), written for
    the persist hot path: one dict lookup and a few comparisons per tick, no
    object per tick.
    """
    acc: dict[tuple[str, int], list[Any]] = {}
    get = acc.get
    for symbol, ts_us, price, size, _source, _recv, entry_id in rows:
        key = (symbol, ts_us - ts_us % US_PER_MINUTE)
        a = get(key)
        if a is None:
            # [open, high, low, close, volume, count, open_ts, open_entry, close_ts, close_entry]
            acc[key] = [price, price, price, price, size or 0.0, 1, ts_us, entry_id, ts_us,
                        entry_id]
            continue
        if price > a[1]:
            a[1] = price
        if price < a[2]:
            a[2] = price
        if size:
            a[4] += size
        a[5] += 1
        if ts_us < a[6] or (ts_us == a[6] and entry_id < a[7]):
            a[0], a[6], a[7] = price, ts_us, entry_id
        if ts_us > a[8] or (ts_us == a[8] and entry_id > a[9]):
            a[3], a[8], a[9] = price, ts_us, entry_id
    return [(symbol, bucket, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9])
            for (symbol, bucket), a in sorted(acc.items())]
