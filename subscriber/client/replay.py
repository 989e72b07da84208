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
from pricepipe.tick import MAX_TS_US, Tick

from .core import symbol_list
from .delivery import Delivery


class Pacer:
    """Replay timing: tick event times mapped onto the wall clock at ``speed``×.

    ``speed`` None (or 0) means as fast as possible. Pure: give it times,
    it answers how long to wait.
    """

    def __init__(self, speed: float | None) -> None:
        if speed is not None and speed < 0:
            raise ValueError("speed must be positive (or None for as fast as possible)")
        self.speed = speed or None
        self._origin: tuple[int, float] | None = None

    def delay_s(self, ts_us: int, now_s: float) -> float:
        """Seconds to wait, at wall time ``now_s``, before releasing a tick of ``ts_us``."""
        if self.speed is None:
            return 0.0
        if self._origin is None:
            self._origin = (ts_us, now_s)
            return 0.0
        first_ts, first_wall = self._origin
        due = first_wall + (ts_us - first_ts) / 1_000_000 / self.speed
        return max(due - now_s, 0.0)


_REPLAY_SQL = (
    "SELECT symbol, ts, price, size, source, recv_ts, entry_id FROM ticks "
    "WHERE symbol = ANY(%s) AND ts >= %s AND ts < %s ORDER BY ts, entry_id"
)


def _row_delivery(row: tuple[Any, ...]) -> Delivery:
    symbol, ts, price, size, source, recv_ts, entry_id = row
    tick = Tick(symbol, datetime_to_us(ts), price, size, source,
                None if recv_ts is None else datetime_to_us(recv_ts))
    return Delivery(codec.unpack_entry_id(entry_id), tick)


def _bounds(start_us: int, end_us: int | None) -> tuple[Any, Any]:
    return us_to_datetime(start_us), us_to_datetime(MAX_TS_US if end_us is None else end_us)


class ReplayReader:
    """Ticks of ``symbols`` with ``start_us <= ts < end_us`` from the
    ``ticks`` table, in time order, released at ``speed``× their original
    pace (None: as fast as possible). Reads through a server-side cursor, so
    memory stays flat however long the history. The connection is the
    caller's; it is left open.
    """

    def __init__(self, conn: Any, symbols: Iterable[str], *, start_us: int,
                 end_us: int | None = None, speed: float | None = 1.0,
                 batch_size: int = 1000) -> None:
        self.symbols = symbol_list(symbols)
        self._pacer = Pacer(speed)
        # A named cursor lives in a transaction; in autocommit mode it must
        # be WITH HOLD to survive the implicit commit (psycopg2 docs).
        self._cur = conn.cursor(name=f"pricepipe_replay_{id(self)}",
                                withhold=bool(conn.autocommit))
        self._cur.itersize = batch_size
        self._cur.execute(_REPLAY_SQL, (self.symbols, *_bounds(start_us, end_us)))
        self._next: Delivery | None = None
        self.finished = False

    def get(self, timeout_s: float | None = None) -> Delivery | None:
        """The next tick when it is due; None at the end of the history or
        when it is not due within ``timeout_s``."""
        if self._next is None and not self.finished:
            row = self._cur.fetchone()
            if row is None:
                self.finished = True
            else:
                self._next = _row_delivery(row)
        if self._next is None:
            return None
        delay = self._pacer.delay_s(self._next.tick.ts_us, time.monotonic())
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
                 batch_size: int = 1000) -> None:
        self._sync = ReplayReader(conn, symbols, start_us=start_us, end_us=end_us, speed=None,
                                  batch_size=batch_size)
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
        delay = self._pacer.delay_s(self._batch[-1].tick.ts_us, time.monotonic())
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
