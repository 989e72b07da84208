"""Strategy client library: ticks for given symbols, straight from Redis
Streams or replayed from PostgreSQL, through one interface.

Readers, sync and asyncio:

* :class:`StreamReader` / :class:`AsyncStreamReader` - latest-only: plain
  ``XREAD`` from now on (``start="$"``), from the latest tick (``"last"``),
  from the oldest retained (``"0"``) or from your own saved entry IDs.
* :class:`GroupReader` / :class:`AsyncGroupReader` - a named consumer group:
  every tick goes to one consumer of the group; ``ack()`` it once handled.
  After a crash, a consumer restarted under the same name first receives the
  entries it had not acknowledged (``Delivery.redelivered``), then new ones:
  nothing is lost, and what was acknowledged never comes back.
* :class:`ReplayReader` / :class:`AsyncReplayReader` - history from the
  ``ticks`` table at N× speed (``speed=None``: as fast as possible), for
  backtests; ``ack()`` is a no-op.

Every reader: ``get(timeout_s)`` returns the next :class:`Delivery` or None,
iteration yields deliveries (forever for stream readers, until the end for
replays), ``ack(*deliveries)``, ``close()``, and context-manager use. The
async readers have the same methods as coroutines (``aclose()``, ``async for``,
``async with``).

Redis restarts: each shard is read by its own thread (sync) or task
(asyncio) with its own cursor; connection errors are retried with redis-py's
:class:`~redis.retry.Retry` and jittered exponential backoff, forever, and
reading resumes where it stopped. Other errors are raised from ``get()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any

import redis
import redis.asyncio.retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from pricepipe import codec, streams
from pricepipe.clock import datetime_to_us
from pricepipe.keys import Keys
from pricepipe.tick import Tick, validate_symbol

from .delivery import Delivery, GroupCursor, LatestCursor, Pacer
from .settings import ClientSettings

log = logging.getLogger(__name__)

__all__ = [
    "AsyncGroupReader", "AsyncReplayReader", "AsyncStreamReader", "Delivery", "GroupReader",
    "ReplayReader", "StreamReader",
]

#: Errors after which a reader waits (backoff) and tries again.
RETRYABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, ConnectionError,
    TimeoutError,
)

#: The same for redis.asyncio, which wraps socket errors in redis.ConnectionError.
ASYNC_RETRYABLE: tuple[type[redis.RedisError], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError,
)

Start = str | Mapping[str, str]


class _Stopped(Exception):
    """Raised inside a reader thread to leave a retry loop on close()."""


def _symbols(symbols: Iterable[str]) -> list[str]:
    out = list(dict.fromkeys(validate_symbol(s) for s in symbols))
    if not out:
        raise ValueError("give at least one symbol")
    return out


def _start_of(start: Start, symbol: str) -> str:
    value = start.get(symbol, "$") if isinstance(start, Mapping) else start
    if value not in ("$", "last", "0"):
        return "{}-{}".format(*codec.parse_entry_id(value))
    return value


def _resolve(starts: dict[str, str], replies: list[Any]) -> dict[str, str]:
    """Turn ``$`` / ``last`` into explicit IDs from ``XREVRANGE ... COUNT 2`` replies.

    An explicit ID is what makes reading gap-free across reads and reconnects
    (``$`` would mean "the end at the time of each call").
    """
    out = {}
    for (symbol, start), rows in zip(starts.items(), replies, strict=True):
        ids = [row[0].decode() for row in rows]
        if start == "$":
            out[symbol] = ids[0] if ids else "0-0"
        elif start == "last":
            out[symbol] = ids[1] if len(ids) > 1 else "0-0"
        else:
            out[symbol] = start
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _group_gone(exc: redis.ResponseError) -> bool:
    """The group (or its stream) no longer exists: NOGROUP, or a blocked read
    that Redis 7 unblocks because the stream key was deleted."""
    text = str(exc)
    return "NOGROUP" in text or text.startswith("UNBLOCKED")


def _by_stream(keys: Keys, deliveries: Iterable[Delivery]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for delivery in deliveries:
        grouped.setdefault(keys.stream(delivery.symbol), []).append(delivery.entry_id)
    return grouped


# --- sync stream readers ---------------------------------------------------------------------


class _ThreadedReader:
    """One thread per shard reads its streams and feeds a bounded queue."""

    def __init__(self, r: Any, keys: Keys, symbols: Iterable[str],
                 settings: ClientSettings | None) -> None:
        self._r = r
        self._keys = keys
        self.symbols = _symbols(symbols)
        self.settings = settings or ClientSettings.from_env()
        # Bounded: a strategy slower than the market holds up the readers,
        # and the backlog waits in Redis, not in this process.
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(self.settings.count * 2, 10))
        self._stop = threading.Event()
        self._retry = Retry(
            ExponentialWithJitterBackoff(cap=self.settings.reconnect_cap_s,
                                         base=self.settings.reconnect_base_s),
            retries=-1, supported_errors=RETRYABLE,
        )
        # Prepared here, on the caller's thread: "$" means "from when the
        # constructor returned", so ticks appended after it are never missed.
        states = {shard: self._call(lambda group=group: self._prepare(group))  # type: ignore[misc]
                  for shard, group in keys.by_shard(self.symbols).items()}
        self._threads = [
            threading.Thread(target=self._run, args=(state,), daemon=True,
                             name=f"pricepipe-reader-{shard}")
            for shard, state in states.items()
        ]
        for thread in self._threads:
            thread.start()

    # subclasses: prepare state for a shard, then read one batch with it
    def _prepare(self, symbols: list[str]) -> Any:
        raise NotImplementedError

    def _read(self, state: Any) -> list[Delivery]:
        raise NotImplementedError

    def _call(self, do: Callable[[], Any]) -> Any:
        return self._retry.call_with_retry(do, self._failed)

    def _failed(self, exc: Exception) -> None:
        if self._stop.is_set():
            raise _Stopped from exc
        log.warning("redis error, reconnecting with backoff: %s", exc)

    def _run(self, state: Any) -> None:
        try:
            while not self._stop.is_set():
                for delivery in self._call(lambda: self._read(state)):
                    self._put(delivery)
        except _Stopped:
            pass
        except Exception as exc:  # not retryable: surfaces in get()
            self._put(exc)

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped

    def get(self, timeout_s: float | None = None) -> Delivery | None:
        """The next delivery, or None after ``timeout_s`` (None: wait for one).

        Raises what a reader thread failed with, when it is not retryable.
        """
        try:
            item = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def __iter__(self) -> Iterator[Delivery]:
        while not self._stop.is_set():
            delivery = self.get(timeout_s=0.2)
            if delivery is not None:
                yield delivery

    def ack(self, *deliveries: Delivery) -> None:
        """Nothing to acknowledge for a plain reader."""

    def close(self) -> None:
        """Stop the reader threads (each within one block time)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.settings.block_ms / 1000 + 5)

    def __enter__(self) -> _ThreadedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StreamReader(_ThreadedReader):
    """Latest-only reader: every tick appended after ``start``, per symbol.

    ``start``: ``"$"`` (from now), ``"last"`` (the latest tick first),
    ``"0"`` (all the stream holds), or a mapping of symbol to the last entry
    ID already handled (symbols missing from it start at ``"$"``). ``ids``
    holds the last entry ID read per symbol, to save and resume from.
    """

    def __init__(self, r: Any, keys: Keys, symbols: Iterable[str], *, start: Start = "$",
                 settings: ClientSettings | None = None) -> None:
        self._start = start
        super().__init__(r, keys, symbols, settings)

    def _prepare(self, symbols: list[str]) -> LatestCursor:
        starts = {s: _start_of(self._start, s) for s in symbols}
        pipe = self._r.pipeline(transaction=False)
        for symbol in starts:
            pipe.xrevrange(self._keys.stream(symbol), count=2)
        return LatestCursor(self._keys, _resolve(starts, pipe.execute()))

    def _read(self, state: LatestCursor) -> list[Delivery]:
        reply = self._r.xread(state.streams(), count=self.settings.count,
                              block=self.settings.block_ms)
        return state.take(reply)


