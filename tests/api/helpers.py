"""Helpers of the API tests: trades, quotes and bars rows written straight
into PostgreSQL (COPY, as the persist workers store them), and the JSON the
API must answer for them."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from pricepipe import codec
from pricepipe.clock import format_us, us_to_datetime
from pricepipe.events import US_PER_MINUTE, Quote, Side, Trade, bucket_of

#: 2026-01-05T00:00:00Z, a Monday: test data lives on fixed past days.
DAY0_US = 1_767_571_200_000_000

MINUTE_US = US_PER_MINUTE


def entry_for(event: Trade | Quote, seq: int = 0) -> int:
    """The packed entry ID a stream would have given ``event`` (ms of its time)."""
    return codec.pack_entry_id(f"{event.ts_us // 1000}-{seq}")


def backfill_entry(ts_us: int, rank: int = 0) -> int:
    """A backfilled row's synthetic entry ID: negative, never a stream's."""
    return -(ts_us * 1024 + rank) - 1


def expected_json(event: Trade | Quote, entry: int) -> dict[str, Any]:
    """What the API answers for a stored row: the codec's JSON, ``id`` null
    for a backfilled row (negative entry ID)."""
    want = codec.event_to_dict(event, codec.unpack_entry_id(entry) if entry >= 0 else None)
    want.setdefault("id", None)
    return want


def _text(value: object) -> str:
    """COPY text format of one value: ``\\N`` for NULL."""
    if value is None:
        return "\\N"
    return repr(value) if isinstance(value, float) else str(value)


def _copy(db: Any, table: str, columns: str, lines: list[str],
          days: Sequence[Any]) -> None:
    from psycopg2 import sql

    query = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns.split(", "))))
    with db.cursor() as cur:
        for day in days:  # only the days with rows: they may be decades apart
            cur.execute("SELECT ensure_partitions(%s, %s, %s)", (table, day, day))
        cur.copy_expert(query, io.StringIO("".join(lines)))
    if not getattr(db, "autocommit", True):
        db.commit()


def insert_trades(db: Any, trades: Sequence[Trade], entries: Sequence[int] | None = None
                  ) -> None:
    """COPY trades into their table, creating the daily partitions they need."""
    if not trades:
        return
    entries = entries or [entry_for(t) for t in trades]
    lines = []
    for t, entry in zip(trades, entries, strict=True):
        recv = format_us(t.recv_ts_us) if t.recv_ts_us is not None else None
        side = str(t.side) if t.side is not None else None
        lines.append("\t".join(_text(v) for v in (
            t.symbol, format_us(t.ts_us), t.price, t.size, side, t.trade_id, t.source, recv,
            entry)) + "\n")
    _copy(db, "trades", "symbol, ts, price, size, side, trade_id, source, recv_ts, entry_id",
          lines, sorted({us_to_datetime(t.ts_us).date() for t in trades}))


def insert_quotes(db: Any, quotes: Sequence[Quote], entries: Sequence[int] | None = None
                  ) -> None:
    """COPY quotes into their table, creating the daily partitions they need."""
    if not quotes:
        return
    entries = entries or [entry_for(q) for q in quotes]
    lines = []
    for q, entry in zip(quotes, entries, strict=True):
        recv = format_us(q.recv_ts_us) if q.recv_ts_us is not None else None
        lines.append("\t".join(_text(v) for v in (
            q.symbol, format_us(q.ts_us), q.bid, q.bid_size, q.ask, q.ask_size, q.source, recv,
            entry)) + "\n")
    _copy(db, "quotes",
          "symbol, ts, bid, bid_size, ask, ask_size, source, recv_ts, entry_id",
          lines, sorted({us_to_datetime(q.ts_us).date() for q in quotes}))


def minute_bar_rows(trades: Sequence[Trade], entries: Sequence[int] | None = None
                    ) -> list[tuple[Any, ...]]:
    """bars_1m rows summarising ``trades`` as the persist workers store them:
    open/close by (time, entry ID), volume and notional of the sized trades."""
    entries = entries or [entry_for(t) for t in trades]
    groups: dict[tuple[str, int], list[tuple[int, int, Trade]]] = {}
    for trade, entry in zip(trades, entries, strict=True):
        groups.setdefault((trade.symbol, bucket_of(trade.ts_us)), []).append(
            (trade.ts_us, entry, trade))
    rows = []
    for (symbol, bucket), items in sorted(groups.items()):
        items.sort(key=lambda item: (item[0], item[1]))
        first, last = items[0], items[-1]
        prices = [t.price for _, _, t in items]
        sized = [t for _, _, t in items if t.size is not None]
        rows.append((symbol, us_to_datetime(bucket), first[2].price, max(prices), min(prices),
                     last[2].price, sum(t.size or 0.0 for t in sized),
                     sum(t.price * (t.size or 0.0) for t in sized), len(items),
                     us_to_datetime(first[0]), first[1], us_to_datetime(last[0]), last[1]))
    return rows


def insert_bars(db: Any, rows: Sequence[tuple[Any, ...]]) -> None:
    """Rows as :func:`minute_bar_rows` makes them."""
    from psycopg2.extras import execute_values

    with db.cursor() as cur:
        execute_values(cur, "INSERT INTO bars_1m (symbol, bucket, open, high, low, close, "
                       "volume, notional, trade_count, open_ts, open_entry, close_ts, "
                       "close_entry) VALUES %s", rows)


def steady_trades(symbol: str, start_us: int, count: int, step_us: int, *,
                  price0: float = 100.0) -> list[Trade]:
    """``count`` trades ``step_us`` apart with distinct, varying prices; every
    seventh has no size (it counts in prices, not in volume)."""
    return [Trade(symbol, start_us + i * step_us, price0 + (i % 17) * 0.25 - (i % 5) * 0.1,
                  None if i % 7 == 6 else float(i % 3 + 1), "test",
                  trade_id=str(1000 + i), side=Side.BUY if i % 2 else Side.SELL)
            for i in range(count)]


def steady_quotes(symbol: str, start_us: int, count: int, step_us: int, *,
                  price0: float = 100.0) -> list[Quote]:
    """``count`` two-sided quotes ``step_us`` apart around varying prices."""
    out = []
    for i in range(count):
        mid = price0 + (i % 13) * 0.2
        out.append(Quote(symbol, start_us + i * step_us, mid - 0.05, float(100 + i % 9),
                         mid + 0.05, float(200 + i % 4), "test"))
    return out
