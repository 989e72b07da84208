"""One-minute bars from trades. Pure: no I/O.

A bar's open and close are the prices of its earliest and latest trade by
the order key ``(ts_us, entry_id)`` - the same order the database uses - so
a late trade (an earlier event time arriving after later ones) replaces the
open only when it really is earlier. ``volume`` is the sum of the trades'
sizes, ``notional`` the sum of ``price * size`` (VWAP = notional / volume),
``trades`` the count; a trade without a size counts in the prices and the
count but not in volume or notional. Quotes never make a bar.

:func:`merge` combines two partial bars of the same minute exactly like the
upsert in :mod:`pricepipe.workers.sink`, which is what makes the
incremental bars equal to bars recomputed from scratch (the SQL of the same
rule is :data:`BINNED_TO_BARS_CTES`; the tests hold the two equal).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pricepipe.events import US_PER_MINUTE, Bar, BarState, bucket_of

from .batch import TradeRow

__all__ = ["US_PER_MINUTE", "bucket_of"]

# The bar rule in SQL, the same as :func:`bar_rows` in Python: from a CTE
# named ``binned`` (symbol, bucket, ts, entry_id, price, size), open and close
# are the first and last trade by the order key (ts, entry_id). Composed into
# queries from constants only; values are always bound parameters.
BINNED_TO_BARS_CTES = """
    agg AS (
        SELECT symbol, bucket, max(price) AS high, min(price) AS low,
               coalesce(sum(size), 0) AS volume, coalesce(sum(price * size), 0) AS notional,
               count(*) AS trade_count
        FROM binned GROUP BY symbol, bucket
    ), firsts AS (
        SELECT DISTINCT ON (symbol, bucket) symbol, bucket, price, ts, entry_id
        FROM binned ORDER BY symbol, bucket, ts, entry_id
    ), lasts AS (
        SELECT DISTINCT ON (symbol, bucket) symbol, bucket, price, ts, entry_id
        FROM binned ORDER BY symbol, bucket, ts DESC, entry_id DESC
    )"""

#: Columns in ``bars_1m`` order (:data:`BAR_COLUMNS`), from the CTEs above.
BARS_SELECT_SQL = """
    SELECT a.symbol, a.bucket, f.price AS open, a.high, a.low, l.price AS close, a.volume,
           a.notional, a.trade_count, f.ts AS open_ts, f.entry_id AS open_entry,
           l.ts AS close_ts, l.entry_id AS close_entry
    FROM agg a
    JOIN firsts f ON f.symbol = a.symbol AND f.bucket = a.bucket
    JOIN lasts l ON l.symbol = a.symbol AND l.bucket = a.bucket
"""

BAR_COLUMNS = ("symbol, bucket, open, high, low, close, volume, notional, trade_count, "
               "open_ts, open_entry, close_ts, close_entry")

#: A bar's published state as stored, in this column order (``bucket`` as
#: microseconds): what the upserts return and the bars stream is made of.
BAR_STATE_COLUMNS_SQL = """
    symbol, (extract(epoch FROM bucket) * 1000000)::bigint, open, high, low, close, volume,
    notional, trade_count"""


@dataclass(frozen=True, slots=True)
class PartialBar:
    """The bar of some of a minute's trades; :func:`merge` adds more."""

    symbol: str
    bucket_us: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    notional: float
    trades: int
    open_key: tuple[int, int]  # (ts_us, entry_id) of the opening trade
    close_key: tuple[int, int]  # (ts_us, entry_id) of the closing trade


def merge(a: PartialBar, b: PartialBar) -> PartialBar:
    """Two partial bars of the same symbol and minute as one."""
    first = a if a.open_key <= b.open_key else b
    last = a if a.close_key >= b.close_key else b
    return PartialBar(a.symbol, a.bucket_us, first.open, max(a.high, b.high), min(a.low, b.low),
                      last.close, a.volume + b.volume, a.notional + b.notional,
                      a.trades + b.trades, first.open_key, last.close_key)


