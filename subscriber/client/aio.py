"""The asyncio readers: one task per shard runs the shard's plans
(:mod:`.core`) against a ``redis.asyncio`` client and feeds a bounded
queue. The same decisions as :mod:`.sync`; only the I/O differs.

Create them inside a running event loop; ``async with`` waits until every
shard is prepared (from then on no event appended later can be missed).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace
from typing import Any

import redis
import redis.asyncio.retry
from redis.backoff import ExponentialWithJitterBackoff

from pricepipe.connections import honour_cancel
from pricepipe.keys import Keys

from .checkpoint import Checkpoint, tracker
from .core import (
    DEFAULT_CHANNELS,
    FILL_POLL_S,
    GroupShard,
    LatestShard,
    Plan,
    Start,
    ack_plan,
    channel_list,
    persisted_plan,
    run_async,
    symbol_list,
)
from .delivery import Delivery, Gap, GapReason
from .history import HistorySource, fill_pages
from .settings import ClientSettings

log = logging.getLogger(__name__)

#: redis.asyncio wraps socket errors in redis.ConnectionError (see core.RETRYABLE).
ASYNC_RETRYABLE: tuple[type[redis.RedisError], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError,
)


class _TaskReader:
    """Runs one shard state per task; subclasses make the states."""

    def __init__(self, r: Any, keys: Keys, symbols: Iterable[str], channels: Iterable[str],
                 settings: ClientSettings | None, fill_gaps: HistorySource | None) -> None:
        self._r = r
        self._keys = keys
        self.symbols = symbol_list(symbols)
        self.channels = channel_list(channels)
        self.settings = settings or ClientSettings.from_env()
        self._history = fill_gaps
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=max(self.settings.count * 2, 10))
        self._retry = redis.asyncio.retry.Retry(
            ExponentialWithJitterBackoff(cap=self.settings.reconnect_cap_s,
                                         base=self.settings.reconnect_base_s),
            retries=-1, supported_errors=ASYNC_RETRYABLE,
        )
        shards = [self._shard(group) for group in keys.by_shard(self.symbols).values()]
        self._unprepared = len(shards)
        self._prepared = asyncio.Event()
        self._tasks = [asyncio.create_task(self._loop(shard)) for shard in shards]
        self._closed = False

    def _shard(self, symbols: list[str]) -> Any:
        raise NotImplementedError

    def _prepared_shard(self, shard: Any) -> None:
        """``shard`` is prepared (before any of its items is handed out)."""

    def _got(self, item: Delivery | Gap) -> None:
        """The application got ``item`` from :meth:`get`."""

    async def ready(self) -> None:
        """Wait until every shard is prepared: from then on, ``"$"`` has been
        resolved and no event appended later can be missed."""
        await self._prepared.wait()

    async def _run(self, shard: Any, make_plan: Callable[[], Plan[Any]]) -> Any:
        """A fresh plan per attempt (see :meth:`.sync._ThreadedReader._run`)."""
        async def failed(exc: Exception) -> None:  # redis.asyncio's Retry awaits it
            if shard is not None:
                shard.connection_lost()
            log.warning("redis error, reconnecting with backoff: %s", exc)

        result = await self._retry.call_with_retry(lambda: run_async(self._r, make_plan()),
                                                   failed)
        honour_cancel()  # redis-py may have swallowed aclose()'s
        return result

    async def _loop(self, shard: Any) -> None:
        try:
            gaps = await self._run(shard, shard.prepare)
            self._prepared_shard(shard)
            self._unprepared -= 1
            if not self._unprepared:
                self._prepared.set()
            for gap in gaps:
                await self._hand_out(shard, gap)
            while True:
                for item in await self._run(shard, shard.read):
                    await self._hand_out(shard, item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # not retryable: surfaces in get()
            await self._queue.put(exc)
            self._prepared.set()  # ready() returns, and get() raises it

    async def _hand_out(self, shard: Any, item: Delivery | Gap) -> None:
        if isinstance(item, Gap) and self._history is not None:
            if item.reason is GapReason.EPOCH:
                await self._await_persisted(shard, item)
            pages = fill_pages(self._history, item)
            while (page := await asyncio.to_thread(next, pages, None)) is not None:
                for delivery in page:
                    await self._queue.put(delivery)
            item = replace(item, filled=True)
        await self._queue.put(item)

    async def _await_persisted(self, shard: Any, gap: Gap) -> None:
        """:meth:`.sync._ThreadedReader._await_persisted`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.fill_wait_s
        while not await self._run(shard, lambda: persisted_plan(self._keys, gap)):
            if loop.time() >= deadline:
                log.warning("filling %s %s after %s without all of it persisted",
                            gap.symbol, gap.channel, gap.after)
                return
            await asyncio.sleep(FILL_POLL_S)

    async def get(self, timeout_s: float | None = None) -> Delivery | Gap | None:
        """The next delivery (or gap), or None after ``timeout_s``. Safe to cancel."""
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout_s)
        except TimeoutError:
            return None
        if isinstance(item, BaseException):
            raise item
        self._got(item)
        return item

    async def __aiter__(self) -> AsyncIterator[Delivery | Gap]:
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
    """Asyncio :class:`~.sync.StreamReader` (``r`` is a ``redis.asyncio`` client)."""

    def __init__(self, r: Any, keys: Keys, symbols: Iterable[str], *,
                 channels: Iterable[str] = DEFAULT_CHANNELS, start: Start = "$",
                 settings: ClientSettings | None = None,
                 fill_gaps: HistorySource | None = None) -> None:
        self._start = start
        super().__init__(r, keys, symbols, channels, settings, fill_gaps)

    def _shard(self, symbols: list[str]) -> LatestShard:
        return LatestShard(self._keys, symbols, self.channels, self._start, self.settings)


class AsyncGroupReader(_TaskReader):
    """Asyncio :class:`~.sync.GroupReader` (``r`` is a ``redis.asyncio`` client).
    The checkpoint file is written from the event loop (a small file renamed
    into place, at most every ``every_s``)."""

    def __init__(self, r: Any, keys: Keys, symbols: Iterable[str], *, group: str,
                 consumer: str, channels: Iterable[str] = DEFAULT_CHANNELS, start: str = "$",
                 settings: ClientSettings | None = None,
                 fill_gaps: HistorySource | None = None,
                 checkpoint: str | os.PathLike[str] | Checkpoint | None = None) -> None:
        self.group = group
        self.consumer = consumer
        self._group_start = start
        self._tracker = tracker(keys, checkpoint, group=group, consumer=consumer)
        super().__init__(r, keys, symbols, channels, settings, fill_gaps)

    def _shard(self, symbols: list[str]) -> GroupShard:
        return GroupShard(self._keys, symbols, self.channels, group=self.group,
                          consumer=self.consumer, start=self._group_start,
                          settings=self.settings,
                          saved=self._tracker.saved if self._tracker else None)

    def _prepared_shard(self, shard: GroupShard) -> None:
        if self._tracker is not None:
            self._tracker.started(shard.floors)

    def _got(self, item: Delivery | Gap) -> None:
        if self._tracker is not None:
            self._tracker.got(item)

    async def ack(self, *deliveries: Delivery) -> None:
        """Acknowledge handled deliveries (retried across Redis restarts)."""
        await self._run(None, lambda: ack_plan(self._keys, self.group, deliveries))
        if self._tracker is not None:
            self._tracker.acked(deliveries)

    async def aclose(self) -> None:
        await super().aclose()
        if self._tracker is not None:
            self._tracker.close()
