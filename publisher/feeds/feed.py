"""The websocket feed: a venue's live trades and quotes, kept whole.

One asyncio loop runs, for each group of symbols (a venue allows so many
per connection), a connection task built on the ``websockets`` client:

* **connect, subscribe, read**: the adapter gives the URL and the
  subscription messages, sent no faster than the venue allows; the
  websocket client answers the server's pings (Binance pings every 20 s)
  and pings on its own (``ping_interval_s``), so a dead TCP connection is
  noticed;
* **silence**: each liveness channel (Binance quotes, Coinbase heartbeats;
  trades too if ``trades_silence_timeout_s`` is set) must send within
  ``silence_timeout_s``, or the connection is declared ``stale`` and
  replaced: a venue that stops sending without closing is noticed;
* **lifetime**: a connection is replaced before the venue's limit (Binance
  closes after 24 hours), and at once when the venue announces a shutdown;
* **reconnect** with capped, jittered exponential backoff
  (:class:`~.backoff.Backoff`), reset once a connection delivers data; every
  reconnect resubscribes and starts a catch-up repair per symbol;
* **never fatal**: a malformed message or one of an unknown kind is counted
  and skipped; a refused subscription is reported and retried after the
  backoff; no exception of a connection ends the feed.

Every trade goes through its symbol's :class:`~.sequencer.TradeSequencer`:
duplicates are dropped, gaps are repaired over REST (in a thread, through
the core's :class:`~pricepipe.upstream.Upstream` within the venue's request
budget) while live trades wait, and the output is each trade exactly once,
in trade-id order. Ids that cannot be repaired are reported, never hidden.
Quotes are published as they come, less repeats (a book update id not newer
than the last one).

Events and status events leave through one queue served by one writer
thread, so they reach Redis in the order they were decided (a gap's
``gap_repaired`` after its trades). The first stop request closes the
connections, lets repairs in flight finish (briefly), writes what is
queued and the ``stopped`` state, then returns. Trades waiting behind a gap
at a stop are not published: the next start repairs from the stream's last
trade, so nothing is lost or reordered.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from pricepipe import eventloop, notify
from pricepipe.budget import Budget
from pricepipe.clock import now_us
from pricepipe.events import Event, Quote, Trade
from pricepipe.exceptions import (
    BadResponseError,
    BudgetExhaustedError,
    ConfigError,
    InvalidEventError,
    UpstreamError,
)
from pricepipe.feedstatus import FeedEvent, FeedSnapshot, FeedState, FeedStatus, encode_state
from pricepipe.keys import Channel, Keys
from pricepipe.stop import StopRequest
from pricepipe.upstream import HttpOptions, Upstream
from pricepipe.venues.messages import (
    Heartbeat,
    Refused,
    Shutdown,
    Subscribed,
    VenueQuote,
    VenueTrade,
)

from ..catalog import SymbolSpec
from ..metrics import PublisherMetrics
from ..providers.base import QuoteReport, TimeChecks, TradeReport, to_quote, to_trade
from ..settings import FeedSettings
from ..sink import StreamSink
from .adapters import HEARTBEAT, QUOTES, TRADES, VenueAdapter
from .backoff import Backoff
from .sequencer import Detected, Filled, Gap, Lost, Publish, RepairResult, Step, TradeSequencer
from .status import StatusWriter

log = logging.getLogger(__name__)

#: What a read loop returns when a message ends the connection.
_SHUTDOWN = "shutdown"
_REFUSED = "refused"
#: Longest a read waits before looking at the stop flag and the timers, seconds.
_TICK_S = 0.25
#: Longest repairs in flight may take to finish after a stop, seconds.
_STOP_GRACE_S = 5.0
#: Warnings per kind of skipped message before they are logged at debug level only.
_LOUD_SKIPS = 10


@dataclass(slots=True)
class _Connection:
    index: int
    upstreams: list[str]
    connected: bool = False
    opened: int = 0


@dataclass(frozen=True, slots=True)
class _StatusItem:
    status: FeedStatus | None
    state: bytes


_CLOSE = object()


class Feed:
    """A venue's websocket feed for ``specs``, publishing through ``sink``
    and reporting its status under ``settings.name`` (default: the source)."""

    def __init__(
        self, adapter: VenueAdapter, specs: Sequence[SymbolSpec], sink: StreamSink, *,
        r: Any, keys: Keys, settings: FeedSettings, stop: StopRequest,
        metrics: PublisherMetrics, http: HttpOptions | None = None,
        upstream: Upstream | None = None, budget: Budget | None = None,
        log_interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
        wall_us: Callable[[], int] = now_us, rng: random.Random | None = None,
    ) -> None:
        self.adapter = adapter
        self.source = adapter.source
        self.name = settings.name or adapter.source
        self.sink = sink
        self.settings = settings
        self.stop = stop
        self.metrics = metrics
        self.log_interval_s = log_interval_s
        self.clock = clock
        self.wall_us = wall_us
        self.rng = rng or random.Random()
        self.local_of = {spec.upstream_name: spec.symbol for spec in specs}
        if len(self.local_of) != len(specs):
            raise ConfigError("--symbols: two symbols map to the same venue symbol")
        self.sequencers: dict[str, TradeSequencer[VenueTrade]] = {
            upstream: TradeSequencer(max_waiting=settings.max_waiting)
            for upstream in self.local_of}
        self._quote_ids: dict[str, int] = {}
        per_connection = min(settings.symbols_per_connection or adapter.max_symbols_per_connection,
                             adapter.max_symbols_per_connection)
        upstreams = list(self.local_of)
        self.connections = [
            _Connection(i, upstreams[lo:lo + per_connection])
            for i, lo in enumerate(range(0, len(upstreams), per_connection))]
        self.checks = TimeChecks(max_future_s=settings.max_future_s, max_age_s=settings.max_age_s)
        self.upstream = upstream or Upstream(adapter.base_url, http or HttpOptions(),
                                             headers={"User-Agent": "pricepipe"}, pool_size=4)
        self.budget = budget or Budget(adapter.rate_limit, name=f"{self.name}-repairs")
        self.status_writer = StatusWriter(r, keys, self.name, stop=stop,
                                          maxlen=settings.status_maxlen)
        self.snapshot = FeedSnapshot(self.name, self.source, adapter.venue,
                                     list(self.local_of.values()), len(self.connections))
        self.silence: dict[str, float] = {channel: settings.silence_timeout_s
                                          for channel in adapter.liveness}
        if settings.trades_silence_timeout_s is not None:
            self.silence[TRADES] = settings.trades_silence_timeout_s
        self._request_ids = itertools.count(1)
        self._repairs: set[asyncio.Task[None]] = set()
        self._skips: dict[str, int] = {}
        self._closing = False
        self._failure: Exception | None = None
        self._out: asyncio.Queue[Any] | None = None
        self._io: ThreadPoolExecutor | None = None

    # --- running --------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; returns the exit code (0)."""
        return eventloop.run(self._main())

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        self._io = ThreadPoolExecutor(1, thread_name_prefix=f"feed-{self.name}-io")
        self._out = asyncio.Queue()
        try:
            await loop.run_in_executor(self._io, self._prepare)
            self._state_changed(FeedState.CONNECTING)
            writer = asyncio.create_task(self._write_loop())
            connections = [asyncio.create_task(self._connection(c)) for c in self.connections]
            ticker = asyncio.create_task(self._tick())
            notify.ready(f"feed {self.name}: {len(self.local_of)} symbols over "
                         f"{len(self.connections)} connection(s)")
            await asyncio.gather(*connections)
            if self._repairs:
                await asyncio.wait(set(self._repairs), timeout=_STOP_GRACE_S)
            self._closing = True
            ticker.cancel()
            self._state_changed(FeedState.STOPPED)
            await self._out.put(_CLOSE)
            await writer
            if self._failure is not None:
                raise self._failure
            self.log_progress(final=True)
        finally:
            self._closing = True
            for task in self._repairs:
                task.cancel()
            self._io.shutdown(wait=True)
            self.upstream.close()
        return 0

    def _prepare(self) -> None:
        """Register the symbols, and pick up after the newest trade of this
        source in each stream (a restart repairs what it missed)."""
        self.sink.register(self.local_of.values())
        upstream_of = {local: upstream for upstream, local in self.local_of.items()}
        found = self.sink.last_events(self.local_of.values(), Channel.TRADES)
        for local, event in found.items():
            if isinstance(event, Trade) and event.source == self.source and \
                    event.trade_id is not None and event.trade_id.isdigit():
                self.sequencers[upstream_of[local]].last_id = int(event.trade_id)

    async def _tick(self) -> None:
        """Refresh the state hash now and then, and log progress."""
        logged_at = self.clock()
        while True:
            await asyncio.sleep(self.settings.state_interval_s)
            self._enqueue_state(None)
            if self.clock() - logged_at >= self.log_interval_s:
                logged_at = self.clock()
                self.log_progress()

    # --- one connection -------------------------------------------------------------------

    async def _connection(self, conn: _Connection) -> None:
        backoff = Backoff(base_s=self.settings.reconnect_base_s,
                          cap_s=self.settings.reconnect_cap_s, rng=self.rng)
        while not self.stop.requested:
            reason = await self._session(conn, backoff)
            self._disconnected(conn, reason)
            if self.stop.requested:
                break
            # A planned switch reconnects at once; a failure waits, longer each time.
            delay_s = 0.0 if reason in ("lifetime", _SHUTDOWN) else backoff.next_s()
            await self._sleep(delay_s)

    async def _sleep(self, seconds: float) -> None:
        deadline = self.clock() + seconds
        while not self.stop.requested and self.clock() < deadline:
            await asyncio.sleep(min(_TICK_S, max(deadline - self.clock(), 0.0)))
            notify.watchdog()

    async def _session(self, conn: _Connection, backoff: Backoff) -> str:
        """One connection's life; returns why it ended."""
        url = self.adapter.connect_url(conn.upstreams)
        try:
            async with connect(
                url, open_timeout=self.settings.connect_timeout_s,
                ping_interval=self.settings.ping_interval_s,
                ping_timeout=self.settings.ping_timeout_s, close_timeout=1.0,
                max_size=4 * 1024 * 1024, user_agent_header="pricepipe",
            ) as ws:
                self._connected(conn)
                for upstream in conn.upstreams:
                    self._apply(upstream, self.sequencers[upstream].reconnected())
                return await self._read(ws, conn, backoff)
        except ConnectionClosed as exc:
            log.warning("feed %s[%d]: connection closed (%s)", self.name, conn.index, exc)
            return "closed"
        except (WebSocketException, OSError, TimeoutError) as exc:
            log.warning("feed %s[%d]: %s: %s", self.name, conn.index, type(exc).__name__, exc)
            return "error"
        except Exception:  # a bug must not end the feed: log it loudly, reconnect
            log.exception("feed %s[%d]: unexpected error", self.name, conn.index)
            return "bug"

    async def _read(self, ws: Any, conn: _Connection, backoff: Backoff) -> str:
        for i, message in enumerate(self.adapter.subscriptions(conn.upstreams,
                                                               self._request_ids)):
            if i:  # the venue's limit on incoming messages
                await asyncio.sleep(1.0 / self.adapter.subscribe_rate_per_s)
            await ws.send(message)
        opened = self.clock()
        lifetime_s = self.settings.lifetime_s or self.adapter.lifetime_s
        heard = dict.fromkeys(self.silence, opened)
        healthy = False
        while True:
            if self.stop.requested:
                return "stop"
            now = self.clock()
            if lifetime_s is not None and now - opened >= lifetime_s:
                return "lifetime"
            for channel, timeout_s in self.silence.items():
                if now - heard[channel] > timeout_s:
                    self._status(FeedEvent.STALE, reason=channel, connection=conn.index)
                    self._state_changed(FeedState.STALE)
                    log.warning("feed %s[%d]: no %s for %.1fs: reconnecting", self.name,
                                conn.index, channel, now - heard[channel])
                    return "silent"
            wait_s = min([_TICK_S, *(heard[c] + t - now for c, t in self.silence.items()),
                          *((opened + lifetime_s - now,) if lifetime_s is not None else ())])
            try:
                raw = await asyncio.wait_for(ws.recv(), max(wait_s, 0.01))
            except TimeoutError:  # canceling recv() is safe: no message is lost
                continue
            outcome = self._on_message(raw, conn)
            if outcome in (_SHUTDOWN, _REFUSED):
                return outcome
            if outcome is not None:
                if outcome in heard:
                    heard[outcome] = self.clock()
                if not healthy:
                    healthy = True
                    backoff.reset()
            await self._room()

    async def _room(self) -> None:
        """Backpressure: read no further while the output queue is full."""
        assert self._out is not None
        while self._out.qsize() >= self.settings.queue_max and not self.stop.requested:
            await asyncio.sleep(0.01)

    # --- messages -------------------------------------------------------------------------

    def _skip(self, kind: str, detail: object) -> None:
        self.metrics.feed_messages.labels(feed=self.name, kind=kind).inc()
        seen = self._skips[kind] = self._skips.get(kind, 0) + 1
        if seen <= _LOUD_SKIPS:
            log.warning("feed %s: %s message skipped: %s", self.name, kind, detail)
        else:
            log.debug("feed %s: %s message skipped: %s", self.name, kind, detail)

    def _on_message(self, raw: str | bytes, conn: _Connection) -> str | None:
        """Handle one message; returns its channel (or a reason to end the
        connection, or None for control messages and skipped ones)."""
        counts = self.snapshot.counts
        counts["messages"] += 1
        wall_us = self.wall_us()
        self.snapshot.last_message_us = wall_us
        self.metrics.feed_last_message.labels(feed=self.name).set(wall_us / 1e6)
        try:
            message = self.adapter.parse(raw)
        except BadResponseError as exc:
            counts["malformed"] += 1
            self._skip("malformed", exc)
            return None
        if isinstance(message, VenueTrade):
            if message.upstream not in self.sequencers:
                counts["unknown"] += 1
                self._skip("unknown", f"trade of unexpected symbol {message.upstream!r}")
                return None
            self.metrics.feed_messages.labels(feed=self.name, kind="trade").inc()
            self._apply(message.upstream,
                        self.sequencers[message.upstream].live(message.trade_id, message))
            return TRADES
        if isinstance(message, VenueQuote):
            self.metrics.feed_messages.labels(feed=self.name, kind="quote").inc()
            self._quote(message, wall_us)
            return QUOTES
        if isinstance(message, Heartbeat):
            self.metrics.feed_messages.labels(feed=self.name, kind="heartbeat").inc()
            sequencer = self.sequencers.get(message.upstream)
            if sequencer is not None and message.last_trade_id is not None:
                self._apply(message.upstream, sequencer.heartbeat(message.last_trade_id))
            return HEARTBEAT
        self.metrics.feed_messages.labels(feed=self.name, kind="control").inc()
        if isinstance(message, Refused):
            detail = f"{message.message}: {message.reason}" if message.reason else message.message
            log.warning("feed %s[%d]: subscription refused: %s", self.name, conn.index, detail)
            self._status(FeedEvent.SUBSCRIPTION_REFUSED, reason=detail[:200],
                         connection=conn.index)
            return _REFUSED
        if isinstance(message, Shutdown):
            log.info("feed %s[%d]: the venue announced a shutdown: reconnecting", self.name,
                     conn.index)
            return _SHUTDOWN
        if isinstance(message, Subscribed):
            log.debug("feed %s[%d]: subscribed %s", self.name, conn.index, message)
            return None
        counts["unknown"] += 1
        self._skip("unknown", message.kind)
        return None

    def _quote(self, message: VenueQuote, recv_ts_us: int) -> None:
        local = self.local_of.get(message.upstream)
        if local is None:
            self.snapshot.counts["unknown"] += 1
            self._skip("unknown", f"quote of unexpected symbol {message.upstream!r}")
            return
        if message.update_id is not None:
            last = self._quote_ids.get(message.upstream)
            if last is not None and message.update_id <= last:
                self.snapshot.counts["duplicates"] += 1
                self.metrics.feed_duplicates.labels(feed=self.name).inc()
                return
            self._quote_ids[message.upstream] = message.update_id
        report = QuoteReport(message.upstream, message.ts_us, message.bid, message.bid_size,
                             message.ask, message.ask_size)
        try:
            quote: Quote = to_quote(report, symbol=local, source=self.source,
                                    recv_ts_us=recv_ts_us, checks=self.checks)
        except (BadResponseError, InvalidEventError) as exc:
            self._reject(exc.reason, exc)
            return
        self._emit(quote)

    def _reject(self, reason: str, exc: Exception) -> None:
        self.snapshot.counts["rejected"] += 1
        self.metrics.rejected.labels(provider=self.source, reason=reason).inc()
        log.warning("feed %s: event rejected (%s): %s", self.name, reason, exc)

    # --- sequencing and repairs -----------------------------------------------------------

    def _apply(self, upstream: str, step: Step[VenueTrade]) -> None:
        """Carry out a sequencer's decisions, in order."""
        if self._closing:
            return
        local = self.local_of[upstream]
        counts = self.snapshot.counts
        if step.duplicates:
            counts["duplicates"] += step.duplicates
            self.metrics.feed_duplicates.labels(feed=self.name).inc(step.duplicates)
        for action in step.actions:
            if isinstance(action, Publish):
                self._publish_trade(local, action.item)
            elif isinstance(action, Detected):
                counts["gaps_detected"] += 1
                self.metrics.feed_gaps.labels(feed=self.name, outcome="detected").inc()
                log.warning("feed %s: %s: trades %s..%s missing: repairing", self.name, local,
                            action.first_id, "" if action.last_id is None else action.last_id)
                self._status(FeedEvent.GAP_DETECTED, symbol=local, first_id=action.first_id,
                             last_id=action.last_id)
            elif isinstance(action, Filled):
                counts["gaps_repaired"] += 1
                counts["trades_repaired"] += action.trades
                self.metrics.feed_gaps.labels(feed=self.name, outcome="repaired").inc()
                self.metrics.feed_trades_repaired.labels(feed=self.name).inc(action.trades)
                self._status(FeedEvent.GAP_REPAIRED, symbol=local, first_id=action.first_id,
                             last_id=action.last_id, trades=action.trades)
            elif isinstance(action, Lost):
                counts["gaps_unrepairable"] += 1
                counts["trades_unrepairable"] += action.count
                self.metrics.feed_gaps.labels(feed=self.name, outcome="unrepairable").inc()
                self.metrics.feed_trades_lost.labels(feed=self.name, reason=action.reason) \
                    .inc(action.count)
                log.warning("feed %s: %s: trades %d..%d lost (%s)", self.name, local,
                            action.first_id, action.last_id, action.reason)
                self._status(FeedEvent.GAP_UNREPAIRABLE, symbol=local,
                             first_id=action.first_id, last_id=action.last_id,
                             reason=action.reason)
        if step.repair is not None:
            task = asyncio.get_running_loop().create_task(self._repair(upstream, step.repair))
            self._repairs.add(task)
            task.add_done_callback(self._repairs.discard)

    def _publish_trade(self, local: str, trade: VenueTrade) -> None:
        report = TradeReport(trade.upstream, trade.price, trade.ts_us, trade.size,
                             str(trade.trade_id), trade.side)
        try:
            event = to_trade(report, symbol=local, source=self.source, recv_ts_us=self.wall_us(),
                             checks=self.checks)
        except (BadResponseError, InvalidEventError) as exc:
            self._reject(exc.reason, exc)
            return
        self._emit(event)

    async def _repair(self, upstream: str, gap: Gap) -> None:
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(None, self._fetch, upstream, gap)
        except Exception:  # a bug: the gap must still be closed, as an error
            log.exception("feed %s: repair of %s failed unexpectedly", self.name, upstream)
            result = RepairResult(gap, [], gap.first_id, gap.first_id, "error")
        self._apply(upstream, self.sequencers[upstream].repaired(result))

    def _fetch(self, upstream: str, gap: Gap) -> RepairResult[VenueTrade]:
        """Run a repair's REST pages (in a worker thread)."""
        plan = self.adapter.repair_plan(upstream, gap, max_trades=self.settings.max_repair_trades)
        reason: str | None = None
        while (request := plan.next_request()) is not None:
            try:
                payload = self.upstream.get_json(request, self.budget, wait=self.stop.wait,
                                                 max_wait_s=self.settings.repair_max_wait_s)
                page = self.adapter.parse_repair(upstream, payload)
            except BudgetExhaustedError as exc:
                self.metrics.feed_repair_requests.labels(feed=self.name, outcome="budget").inc()
                log.warning("feed %s: repair of %s stopped: %s", self.name, upstream, exc)
                reason = "budget"
                break
            except UpstreamError as exc:  # no answer, an error status, a bad body
                self.metrics.feed_repair_requests.labels(feed=self.name, outcome="error").inc()
                log.warning("feed %s: repair of %s failed: %s", self.name, upstream, exc)
                reason = "error"
                break
            self.metrics.feed_repair_requests.labels(feed=self.name, outcome="ok").inc()
            plan.add(page)
        return plan.result(reason)

    # --- connection state -----------------------------------------------------------------

    def _connected(self, conn: _Connection) -> None:
        conn.connected = True
        conn.opened += 1
        if conn.opened > 1:
            self.snapshot.counts["reconnects"] += 1
            self.metrics.feed_reconnects.labels(feed=self.name).inc()
        self._update_connections()
        log.info("feed %s[%d]: connected (%d symbols)", self.name, conn.index,
                 len(conn.upstreams))
        self._status(FeedEvent.CONNECTED, connection=conn.index)

    def _disconnected(self, conn: _Connection, reason: str) -> None:
        was_connected = conn.connected
        conn.connected = False
        self._update_connections()
        self.metrics.feed_disconnects.labels(feed=self.name, reason=reason).inc()
        if was_connected:  # failed attempts are logged and counted, not each reported
            self._status(FeedEvent.DISCONNECTED, reason=reason, connection=conn.index)

    def _update_connections(self) -> None:
        up = sum(c.connected for c in self.connections)
        self.snapshot.connected = up
        self.metrics.feed_connections.labels(feed=self.name).set(up)
        if up == len(self.connections):
            state = FeedState.CONNECTED
        elif up:
            state = FeedState.PARTIAL
        else:
            state = FeedState.DISCONNECTED
        self._state_changed(state, write=False)

    def _state_changed(self, state: FeedState, *, write: bool = True) -> None:
        if state is not self.snapshot.state or self.snapshot.since_us is None:
            self.snapshot.state = state
            self.snapshot.since_us = self.wall_us()
        if write:
            self._enqueue_state(None)

    # --- output ---------------------------------------------------------------------------

    def _status(self, kind: FeedEvent, **fields: Any) -> None:
        self._enqueue_state(FeedStatus(self.name, kind, self.wall_us(), **fields))

    def _enqueue_state(self, status: FeedStatus | None) -> None:
        assert self._out is not None
        snapshot = self.snapshot
        snapshot.updated_us = self.wall_us()
        snapshot.counts["trades"] = int(self.metrics.value(
            "pricepipe_publisher_events_published", channel=str(Channel.TRADES)))
        snapshot.counts["quotes"] = int(self.metrics.value(
            "pricepipe_publisher_events_published", channel=str(Channel.QUOTES)))
        self._out.put_nowait(_StatusItem(status, encode_state(snapshot)))

    def _emit(self, event: Event) -> None:
        assert self._out is not None
        self._out.put_nowait(event)

    async def _write_loop(self) -> None:
        """Write the queue out, in order: runs of events through the sink,
        status items through the status writer (one thread, so in order)."""
        assert self._out is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._out.get()]
            while len(batch) < self.settings.batch_max and not self._out.empty():
                batch.append(self._out.get_nowait())
            closing = any(x is _CLOSE for x in batch)
            try:
                await loop.run_in_executor(self._io, self._write, [x for x in batch
                                                                    if x is not _CLOSE])
            except Exception as exc:
                # Not an outage (the sink rides those out) but a refusal or a
                # bug: stop, loudly; a restart repairs from the stream's last trade.
                log.critical("feed %s: writing to redis failed: %s", self.name, exc)
                self._failure = exc
                self.stop.set()
                return
            if closing:
                return

    def _write(self, batch: list[Any]) -> None:
        events: list[Event] = []
        for item in batch:
            if isinstance(item, _StatusItem):
                if events:
                    self.sink.publish(events)
                    events = []
                self.status_writer.write(item.status, item.state)
            else:
                events.append(item)
        if events:
            self.sink.publish(events)

    def log_progress(self, *, final: bool = False) -> None:
        c = self.snapshot.counts
        log.info("%sfeed %s: %s, %d messages, %d trades and %d quotes published, %d duplicates, "
                 "%d malformed, %d reconnects, gaps: %d detected, %d repaired (%d trades), "
                 "%d unrepairable (%d trades)", "done: " if final else "", self.name,
                 self.snapshot.state, c["messages"], c["trades"], c["quotes"], c["duplicates"],
                 c["malformed"], c["reconnects"], c["gaps_detected"], c["gaps_repaired"],
                 c["trades_repaired"], c["gaps_unrepairable"], c["trades_unrepairable"])
