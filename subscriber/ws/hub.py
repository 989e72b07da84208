"""The hub: reads the streams every connection of this process subscribes
to and fans each entry out to the subscribers of its stream.

A stream is a ``(symbol, channel)`` pair (see :mod:`pricepipe.keys`): a
symbol's trades, quotes and bars are three streams, read and cursored apart.
One reader task per shard issues one ``XREAD`` over that shard's subscribed
streams, every channel together (multi-key commands stay inside one hash
slot). Reads use explicit per-stream cursors, never ``$``, so no entry is
skipped between two reads. Each entry goes from the raw reply straight to
JSON once (:func:`pricepipe.codec.entry_to_json`, no event object for the
usual trade or quote); subscribers receive the encoded bytes.

A subscriber is anything with ``feed(batch)`` and ``flush()``: the hub calls
``feed`` with every :class:`Batch` of its streams (one per stream per read,
the same object for every subscriber), then ``flush`` on each subscriber it
fed, so entries read together (from several shards too) leave together.

Flushes are at least ``flush_interval_ms`` apart, and under load reads are
paced by them: a reader that got entries waits for the next flush, which
first has every waiting reader take what arrived meanwhile (``XREAD``
without ``BLOCK``), then flushes. Each busy shard is thus read once per
interval, just before the frames leave, so coalescing costs an entry at most
one interval (plus that read's round trip) and a connection gets at most
1000 / ``flush_interval_ms`` flushes per second. The first flush after a
quiet spell waits only ``linger_ms`` (1 ms), long enough for the other
shards' replies to a burst of appends to arrive, so that a burst is not
split into a flush now and the rest an interval later. Once ``count``
entries have been read since the last flush it is not put off any longer,
which keeps a flush to about ``count`` entries at any rate. 0 flushes on
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
from pricepipe.keys import Channel, Keys
from pricepipe.streams import reply_streams

from .protocol import CHANNELS, Pair, id_key

log = logging.getLogger(__name__)

#: One delivered entry: (sort key of its id, its id, its JSON bytes).
Entry = tuple[tuple[int, int], str, bytes]

#: Index of each channel in :data:`~.protocol.CHANNELS` (a batch's ``kind``).
KIND: dict[Channel, int] = {channel: i for i, channel in enumerate(CHANNELS)}
TRADES, QUOTES, BARS = (KIND[Channel.TRADES], KIND[Channel.QUOTES], KIND[Channel.BARS_1M])

#: Longest a flush waits for the reads it asked for (a slow one joins the next).
ROUND_TIMEOUT_S = 0.005

#: Errors after which a reader reconnects (with backoff) instead of failing.
RETRYABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError)


class Batch:
    """The new entries of one stream from one read, shared by all its subscribers."""

    __slots__ = ("symbol", "channel", "kind", "pair", "entries", "joined")

    def __init__(self, symbol: str, channel: Channel, entries: list[Entry]) -> None:
        self.symbol = symbol
        self.channel = channel
        #: ``CHANNELS.index(channel)``: sessions sort batches into frames by it.
        self.kind = KIND[channel]
        self.pair: Pair = (symbol, channel)
        self.entries = entries
        #: The entries' JSON joined with commas, once: a frame's list is the
        #: comma-joined ``joined`` of the batches it carries.
        self.joined = b",".join([entry[2] for entry in entries])

    def with_entries(self, entries: list[Entry]) -> Batch:
        """The same stream's batch holding only ``entries``."""
        return Batch(self.symbol, self.channel, entries)


class Subscriber(Protocol):
    def feed(self, batch: Batch) -> None: ...

    def flush(self) -> None: ...


class _Stream:
    """One subscribed stream: its subscribers and the hub's cursor in it."""

    __slots__ = ("symbol", "channel", "key", "raw_key", "subs", "cursor", "ready")

    def __init__(self, symbol: str, channel: Channel, key: str,
                 ready: asyncio.Future[None]) -> None:
        self.symbol = symbol
        self.channel = channel
        self.key = key
        self.raw_key = key.encode()
        self.subs: set[Subscriber] = set()
        #: The last entry ID fed (or the stream's last when first read); None
        #: until initialised, and then the stream is not read yet.
        self.cursor: str | None = None
        self.ready = ready


