"""The persist worker: Redis Streams -> PostgreSQL, nothing lost, nothing doubled.

Delivery guarantee: every entry of every registered symbol's trades and
quotes streams ends up either as exactly one row of ``trades`` or ``quotes``
or as one dead letter with its reason.

* **At least once** from Redis: an entry is acknowledged (``XACK``) only
  after the transaction holding its row has committed. A worker that dies
  before that leaves the entry pending; it is delivered again to the same
  consumer name on restart, or claimed by another worker after
  ``claim_idle_ms``.
* **At most once** into PostgreSQL: the row's primary key contains the packed
  entry ID and the insert is ``ON CONFLICT DO NOTHING``, so a redelivered
  entry adds no row and is not counted twice in its 1-minute bar. One
  transaction may hold trades and quotes together.
* **The bars stream** is published after the commit and before the
  ``XACK`` (see :mod:`.barfeed`). A crash between the two redelivers the
  entries; the redelivered batch inserts nothing, so it changes no bar and
  publishes nothing. Publishing after the ``XACK`` instead would widen the
  window in which a crash loses a bar message (messages are derived data:
  the next change of the bar, or the final pass, publishes the newer state)
  without making anything safer. A bar Redis refuses is skipped with a log
  line; its rows are committed either way.
* **Outages** keep the worker's place: the batch in hand is retried against
  PostgreSQL (and its ``XACK`` against Redis) with capped, jittered backoff
  until the server is back; nothing newer is read meanwhile, and what the
  publishers add waits in Redis. Trimming and the heartbeat go on meanwhile.
* **A full Redis** (``maxmemory``, ``noeviction``) refuses writes that may
  grow memory; reads, ``XACK`` and ``XTRIM`` still work. The worker trims
  first (at start, and right after a refusal), keeps persisting and
  acknowledging, skips the heartbeat and bar messages (logged once per
  stretch, counted), and leaves an entry whose dead letter is refused
  pending: it is delivered again later, never acknowledged unkept.
* **Poison**: an entry that cannot be decoded or validated is dead-lettered
  at once (retrying cannot change its bytes) and never blocks its batch, and
  so is one whose event time is further from its entry's append time than
  :data:`pricepipe.events.MAX_EVENT_LEAD_AT_APPEND_US` ahead or
  :data:`pricepipe.events.MAX_EVENT_AGE_AT_APPEND_US` behind; a row
  PostgreSQL refuses is isolated by splitting the batch and dead-lettered;
  an entry delivered more than ``max_deliveries`` times (it keeps killing
  workers) is dead-lettered before it is tried again.

Stopping: the first SIGTERM (or SIGINT) lets the batch in hand finish -
committed and acknowledged - and then :meth:`PersistWorker.run` returns 0.
If the batch cannot finish because a server is down, it is left pending
(nothing lost: it is redelivered later). A second signal exits at once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import psycopg2
import redis
from redis.backoff import EqualJitterBackoff

from pricepipe import codec, notify, streams
from pricepipe.backpressure import is_oom_error
from pricepipe.clock import now_ms
from pricepipe.stop import StopRequest

from .barfeed import BarFeed, FinalPass
from .bars import BarStateRow
from .batch import (
    Batch,
    EntryRef,
    Reject,
    quote_fields,
    reject_untimely,
    trade_fields,
)
from .consumer import GroupConsumer
from .episode import Episode
from .settings import WorkerSettings
from .sink import EventSink, WriteResult, classify

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How often consumers gone for good are looked for (see ``consumer_expiry_s``).
CONSUMER_SWEEP_INTERVAL_S = 600.0

#: Redis errors worth waiting out (server restarting, loading its AOF, network).
REDIS_RETRYABLE = (redis.ConnectionError, redis.TimeoutError)


class Abandoned(Exception):
    """A stop was requested while a server was unreachable: the batch in hand
    stays pending in Redis (it is redelivered later), nothing is lost."""


@dataclass
class Stats:
    """Counters of one worker's life, for logs, heartbeats and tests."""

    batches: int = 0
    entries: int = 0
    #: New rows, both tables (the sum of the next two).
    rows_inserted: int = 0
    trades_inserted: int = 0
    quotes_inserted: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    #: Of the dead letters: event time too far from its entry's append time.
    untimely: int = 0
    #: Rejected entries a full Redis would not take as dead letters: left
    #: pending, delivered again later (counted each time).
    dead_letters_deferred: int = 0
    #: Writes a full Redis refused (OOM): heartbeats, dead letters, bar calls.
    redis_full_refusals: int = 0
    #: Entries removed from the streams by trimming.
    trimmed: int = 0
    claimed: int = 0
    retries: int = 0
    bars_published: int = 0
    bars_final: int = 0
    #: Publications of bars given up (Redis refused, or the final pass failed).
    bar_errors: int = 0
    started_ms: int = field(default_factory=now_ms)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True, slots=True)
