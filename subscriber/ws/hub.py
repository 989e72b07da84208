"""The hub: reads the streams every connection of this process subscribes
to and fans each tick out to the subscribers of its symbol.

One reader task per shard issues one ``XREAD`` over that shard's subscribed
streams (multi-key commands stay inside one hash slot, see
:mod:`pricepipe.keys`). Reads use explicit per-stream cursors, never ``$``,
so no entry is skipped between two reads. Each tick is decoded and encoded to
JSON once; subscribers receive the encoded bytes.

A subscriber is anything with ``feed(batch)`` and ``flush()``: the hub calls
``feed`` with every :class:`Batch` of its symbols (one per symbol per read,
the same object for every subscriber), then ``flush`` on each subscriber it
fed, so ticks read together (from several shards too) leave in one frame.

Flushes are at least ``flush_interval_ms`` apart, and under load reads are
paced by them: a reader that got entries waits for the next flush, which
first has every waiting reader take what arrived meanwhile (``XREAD``
without ``BLOCK``), then flushes. Each busy shard is thus read once per
interval, just before the frames leave, so coalescing costs a tick at most
one interval (plus that read's round trip) and a connection gets at most
1000 / ``flush_interval_ms`` frames per second. The first flush after a
quiet spell waits only ``linger_ms`` (1 ms), long enough for the other
shards' replies to a burst of appends to arrive, so that a burst is not
split into a frame now and the rest an interval later. Once ``count``
ticks have been read since the last flush it is not put off any longer,
which keeps a frame to about ``count`` ticks at any rate. 0 flushes on
every event-loop turn, without pacing the reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any, Protocol

import redis
from redis.backoff import ExponentialWithJitterBackoff

from pricepipe.codec import entry_to_json
from pricepipe.connections import raw_replies
from pricepipe.keys import Keys

from .protocol import id_key

log = logging.getLogger(__name__)

#: One delivered entry: (sort key of its id, its id, its JSON bytes).
Entry = tuple[tuple[int, int], str, bytes]

#: Longest a flush waits for the reads it asked for (a slow one joins the next).
ROUND_TIMEOUT_S = 0.005

#: Errors after which a reader reconnects (with backoff) instead of failing.
RETRYABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError)


class Batch:
    """The new ticks of one symbol from one read, shared by all its subscribers."""

    __slots__ = ("symbol", "entries", "joined")

    def __init__(self, symbol: str, entries: list[Entry]) -> None:
        self.symbol = symbol
        self.entries = entries
        #: The ticks' JSON joined with commas, once: a frame's ``ticks`` list
        #: is the comma-joined ``joined`` of the batches it carries.
        self.joined = b",".join([entry[2] for entry in entries])


class Subscriber(Protocol):
    def feed(self, batch: Batch) -> None: ...

    def flush(self) -> None: ...


class Hub:
    """Shared stream reader of one websocket process.

    ``add`` returns an awaitable that completes once the hub holds a cursor
    for the symbol: every entry after that cursor will be fed to the
    subscriber, so a subscriber that registers, waits, then reads the stream
    itself (snapshot or resume) can stitch the two without a gap.
    """

    def __init__(self, r: Any, keys: Keys, *, block_ms: int = 100, count: int = 1000,
                 flush_interval_ms: float = 0, linger_ms: float = 1.0) -> None:
        self._r = r
        # XREAD replies unparsed: entries go straight to JSON (no dict each).
        self._reader = raw_replies(r, "XREAD")
        self._keys = keys
        self._block_ms = block_ms
        self._count = count
        self._subs: dict[str, set[Subscriber]] = {}
        self._by_shard: dict[int, set[str]] = {}
        self._cursors: dict[str, str] = {}
        self._ready: dict[str, asyncio.Future[None]] = {}
        self._inits: dict[str, asyncio.Task[None]] = {}
        self._readers: dict[int, asyncio.Task[None]] = {}
        self._dirty: set[Subscriber] = set()
        self._flush_interval_s = flush_interval_ms / 1000
        self._linger_s = min(linger_ms, flush_interval_ms) / 1000
        self._flush_handle: asyncio.Handle | None = None
        #: loop.time() the last round started (its reads went out), or of the
        #: last flush without a round: the next round is due an interval later.
        self._last_round = float("-inf")
        #: Ticks dispatched since the last flush; ``count`` of them flush at once.
        self._unflushed = 0
        #: Readers waiting for the next flush, which has them read first.
        self._parked: list[asyncio.Future[None]] = []
        #: Reads the pending flush still waits for.
        self._round_left = 0
        self._in_round = False
        self._backoff = ExponentialWithJitterBackoff(cap=2.0, base=0.05)
        self._closed = False
        #: False while Redis is unreachable; /healthz reports it.
        self.healthy = True
        #: time.monotonic() of the last successful read, for the watchdog.
        self.last_ok = time.monotonic()
        #: Ticks read from Redis (each fanned out to many connections).
        self.ticks_read = 0
        self.bad_entries = 0

    # --- subscriptions ---------------------------------------------------------------------

    def add(self, sub: Subscriber, symbol: str) -> Awaitable[None]:
        subs = self._subs.get(symbol)
        if subs is None:
            subs = self._subs[symbol] = set()
            self._by_shard.setdefault(self._keys.shard(symbol), set()).add(symbol)
            self._ready[symbol] = asyncio.get_running_loop().create_future()
            self._inits[symbol] = asyncio.create_task(self._init_cursor(symbol))
        subs.add(sub)
        self._ensure_reader(self._keys.shard(symbol))
        # Shielded: one subscriber giving up must not cancel the others' wait.
        return asyncio.shield(self._ready[symbol])

    def remove(self, sub: Subscriber, symbol: str) -> None:
        subs = self._subs.get(symbol)
        if subs is None:
            return
        subs.discard(sub)
        self._dirty.discard(sub)
        if subs:
            return
        del self._subs[symbol]
        self._by_shard[self._keys.shard(symbol)].discard(symbol)
        self._cursors.pop(symbol, None)
        init = self._inits.pop(symbol, None)
        if init is not None:
            init.cancel()
        ready = self._ready.pop(symbol)
        if not ready.done():
            ready.cancel()

    def subscriber_count(self, symbol: str) -> int:
        return len(self._subs.get(symbol, ()))

    @property
    def symbols(self) -> list[str]:
        return sorted(self._subs)

    async def close(self) -> None:
        self._closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        tasks = [*self._readers.values(), *self._inits.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- reading ---------------------------------------------------------------------------

    async def _init_cursor(self, symbol: str) -> None:
        failures = 0
        while True:
            try:
                rows = await self._r.xrevrange(self._keys.stream(symbol), count=1)
                break
            except RETRYABLE as exc:
                failures += 1
                self._unhealthy(exc)
                await asyncio.sleep(self._backoff.compute(failures))
        self._cursors[symbol] = rows[0][0].decode() if rows else "0-0"
        self._inits.pop(symbol, None)
        self._ready[symbol].set_result(None)

    def _ensure_reader(self, shard: int) -> None:
        task = self._readers.get(shard)
        if (task is None or task.done()) and not self._closed:
            self._readers[shard] = asyncio.create_task(self._read_shard(shard))

    async def _read_shard(self, shard: int) -> None:
        failures = 0
        stream = self._keys.stream
        in_round = False  # the pending flush waits for this read
        while not self._closed:
            reply = None
            try:
                wanted = self._by_shard.get(shard)
                if not wanted:
                    return  # restarted by the next add() on this shard
                streams = {stream(s): self._cursors[s] for s in wanted if s in self._cursors}
                if not streams:
                    await asyncio.sleep(self._block_ms / 1000)  # cursors still initialising
                    continue
                try:
                    # In a round the flush is waiting: take what is there, do not block.
                    reply = await self._reader.xread(streams, count=self._count,
                                                block=None if in_round else self._block_ms)
                except RETRYABLE as exc:
                    failures += 1
                    self._unhealthy(exc)
                    await asyncio.sleep(self._backoff.compute(failures))
                    continue
                except redis.ResponseError as exc:
                    # e.g. a stream deleted under a blocked read; the reader must
                    # not die with it (every client of the shard would go quiet).
                    failures += 1
                    log.error("XREAD on shard %d failed: %s", shard, exc)
                    await asyncio.sleep(self._backoff.compute(failures))
                    continue
                failures = 0
                self.healthy = True
                self.last_ok = time.monotonic()
                if reply:
                    self._dispatch(reply)
            finally:
                if in_round:
                    in_round = False
                    self._round_done()
            if reply and self._flush_interval_s and not self._full(reply):
                await self._park()
                in_round = True

    def _full(self, reply: list[Any]) -> bool:
        """Whether a stream had more than one read could take: read on at once."""
        count = self._count
        return any(len(entries) >= count for _, entries in reply)

    async def _park(self) -> None:
        """Wait until the next flush wants this shard read."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._parked.append(future)
        if self._flush_handle is None:
            self._schedule_round(loop)
        return await future

    def _unhealthy(self, exc: BaseException) -> None:
        if self.healthy:
            log.warning("redis unreachable, retrying with backoff: %s", exc)
        self.healthy = False

    def _dispatch(self, reply: list[Any]) -> None:
        symbol_of = self._keys.symbol_of
        for stream_key, entries in reply:
            symbol = symbol_of(stream_key)
            current = self._cursors.get(symbol)
            if current is None or not entries:
                continue  # unsubscribed while the read was in flight
            floor = id_key(current)
            batch: list[Entry] = []
            for raw_id, fields in entries:
                entry_id = raw_id.decode()
                key = id_key(entry_id)
                if key <= floor:
                    continue  # re-subscribed meanwhile: the new cursor is ahead
                try:
                    encoded = entry_to_json(fields, entry_id)
                except ValueError as exc:
                    # The entry stays in Redis; the persist workers dead-letter it.
                    self.bad_entries += 1
                    log.warning("skipping bad entry %s of %s: %s", entry_id, symbol, exc)
                    continue
                batch.append((key, entry_id, encoded))
            last = entries[-1][0].decode()
            if id_key(last) > floor:
                self._cursors[symbol] = last
            if not batch:
                continue
            self.ticks_read += len(batch)
            self._unflushed += len(batch)
            subs = self._subs.get(symbol, ())
            shared = Batch(symbol, batch)
            for sub in subs:
                sub.feed(shared)
            self._dirty.update(subs)
        if self._dirty:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        loop = asyncio.get_running_loop()
        handle = self._flush_handle
        if self._unflushed >= self._count:
            # A full read's worth waiting: no reason to hold it longer (this
            # also bounds a frame to about ``count`` ticks).
            if handle is None or isinstance(handle, asyncio.TimerHandle):
                if handle is not None:
                    handle.cancel()
                self._flush_handle = loop.call_soon(self._flush)
        elif handle is None:
            self._schedule_round(loop)

    def _schedule_round(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        # After a quiet spell, only the linger; otherwise the interval.
        # Measured from the start of the last round, not from its flush: the
        # round's own reads and dispatch (several ms at 50k ticks/s) must not
        # stretch the cycle, or ticks wait interval + round time to be read.
        due = max(self._last_round + self._flush_interval_s, now + self._linger_s)
        if due <= now:
            self._flush_handle = loop.call_soon(self._flush)
        else:
            self._flush_handle = loop.call_at(due, self._start_round)

    def _start_round(self) -> None:
        """The flush is due: have the parked readers read first, then flush."""
        parked, self._parked = self._parked, []
        loop = asyncio.get_running_loop()
        self._last_round = loop.time()
        woken = 0
        for future in parked:
            if not future.done():  # not cancelled with its reader
                future.set_result(None)
                woken += 1
        if not woken:
            self._flush()
            return
        self._round_left = woken
        self._in_round = True
        self._flush_handle = loop.call_later(ROUND_TIMEOUT_S, self._flush)

    def _round_done(self) -> None:
        if self._round_left <= 0 or self._closed:
            return  # that round's flush went without this read
        self._round_left -= 1
        if not self._round_left:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._flush()

    def _flush(self) -> None:
        self._flush_handle = None
        loop = asyncio.get_running_loop()
        if not self._in_round:
            self._last_round = loop.time()  # a flush without a round of reads
        self._in_round = False
        self._round_left = 0
        self._unflushed = 0
        dirty, self._dirty = self._dirty, set()
        for sub in dirty:
            sub.flush()
        if self._parked and not self._closed:
            # Readers that got entries in this interval read at the next flush.
            self._schedule_round(loop)
