"""Stream history from PostgreSQL by entry ID: what a reader fills a
:class:`~.delivery.Gap` with (``fill_gaps=PgHistory(conn)``).

The persist workers store every entry with its packed entry ID, so the
entries of one stream between two IDs are exactly the rows of that symbol
between the two packed IDs, read in stream order from the tables' primary
key (symbol, entry_id, ts). Event times lie within fixed bounds of their
entry's append time (:func:`pricepipe.events.id_range_span_us`), which
bounds the daily partitions each page looks at.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, Protocol

import psycopg2

from pricepipe import codec
from pricepipe.clock import datetime_to_us, us_to_datetime
from pricepipe.events import Quote, Trade, id_range_span_us
from pricepipe.keys import Channel

from .delivery import Delivery, Gap

log = logging.getLogger(__name__)

#: Rows per query when filling a gap (keyset pagination by entry ID).
PAGE_ROWS = 5_000

_WHERE = """
 WHERE symbol = %(symbol)s AND entry_id > %(after)s AND entry_id < %(until)s
   AND ts >= %(ts_min)s AND ts < %(ts_max)s
 ORDER BY entry_id
 LIMIT %(limit)s
"""
_SQL = {
    Channel.TRADES: "SELECT ts, price, size, side, trade_id, source, recv_ts, entry_id"
                    " FROM trades" + _WHERE,
    Channel.QUOTES: "SELECT ts, bid, bid_size, ask, ask_size, source, recv_ts, entry_id"
                    " FROM quotes" + _WHERE,
}


class HistorySource(Protocol):
    """Where a reader fills its gaps from."""

    def page(self, symbol: str, channel: Channel, after: str, until: str) -> list[Delivery]:
        """Up to a page of the stream's entries with ``after < id < until``, in
        stream order (empty: none left)."""
        ...


class PgHistory:
    """:class:`HistorySource` on a PostgreSQL connection (the caller's; a
    read-only role suffices). Not thread-safe: give each reader its own.

    With ``connect`` (a function returning a new connection) instead of
    ``conn``, a page that fails on a lost connection (PostgreSQL restarting)
    is read again on a new one, with backoff, for up to ``retry_s``; then,
    or with a plain ``conn``, the error reaches the reader's ``get()``.
    """

    def __init__(self, conn: Any = None, *, connect: Callable[[], Any] | None = None,
                 page_rows: int = PAGE_ROWS, retry_s: float = 60.0) -> None:
        if (conn is None) == (connect is None):
            raise TypeError("PgHistory takes a connection or a connect function")
        self.conn = conn
        self._connect = connect
        self.page_rows = page_rows
        self.retry_s = retry_s

    def page(self, symbol: str, channel: Channel, after: str, until: str) -> list[Delivery]:
        if channel not in _SQL:
            return []  # bars are derived: /v1/bars recomputes them from trades
        if self._connect is None:
            return self._page(symbol, channel, after, until)
        deadline = time.monotonic() + self.retry_s
        delay_s = 0.1
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = self._connect()
                return self._page(symbol, channel, after, until)
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if time.monotonic() + delay_s > deadline:
                    raise
                log.warning("history read failed, reconnecting: %s", exc)
                time.sleep(delay_s * (0.5 + random.random()))
                delay_s = min(delay_s * 2, 2.0)

    def _page(self, symbol: str, channel: Channel, after: str, until: str) -> list[Delivery]:
        after_ms = codec.parse_entry_id(after)[0]
        until_ms = codec.parse_entry_id(until)[0]
        start_us, end_us = id_range_span_us(after_ms, until_ms)
        params = {
            "symbol": symbol, "after": codec.pack_entry_id(after),
            "until": codec.pack_entry_id(until), "limit": self.page_rows,
            "ts_min": us_to_datetime(start_us), "ts_max": us_to_datetime(end_us),
        }
        with self.conn.cursor() as cur:
            cur.execute(_SQL[channel], params)
            rows = cur.fetchall()
        if not self.conn.autocommit:
            self.conn.commit()
        return [_delivery(symbol, channel, row) for row in rows]


def _delivery(symbol: str, channel: Channel, row: tuple[Any, ...]) -> Delivery:
    ts_us = datetime_to_us(row[0])
    recv = row[-2]
    recv_ts_us = None if recv is None else datetime_to_us(recv)
    event: Trade | Quote
    if channel is Channel.TRADES:
        _, price, size, side, trade_id, source, _, _ = row
        event = Trade(symbol, ts_us, price, size, source, trade_id, side, recv_ts_us)
    else:
        _, bid, bid_size, ask, ask_size, source, _, _ = row
        event = Quote(symbol, ts_us, bid, bid_size, ask, ask_size, source, recv_ts_us)
    return Delivery(codec.unpack_entry_id(row[-1]), event, filled=True)


def fill_pages(history: HistorySource, gap: Gap) -> Iterator[list[Delivery]]:
    """The pages of history that fill ``gap``, in stream order: the decision
    both reader flavours share (the asyncio one runs each page in a thread)."""
    after = gap.after
    seen = None if gap.redelivered_upto is None else codec.parse_entry_id(gap.redelivered_upto)
    while True:
        page = history.page(gap.symbol, gap.channel, after, gap.until)
        if not page:
            return
        if seen is not None:
            page = [replace(d, redelivered=True) if codec.parse_entry_id(d.entry_id) <= seen
                    else d for d in page]
        yield page
        after = page[-1].entry_id
