"""Helpers of the client-library tests: deterministic trades and quotes in the
streams or in the tables, and taking deliveries off a reader."""

from __future__ import annotations

import io
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from pricepipe import streams
from pricepipe.clock import format_us, now_us, us_to_datetime
from pricepipe.events import Quote, Side, Trade
from pricepipe.keys import Keys
from pricepipe.subscriber.client import ClientSettings, Delivery

#: The event time of the helpers' events: a minute ago, whole seconds. Recent,
#: because an event's time must lie near its stream entry's append time
#: (pricepipe.events.MAX_EVENT_AGE_AT_APPEND_US), which history by entry ID uses.
TS = (now_us() - 60_000_000) // 1_000_000 * 1_000_000
FAST = ClientSettings(block_ms=100, count=50, reconnect_base_s=0.02, reconnect_cap_s=0.2)


def trade(symbol: str, i: int, price: float | None = None) -> Trade:
    return Trade(symbol, TS + i, 100.0 + i if price is None else price, 1.0, "test", f"t{i}",
                 Side.BUY if i % 2 else Side.SELL)


def quote(symbol: str, i: int, mid: float | None = None) -> Quote:
    m = 100.0 + i if mid is None else mid
    return Quote(symbol, TS + i, m - 0.01, 2.0, m + 0.01, 3.0, "test")


def publish(r: redis.Redis, keys: Keys, symbol: str, n: int, *, start: int = 0,
            kind: str = "trades") -> list[str]:
    """Register ``symbol`` and append ``n`` trades (or quotes); their entry IDs."""
    make = trade if kind == "trades" else quote
    return publish_events(r, keys, [make(symbol, start + i) for i in range(n)])


def publish_events(r: redis.Redis, keys: Keys, events: Sequence[Trade | Quote]) -> list[str]:
    streams.register_symbols(r, keys, sorted({e.symbol for e in events}))
    return [eid.decode() for eid in streams.append_events(r, keys, events)]


def take(reader: Any, n: int, timeout_s: float = 10.0) -> list[Any]:
    """``n`` items (deliveries and gaps) from a sync reader (fails the test
    after ``timeout_s``)."""
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n:
        assert time.monotonic() < deadline, f"got {len(out)} of {n} deliveries"
        delivery = reader.get(timeout_s=0.2)
        if delivery is not None:
            out.append(delivery)
    return out


def inside(gap: Any, entry_id: str) -> bool:
    """Whether ``entry_id`` lies in ``gap``'s range (``after < id < until``)."""
    from pricepipe.codec import parse_entry_id

    return parse_entry_id(gap.after) < parse_entry_id(entry_id) < parse_entry_id(gap.until)


def _us(ts_us: int | None) -> str:
    return "\\N" if ts_us is None else format_us(ts_us)


def _num(value: float | None) -> str:
    return "\\N" if value is None else repr(value)


def insert_events(db: Any, events: Sequence[tuple[Trade | Quote, str]]) -> None:
    """COPY events with their entry IDs into ``trades`` / ``quotes``, as the
    persist workers store them (daily partitions created as needed)."""
    from pricepipe.codec import pack_entry_id

    days = sorted({us_to_datetime(e.ts_us).date() for e, _ in events})
    trades, quotes = io.StringIO(), io.StringIO()
    for event, entry_id in events:
        packed = pack_entry_id(entry_id)
        if isinstance(event, Trade):
            side = "\\N" if event.side is None else str(event.side)
            trades.write(f"{event.symbol}\t{format_us(event.ts_us)}\t{event.price!r}\t"
                         f"{_num(event.size)}\t{side}\t{event.trade_id or chr(92) + 'N'}\t"
                         f"{event.source}\t{_us(event.recv_ts_us)}\t{packed}\n")
        else:
            quotes.write(f"{event.symbol}\t{format_us(event.ts_us)}\t{_num(event.bid)}\t"
                         f"{_num(event.bid_size)}\t{_num(event.ask)}\t{_num(event.ask_size)}\t"
                         f"{event.source}\t{_us(event.recv_ts_us)}\t{packed}\n")
    with db.cursor() as cur:
        for table in ("trades", "quotes"):
            for day in days:
                cur.execute("SELECT ensure_partitions(%s, %s, %s)", (table, day, day))
        trades.seek(0)
        quotes.seek(0)
        cur.copy_expert("COPY trades (symbol, ts, price, size, side, trade_id, source, recv_ts,"
                        " entry_id) FROM STDIN", trades)
        cur.copy_expert("COPY quotes (symbol, ts, bid, bid_size, ask, ask_size, source,"
                        " recv_ts, entry_id) FROM STDIN", quotes)
    if not getattr(db, "autocommit", True):
        db.commit()


def deliveries(items: Iterable[Any]) -> list[Delivery]:
    """The deliveries among ``items`` (Nones left out); fails on a gap."""
    out = [item for item in items if item is not None]
    assert all(isinstance(item, Delivery) for item in out), out
    return out
