"""The synchronous readers: one thread per shard runs the shard's plans
(:mod:`.core`) against a ``redis.Redis`` (or ``RedisCluster``) client and
feeds a bounded queue that ``get()`` and iteration take from.

Redis restarts: connection errors are retried with redis-py's
:class:`~redis.retry.Retry` and jittered exponential backoff, forever, and
reading resumes where it stopped. Other errors are raised from ``get()``.

Where entries may be missing the readers hand out a :class:`~.delivery.Gap`
(see :mod:`.core`); with ``fill_gaps`` (a :class:`~.history.HistorySource`,
e.g. :class:`~.history.PgHistory`) they first deliver what the history holds
of the range, marked ``filled``, then the gap marked ``filled``.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from pricepipe.keys import Keys

from .checkpoint import Checkpoint, tracker
from .core import (
    DEFAULT_CHANNELS,
    FILL_POLL_S,
    RETRYABLE,
    GroupShard,
    LatestShard,
    Plan,
    Start,
    ack_plan,
    channel_list,
    persisted_plan,
    run_sync,
    symbol_list,
)
from .delivery import Delivery, Gap, GapReason
from .history import HistorySource, fill_pages
from .settings import ClientSettings

log = logging.getLogger(__name__)


class _Stopped(Exception):
    """Raised inside a reader thread to leave a retry loop on close()."""


class _ThreadedReader:
    """Runs one shard state per thread; subclasses make the states."""

    def __init__(self, r: Any, keys: Keys, symbols: Iterable[str], channels: Iterable[str],
                 settings: ClientSettings | None, fill_gaps: HistorySource | None) -> None:
        self._r = r
        self._keys = keys
        self.symbols = symbol_list(symbols)
        self.channels = channel_list(channels)
        self.settings = settings or ClientSettings.from_env()
        self._history = fill_gaps
        # Bounded: a strategy slower than the market holds up the readers,
        # and the backlog waits in Redis, not in this process.
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(self.settings.count * 2, 10))
        self._stop = threading.Event()
        self._retry = Retry(
            ExponentialWithJitterBackoff(cap=self.settings.reconnect_cap_s,
                                         base=self.settings.reconnect_base_s),
            retries=-1, supported_errors=RETRYABLE,
        )
        shards = [self._shard(group) for group in keys.by_shard(self.symbols).values()]
        # Prepared here, on the caller's thread: "$" means "from when the
        # constructor returned", so events appended after it are never missed.
        # The gaps found are handed out (and filled) by the shard's thread.
        prepared = [(shard, self._run(shard, shard.prepare)) for shard in shards]
        for shard in shards:
            self._prepared(shard)
        self._threads = [
            threading.Thread(target=self._loop, args=(shard, gaps), daemon=True,
                             name=f"pricepipe-reader-{i}")
            for i, (shard, gaps) in enumerate(prepared)
        ]
        for thread in self._threads:
            thread.start()

    def _shard(self, symbols: list[str]) -> Any:
        raise NotImplementedError

    def _prepared(self, shard: Any) -> None:
        """``shard`` is prepared (before any of its items is handed out)."""

    def _got(self, item: Delivery | Gap) -> None:
        """The application got ``item`` from :meth:`get`."""

    def _run(self, shard: Any, make_plan: Callable[[], Plan[Any]]) -> Any:
        """A fresh plan per attempt: a retried plan starts over from the
        state the failed attempt left, which it did not change; the shard
        hears of each failure (a lost reply, maybe another server)."""
        def failed(exc: Exception) -> None:
            if self._stop.is_set():
                raise _Stopped from exc
            shard.connection_lost()
            log.warning("redis error, reconnecting with backoff: %s", exc)

        return self._retry.call_with_retry(lambda: run_sync(self._r, make_plan()), failed)

    def _loop(self, shard: Any, gaps: list[Gap]) -> None:
        try:
            for gap in gaps:
                self._hand_out(shard, gap)
            while not self._stop.is_set():
                for item in self._run(shard, shard.read):
                    self._hand_out(shard, item)
        except _Stopped:
            pass
        except Exception as exc:  # not retryable: surfaces in get()
            self._put(exc)

    def _hand_out(self, shard: Any, item: Delivery | Gap) -> None:
        if isinstance(item, Gap) and self._history is not None:
            if item.reason is GapReason.EPOCH:
                self._await_persisted(shard, item)
            for page in fill_pages(self._history, item):
                for delivery in page:
                    self._put(delivery)
            item = replace(item, filled=True)
        self._put(item)

    def _await_persisted(self, shard: Any, gap: Gap) -> None:
        """Until the history holds what Redis holds of ``gap`` (see
        :func:`~.core.persisted_plan`), for up to ``fill_wait_s``."""
        deadline = time.monotonic() + self.settings.fill_wait_s
        while not self._run(shard, lambda: persisted_plan(self._keys, gap)):
            if time.monotonic() >= deadline:
                log.warning("filling %s %s after %s without all of it persisted",
                            gap.symbol, gap.channel, gap.after)
                return
            if self._stop.wait(FILL_POLL_S):
                raise _Stopped

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped

    def get(self, timeout_s: float | None = None) -> Delivery | Gap | None:
        """The next delivery (or gap), or None after ``timeout_s`` (None: wait
        for one). Raises what a reader thread failed with, when it is not
        retryable."""
        try:
            item = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        self._got(item)
        return item

    def __iter__(self) -> Iterator[Delivery | Gap]:
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
    """Latest-only reader: every event of ``channels`` appended after
    ``start``, per symbol.

    ``start``: ``"$"`` (from now), ``"last"`` (the latest event first),
    ``"0"`` (all the stream holds), or per symbol and channel the last entry
    ID already handled, ``{"AAPL": {"quotes": "1767323045251-1"}}`` (streams
    missing from it start at ``"$"``).
    """

    def __init__(self, r: Any, keys: Keys, symbols: Iterable[str], *,
                 channels: Iterable[str] = DEFAULT_CHANNELS, start: Start = "$",
                 settings: ClientSettings | None = None,
                 fill_gaps: HistorySource | None = None) -> None:
        self._start = start
        super().__init__(r, keys, symbols, channels, settings, fill_gaps)

    def _shard(self, symbols: list[str]) -> LatestShard:
        return LatestShard(self._keys, symbols, self.channels, self._start, self.settings)


class GroupReader(_ThreadedReader):
    """Reader in consumer group ``group`` as ``consumer`` (see
    :class:`~.core.GroupShard`). Deliveries stay pending in Redis until
    :meth:`ack`; restarting with the same ``consumer`` name delivers the
    unacknowledged ones again first.

    ``checkpoint``: a file (path, or a :class:`~.checkpoint.Checkpoint`)
    where the reader keeps its place outside Redis, so that a restart after
    Redis lost entries while it was stopped (a failover to a replica that
    was behind, a restore) reports them as an ``epoch`` gap. Without one,
    only a running reader can see that.
    """

    def __init__(self, r: Any, keys: Keys, symbols: Iterable[str], *, group: str,
                 consumer: str, channels: Iterable[str] = DEFAULT_CHANNELS, start: str = "$",
                 settings: ClientSettings | None = None,
                 fill_gaps: HistorySource | None = None,
                 checkpoint: str | os.PathLike[str] | Checkpoint | None = None) -> None:
        self.group = group
        self.consumer = consumer
        self._group_start = start
        self._tracker = tracker(keys, checkpoint, group=group, consumer=consumer)
        self._tracked = threading.Lock()
        super().__init__(r, keys, symbols, channels, settings, fill_gaps)

    def _shard(self, symbols: list[str]) -> GroupShard:
        return GroupShard(self._keys, symbols, self.channels, group=self.group,
                          consumer=self.consumer, start=self._group_start,
                          settings=self.settings,
                          saved=self._tracker.saved if self._tracker else None)

    def _prepared(self, shard: GroupShard) -> None:
        if self._tracker is not None:
            with self._tracked:
                self._tracker.started(shard.floors)

    def _got(self, item: Delivery | Gap) -> None:
        if self._tracker is not None:
            with self._tracked:
                self._tracker.got(item)

    def ack(self, *deliveries: Delivery) -> None:
        """Acknowledge handled deliveries (retried across Redis restarts)."""
        self._retry.call_with_retry(
            lambda: run_sync(self._r, ack_plan(self._keys, self.group, deliveries)),
            lambda exc: log.warning("ack failed, retrying: %s", exc))
        if self._tracker is not None:
            with self._tracked:
                self._tracker.acked(deliveries)

    def close(self) -> None:
        super().close()
        if self._tracker is not None:
            with self._tracked:
                self._tracker.close()
