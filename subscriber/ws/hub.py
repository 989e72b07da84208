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

Epochs. Entry IDs only compare within one run of the Redis server holding
them (:func:`pricepipe.streams.epoch_of`): a restart from an older file or a
failover to a replica that was behind may have lost entries that readers
already got, and a stream then goes on from an older ID. Each shard's
reader therefore reads on a connection of its own (with no silent retries:
redis-py would reconnect to whatever server answers now) and reads the
epoch on it first, and again after every connection error, before it reads
any entry. When the epoch changed, every stream of the shard is reset: its
cursor is read afresh from the new server and every subscriber is told
(``epoch_changed``), so a session can say ``unrecoverable`` and start the
pair again from a snapshot. Reads elsewhere (the cursor initialisation
here, the sessions' snapshots and replays) run on the shared pool and
carry an epoch probe (``INFO server`` in the same pipeline), which must
match the shard's epoch for the read to be used.

The status stream (the ``status`` channel, every feed's status events) is
one more stream of its own "shard", :data:`FEEDS_SHARD`: its key carries
the ``{feeds}`` hash tag, not a symbol shard's, so it gets a reader of its
own (one ``XREAD`` of one key) and an epoch of its own, like any shard.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff

from pricepipe.codec import entry_to_json
from pricepipe.keys import Channel, Keys
from pricepipe.streams import async_epoch, epoch_of, reply_streams

from .protocol import (
    ALL_CHANNELS,
    FEEDS,
    FRAME_END,
    LIVE_HEADS,
    STATUS,
    Pair,
    Topic,
    encode_entry,
    id_key,
    text_frame,
)

log = logging.getLogger(__name__)

#: One delivered entry: (sort key of its id, its id, its JSON bytes).
Entry = tuple[tuple[int, int], str, bytes]

#: Index of each channel in :data:`~.protocol.ALL_CHANNELS` (a batch's ``kind``).
KIND: dict[Topic, int] = {channel: i for i, channel in enumerate(ALL_CHANNELS)}
TRADES, QUOTES, BARS = (KIND[Channel.TRADES], KIND[Channel.QUOTES], KIND[Channel.BARS_1M])
STATUS_KIND = KIND[STATUS]

#: The "shard" of the status stream (symbol shards are 0 and up).
FEEDS_SHARD = -1


def stream_key(keys: Keys, symbol: str, channel: Topic) -> str:
    """The stream of a pair: a symbol's stream of a channel, or the status stream."""
    if isinstance(channel, Channel):
        return keys.stream(symbol, channel)
    return keys.feed_status()

#: Longest a flush waits for the reads it asked for (a slow one joins the next).
ROUND_TIMEOUT_S = 0.005

#: Errors after which a reader reconnects (with backoff) instead of failing.
RETRYABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError)


class Batch:
    """The new entries of one stream from one read, shared by all its subscribers."""

    __slots__ = ("symbol", "channel", "kind", "pair", "entries", "joined", "_wire")

    def __init__(self, symbol: str, channel: Topic, entries: list[Entry]) -> None:
        self.symbol = symbol
        self.channel = channel
        #: ``ALL_CHANNELS.index(channel)``: sessions sort batches into frames by it.
        self.kind = KIND[channel]
        self.pair: Pair = (symbol, channel)
        self.entries = entries
        #: The entries' JSON joined with commas, once: a frame's list is the
        #: comma-joined ``joined`` of the batches it carries.
        self.joined = b",".join([entry[2] for entry in entries])
        self._wire: bytes | None = None

    def wire(self) -> bytes:
        """This batch alone as a live data frame, websocket header included
        (unmasked, as a server writes it), built on first use and then the
        same bytes for every subscriber whose flush holds only this batch:
        with many subscribers per stream, the usual flush costs a write, not
        an encoding."""
        wire = self._wire
        if wire is None:
            wire = self._wire = text_frame(LIVE_HEADS[self.kind] + self.joined + FRAME_END)
        return wire

    def with_entries(self, entries: list[Entry]) -> Batch:
        """The same stream's batch holding only ``entries``."""
        return Batch(self.symbol, self.channel, entries)


class Subscriber(Protocol):
    def feed(self, batch: Batch) -> None: ...

    def flush(self) -> None: ...

    def epoch_changed(self, pair: Pair, last: str | None, epoch: str) -> None:
        """The stream's server changed (it may have lost entries): ``last`` is
        the last entry ID the hub read of it before (None: not read yet); no
        entry is fed until the stream is ready again (:meth:`Hub.ready`)."""


class _Stream:
    """One subscribed stream: its subscribers and the hub's cursor in it."""

    __slots__ = ("symbol", "channel", "key", "raw_key", "subs", "cursor", "ready")

    def __init__(self, symbol: str, channel: Topic, key: str,
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


def _unparsed(response: Any, **options: Any) -> Any:
    return response


class Hub:
    """Shared stream reader of one websocket process.

    ``add`` returns an awaitable that completes once the hub holds a cursor
    for the stream (and knows the epoch of its shard): every entry after that
    cursor will be fed to the subscriber, so a subscriber that registers,
    waits, then reads the stream itself (snapshot or resume) can stitch the
    two without a gap, provided its read was in the same epoch
    (:meth:`probe` and :meth:`epoch`).
    """

    def __init__(self, r: Any, keys: Keys, *, block_ms: int = 100, count: int = 1000,
                 flush_interval_ms: float = 0, linger_ms: float = 1.0) -> None:
        self._r = r
        self._keys = keys
        # A cluster client routes each command itself and keeps its replies
        # parsed; its epochs are read per shard after connection errors, and
        # reads on the shared pool carry no probe (INFO has no key to route by).
        self._cluster = isinstance(r, redis.asyncio.RedisCluster | redis.RedisCluster)
        self._reader_pool: Any = None if self._cluster else _private_pool(r)
        self._shard_clients: dict[int, Any] = {}
        #: Per shard, the epoch of the server its reader is connected to.
        self._epochs: dict[int, str] = {}
        self._epoch_signal: asyncio.Future[None] | None = None
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
        #: Shards whose epoch changed (each reset every stream of the shard).
        self.epoch_changes = 0
        #: Unexpected errors a reader survived (each also made it unhealthy).
        self.reader_errors = 0

    # --- subscriptions ---------------------------------------------------------------------

    def add(self, sub: Subscriber, symbol: str, channel: Topic) -> Awaitable[None]:
        pair = (symbol, channel)
        stream = self._streams.get(pair)
        shard = self.shard(symbol)
        if stream is None:
            ready = asyncio.get_running_loop().create_future()
            stream = _Stream(symbol, channel, stream_key(self._keys, symbol, channel), ready)
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

    def remove(self, sub: Subscriber, symbol: str, channel: Topic) -> None:
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
        self._by_shard[self.shard(symbol)].discard(stream)
        if not stream.ready.done():
            stream.ready.cancel()

    def subscriber_count(self, symbol: str, channel: Topic) -> int:
        stream = self._streams.get((symbol, channel))
        return 0 if stream is None else len(stream.subs)

    def ready(self, symbol: str, channel: Topic) -> Awaitable[None]:
        """Until the stream has a cursor again (after an epoch change); the
        stream must have been added."""
        return asyncio.shield(self._streams[(symbol, channel)].ready)

    def shard(self, symbol: str) -> int:
        """The shard of a symbol's streams; :data:`FEEDS_SHARD` for :data:`~.protocol.FEEDS`."""
        return FEEDS_SHARD if symbol == FEEDS else self._keys.shard(symbol)

    def _route_key(self, shard: int) -> str:
        """A key of the shard's hash slot (a cluster client routes by it)."""
        return self._keys.feed_status() if shard == FEEDS_SHARD else self._keys.symbols(shard)

    def epoch(self, shard: int) -> str | None:
        """The epoch of the server the shard's reader reads (None: not read yet)."""
        return self._epochs.get(shard)

    @property
    def cluster(self) -> bool:
        """Whether the streams are read from a Redis Cluster."""
        return self._cluster

    @property
    def probes(self) -> bool:
        """Whether reads on the shared pool can carry an epoch probe (:meth:`probe`)."""
        return not self._cluster

    def probe(self, pipe: Any) -> bool:
        """Queue an epoch probe as the first command of ``pipe``; read its reply
        with :func:`pricepipe.streams.epoch_of`. False (nothing queued) on a cluster."""
        if self._cluster:
            return False
        pipe.info("server")
        return True

    async def wait_epoch(self, shard: int, want: str | None = None, *,
                         timeout_s: float) -> bool:
        """Until the shard's epoch is known (and is ``want``, when given);
        False after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            epoch = self._epochs.get(shard)
            if epoch is not None and (want is None or epoch == want):
                return True
            left = deadline - loop.time()
            if left <= 0 or self._closed:
                return False
            if self._epoch_signal is None or self._epoch_signal.done():
                self._epoch_signal = loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._epoch_signal), left)
            except TimeoutError:
                return False

    @property
    def alive(self) -> bool:
        """Every shard with subscribed streams has its reader running."""
        for shard, streams in self._by_shard.items():
            if streams and not self._closed:
                task = self._readers.get(shard)
                if task is None or task.done():
                    return False
        return True

    @property
    def symbols(self) -> list[str]:
        """Every symbol with at least one subscribed stream (not the status stream's)."""
        return sorted({symbol for symbol, _ in self._streams if symbol != FEEDS})

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
        for client in self._shard_clients.values():
            if client is not self._r:
                await client.aclose()
        if self._reader_pool is not None:
            await self._reader_pool.disconnect()

    # --- reading ---------------------------------------------------------------------------

    async def _init_cursors(self) -> None:
        """Give every new stream its first cursor: the stream's last entry
        (``XREVRANGE ... COUNT 1``), pipelined for all the streams added in
        the meantime, so a subscribe to 500 symbols costs a few round trips.
        A stream is initialised only from a read in its shard's epoch. Never
        raises (subscribers wait on it): failures are retried with backoff."""
        failures = 0
        try:
            while not self._closed:
                # A removed stream's future is cancelled: nothing to read for it.
                self._to_init = [s for s in self._to_init if not s.ready.done()]
                if not self._to_init:
                    break
                try:
                    done = await self._init_some()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not isinstance(exc, RETRYABLE):
                        self.reader_errors += 1
                        log.exception("initialising stream cursors failed")
                    self._unhealthy(exc)
                    done = None
                if done is None:
                    failures += 1
                    await asyncio.sleep(self._backoff.compute(failures))
                else:
                    failures = 0
        finally:
            self._init_task = None

    async def _init_some(self) -> bool | None:
        """One pipelined read of the waiting streams whose shard epoch is known;
        None when some could not be initialised (the server changed under the
        reader, which will notice): then the caller backs off."""
        shard_of = self.shard
        wanted = [s for s in self._to_init if shard_of(s.symbol) in self._epochs]
        if not wanted:
            # The readers read the epochs first: wait for one.
            await self.wait_epoch(shard_of(self._to_init[0].symbol),
                                  timeout_s=self._block_ms / 1000)
            return True
        pipe = self._r.pipeline(transaction=False)
        probed = self.probe(pipe)
        for stream in wanted:
            pipe.xrevrange(stream.key, count=1)
        replies = list(await pipe.execute(raise_on_error=False))
        epoch = probed_epoch(replies) if probed else None
        done: set[_Stream] = set()
        stale = False
        for stream, rows in zip(wanted, replies, strict=True):
            if stream.ready.done():
                continue  # removed meanwhile
            if epoch is not None and epoch != self._epochs.get(shard_of(stream.symbol)):
                stale = True  # read from another server than the reader's: again
                continue
            if isinstance(rows, Exception):
                # Not a stream (WRONGTYPE): its reads will fail and say
                # so; the subscriber must not wait forever meanwhile.
                log.error("cannot read %s: %s", stream.key, rows)
                rows = []
            stream.cursor = rows[0][0].decode() if rows else "0-0"
            stream.ready.set_result(None)
            done.add(stream)
        self._to_init = [s for s in self._to_init if s not in done]
        return None if stale else True

    def _ensure_reader(self, shard: int) -> None:
        task = self._readers.get(shard)
        if (task is None or task.done()) and not self._closed:
            self._readers[shard] = asyncio.create_task(self._read_shard(shard))

    def _client_for(self, shard: int) -> Any:
        """The shard reader's own client: one connection, no silent retries,
        XREAD replies unparsed (entries go straight to JSON, no dict each)."""
        client = self._shard_clients.get(shard)
        if client is None:
            if self._reader_pool is None:
                client = self._r
            else:
                client = redis.asyncio.Redis(connection_pool=self._reader_pool,
                                             single_connection_client=True)
                client.set_response_callback("XREAD", _unparsed)
            self._shard_clients[shard] = client
        return client

    async def _read_shard(self, shard: int) -> None:
        """Read the shard's streams until none is subscribed. Never raises:
        every failure is retried with backoff, and reported by :attr:`healthy`."""
        client = self._client_for(shard)
        failures = 0
        in_round = False  # the pending flush waits for this read
        checked = False  # the epoch was read on the current connection
        while not self._closed:
            reply = None
            try:
                wanted = self._by_shard.get(shard)
                if not wanted:
                    return  # restarted by the next add() on this shard
                if not checked:
                    # Before any entry from this connection: which server is it?
                    self._set_epoch(shard, await async_epoch(client, self._route_key(shard)))
                    checked = True
                streams = {s.key: s.cursor for s in wanted if s.cursor is not None}
                if not streams:
                    # Cursors still initialising: read as soon as one is ready.
                    await asyncio.wait([s.ready for s in wanted], timeout=self._block_ms / 1000)
                    continue
                # In a round the flush is waiting: take what is there, do not block.
                reply = await client.xread(streams, count=self._count,
                                           block=None if in_round else self._block_ms)
                failures = 0
                self.healthy = True
                self.last_ok = time.monotonic()
                if reply:
                    self._dispatch(reply)
            except asyncio.CancelledError:
                raise
            except RETRYABLE as exc:
                # The next connection may reach another server: read its epoch first.
                checked = False
                failures += 1
                self._unhealthy(exc)
                await asyncio.sleep(self._backoff.compute(failures))
                continue
            except redis.ResponseError as exc:
                # e.g. a stream deleted under a blocked read; the reader must
                # not die with it (every client of the shard would go quiet).
                failures += 1
                self._unhealthy(exc, f"XREAD on shard {shard} failed")
                await asyncio.sleep(self._backoff.compute(failures))
                continue
            except Exception as exc:
                # A bug or a reply of an unexpected shape: the same, loudly.
                checked = False
                failures += 1
                self.reader_errors += 1
                log.exception("reader of shard %d failed", shard)
                self._unhealthy(exc, f"reader of shard {shard} failed")
                await asyncio.sleep(self._backoff.compute(failures))
                continue
            finally:
                if in_round:
                    in_round = False
                    self._round_done()
            if reply and self._flush_interval_s and not self._full(reply):
                await self._park()
                in_round = True

    def _set_epoch(self, shard: int, epoch: str) -> None:
        old = self._epochs.get(shard)
        self._epochs[shard] = epoch
        if old is not None and old != epoch:
            self._reset_shard(shard, old, epoch)
        if self._epoch_signal is not None and not self._epoch_signal.done():
            self._epoch_signal.set_result(None)

    def _reset_shard(self, shard: int, old: str, epoch: str) -> None:
        """The shard's server changed: read every stream's cursor again from
        it, and tell every subscriber (before anything of the new epoch)."""
        streams = list(self._by_shard.get(shard, ()))
        log.warning("redis epoch of shard %d changed (%s -> %s): it may have lost entries; "
                    "%d streams start again", shard, old, epoch, len(streams))
        self.epoch_changes += 1
        loop = asyncio.get_running_loop()
        waiting = set(self._to_init)
        for stream in streams:
            last, stream.cursor = stream.cursor, None
            if stream.ready.done():
                stream.ready = loop.create_future()
            if stream not in waiting:
                self._to_init.append(stream)
            for sub in list(stream.subs):
                sub.epoch_changed((stream.symbol, stream.channel), last, epoch)
        if self._to_init and self._init_task is None and not self._closed:
            self._init_task = asyncio.create_task(self._init_cursors())

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

    def _unhealthy(self, exc: BaseException,
                   what: str = "redis unreachable") -> None:
        if self.healthy:
            log.warning("%s, retrying with backoff: %s", what, exc)
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
            # The codec's own function for a symbol's stream: the hot path
            # stays one call per entry.
            encode: Callable[[Any, str, Any, str], bytes] = (
                entry_to_json if isinstance(channel, Channel) else encode_entry)
            batch: list[Entry] = []
            for raw_id, fields in entries:
                entry_id = raw_id.decode()
                key = id_key(entry_id)
                if key <= floor:
                    continue  # re-subscribed meanwhile: the new cursor is ahead
                try:
                    encoded = encode(channel, symbol, fields, entry_id)
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


def _private_pool(r: Any) -> Any:
    """A pool to ``r``'s server with ``r``'s options but no retries: a
    reader must see every connection error, since the connection made after
    one may reach another server (after a failover) whose epoch it must read."""
    pool = r.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs["retry"] = Retry(NoBackoff(), 0)
    kwargs["retry_on_error"] = []
    kwargs.pop("retry_on_timeout", None)
    return redis.asyncio.ConnectionPool(connection_class=pool.connection_class, **kwargs)


def probed_epoch(replies: list[Any]) -> str:
    """Pop the epoch probe's reply (queued first by :meth:`Hub.probe`) off a
    pipeline's replies; its epoch. Raises the probe's error, if it failed."""
    info = replies.pop(0)
    if isinstance(info, Exception):
        raise info
    return epoch_of(info)