class _Rows:
    """Rows of one kind with their entries and COPY lines (same order)."""

    rows: list[Any]
    refs: list[EntryRef]
    lines: list[bytes]

    def halves(self) -> tuple[_Rows, _Rows]:
        mid = len(self.rows) // 2
        return (_Rows(self.rows[:mid], self.refs[:mid], self.lines[:mid]),
                _Rows(self.rows[mid:], self.refs[mid:], self.lines[mid:]))


class PersistWorker:
    """One persist worker. Build with connections, then :meth:`run`.

    ``burst``: drain everything in the streams now - new entries, this
    name's pending ones, and other consumers' pending ones idle for
    ``claim_idle_ms`` - then return (rq's burst mode; used by tests and
    one-shot catch-ups).
    """

    def __init__(self, r: Any, sink: EventSink, consumer: GroupConsumer,
                 settings: WorkerSettings, *, burst: bool = False,
                 stop: StopRequest | None = None, feed: BarFeed | None = None,
                 final_pass: FinalPass | None = None) -> None:
        self.r = r
        self.sink = sink
        self.consumer = consumer
        self.settings = settings
        self.burst = burst
        self.stop = stop or StopRequest()
        self.stats = Stats()
        #: Publishes the bars each commit changed.
        self.feed = feed or (final_pass.feed if final_pass is not None else BarFeed(
            r, consumer.keys, grace_ms=settings.bars_final_grace_ms,
            horizon_s=settings.bars_horizon_s))
        #: Publishes ended minutes final; None: this worker leaves that to others.
        self.final_pass = final_pass
        self._next_final = 0.0
        self._final_failures = 0
        self._backoff = EqualJitterBackoff(cap=settings.retry_cap_s, base=settings.retry_base_s)
        self._next_refresh = 0.0
        self._next_claim = 0.0
        self._next_trim = 0.0  # trim first: a full Redis needs it before anything else
        self._next_heartbeat = 0.0
        # Trimming and the heartbeat also run while a batch waits out a
        # PostgreSQL outage, from whichever thread waits: one at a time.
        self._upkeep_lock = threading.Lock()
        self._heartbeat_refusals = Episode("the heartbeat", "the worker goes on without it", log)
        self._letter_refusals = Episode(
            "dead letters", "rejected entries stay pending and are delivered again later", log)
        self._next_sweep = 0.0
        self._idle_shard = 0
        # Pipelining: a writer thread commits batch N while this thread reads
        # and decodes batch N+1 (psycopg2 releases the GIL while PostgreSQL works).
        self._inbox: queue.Queue[tuple[Batch, bool] | None] = queue.Queue(maxsize=1)
        self._writer: threading.Thread | None = None
        self._writer_error: BaseException | None = None
        self._abandoned = False

    def refusal_episodes(self) -> dict[str, Episode]:
        """The kinds of write a full Redis may refuse this worker, by name
        (``heartbeat``, ``dead_letters``, ``bars``), for its metrics."""
        return {"heartbeat": self._heartbeat_refusals, "dead_letters": self._letter_refusals,
                "bars": self.feed.refusals}

    # Life cycle

    def run(self, *, install_signals: bool = True) -> int:
        """Serve until stopped (or drained, in burst mode). Returns the exit code."""
        if install_signals:
            self.stop.install()
        if self.settings.pipeline:
            self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                            name=f"persist-writer-{self.consumer.name}")
            self._writer.start()
        try:
            self._start()
            notify.ready(f"persisting as {self.consumer.name}")
            log.info("persist worker %s reading %d stream(s)", self.consumer.name,
                     len(self.consumer.all_streams()))
            self._recover_own_pending()
            while not self.stop.requested and not self._abandoned:
                progressed = self.step()
                if self.burst and not progressed:
                    break
            self._drain()
            if self.burst and not self.stop.requested:
                self._trim(sweep=True)  # everything drained: the moment to forget consumers
        except Abandoned:
            self._abandoned = True
        finally:
            self._stop_writer()
            self.sink.close()
            if self.final_pass is not None:
                self.final_pass.close()
        if self._writer_error is not None:
            raise self._writer_error
        if self._abandoned:
            log.warning("stopped with a batch unfinished: it stays pending and is redelivered")
        self._heartbeat()  # last word: final counters, expiring after the usual TTL
        log.info("persist worker %s stopped: %s", self.consumer.name, self.stats.as_dict())
        return 0

    def _start(self) -> None:
        """Connect, then trim before anything else: a worker (re)started while
        Redis is full frees what it can first (``XTRIM`` is allowed then),
        and keeps trimming while it waits for PostgreSQL."""
        self._retry("connect to redis", self.r.ping)
        self._retry("read the symbol registry", self.consumer.refresh)
        self._next_refresh = time.monotonic() + self.settings.refresh_interval_s
        self._upkeep()
        self._retry_db("connect to postgresql", self.sink.connect)

    def step(self) -> bool:
        """One round over every shard. Returns True if any entry was handled."""
        now = time.monotonic()
        if self.burst or now >= self._next_refresh:
            self._retry("read the symbol registry", self.consumer.refresh)
            self._next_refresh = now + self.settings.refresh_interval_s
        progressed = False
        if now >= self._next_claim:
            progressed |= self._claim_round(now)
        # What every shard has is written together, up to batch_size per
        # transaction: at low rates each shard holds a few entries, and one
        # commit per shard per round would cost PostgreSQL a WAL flush each.
        pending = Batch()
        for shard in list(self.consumer.streams):
            if self.stop.requested:
                break
            count = self.consumer.count_per_stream(shard, self.settings.batch_size)
            batch = self._retry("read new entries",
                                partial(self.consumer.read_new, shard, count=count))
            if len(batch):
                pending.extend(batch)
                progressed = True
                if len(pending) >= self.settings.batch_size:
                    self.process(pending, redelivered=False)
                    pending = Batch()
        if len(pending):
            self.process(pending, redelivered=False)
            if not self.burst and len(pending) < self.settings.batch_size // 2:
                # A small round: the backlog is gone. Let entries gather
                # rather than pay a round of reads and a commit for a few.
                self.stop.wait(self.settings.linger_ms / 1000)
        if self.stop.requested:
            return progressed
        if not progressed:
            # A burst claims on the same clock as a service, and once more when
            # nothing new is left (it ends only when neither gives anything):
            # claiming every round waited for the writer every round, so a
            # burst never read one batch while writing the other (1.3x of
            # sequential instead of ~2x).
            progressed = self._claim_round(now) if self.burst else self._wait_for_entries()
        self._housekeeping()
        return progressed

    def _claim_round(self, now: float) -> bool:
        # Batches in flight are pending for this consumer: let them finish
        # first, so XAUTOCLAIM never hands this worker its own entries.
        self._drain()
        progressed = self._claim_idle()
        self._next_claim = now + self.settings.claim_interval_s
        return progressed

    def _wait_for_entries(self) -> bool:
        """Nothing anywhere: block on one shard at a time, rotating, so an idle
        worker neither spins nor waits longer than ``block_ms`` to notice a stop."""
        shards = list(self.consumer.streams)
        if not shards:
            self.stop.wait(self.settings.block_ms / 1000)
            return False
        shard = shards[self._idle_shard % len(shards)]
        self._idle_shard += 1
        count = self.consumer.count_per_stream(shard, self.settings.batch_size)
        batch = self._retry("wait for entries", lambda: self.consumer.read_new(
            shard, count=count, block_ms=self.settings.block_ms))
        if len(batch):
            self.process(batch, redelivered=False)
            return True
        return False

    def _recover_own_pending(self) -> None:
        """Read back what this consumer name had been given but not acknowledged."""
        for shard, names in list(self.consumer.streams.items()):
            cursors = dict.fromkeys(names, "0")
            count = self.consumer.count_per_stream(shard, self.settings.batch_size)
            while cursors and not self.stop.requested:
                batch = self._retry("read own pending entries", partial(
                    self.consumer.read_own_pending, shard, cursors, count=count))
                if len(batch):
                    log.info("recovering %d entries pending for %s", len(batch),
                             self.consumer.name)
                    self.process(batch, redelivered=True)

    def _claim_idle(self) -> bool:
        """Take over entries that dead (or stuck) consumers left pending."""
        progressed = False
        for stream in self.consumer.all_streams():
            cursor = "0-0"
            while not self.stop.requested:
                batch, cursor = self._retry("claim idle entries", partial(
                    self.consumer.claim_idle, stream, min_idle_ms=self.settings.claim_idle_ms,
                    count=self.settings.batch_size, start_id=cursor))
                if len(batch):
                    self.stats.claimed += len(batch)
                    log.info("claimed %d idle entries of %s", len(batch), stream)
                    deferred = self.stats.dead_letters_deferred
                    self.process(batch, redelivered=True)
                    if self.burst:
                        # Entries that only went back to pending (dead letters a
                        # full Redis refused) are no progress: with claim_idle_ms
                        # 0 a burst would claim them again and again.
                        self._drain()
                        if self.stats.dead_letters_deferred - deferred >= len(batch):
                            if cursor == "0-0":
                                break
                            continue
                    progressed = True
                if cursor == "0-0":
                    break
        return progressed

    # One batch

    def process(self, batch: Batch, *, redelivered: bool) -> None:
        """Hand a batch to the writer thread (or persist it here, without one).

        Blocks while the writer is busy with the previous batch, so at most
        two batches are in flight. Raises what the writer died of.
        """
        if self._writer is None:
            self._process_now(batch, redelivered=redelivered)
            return
        while not self._abandoned:
            self._check_writer()
            try:
                self._inbox.put((batch, redelivered), timeout=0.2)
                return
            except queue.Full:
                # The writer is busy, or waiting out an outage: keep trimming
                # (a full Redis needs it) and beating meanwhile.
                notify.watchdog()
                self._upkeep()
        self._check_writer()

    def _check_writer(self) -> None:
        if self._writer_error is not None:
            raise Abandoned("the writer thread failed") from self._writer_error

    def _drain(self) -> None:
        """Wait until every handed-over batch is committed and acknowledged
        (or abandoned)."""
        if self._writer is not None:
            self._inbox.join()
            self._check_writer()

    def _stop_writer(self) -> None:
        if self._writer is None:
            return
        self._inbox.join()
        self._inbox.put(None)
        self._writer.join()

    def _write_loop(self) -> None:
        while True:
            item = self._inbox.get()
            try:
                if item is None:
                    return
                if self._abandoned:
                    continue  # not written, not acknowledged: it stays pending
                batch, redelivered = item
                try:
                    self._process_now(batch, redelivered=redelivered)
                except Abandoned:
                    self._abandoned = True
                except BaseException as exc:  # handed to the reading thread, which raises it
                    log.exception("the writer failed; the batch stays pending")
                    self._writer_error = exc
                    self._abandoned = True
            finally:
                self._inbox.task_done()

    def _process_now(self, batch: Batch, *, redelivered: bool) -> None:
        """Persist a batch, dead-letter its poison, publish the bars it
        changed, then acknowledge it all.

        Safe to call again with the same entries: rows already written are
        skipped by the database (and change no bar, so nothing is
        published), acknowledgements are idempotent.
        """
        self.stats.batches += 1
        self.stats.entries += len(batch)
        # The untimely go to the end of the rejects, as rejects[first:last].
        first = len(batch.rejects)
        last = first + reject_untimely(batch)
        deliveries: dict[tuple[str, str], int] = {}
        if redelivered:
            deliveries = self._retry("read delivery counts",
                                     lambda: self.consumer.delivery_counts(batch.ack_ids()))
            self._drop_poison(batch, deliveries)
        if batch.rejects:
            # Dead letters go in order; those a full Redis refused are counted
            # when they finally go.
            written = self._dead_letter("dead-letter entries", batch.rejects, deliveries)
            self.stats.untimely += max(0, min(written, last) - first)
        result, refused = self._write(
            _Rows(batch.trades, batch.trade_ids, batch.trade_lines),
            _Rows(batch.quotes, batch.quote_ids, batch.quote_lines), fresh=not redelivered)
        if refused:
            self._dead_letter("dead-letter refused rows", refused, deliveries)
        self.stats.trades_inserted += result.trades
        self.stats.quotes_inserted += result.quotes
        self.stats.rows_inserted += result.trades + result.quotes
        self.stats.duplicates += batch.row_count - len(refused) - result.trades - result.quotes
        if result.bars:
            self._publish_bars(result.bars)
        ack = batch.row_ack_ids()
        self._retry("acknowledge entries", lambda: self.consumer.ack(ack))

    def _dead_letter(self, what: str, rejects: list[Reject],
                     deliveries: dict[tuple[str, str], int]) -> int:
        """Dead-letter ``rejects`` (retried through Redis outages); returns how
        many went. Those a full Redis refuses stay pending, unacknowledged:
        claimed again after ``claim_idle_ms`` (by this worker or another) or
        read back at a restart, and dead-lettered then. Meanwhile the next
        round trims first, to make room."""
        written, deferred, exc = self._retry(
            what, lambda: self.consumer.dead_letter(rejects, deliveries))
        self.stats.dead_letters += written
        if deferred:
            assert exc is not None
            self.stats.dead_letters_deferred += len(deferred)
            self.stats.redis_full_refusals += 1
            self._letter_refusals.refused(exc)
            self._next_trim = 0.0
        elif written:
            self._letter_refusals.accepted()
        return written

    def _publish_bars(self, bars: list[BarStateRow]) -> None:
        """The committed bars' new states to the bars streams. Connection
        errors are retried (a repeat publishes nothing twice); anything else
        is logged and skipped: bar messages are derived data, the rows are
        committed whatever happens here. A full Redis refuses them: skipped,
        logged once per stretch of refusals (see :class:`.barfeed.BarFeed`)."""
        refusals = self.feed.refusals.refusals
        try:
            published = self._retry("publish bars", lambda: self.feed.publish(bars))
        except Abandoned:
            raise
        except Exception:
            self.stats.bar_errors += len(bars)
            log.exception("publishing %d bar(s) failed; skipped (the rows are committed)",
                          len(bars))
            return
        self.stats.bars_published += published
        refused = self.feed.refusals.refusals - refusals
        if refused:
            self.stats.redis_full_refusals += refused
            self.stats.bar_errors += len(bars) - published

    def _drop_poison(self, batch: Batch, deliveries: dict[tuple[str, str], int]) -> None:
        limit = self.settings.max_deliveries

        def keep(rows: list[Any], refs: list[EntryRef], lines: list[bytes],
                 fields_of: Callable[[Any], Any]
                 ) -> tuple[list[Any], list[EntryRef], list[bytes]]:
            kept_rows, kept_refs, kept_lines = [], [], []
            for row, ref, line in zip(rows, refs, lines, strict=True):
                n = deliveries.get(ref, 0)
                if n > limit:
                    batch.rejects.append(Reject(
                        ref[0], ref[1], fields_of(row),
                        f"delivered {n} times without being persisted (limit {limit})"))
                else:
                    kept_rows.append(row)
                    kept_refs.append(ref)
                    kept_lines.append(line)
            return kept_rows, kept_refs, kept_lines

        batch.trades, batch.trade_ids, batch.trade_lines = keep(
            batch.trades, batch.trade_ids, batch.trade_lines, trade_fields)
        batch.quotes, batch.quote_ids, batch.quote_lines = keep(
            batch.quotes, batch.quote_ids, batch.quote_lines, quote_fields)

    def _write(self, trades: _Rows, quotes: _Rows, *, fresh: bool = False
               ) -> tuple[WriteResult, list[Reject]]:
        """Write rows, splitting the batch to isolate rows PostgreSQL refuses.
        Returns what was written and the refused rows as rejects."""
        if not trades.rows and not quotes.rows:
            return WriteResult(), []
        try:
            return self._retry_db("write a batch", lambda: self.sink.write(
                trades.rows, quotes.rows, fresh=fresh, trade_lines=trades.lines,
                quote_lines=quotes.lines)), []
        except psycopg2.Error as exc:
            # Only "data" errors come out of _retry_db: some row is unwritable.
            if len(trades.rows) + len(quotes.rows) == 1:
                stream, entry_id = trades.refs[0] if trades.rows else quotes.refs[0]
                fields = (trade_fields(trades.rows[0]) if trades.rows
                          else quote_fields(quotes.rows[0]))
                reason = f"refused by postgresql: {str(exc).strip()}"
                return WriteResult(), [Reject(stream, entry_id, fields, reason.lower())]
            none = _Rows([], [], [])
            if trades.rows and quotes.rows:  # each kind alone first, then halves
                parts = [(trades, none), (none, quotes)]
            elif trades.rows:
                parts = [(half, none) for half in trades.halves()]
            else:
                parts = [(none, half) for half in quotes.halves()]
            result, refused = WriteResult(), []
            for part in parts:
                written, rejects = self._write(*part)
                result.add(written)
                refused.extend(rejects)
            return result, refused

    # Retries

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        """Call ``fn`` until Redis answers, backing off between attempts."""
        failures = 0
        while True:
            try:
                return fn()
            except REDIS_RETRYABLE as exc:
                failures += 1
                self._wait_retry(what, failures, exc)

    def _retry_db(self, what: str, fn: Callable[[], T]) -> T:
        """Call ``fn`` until PostgreSQL accepts it; data errors are re-raised.
        While waiting, the worker keeps trimming and beating (:meth:`_upkeep`):
        Redis fills up during a long outage."""
        failures = 0
        while True:
            try:
                return fn()
            except psycopg2.Error as exc:
                kind = classify(exc)
                if kind == "data":
                    raise
                failures += 1
                if kind == "connection":
                    self.sink.reset()
                elif kind == "other":
                    log.error("%s: unexpected database error (a missing migration?): %s",
                              what, str(exc).strip())
                # "busy": a lock not granted in time; the connection is fine.
                self._wait_retry(what, failures, exc, upkeep=True)

    def _wait_retry(self, what: str, failures: int, exc: BaseException, *,
                    upkeep: bool = False) -> None:
        self.stats.retries += 1
        reason = str(exc).strip() or type(exc).__name__
        if self.stop.requested:
            # Said even when stopping: the failure is why the batch is left.
            log.warning("%s failed (%s); stopping instead of retrying", what, reason)
            raise Abandoned(what) from exc
        delay = self._backoff.compute(failures)
        log.warning("%s failed (%s); retry %d in %.2fs", what, reason, failures, delay)
        notify.status(f"retrying: {what}")
        # Alive and keeping its place: systemd's watchdog must not restart a
        # worker that waits out an outage (restarts would only add churn).
        notify.watchdog()
        if upkeep:
            self._upkeep()
        self.stop.wait(delay)
        if self.stop.requested:
            raise Abandoned(what) from exc

    # Housekeeping

    def _trim(self, *, sweep: bool = False) -> None:
        """Trim every stream of the registered symbols as
        :func:`pricepipe.streams.trim_stream` decides: entries older than the
        window go, but never one a consumer group still needs - not the
        persist group's (whatever their age: they are not in PostgreSQL yet),
        not a strategy group's up to ``stream_max_age_s`` (past that cap the
        group's readers are told the range they lost). Bars streams (derived
        data) keep only their strategy groups' entries, if any, beside the
        window. Allowed when Redis is full: ``XTRIM`` frees memory."""
        self._next_trim = time.monotonic() + self.settings.trim_interval_s
        keys = self.consumer.keys
        window_ms = self.settings.stream_window_s * 1000
        cap_s = self.settings.stream_max_age_s
        max_age_ms = None if cap_s is None else cap_s * 1000
        sweep = sweep or time.monotonic() >= self._next_sweep
        try:
            for stream in self.consumer.all_streams():
                self._trim_one(stream, window_ms=window_ms, max_age_ms=max_age_ms,
                               persisted=True)
            for symbol in self.consumer.symbols:
                self._trim_one(keys.bars(symbol), window_ms=window_ms, max_age_ms=max_age_ms,
                               persisted=False)
            if sweep:
                for stream in self.consumer.all_streams():
                    gone = self.consumer.forget_idle_consumers(
                        stream, idle_ms=self.settings.consumer_expiry_s * 1000)
                    if gone:
                        log.info("forgot idle consumers of %s: %s", stream, ", ".join(gone))
                self._next_sweep = time.monotonic() + CONSUMER_SWEEP_INTERVAL_S
        except REDIS_RETRYABLE as exc:
            log.warning("trimming skipped: %s", exc)

    def _trim_one(self, stream: str, *, window_ms: int, max_age_ms: int | None,
                  persisted: bool) -> None:
        try:
            removed = streams.trim_stream(self.r, self.consumer.keys, stream,
                                          window_ms=window_ms, max_age_ms=max_age_ms,
                                          persisted=persisted)
        except REDIS_RETRYABLE:
            raise
        except redis.ResponseError as exc:  # e.g. not a stream
            log.warning("%s not trimmed: %s", stream, exc)
            return
        self.stats.trimmed += removed

    def _upkeep(self) -> None:
        """Trim and refresh the heartbeat, each when due. Runs from the main
        loop and from whichever thread waits out a PostgreSQL outage (one at
        a time; a call while another runs returns at once)."""
        if not self._upkeep_lock.acquire(blocking=False):
            return
        try:
            now = time.monotonic()
            if now >= self._next_trim:
                self._trim()
            if now >= self._next_heartbeat:
                self._next_heartbeat = now + max(self.settings.heartbeat_ttl_s / 3, 1.0)
                self._heartbeat()
        finally:
            self._upkeep_lock.release()

    def _housekeeping(self) -> None:
        now = time.monotonic()
        notify.watchdog()
        self._upkeep()
        if self.final_pass is not None and now >= self._next_final:
            self._run_final_pass()
            # After failures, wait longer (up to a minute): a server that
            # is down must not cost every round a connect timeout.
            self._next_final = time.monotonic() + min(
                self.settings.bars_final_interval_s * 2 ** min(self._final_failures, 6), 60.0)

    def _run_final_pass(self) -> None:
        """Publish the bars of ended minutes final; a failure is logged and
        the pass runs again later (derived data: no row depends on it)."""
        assert self.final_pass is not None
        try:
            self.stats.bars_final += self.final_pass.run(self.consumer.symbols)
        except (psycopg2.Error, redis.RedisError) as exc:
            self._final_failures += 1
            self.stats.bar_errors += 1
            log.warning("final bars not published yet (retried later): %s",
                        str(exc).strip() or type(exc).__name__)
            return
        except Exception:
            # A bug here must not stop the rows: log it loudly, go on persisting.
            self._final_failures += 1
            self.stats.bar_errors += 1
            log.exception("the final pass failed (retried later; rows are not affected)")
            return
        self._final_failures = 0

    def _heartbeat(self) -> None:
        """Heartbeat key with a TTL, holding the worker's counters (``pricepipe
        status``). Fails soft: skipped while Redis is unreachable, and while
        it is full (``SET`` may grow memory: refused, logged once per stretch
        of refusals, counted); the worker goes on either way."""
        try:
            self.consumer.heartbeat(self.settings.heartbeat_ttl_s,
                                    codec.encode_json(self.stats.as_dict()))
        except REDIS_RETRYABLE as exc:
            log.warning("heartbeat skipped: %s", exc)
        except redis.ResponseError as exc:
            if not is_oom_error(exc):
                raise
            self.stats.redis_full_refusals += 1
            self._heartbeat_refusals.refused(exc)
        else:
            self._heartbeat_refusals.accepted()