class GroupReader(_ThreadedReader):
    """Reader in consumer group ``group`` as ``consumer``.

    The group is created on each stream if missing, at ``start`` (``"$"``:
    ticks from now; ``"0"``: everything the streams hold). Deliveries stay
    pending in Redis until :meth:`ack`; restarting with the same ``consumer``
    name delivers the unacknowledged ones again first. With
    ``settings.claim_idle_ms`` set, entries other consumers left pending that
    long are claimed too (a consumer that died for good).
    """

    def __init__(self, r: Any, keys: Keys, symbols: Iterable[str], *, group: str,
                 consumer: str, start: str = "$",
                 settings: ClientSettings | None = None) -> None:
        if start not in ("$", "0"):
            raise ValueError("group start must be '$' or '0'")
        self.group = group
        self.consumer = consumer
        self._group_start = start
        super().__init__(r, keys, symbols, settings)

    def _prepare(self, symbols: list[str]) -> GroupCursor:
        for symbol in symbols:
            streams.ensure_group(self._r, self._keys.stream(symbol), self.group,
                                 self._group_start)
        return GroupCursor(self._keys, symbols)

    def _read(self, state: GroupCursor) -> list[Delivery]:
        try:
            reply = self._r.xreadgroup(self.group, self.consumer, state.streams(),
                                       count=self.settings.count,
                                       block=None if state.recovering else self.settings.block_ms)
        except redis.ResponseError as exc:
            if not _group_gone(exc):
                raise
            # The group vanished (a Redis that lost its data): recreate it.
            log.warning("consumer group %s missing, recreating it", self.group)
            for stream in state.streams():
                streams.ensure_group(self._r, stream, self.group, self._group_start)
            state.restart()
            return []
        out = state.take(reply)
        out.extend(self._claim(state))
        self._discard(state)
        return out

    def _claim(self, state: GroupCursor) -> list[Delivery]:
        """Take over entries other consumers left pending longer than
        ``claim_idle_ms`` (checked every half of it). This consumer's own
        pending entries are never claimed: they may still be in its hands."""
        idle = self.settings.claim_idle_ms
        now = time.monotonic()
        if idle is None or state.recovering or now - state.claimed_at < idle / 2000:
            return []
        state.claimed_at = now
        out: list[Delivery] = []
        for stream in state.streams():
            rows = self._r.xpending_range(stream, self.group, min="-", max="+",
                                          count=self.settings.count, idle=idle)
            theirs = [row["message_id"] for row in rows
                      if _text(row["consumer"]) != self.consumer]
            if not theirs:
                continue
            claimed = self._r.xclaim(stream, self.group, self.consumer, idle, theirs)
            got = LatestCursor(self._keys, {}).take(
                [(stream, [c for c in claimed if c[1] is not None])])
            out.extend(Delivery(d.entry_id, d.tick, True) for d in got)
        return out

    def _discard(self, state: GroupCursor) -> None:
        if state.discard:
            pipe = self._r.pipeline(transaction=False)
            for stream, entry_id in state.discard:
                pipe.xack(stream, self.group, entry_id)
            pipe.execute()
            state.discard.clear()

    def ack(self, *deliveries: Delivery) -> None:
        """Acknowledge handled deliveries (retried across Redis restarts)."""
        grouped = _by_stream(self._keys, deliveries)
        if not grouped:
            return

        def do() -> None:
            pipe = self._r.pipeline(transaction=False)
            for stream, ids in grouped.items():
                pipe.xack(stream, self.group, *ids)
            pipe.execute()

        self._retry.call_with_retry(do, lambda exc: log.warning("ack failed, retrying: %s", exc))