class Hub:
    """Shared stream reader of one websocket process.

    ``add`` returns an awaitable that completes once the hub holds a cursor
    for the stream: every entry after that cursor will be fed to the
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
        self._streams: dict[Pair, _Stream] = {}
        #: The same streams by their key as XREAD replies name them.
        self._by_key: dict[bytes, _Stream] = {}
        self._by_shard: dict[int, set[_Stream]] = {}
        #: Streams waiting for their first cursor, read by one pipelined task.
        self._to_init: list[_Stream] = []
        self._init_task: asyncio.Task[None] | None = None
        self._readers: dict[int, asyncio.Task[None]] = {}
        self._dirty: set[Subscriber] = set()
        self._flush_interval_s = flush_interval_ms / 1000
        self._linger_s = min(linger_ms, flush_interval_ms) / 1000
        self._flush_handle: asyncio.Handle | None = None
        #: loop.time() the last round started (its reads went out), or of the
        #: last flush without a round: the next round is due an interval later.
        self._last_round = float("-inf")
        #: Entries dispatched since the last flush; ``count`` of them flush at once.
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
        #: Entries read from Redis (each fanned out to many connections).
        self.entries_read = 0
        self.bad_entries = 0

    # --- subscriptions ---------------------------------------------------------------------

    def add(self, sub: Subscriber, symbol: str, channel: Channel) -> Awaitable[None]:
        pair = (symbol, channel)
        stream = self._streams.get(pair)
        shard = self._keys.shard(symbol)
        if stream is None:
            ready = asyncio.get_running_loop().create_future()
            stream = _Stream(symbol, channel, self._keys.stream(symbol, channel), ready)
            self._streams[pair] = stream
            self._by_key[stream.raw_key] = stream
            self._by_shard.setdefault(shard, set()).add(stream)
            self._to_init.append(stream)
            if self._init_task is None and not self._closed:
                self._init_task = asyncio.create_task(self._init_cursors())
        stream.subs.add(sub)
        self._ensure_reader(shard)
        # Shielded: one subscriber giving up must not cancel the others' wait.
        return asyncio.shield(stream.ready)

    def remove(self, sub: Subscriber, symbol: str, channel: Channel) -> None:
        pair = (symbol, channel)
        stream = self._streams.get(pair)
        if stream is None:
            return
        stream.subs.discard(sub)
        self._dirty.discard(sub)
        if stream.subs:
            return
        del self._streams[pair]
        del self._by_key[stream.raw_key]
        self._by_shard[self._keys.shard(symbol)].discard(stream)
        if not stream.ready.done():
            stream.ready.cancel()

    def subscriber_count(self, symbol: str, channel: Channel) -> int:
        stream = self._streams.get((symbol, channel))
        return 0 if stream is None else len(stream.subs)

    @property
    def symbols(self) -> list[str]:
        """Every symbol with at least one subscribed stream."""
        return sorted({symbol for symbol, _ in self._streams})

    @property
    def streams(self) -> list[Pair]:
        return sorted(self._streams)

    async def close(self) -> None:
        self._closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        tasks = [*self._readers.values()]
        if self._init_task is not None:
            tasks.append(self._init_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- reading ---------------------------------------------------------------------------

    async def _init_cursors(self) -> None:
        """Give every new stream its first cursor: the stream's last entry
        (``XREVRANGE ... COUNT 1``), pipelined for all the streams added in
        the meantime, so a subscribe to 500 symbols costs a few round trips."""
        failures = 0
        try:
            while True:
                # A removed stream's future is cancelled: nothing to read for it.
                self._to_init = [s for s in self._to_init if not s.ready.done()]
                if not self._to_init:
                    break
                wanted = list(self._to_init)
                pipe = self._r.pipeline(transaction=False)
                for stream in wanted:
                    pipe.xrevrange(stream.key, count=1)
                try:
                    replies = await pipe.execute(raise_on_error=False)
                except RETRYABLE as exc:
                    failures += 1
                    self._unhealthy(exc)
                    await asyncio.sleep(self._backoff.compute(failures))
                    continue
                failures = 0
                done = set(wanted)
                self._to_init = [s for s in self._to_init if s not in done]
                for stream, rows in zip(wanted, replies, strict=True):
                    if stream.ready.done():
                        continue  # removed meanwhile
                    if isinstance(rows, Exception):
                        # Not a stream (WRONGTYPE): its reads will fail and say
                        # so; the subscriber must not wait forever meanwhile.
                        log.error("cannot read %s: %s", stream.key, rows)
                        rows = []
                    stream.cursor = rows[0][0].decode() if rows else "0-0"
                    stream.ready.set_result(None)
        finally:
            self._init_task = None

    def _ensure_reader(self, shard: int) -> None:
        task = self._readers.get(shard)
        if (task is None or task.done()) and not self._closed:
            self._readers[shard] = asyncio.create_task(self._read_shard(shard))

    async def _read_shard(self, shard: int) -> None:
        failures = 0
        in_round = False  # the pending flush waits for this read
        while not self._closed:
            reply = None
            try:
                wanted = self._by_shard.get(shard)
                if not wanted:
                    return  # restarted by the next add() on this shard
                streams = {s.key: s.cursor for s in wanted if s.cursor is not None}
                if not streams:
                    # Cursors still initialising: read as soon as one is ready.
                    await asyncio.wait([s.ready for s in wanted], timeout=self._block_ms / 1000)
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

    def _full(self, reply: Any) -> bool:
        """Whether a stream had more than one read could take: read on at once."""
        count = self._count
        return any(len(entries) >= count for _, entries in reply_streams(reply))

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

    def _dispatch(self, reply: Any) -> None:
        by_key = self._by_key
        for stream_key, entries in reply_streams(reply):
            stream = by_key.get(stream_key)
            if stream is None and isinstance(stream_key, str):  # a client decoding replies
                stream = by_key.get(stream_key.encode())
            if stream is None or stream.cursor is None or not entries:
                # Unsubscribed while the read was in flight, or re-subscribed
                # and not initialised yet: the next read starts at its cursor.
                continue
            floor = id_key(stream.cursor)
            symbol, channel = stream.symbol, stream.channel
            batch: list[Entry] = []
            for raw_id, fields in entries:
                entry_id = raw_id.decode()
                key = id_key(entry_id)
                if key <= floor:
                    continue  # re-subscribed meanwhile: the new cursor is ahead
                try:
                    encoded = entry_to_json(channel, symbol, fields, entry_id)
                except ValueError as exc:
                    # The entry stays in Redis; the persist workers dead-letter it.
                    self.bad_entries += 1
                    log.warning("skipping bad entry %s of %s %s: %s", entry_id, symbol, channel,
                                exc)
                    continue
                batch.append((key, entry_id, encoded))
            last = entries[-1][0].decode()
            if id_key(last) > floor:
                stream.cursor = last
            if not batch:
                continue
            self.entries_read += len(batch)
            self._unflushed += len(batch)
            subs = stream.subs
            shared = Batch(symbol, channel, batch)
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
            # also bounds a flush to about ``count`` entries).
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
        # round's own reads and dispatch (several ms at 50k entries/s) must not
        # stretch the cycle, or entries wait interval + round time to be read.
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
