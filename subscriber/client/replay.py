"""History replayed from PostgreSQL through the readers' interface, for
backtests: :class:`ReplayReader` and its asyncio twin, paced by :class:`Pacer`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from pricepipe import codec
from pricepipe.clock import datetime_to_us, us_to_datetime
from pricepipe.events import MAX_TS_US, Quote, Trade
from pricepipe.keys import Channel

from .core import DEFAULT_CHANNELS, channel_list, symbol_list
from .delivery import Delivery


class Pacer:
    """Replay timing: event times mapped onto the wall clock at ``speed``×.

    ``speed`` None (or 0) means as fast as possible. Pure: give it times,
    it answers how long to wait.
    """

    def __init__(self, speed: float | None) -> None:
        if speed is not None and speed < 0:
            raise ValueError("speed must be positive (or None for as fast as possible)")
        self.speed = speed or None
        self._origin: tuple[int, float] | None = None

    def delay_s(self, ts_us: int, now_s: float) -> float:
        """Seconds to wait, at wall time ``now_s``, before releasing an event of ``ts_us``."""
        if self.speed is None:
            return 0.0
        if self._origin is None:
            self._origin = (ts_us, now_s)
            return 0.0
        first_ts, first_wall = self._origin
        due = first_wall + (ts_us - first_ts) / 1_000_000 / self.speed
        return max(due - now_s, 0.0)


# Trades and quotes interleaved in event-time order (ties: stream order, then
# trades first). A channel not asked for is switched off by its boolean
# parameter, so the statement is one constant text.
_REPLAY_SQL = """
    SELECT * FROM (
        SELECT 't' AS kind, symbol, ts, price, size, side, trade_id, NULL::float8 AS bid,
               NULL::float8 AS bid_size, NULL::float8 AS ask, NULL::float8 AS ask_size,
               source, recv_ts, entry_id
          FROM trades
         WHERE %(trades)s AND symbol = ANY(%(symbols)s) AND ts >= %(start)s AND ts < %(end)s
        UNION ALL
        SELECT 'q', symbol, ts, NULL, NULL, NULL, NULL, bid, bid_size, ask, ask_size,
               source, recv_ts, entry_id
          FROM quotes
         WHERE %(quotes)s AND symbol = ANY(%(symbols)s) AND ts >= %(start)s AND ts < %(end)s
    ) AS events
    ORDER BY ts, entry_id, kind DESC
"""


def _row_delivery(row: tuple[Any, ...]) -> Delivery:
    (kind, symbol, ts, price, size, side, trade_id, bid, bid_size, ask, ask_size, source,
     recv_ts, entry_id) = row
    ts_us = datetime_to_us(ts)
    recv_ts_us = None if recv_ts is None else datetime_to_us(recv_ts)
    event: Trade | Quote
    if kind == "t":
        event = Trade(symbol, ts_us, price, size, source, trade_id, side, recv_ts_us)
    else:
        event = Quote(symbol, ts_us, bid, bid_size, ask, ask_size, source, recv_ts_us)
    return Delivery(codec.unpack_entry_id(entry_id), event)


def _bounds(start_us: int, end_us: int | None) -> tuple[Any, Any]:
    return us_to_datetime(start_us), us_to_datetime(MAX_TS_US if end_us is None else end_us)


class ReplayReader:
    """Trades and quotes of ``symbols`` with ``start_us <= ts < end_us`` from
    the ``trades`` and ``quotes`` tables (``channels``: either or both),
    interleaved in event-time order, released at ``speed``× their original
    pace (None: as fast as possible). Reads through a server-side cursor, so
    memory stays flat however long the history. The connection is the
    caller's; it is left open.
    """

    def __init__(self, conn: Any, symbols: Iterable[str], *, start_us: int,
                 end_us: int | None = None, speed: float | None = 1.0,
                 channels: Iterable[str] = DEFAULT_CHANNELS, batch_size: int = 1000) -> None:
        self.symbols = symbol_list(symbols)
        self.channels = channel_list(channels)
        if Channel.BARS_1M in self.channels:
            raise ValueError("replays carry trades and quotes; bars are in /v1/bars")
        self._pacer = Pacer(speed)
        # A named cursor lives in a transaction; in autocommit mode it must
        # be WITH HOLD to survive the implicit commit (psycopg2 docs).
        self._cur = conn.cursor(name=f"pricepipe_replay_{id(self)}",
                                withhold=bool(conn.autocommit))
        self._cur.itersize = batch_size
        start, end = _bounds(start_us, end_us)
        self._cur.execute(_REPLAY_SQL, {
            "symbols": self.symbols, "start": start, "end": end,
            "trades": Channel.TRADES in self.channels,
            "quotes": Channel.QUOTES in self.channels})
        self._next: Delivery | None = None
        self.finished = False

    def get(self, timeout_s: float | None = None) -> Delivery | None:
        """The next event when it is due; None at the end of the history or
        when it is not due within ``timeout_s``."""
        if self._next is None and not self.finished:
            row = self._cur.fetchone()
            if row is None:
                self.finished = True
            else:
                self._next = _row_delivery(row)
        if self._next is None:
            return None
        delay = self._pacer.delay_s(self._next.event.ts_us, time.monotonic())
        if timeout_s is not None and delay > timeout_s:
            time.sleep(timeout_s)
            return None
        if delay > 0:
            time.sleep(delay)
        delivery, self._next = self._next, None
        return delivery

    def __iter__(self) -> Iterator[Delivery]:
        while True:
            delivery = self.get()
            if delivery is None:
                return
            yield delivery

    def ack(self, *deliveries: Delivery) -> None:
        """Nothing to acknowledge in a replay."""

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._cur.close()

    def __enter__(self) -> ReplayReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncReplayReader:
    """Asyncio :class:`ReplayReader`: the (blocking) psycopg2 fetches run in a
    thread, pacing sleeps with ``asyncio.sleep``."""

    def __init__(self, conn: Any, symbols: Iterable[str], *, start_us: int,
                 end_us: int | None = None, speed: float | None = 1.0,
                 channels: Iterable[str] = DEFAULT_CHANNELS, batch_size: int = 1000) -> None:
        self._sync = ReplayReader(conn, symbols, start_us=start_us, end_us=end_us, speed=None,
                                  channels=channels, batch_size=batch_size)
        self._pacer = Pacer(speed)
        self._batch: list[Delivery] = []
        self._batch_size = batch_size
        self.symbols = self._sync.symbols
        self.finished = False

    def _fetch(self) -> list[Delivery]:
        out = []
        for _ in range(self._batch_size):
            delivery = self._sync.get()
            if delivery is None:
                break
            out.append(delivery)
        return out

    async def get(self, timeout_s: float | None = None) -> Delivery | None:
        if not self._batch and not self.finished:
            self._batch = await asyncio.to_thread(self._fetch)
            self._batch.reverse()
            self.finished = not self._batch
        if not self._batch:
            return None
        delay = self._pacer.delay_s(self._batch[-1].event.ts_us, time.monotonic())
        if timeout_s is not None and delay > timeout_s:
            await asyncio.sleep(timeout_s)
            return None
        if delay > 0:
            await asyncio.sleep(delay)
        return self._batch.pop()

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        while True:
            delivery = await self.get()
            if delivery is None:
                return
            yield delivery

    async def ack(self, *deliveries: Delivery) -> None:
        """Nothing to acknowledge in a replay."""

    async def aclose(self) -> None:
        self._sync.close()

    async def __aenter__(self) -> AsyncReplayReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