# --- asyncio stream readers ------------------------------------------------------------------


class _TaskReader:
    """One task per shard reads its streams and feeds a bounded queue."""

    def __init__(self, r: Any, keys: Keys, symbols: Iterable[str],
                 settings: ClientSettings | None) -> None:
        self._r = r
        self._keys = keys
        self.symbols = _symbols(symbols)
        self.settings = settings or ClientSettings.from_env()
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=max(self.settings.count * 2, 10))
        self._retry = redis.asyncio.retry.Retry(
            ExponentialWithJitterBackoff(cap=self.settings.reconnect_cap_s,
                                         base=self.settings.reconnect_base_s),
            retries=-1, supported_errors=ASYNC_RETRYABLE,
        )
        groups = list(keys.by_shard(self.symbols).values())
        self._unprepared = len(groups)
        self._prepared = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run(group)) for group in groups]
        self._closed = False

    async def ready(self) -> None:
        """Wait until every shard is prepared: from then on, ``"$"`` has been
        resolved and no tick appended later can be missed. ``async with``
        waits for it."""
        await self._prepared.wait()

    async def _prepare(self, symbols: list[str]) -> Any:
        raise NotImplementedError

    async def _read(self, state: Any) -> list[Delivery]:
        raise NotImplementedError

    async def _call(self, do: Callable[[], Any]) -> Any:
        return await self._retry.call_with_retry(do, self._failed)

    async def _failed(self, exc: Exception) -> None:
        # redis.asyncio's Retry awaits its failure callback.
        log.warning("redis error, reconnecting with backoff: %s", exc)

    async def _run(self, symbols: list[str]) -> None:
        try:
            state = await self._call(lambda: self._prepare(symbols))
            self._unprepared -= 1
            if not self._unprepared:
                self._prepared.set()
            while True:
                for delivery in await self._call(lambda: self._read(state)):
                    await self._queue.put(delivery)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # not retryable: surfaces in get()
            await self._queue.put(exc)

    async def get(self, timeout_s: float | None = None) -> Delivery | None:
        """The next delivery, or None after ``timeout_s``. Safe to cancel."""
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout_s)
        except TimeoutError:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        while not self._closed:
            delivery = await self.get()
            if delivery is not None:
                yield delivery

    async def ack(self, *deliveries: Delivery) -> None:
        """Nothing to acknowledge for a plain reader."""

    async def aclose(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> _TaskReader:
        await self.ready()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncStreamReader(_TaskReader):
    """Asyncio :class:`StreamReader` (``r`` is a ``redis.asyncio`` client).

    Create it inside a running event loop.
    """

    def __init__(self, r: Any, keys: Keys, symbols: Iterable[str], *, start: Start = "$",
                 settings: ClientSettings | None = None) -> None:
        self._start = start
        super().__init__(r, keys, symbols, settings)

    async def _prepare(self, symbols: list[str]) -> LatestCursor:
        starts = {s: _start_of(self._start, s) for s in symbols}
        pipe = self._r.pipeline(transaction=False)
        for symbol in starts:
            pipe.xrevrange(self._keys.stream(symbol), count=2)
        return LatestCursor(self._keys, _resolve(starts, await pipe.execute()))

    async def _read(self, state: LatestCursor) -> list[Delivery]:
        reply = await self._r.xread(state.streams(), count=self.settings.count,
                                    block=self.settings.block_ms)
        return state.take(reply)


class AsyncGroupReader(_TaskReader):
    """Asyncio :class:`GroupReader` (``r`` is a ``redis.asyncio`` client)."""

    def __init__(self, r: Any, keys: Keys, symbols: Iterable[str], *, group: str,
                 consumer: str, start: str = "$",
                 settings: ClientSettings | None = None) -> None:
        if start not in ("$", "0"):
            raise ValueError("group start must be '$' or '0'")
        self.group = group
        self.consumer = consumer
        self._group_start = start
        super().__init__(r, keys, symbols, settings)

    async def _ensure(self, stream: str) -> None:
        try:
            await self._r.xgroup_create(stream, self.group, id=self._group_start, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _prepare(self, symbols: list[str]) -> GroupCursor:
        for symbol in symbols:
            await self._ensure(self._keys.stream(symbol))
        return GroupCursor(self._keys, symbols)

    async def _read(self, state: GroupCursor) -> list[Delivery]:
        try:
            reply = await self._r.xreadgroup(
                self.group, self.consumer, state.streams(), count=self.settings.count,
                block=None if state.recovering else self.settings.block_ms)
        except redis.ResponseError as exc:
            if not _group_gone(exc):
                raise
            log.warning("consumer group %s missing, recreating it", self.group)
            for stream in state.streams():
                await self._ensure(stream)
            state.restart()
            return []
        out = state.take(reply)
        out.extend(await self._claim(state))
        if state.discard:
            pipe = self._r.pipeline(transaction=False)
            for stream, entry_id in state.discard:
                pipe.xack(stream, self.group, entry_id)
            await pipe.execute()
            state.discard.clear()
        return out

    async def _claim(self, state: GroupCursor) -> list[Delivery]:
        """As :meth:`GroupReader._claim`."""
        idle = self.settings.claim_idle_ms
        now = time.monotonic()
        if idle is None or state.recovering or now - state.claimed_at < idle / 2000:
            return []
        state.claimed_at = now
        out: list[Delivery] = []
        for stream in state.streams():
            rows = await self._r.xpending_range(stream, self.group, min="-", max="+",
                                                count=self.settings.count, idle=idle)
            theirs = [row["message_id"] for row in rows
                      if _text(row["consumer"]) != self.consumer]
            if not theirs:
                continue
            claimed = await self._r.xclaim(stream, self.group, self.consumer, idle, theirs)
            got = LatestCursor(self._keys, {}).take(
                [(stream, [c for c in claimed if c[1] is not None])])
            out.extend(Delivery(d.entry_id, d.tick, True) for d in got)
        return out

    async def ack(self, *deliveries: Delivery) -> None:
        grouped = _by_stream(self._keys, deliveries)
        if not grouped:
            return

        async def do() -> None:
            pipe = self._r.pipeline(transaction=False)
            for stream, ids in grouped.items():
                pipe.xack(stream, self.group, *ids)
            await pipe.execute()

        await self._call(do)


# --- replay from PostgreSQL ------------------------------------------------------------------

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
    from pricepipe.clock import us_to_datetime

    end = us_to_datetime(end_us) if end_us is not None else us_to_datetime(4_102_444_800_000_000)
    return us_to_datetime(start_us), end


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
        self.symbols = _symbols(symbols)
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