def aggregate(rows: Iterable[TradeRow]) -> dict[tuple[str, int], PartialBar]:
    """Bars of trade ``rows`` keyed by ``(symbol, bucket_us)``. Rows are
    assumed distinct (as the ``trades`` table guarantees)."""
    bars: dict[tuple[str, int], PartialBar] = {}
    for symbol, ts_us, price, size, *_, entry_id in rows:
        key = (symbol, bucket_of(ts_us))
        order = (ts_us, entry_id)
        volume = size or 0.0
        bar = PartialBar(symbol, key[1], price, price, price, price, volume,
                         price * size if size else 0.0, 1, order, order)
        old = bars.get(key)
        bars[key] = bar if old is None else merge(old, bar)
    return bars


#: ``(symbol, bucket_us, open, high, low, close, volume, notional, trade_count,
#: open_ts_us, open_entry, close_ts_us, close_entry)``: a bar as a row for SQL.
BarRow = tuple[str, int, float, float, float, float, float, float, int, int, int, int, int]

#: ``(symbol, bucket_us, open, high, low, close, volume, notional, trade_count)``:
#: a bar's state as stored (see :data:`BAR_STATE_COLUMNS_SQL`).
BarStateRow = tuple[str, int, float, float, float, float, float, float, int]


def bar_rows(rows: Iterable[TradeRow]) -> list[BarRow]:
    """The bars of trade ``rows`` as SQL rows, sorted by (symbol, bucket).

    Same result as :func:`aggregate` (the tests hold them equal), written for
    the persist hot path: one dict lookup and a few comparisons per trade, no
    object per trade.
    """
    acc: dict[tuple[str, int], list[Any]] = {}
    get = acc.get
    for symbol, ts_us, price, size, _side, _id, _source, _recv, entry_id in rows:
        key = (symbol, ts_us - ts_us % US_PER_MINUTE)
        a = get(key)
        if a is None:
            # [open, high, low, close, volume, notional, count,
            #  open_ts, open_entry, close_ts, close_entry]
            acc[key] = [price, price, price, price, size or 0.0,
                        price * size if size else 0.0, 1, ts_us, entry_id, ts_us, entry_id]
            continue
        if price > a[1]:
            a[1] = price
        if price < a[2]:
            a[2] = price
        if size:
            a[4] += size
            a[5] += price * size
        a[6] += 1
        if ts_us < a[7] or (ts_us == a[7] and entry_id < a[8]):
            a[0], a[7], a[8] = price, ts_us, entry_id
        if ts_us > a[9] or (ts_us == a[9] and entry_id > a[10]):
            a[3], a[9], a[10] = price, ts_us, entry_id
    return [(symbol, bucket, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10])
            for (symbol, bucket), a in sorted(acc.items())]


def bar_state(row: Sequence[Any]) -> BarStateRow:
    """A database row of :data:`BAR_STATE_COLUMNS_SQL` as a :data:`BarStateRow`
    (columns after those are ignored)."""
    return (str(row[0]), int(row[1]), float(row[2]), float(row[3]), float(row[4]),
            float(row[5]), float(row[6]), float(row[7]), int(row[8]))


def vwap_of(volume: float, notional: float) -> float | None:
    """Volume-weighted average price; None without volume."""
    return notional / volume if volume > 0 else None


def bar_event(row: BarStateRow, state: BarState) -> Bar:
    """The :class:`~pricepipe.events.Bar` of a stored bar state. Raises
    :exc:`~pricepipe.exceptions.InvalidEventError` for values no trade
    could have made (rows edited by hand)."""
    symbol, bucket_us, open_, high, low, close, volume, notional, count = row
    vwap = vwap_of(volume, notional)
    if vwap is not None:
        # The float sums may put the quotient a hair outside the range of
        # prices that made it; the true VWAP never is.
        vwap = min(max(vwap, low), high)
    return Bar(symbol, bucket_us, open_, high, low, close, volume, vwap, int(count), state)
