"""Helpers of the API tests: writing ticks, bars and instruments the way the
persist workers would."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from pricepipe import codec
from pricepipe.clock import format_us, us_to_datetime
from pricepipe.tick import Tick

#: 2026-01-05T00:00:00Z, a Monday: test data lives on fixed past days.
DAY0_US = 1_767_571_200_000_000



MINUTE_US = 60_000_000



def entry_for(tick: Tick, seq: int = 0) -> int:
    """The packed entry ID a stream would have given ``tick`` (ms of its time)."""
    return codec.pack_entry_id(f"{tick.ts_us // 1000}-{seq}")



def insert_ticks(db: Any, ticks: Sequence[Tick], entries: Sequence[int] | None = None) -> None:
    """COPY ticks into the table, creating the daily partitions they need."""
    if not ticks:
        return
    entries = entries or [entry_for(t) for t in ticks]
    days = sorted({us_to_datetime(t.ts_us).date() for t in ticks})
    buf = io.StringIO()
    for tick, entry in zip(ticks, entries, strict=True):
        recv = format_us(tick.recv_ts_us) if tick.recv_ts_us is not None else "\\N"
        size = repr(tick.size) if tick.size is not None else "\\N"
        buf.write(f"{tick.symbol}\t{format_us(tick.ts_us)}\t{tick.price!r}\t{size}\t"
                  f"{tick.source}\t{recv}\t{entry}\n")
    buf.seek(0)
    with db.cursor() as cur:
        for day in days:  # only the days with ticks: they may be decades apart
            cur.execute("SELECT ensure_tick_partitions(%s, %s)", (day, day))
        cur.copy_expert("COPY ticks (symbol, ts, price, size, source, recv_ts, entry_id) "
                        "FROM STDIN", buf)
    if not getattr(db, "autocommit", True):
        db.commit()



def minute_bar_rows(ticks: Sequence[Tick], entries: Sequence[int] | None = None
                    ) -> list[tuple[Any, ...]]:
    """bars_1m rows summarising ``ticks`` as the persist workers would store them."""
    entries = entries or [entry_for(t) for t in ticks]
    groups: dict[tuple[str, int], list[tuple[int, int, Tick]]] = {}
    for tick, entry in zip(ticks, entries, strict=True):
        bucket = tick.ts_us - tick.ts_us % MINUTE_US
        groups.setdefault((tick.symbol, bucket), []).append((tick.ts_us, entry, tick))
    rows = []
    for (symbol, bucket), items in sorted(groups.items()):
        items.sort(key=lambda item: (item[0], item[1]))
        first, last = items[0], items[-1]
        prices = [t.price for _, _, t in items]
        rows.append((symbol, us_to_datetime(bucket), first[2].price, max(prices), min(prices),
                     last[2].price, sum(t.size or 0.0 for _, _, t in items), len(items),
                     us_to_datetime(first[0]), first[1], us_to_datetime(last[0]), last[1]))
    return rows



def insert_bars(db: Any, rows: Sequence[tuple[Any, ...]]) -> None:
    from psycopg2.extras import execute_values

    with db.cursor() as cur:
        execute_values(cur, "INSERT INTO bars_1m (symbol, bucket, open, high, low, close, "
                       "volume, tick_count, open_ts, open_entry, close_ts, close_entry) "
                       "VALUES %s", rows)



def steady_ticks(symbol: str, start_us: int, count: int, step_us: int, *,
                 price0: float = 100.0) -> list[Tick]:
    """``count`` ticks ``step_us`` apart with distinct, varying prices."""
    return [Tick(symbol, start_us + i * step_us, price0 + (i % 17) * 0.25 - (i % 5) * 0.1,
                 float(i % 3 + 1), "test") for i in range(count)]

