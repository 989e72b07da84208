"""One websocket connection: its subscriptions, its catch-up on subscribe or
resume, and its send buffer with the slow-consumer policy.

A subscription is a ``(symbol, channel)`` pair, one stream. Ordering
guarantee per pair: the client receives a stream's entries in stream order,
each at most once, from the snapshot (or resume cursor) on, without a gap,
except where a frame is marked ``conflated`` (a slow client; a conflated
``trades`` frame names each skipped range in ``gaps``) or an
``unrecoverable`` message says what was skipped. Pairs are independent:
entries of different streams (another symbol or channel) may come in any
order relative to each other.

How a subscribe stitches history to live entries without a gap or
duplicate, per pair: the pair is registered with the hub first, in *catching
up* state, where the hub's live entries for it are buffered instead of sent;
once the hub holds a cursor, the session reads the stream itself
(``XREVRANGE`` for a snapshot, ``XRANGE`` from the client's cursor for a
resume), sends that, and then, without yielding to the event loop, moves the
buffered entries newer than what it sent into the live path. The buffer is
bounded: when it overflows it is dropped and the session reads the stream
again from its cursor instead.

A resume is checked before it is served, for every pair of the request in
one pipeline per shard (``XINFO STREAM``, the shard's trimmed record and
the first page of entries after each cursor, see :mod:`.resume`): the
cursor's epoch must be the stream's, trimming must not have passed it, and
the replay must fit the pair's limit and the request's budget; otherwise
the pair gets ``unrecoverable`` and a snapshot.

Epochs (see :mod:`pricepipe.subscriber.ws.hub`): every read a session makes
carries an epoch probe, and nothing read is sent unless it came from the
epoch of what the client already has of that pair. When the hub finds its
shard's server changed, or a read finds it first, the pair starts again:
``unrecoverable`` (``epoch``) after the last entry the client has, then a
snapshot and live entries of the new epoch. A client that is behind gets
its conflated frames (of the old epoch) first.

Live frames are framed by :func:`~pricepipe.subscriber.ws.protocol.text_frame`
(websockets' framing, held to it by a test) and written straight to the
transport (what ``broadcast`` does, without its per-call overhead): a
server's frames are unmasked and the server negotiates no extension, so the
bytes are exactly what ``send`` would write. A flush that holds one batch
(the usual one with many subscribers per stream) writes that batch's frame,
built once and shared by every subscriber (:meth:`.hub.Batch.wire`). One
flush writes one frame per channel that has entries, all in one ``write``
(one system call, as with a single frame). A connection that did negotiate
an extension goes through ``broadcast``.

Slow consumers: live frames are written without waiting while the
connection's send buffer is below ``buffer_high_bytes``. Above it, the
connection stops receiving frames and keeps, per symbol, only the latest
quote, the latest state of each bar (per minute), and the latest trade with
a count of those skipped; once the buffer drains below ``buffer_low_bytes``
it gets one ``conflated`` frame per channel with those entries, the trades
frame with a ``gaps`` list naming each skipped range by entry IDs (trades
are never dropped silently). A client still behind after ``slow_timeout_s``
is closed with code 4008. Memory per connection is thus bounded by the send
buffer mark plus one flush (the entries the hub read since its last flush:
about ``read_count`` at most, see :mod:`pricepipe.subscriber.ws.hub`), a
trade and a quote per subscribed symbol, the bars changed while behind, and
the catch-up buffer.

The ``status`` channel (every feed's status events, one stream of no
symbol) is the pair ``(FEEDS, STATUS)`` throughout: the same catch-up,
resume, epochs and live path. Its snapshot is the newest event and every
feed's state (:func:`pricepipe.feedstatus.feed_views`, read in the same
pipeline). Status events are rare and each one matters, so a client behind
gets them all, not only the latest: up to :data:`_HELD_STATUS_MAX` held,
and beyond, the oldest skipped and the frame names the skipped range in
``gaps``, as for trades.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import NoScriptError
from websockets.asyncio.server import ServerConnection, broadcast
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from pricepipe.clock import now_us
from pricepipe.exceptions import ProtocolError
from pricepipe.feedstatus import OPEN_GAP_WINDOW, feed_views
from pricepipe.keys import Channel, Keys

from . import protocol as p
from . import scripts
from .hub import (
    FEEDS_SHARD,
    QUOTES,
    RETRYABLE,
    STATUS_KIND,
    TRADES,
    Batch,
    Entry,
    Hub,
    probed_epoch,
    stream_key,
)
from .protocol import ALL_CHANNELS, FRAME_END, LIVE_HEADS, Pair, Topic
from .ratewindow import MovingWindow
from .registry import SymbolRegistry
from .resume import verdict
from .settings import WsSettings

log = logging.getLogger(__name__)

_DRAIN_POLL_S = 0.02
#: The ops the subscribe rate limits.
_RATED_OPS = ("subscribe", "unsubscribe")
#: How long a connection is not read after a request refused for the rate
#: or for unknown symbols: a client flooding such requests is slowed down by
#: TCP instead of costing an answer each.
_REFUSAL_PAUSE_S = 0.1
_REPLAY_PAGE = 500
#: Resume checks of at most this many pairs share a pipeline...
_CHECK_CHUNK = 128
#: ...which also reads this many entries after each cursor (most resumes
#: after a reconnect miss fewer, and need no other read).
_FIRST_PAGE = 64
#: Longest a pair waits for the hub to read the server a read of it came
#: from, before trying again.
_SETTLE_S = 10.0
_BUCKET_KEY = b'"bucket_us":'
#: Status events held for a client that is behind; beyond, the oldest are
#: skipped (and named as a gap).
_HELD_STATUS_MAX = 1000


@dataclass
class Stats:
    """Counters of one server process, read by ``/metrics`` and ``/healthz``."""

    connections: int = 0
    frames: int = 0
    deliveries: int = 0
    conflations: int = 0
    gaps: int = 0
    slow_closes: int = 0
    protocol_errors: int = 0
    resumes: int = 0
    unrecoverable: int = 0
    catchup_overflows: int = 0
    #: Subscribe requests refused for naming symbols that are not registered.
    unknown_symbol_requests: int = 0
    #: Pairs started again because their server's epoch changed.
    epoch_resets: int = 0
    #: Heartbeat writes Redis refused or could not take.
    redis_write_errors: int = 0
    #: Handshakes refused for the per-address connection limit.
    address_refusals: int = 0


class _TooFarBehind(Exception):
    pass


class _EpochMoved(Exception):
    """A read came from another epoch than the data of a pair it was for:
    ``epoch`` (of shard ``shard``) is the one it came from."""

    def __init__(self, shard: int, epoch: str) -> None:
        super().__init__(shard, epoch)
        self.shard = shard
        self.epoch = epoch


class _Catch:
    """A pair catching up: its live entries held back while its snapshot or
    replay is read and sent. A pair started again gets a new one, so that
    work begun for the old one sees it is no longer its own."""

    __slots__ = ("buffer", "overflowed", "sent", "epoch", "snapshot", "replayed")

    def __init__(self, *, sent: str | None = None, snapshot: bool = True) -> None:
        self.buffer: list[Entry] = []
        #: The buffer overflowed and was dropped: read the stream again.
        self.overflowed = False
        #: The last entry ID of the pair the client has (its resume cursor, a
        #: replayed or snapshot entry), where a gap would start; None: nothing.
        self.sent = sent
        #: The epoch of the client's data, which every read for the pair must
        #: come from (None: not known, as on a cluster).
        self.epoch: str | None = None
        #: Whether a snapshot is wanted when the pair starts fresh.
        self.snapshot = snapshot
        self.replayed = 0


class _Budget:
    """Entries one subscribe request may still replay (None: no limit)."""

    __slots__ = ("left",)

    def __init__(self, left: int | None) -> None:
        self.left = left

    def spend(self, count: int) -> bool:
        """Take ``count``; False when they do not fit, and nothing is left
        from then on (every later resume of the request is too far behind)."""
        if self.left is None:
            return True
        if count > self.left:
            self.left = 0
            return False
        self.left -= count
        return True


class _HeldTrades:
    """While behind: the latest trade of a symbol, and how many arrived."""

    __slots__ = ("count", "latest")

    def __init__(self, count: int, latest: Entry) -> None:
        self.count = count
        self.latest = latest


def bar_bucket(encoded: bytes) -> bytes:
    """The ``bucket_us`` digits of a bar's JSON (as :func:`pricepipe.codec.bar_dict`
    writes it): which minute an entry of the bars channel is about."""
    start = encoded.find(_BUCKET_KEY) + len(_BUCKET_KEY)
    end = encoded.find(b",", start)
    return encoded[start:end]


class Session:
    """State and conversation of one client connection."""

    def __init__(
        self, ws: ServerConnection, *, hub: Hub, r: Any, keys: Keys, settings: WsSettings,
        rate: MovingWindow, stats: Stats, authenticated: bool,
        gate: asyncio.Semaphore, registry: SymbolRegistry,
    ) -> None:
        self.ws = ws
        self._hub = hub
        self._registry = registry
        self._r = r
        self._keys = keys
        self._settings = settings
        #: This connection's subscribe/unsubscribe requests (its own window).
        self._rate = rate
        self._stats = stats
        # Shared by every session: bounds concurrent Redis reads (and so
        # pool connections) when many clients subscribe at once.
        self._gate = gate
        self.authenticated = authenticated
        #: Every subscribed pair, live or catching up, as symbol -> channels.
        self.subscribed: dict[str, set[Topic]] = {}
        #: The pairs catching up (snapshot, replay, or starting again).
        self._catching: dict[Pair, _Catch] = {}
        #: Pairs to start again (an epoch change), by the reset task.
        self._resets: dict[Pair, bool] = {}
        #: Per shard, the epoch a read saw that the hub does not read yet.
        self._reset_waits: dict[int, str] = {}
        self._reset_task: asyncio.Task[None] | None = None
        self._backoff = ExponentialWithJitterBackoff(cap=2.0, base=0.05)
        self._floors: dict[Pair, tuple[int, int]] = {}
        self._buffered = 0
        #: Live batches for the next flush.
        self._pending: list[Batch] = []
        #: The last trade ID sent per symbol: where a conflated frame's gap starts.
        self._last_trade: dict[str, str] = {}
        # While behind, what the conflated frames will carry:
        self._held_trades: dict[str, _HeldTrades] = {}
        self._latest_quotes: dict[str, bytes] = {}
        #: The status events held, oldest first, and how many were skipped.
        self._held_status: list[Entry] = []
        self._status_skipped = 0
        #: The last status entry ID sent: where a conflated frame's gap starts.
        self._last_status: str | None = None
        #: (symbol, bucket digits) -> latest entry, in the order of last change.
        self._latest_bars: dict[tuple[str, bytes], Entry] = {}
        self.behind = False
        self._behind_since = 0.0
        self._drain_task: asyncio.Task[None] | None = None
        self._closing = False
        # Frames may be written as raw bytes only when no extension (such as
        # per-message deflate) transforms them.
        self._raw_frames = not ws.protocol.extensions
        #: ``settings.buffer_high_bytes``, read once per flush of every connection.
        self._high_bytes = settings.buffer_high_bytes

    # --- conversation ----------------------------------------------------------------------

    async def serve(self) -> None:
        """Talk to the client until it leaves; always releases the subscriptions."""
        try:
            await self._send(p.hello(auth_required=not self.authenticated, limits={
                "max_symbols": self._settings.max_symbols,
                "max_message_bytes": self._settings.max_message_bytes,
                "subscribe_rate": self._settings.subscribe_rate,
                "max_replay_entries": self._settings.max_replay_entries,
                "max_replay_entries_per_request": self._settings.max_replay_entries_per_request,
            }))
            if not self.authenticated and not await self._authenticate():
                return
            async for message in self.ws:
                await self._handle(message)
        except ConnectionClosed:
            pass
        finally:
            self._release()

    async def _authenticate(self) -> bool:
        try:
            message = await asyncio.wait_for(self.ws.recv(), self._settings.auth_timeout_s)
        except TimeoutError:
            await self._close(p.CLOSE_UNAUTHORIZED, "auth timeout")
            return False
        try:
            cmd = p.parse_message(message, max_symbols=self._settings.max_symbols)
        except ProtocolError as exc:
            await self._send(p.error(exc.code, str(exc), exc.req))
            await self._close(p.CLOSE_UNAUTHORIZED, "auth required")
            return False
        if not isinstance(cmd, p.Auth):
            await self._send(p.error(p.AUTH_REQUIRED, "send {\"op\": \"auth\"} first", cmd.req))
            await self._close(p.CLOSE_UNAUTHORIZED, "auth required")
            return False
        if not token_ok(cmd.token, self._settings.tokens):
            await self._send(p.error(p.AUTH_FAILED, "invalid token", cmd.req))
            await self._close(p.CLOSE_UNAUTHORIZED, "auth failed")
            return False
        self.authenticated = True
        await self._send(p.auth_ok(cmd.req))
        return True

    async def _handle(self, message: str | bytes) -> None:
        try:
            cmd = p.parse_message(message, max_symbols=self._settings.max_symbols,
                                  admit=self._admit)
            if isinstance(cmd, p.Ping):
                await self._send(p.pong(cmd.req))
            elif isinstance(cmd, p.Auth):
                # Without configured tokens there is nothing to check: any auth is fine.
                if self._settings.tokens and not token_ok(cmd.token, self._settings.tokens):
                    raise ProtocolError(p.AUTH_FAILED, "invalid token", req=cmd.req)
                await self._send(p.auth_ok(cmd.req))
            elif isinstance(cmd, p.Subscribe):
                await self._subscribe(cmd)
            else:
                await self._unsubscribe(cmd)
        except ProtocolError as exc:
            self._stats.protocol_errors += 1
            await self._send(p.error(exc.code, str(exc), exc.req))
            if exc.code == p.RATE_LIMITED:
                await asyncio.sleep(_REFUSAL_PAUSE_S)

    def _admit(self, op: str, req: Any) -> None:
        """The subscribe rate, checked before a request's symbols are looked at."""
        if op in _RATED_OPS and not self._rate.hit():
            raise ProtocolError(p.RATE_LIMITED, f"more than {self._settings.subscribe_rate} "
                                "subscribe/unsubscribe requests", req=req)

    async def _unsubscribe(self, cmd: p.Unsubscribe) -> None:
        gone: list[str] = []
        dropped: set[Pair] = set()
        for symbol in cmd.symbols:
            channels = self.subscribed.get(symbol, ())
            hit = [channel for channel in cmd.channels if channel in channels]
            if hit:
                gone.append(symbol)
                for channel in hit:
                    self._drop((symbol, channel))
                    dropped.add((symbol, channel))
        if p.STATUS in cmd.channels and p.STATUS in self.subscribed.get(p.FEEDS, ()):
            self._drop(p.STATUS_PAIR)
            dropped.add(p.STATUS_PAIR)
        if dropped and self._pending:
            # Nothing of a pair after its "unsubscribed".
            self._pending = [batch for batch in self._pending if batch.pair not in dropped]
        await self._send(p.unsubscribed(gone, cmd.channels, cmd.req))

    async def _subscribe(self, cmd: p.Subscribe) -> None:
        subscribed = self.subscribed
        # Symbols of no pair yet (any other was checked when it was added).
        fresh = [symbol for symbol in cmd.symbols if symbol not in subscribed]
        # The status stream is no symbol: it does not count.
        symbols = len(subscribed) - (p.FEEDS in subscribed) + len(fresh)
        if symbols > self._settings.max_symbols:
            raise ProtocolError(
                p.TOO_MANY_SYMBOLS, f"would hold {symbols} symbols; "
                f"the limit is {self._settings.max_symbols}", req=cmd.req,
            )
        new: list[Pair] = []
        try:
            # Before anything of the request takes effect (and cheaply: a
            # refusal must cost less than a hostile client can send): symbols
            # nobody publishes never become hub state or keys of a read.
            unknown = await self._registry.unknown(fresh) if fresh else []
            if unknown:
                self._stats.protocol_errors += 1
                self._stats.unknown_symbol_requests += 1
                shown = ", ".join(unknown[:10]) + (", ..." if len(unknown) > 10 else "")
                await self._send(p.error(
                    p.UNKNOWN_SYMBOL, f"not registered, so nothing was subscribed: {shown}",
                    cmd.req, symbols=unknown))
                await asyncio.sleep(_REFUSAL_PAUSE_S)
                return
            new = [(s, c) for s, c in cmd.pairs if c not in subscribed.get(s, ())]
            for pair in new:
                subscribed.setdefault(pair[0], set()).add(pair[1])
                self._catching[pair] = _Catch(snapshot=pair in cmd.resume or cmd.snapshot)
            if new:
                await asyncio.gather(*(self._hub.add(self, symbol, channel)
                                       for symbol, channel in new))
            await self._send(p.subscribed(cmd.symbols, cmd.channels, cmd.req,
                                          epochs=self._epochs_of(cmd.stream_names)))
            if new:
                await self._catch_up_new(cmd, new)
        except RETRYABLE as exc:
            # Redis went away mid-way: undo what did not go live, so that
            # repeating the request (which the error asks for) starts clean.
            failed = [pair for pair in new if pair in self._catching]
            for pair in failed:
                self._drop(pair)
            names = ", ".join(f"{symbol} {channel}" for symbol, channel in failed) or \
                ", ".join(cmd.symbols)
            raise ProtocolError(
                p.UNAVAILABLE, f"redis is unreachable ({exc}); subscribe again to {names}",
                req=cmd.req) from exc

    def _epochs_of(self, symbols: Iterable[str]) -> dict[str, str]:
        hub = self._hub
        out: dict[str, str] = {}
        for symbol in symbols:
            epoch = hub.epoch(hub.shard(symbol))
            if epoch is not None:
                out[symbol] = epoch
        return out

    async def _catch_up_new(self, cmd: p.Subscribe, new: list[Pair]) -> None:
        """Bring the request's new pairs live: resume checks first (pipelined
        per shard), then the ``unrecoverable`` messages and one snapshot for
        the pairs without a usable cursor, then each resumed pair's replay,
        within the request's replay budget."""
        hub = self._hub
        resumed: list[Pair] = []
        unrec: dict[Pair, tuple[str, str | None]] = {}
        for pair in new:
            catch = self._catching.get(pair)
            if catch is None:
                continue
            # What every read for the pair must come from.
            catch.epoch = hub.epoch(hub.shard(pair[0]))
            if pair in cmd.resume:
                resumed.append(pair)
                catch.sent = cmd.resume[pair]
                given = cmd.epochs.get(pair[0])
                if given is not None and catch.epoch is not None and given != catch.epoch:
                    unrec[pair] = (p.GAP_EPOCH, None)
        self._stats.resumes += len(resumed)
        try:
            checked = await self._check_resumes(
                {pair: cmd.resume[pair] for pair in resumed if pair not in unrec})
            for pair, (reason, first_id, _rows, _page) in checked.items():
                if reason is not None:
                    unrec[pair] = (reason, first_id)
            fresh = {pair for pair in new if pair not in cmd.resume}
            await self._start_fresh(
                self._owned(pair for pair in new if pair in fresh or pair in unrec),
                snapshot_for=(fresh if cmd.snapshot else set()) | set(unrec),
                unrecoverable=unrec)
            budget = _Budget(self._settings.max_replay_entries_per_request)
            behind: dict[Pair, tuple[str, str | None]] = {}
            for pair in resumed:
                catch = self._catching.get(pair)
                if pair in unrec or catch is None or pair in self._resets:
                    continue
                _reason, first_id, rows, page = checked[pair]
                try:
                    await self._go_live(pair, cmd.resume[pair], catch, replay=True, rows=rows,
                                        page=page, budget=budget)
                except _TooFarBehind:
                    behind[pair] = (p.GAP_TOO_FAR_BEHIND, first_id)
            if behind:
                await self._start_fresh(self._owned(behind), snapshot_for=set(behind),
                                        unrecoverable=behind)
        except _EpochMoved as moved:
            # Redis changed under the catch-up: what is not live yet starts
            # again once the hub reads the new server (unrecoverable first
            # where the client already has entries).
            self._restart(new, moved)

    def _owned(self, pairs: Iterable[Pair]) -> dict[Pair, _Catch]:
        """The pairs still catching up, with their catch-up state, in order."""
        out: dict[Pair, _Catch] = {}
        for pair in pairs:
            catch = self._catching.get(pair)
            if catch is not None and pair not in self._resets:
                out[pair] = catch
        return out

    def _verify(self, owned: Mapping[Pair, _Catch], epoch: str | None) -> None:
        """Raise :exc:`_EpochMoved` unless a read (whose probe gave ``epoch``)
        came from the epoch of every pair it is for."""
        if epoch is None:
            return
        for pair, catch in owned.items():
            if catch.epoch is not None and catch.epoch != epoch:
                raise _EpochMoved(self._hub.shard(pair[0]), epoch)

    async def _check_resumes(self, cursors: dict[Pair, str]
                             ) -> dict[Pair, tuple[str | None, str | None, Any, int]]:
        """Per pair ``(reason, first_id, first_page, page_size)``: whether its
        cursor can be served (:func:`.resume.verdict`) and the first entries
        after it. One pipeline per shard (per :data:`_CHECK_CHUNK` pairs),
        so a resume of 500 symbols on 3 channels is a few round trips."""
        out: dict[Pair, tuple[str | None, str | None, Any, int]] = {}
        by_shard: dict[int, list[Pair]] = {}
        for pair in cursors:
            by_shard.setdefault(self._hub.shard(pair[0]), []).append(pair)
        for shard, group in by_shard.items():
            for start in range(0, len(group), _CHECK_CHUNK):
                owned = self._owned(group[start:start + _CHECK_CHUNK])
                if not owned:
                    continue
                keys = [stream_key(self._keys, *pair) for pair in owned]
                after = [cursors[pair] for pair in owned]
                # The status stream is trimmed by length, with no record.
                record = None if shard == FEEDS_SHARD else self._keys.trimmed(shard)
                scripted = not self._hub.cluster

                def fill(pipe: Any, keys: list[str] = keys, after: list[str] = after,
                         record: str | None = record, scripted: bool = scripted) -> bool:
                    probed = self._hub.probe(pipe)
                    if record is not None:
                        pipe.hmget(record, keys)
                    if scripted:
                        pipe.evalsha_ro(scripts.RESUME_SHA, len(keys), *keys,
                                        *scripts.resume_args(after, _FIRST_PAGE))
                        return probed
                    for key in keys:
                        pipe.xinfo_stream(key)
                    for key, cursor in zip(keys, after, strict=True):
                        pipe.xrange(key, min=f"({cursor}", max="+", count=_FIRST_PAGE)
                    return probed

                probed, replies = await self._pipelined(fill)
                self._verify(owned, probed_epoch(replies) if probed else None)
                records: Any = [None] * len(keys)
                if record is not None:
                    records = replies.pop(0)
                    if isinstance(records, Exception):
                        raise records
                if scripted:
                    if isinstance(replies[0], Exception):
                        raise replies[0]
                    states = [scripts.resume_state(reply) for reply in replies[0]]
                else:
                    n = len(keys)
                    # An error is no stream (or not a stream): nothing to replay.
                    states = [(None if isinstance(info, Exception) else info,
                               [] if isinstance(rows, Exception) else rows)
                              for info, rows in zip(replies[:n], replies[n:], strict=True)]
                for i, (pair, (info, rows)) in enumerate(zip(owned, states, strict=True)):
                    reason, first_id = verdict(cursors[pair], info, records[i])
                    out[pair] = (reason, first_id, rows, _FIRST_PAGE)
        return out

    async def _pipelined(self, fill: Callable[[Any], bool]) -> tuple[bool, list[Any]]:
        """Run a pipeline that ``fill`` queues (whether it queued the epoch
        probe, and the replies, errors among them), behind the gate. A new,
        restarted or failed-over Redis has none of the scripts and answers
        ``NOSCRIPT`` having run nothing of them: they are loaded and the
        whole read goes again, its probe included."""
        for attempt in range(2):
            pipe = self._r.pipeline(transaction=False)
            probed = fill(pipe)
            async with self._gate:
                replies = list(await pipe.execute(raise_on_error=False))
            if attempt or not any(isinstance(reply, NoScriptError) for reply in replies):
                break
            async with self._gate:
                for script in scripts.SCRIPTS:
                    await self._r.script_load(script)
        return probed, replies

    async def _start_fresh(self, owned: dict[Pair, _Catch], *, snapshot_for: set[Pair],
                           unrecoverable: Mapping[Pair, tuple[str, str | None]]) -> None:
        """For each pair: ``unrecoverable`` first where given, then a snapshot
        (the latest entry of each pair of ``snapshot_for``, one frame, with
        the epoch of each of their symbols; sent when it has an entry, and
        always after an ``unrecoverable``: it tells the epoch of what
        follows), then live from there."""
        if not owned:
            return
        order = list(owned)
        firsts = [pair for pair in order if pair in unrecoverable
                  and unrecoverable[pair][1] is None]
        # The status channel's snapshot also holds every feed's state, read
        # after its newest event (so no state is older than that event).
        with_feeds = p.STATUS_PAIR in owned and p.STATUS_PAIR in snapshot_for
        last_keys = [stream_key(self._keys, symbol, channel) for symbol, channel in order]
        # The newest entries in one script call, or on a cluster one XREVRANGE each.
        scripted = not self._hub.cluster

        def fill(pipe: Any) -> bool:
            probed = self._hub.probe(pipe)
            if scripted:
                pipe.evalsha_ro(scripts.LATEST_SHA, len(last_keys), *last_keys)
            else:
                for key in last_keys:
                    pipe.xrevrange(key, count=1)
            for symbol, channel in firsts:
                pipe.xrange(stream_key(self._keys, symbol, channel), count=1)
            if with_feeds:
                pipe.hgetall(self._keys.feed_states())
                pipe.xrevrange(self._keys.feed_status(), count=OPEN_GAP_WINDOW)
            return probed

        probed, replies = await self._pipelined(fill)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        self._verify(owned, probed_epoch(replies) if probed else None)
        feeds: list[dict[str, Any]] | None = None
        if with_feeds:
            recent = replies.pop()
            states = replies.pop()
            feeds, bad = feed_views(states, reversed(recent), now_us=now_us(),
                                    stale_after_s=self._settings.feed_stale_after_s)
            for name, why in bad.items():
                log.warning("feed %s left out of a status snapshot: %s", name, why)
        n_lasts = 1 if scripted else len(order)
        lasts = replies[0] if scripted else replies[:n_lasts]
        first_rows = replies[n_lasts:]
        first_ids = {pair: rows[0][0].decode() for pair, rows in zip(firsts, first_rows,
                                                                     strict=True) if rows}
        told = False
        for pair in order:
            catch = owned[pair]
            if pair in unrecoverable and self._catching.get(pair) is catch:
                told = True
                reason, first_id = unrecoverable[pair]
                self._stats.unrecoverable += 1
                await self._send(p.unrecoverable(
                    *pair, catch.sent or "0-0", reason, epoch=catch.epoch,
                    first_id=first_id if first_id is not None else first_ids.get(pair)))
        wanted = {pair[1] for pair in order if pair in snapshot_for}
        parts: dict[Topic, list[bytes]] = {c: [] for c in ALL_CHANNELS if c in wanted}
        epochs: dict[str, str] = {}
        cursors: dict[Pair, str] = {}
        for pair, rows in zip(order, lasts, strict=True):
            catch = owned[pair]
            if self._catching.get(pair) is not catch:
                continue  # dropped, or started again, meanwhile
            symbol, channel = pair
            if not rows:
                cursors[pair] = "0-0"
                if pair in snapshot_for and catch.epoch is not None:
                    epochs[symbol] = catch.epoch
                continue
            entry_id, fields = rows[0][0].decode(), rows[0][1]
            cursors[pair] = entry_id
            if pair not in snapshot_for:
                continue
            if catch.epoch is not None:
                epochs[symbol] = catch.epoch
            try:
                parts[channel].append(p.encode_entry(channel, symbol, fields, entry_id))
            except ValueError as exc:
                log.warning("bad entry %s of %s %s left out of a snapshot: %s", entry_id,
                            symbol, channel, exc)
                continue
            catch.sent = entry_id
        if feeds is not None and self._catching.get(p.STATUS_PAIR) is not owned[p.STATUS_PAIR]:
            feeds = None  # dropped, or started again, meanwhile
        if any(parts.values()) or told or feeds is not None:
            await self._send(p.snapshot_frame(parts, epochs=epochs, feeds=feeds))
        for pair, cursor in cursors.items():
            await self._go_live(pair, cursor, owned[pair])

    async def _go_live(self, pair: Pair, cursor: str, catch: _Catch, *, replay: bool = False,
                       rows: Any = None, page: int = _REPLAY_PAGE,
                       budget: _Budget | None = None) -> None:
        """Send what follows ``cursor`` up to the live edge (``replay``: read
        it, the first page being ``rows`` when already read), then switch to
        live. Returns without switching when the pair was dropped or started
        again meanwhile (its ``catch`` replaced)."""
        need_read = replay
        while self._catching.get(pair) is catch and pair not in self._resets:
            if need_read:
                cursor = await self._replay(pair, cursor, catch, rows, page, budget)
                rows, need_read = None, False
                continue
            if catch.overflowed:
                # Live entries were dropped from the buffer: they are still in
                # the stream, so read again from the cursor.
                catch.overflowed = False
                self._buffered -= len(catch.buffer)
                catch.buffer = []
                need_read = True
                continue
            # No await from here on: nothing may be fed in between.
            hub_epoch = self._hub.epoch(self._hub.shard(pair[0]))
            if catch.epoch is not None and hub_epoch != catch.epoch:
                # The hub reads another server than this pair was read from
                # (and will reset the stream): start the pair again.
                self._restart([pair], _EpochMoved(self._hub.shard(pair[0]), hub_epoch or ""))
                return
            del self._catching[pair]
            self._buffered -= len(catch.buffer)
            floor = p.id_key(cursor)
            if pair[1] is Channel.TRADES:
                self._last_trade[pair[0]] = cursor  # what the client has
            elif pair[1] is p.STATUS:
                self._last_status = cursor
            # A hub read issued before our own read may still be in flight
            # with entries we just sent: feed() drops those until it passes
            # the floor.
            self._floors[pair] = floor
            pending = [entry for entry in catch.buffer if entry[0] > floor]
            if pending:
                self.feed(Batch(pair[0], pair[1], pending))
                self.flush()
            return

    async def _replay(self, pair: Pair, cursor: str, catch: _Catch, rows: Any, page: int,
                      budget: _Budget | None) -> str:
        """Send the entries after ``cursor`` as ``replay`` frames, page by
        page; the last one sent. Raises :exc:`_TooFarBehind` past the pair's
        limit or the request's budget."""
        symbol, channel = pair
        stream = stream_key(self._keys, symbol, channel)
        limit = self._settings.max_replay_entries
        while True:
            if rows is None:
                pipe = self._r.pipeline(transaction=False)
                probed = self._hub.probe(pipe)
                pipe.xrange(stream, min=f"({cursor}", max="+", count=_REPLAY_PAGE)
                async with self._gate:
                    replies = list(await pipe.execute())
                self._verify({pair: catch}, probed_epoch(replies) if probed else None)
                rows, page = replies[0], _REPLAY_PAGE
            if not rows or self._catching.get(pair) is not catch or pair in self._resets:
                return cursor
            catch.replayed += len(rows)
            if ((limit is not None and catch.replayed > limit)
                    or (budget is not None and not budget.spend(len(rows)))):
                raise _TooFarBehind
            parts = []
            for raw_id, fields in rows:
                cursor = raw_id.decode()
                try:
                    parts.append(p.encode_entry(channel, symbol, fields, cursor))
                except ValueError as exc:
                    log.warning("bad entry %s of %s %s left out of a replay: %s", cursor,
                                symbol, channel, exc)
            catch.sent = cursor
            if parts:
                await self._send(p.data_frame(channel, parts, replay=True))
                self._stats.deliveries += len(parts)
            if len(rows) < page:
                return cursor
            rows = None

    # --- epochs: starting pairs again ------------------------------------------------------

    def epoch_changed(self, pair: Pair, last: str | None, epoch: str) -> None:
        """Called by the hub: the stream's server changed. The pair starts
        again (``unrecoverable`` with reason ``epoch`` after the last entry
        the client has, then a snapshot and live) once the hub has its new
        cursor; live entries are held back until then."""
        if self._closing or pair[1] not in self.subscribed.get(pair[0], ()):
            return
        catch = self._catching.get(pair)
        if catch is not None:
            self._buffered -= len(catch.buffer)
            self._catching[pair] = _Catch(sent=catch.sent, snapshot=catch.snapshot)
        else:
            # Live: what was read before the change leaves first.
            self.flush()
            after = last
            floor = self._floors.pop(pair, None)
            if floor is not None and (after is None or floor > p.id_key(after)):
                after = f"{floor[0]}-{floor[1]}"
            self._catching[pair] = _Catch(sent=after, snapshot=True)
        self._resets[pair] = True
        self._stats.epoch_resets += 1
        self._ensure_resets()

    def _restart(self, pairs: Iterable[Pair], moved: _EpochMoved) -> None:
        """Start ``pairs`` (those still catching up) again after ``moved``."""
        for pair in pairs:
            catch = self._catching.get(pair)
            if catch is None or pair in self._resets:
                continue
            self._buffered -= len(catch.buffer)
            self._catching[pair] = _Catch(sent=catch.sent, snapshot=catch.snapshot)
            self._resets[pair] = True
        if moved.epoch:
            self._reset_waits[moved.shard] = moved.epoch
        self._ensure_resets()

    def _ensure_resets(self) -> None:
        if self._reset_task is None and self._resets and not self._closing:
            self._reset_task = asyncio.create_task(self._run_resets())

    async def _run_resets(self) -> None:
        """Start the pairs of :attr:`_resets` again, until there are none."""
        failures = 0
        try:
            while self._resets and not self._closing:
                if self.behind:
                    # The entries it holds are of the old epoch: they leave
                    # first (conflated), then the unrecoverable after them.
                    await asyncio.sleep(_DRAIN_POLL_S)
                    continue
                waits, self._reset_waits = self._reset_waits, {}
                for shard, epoch in waits.items():
                    # A read saw another server: until the hub reads it too.
                    await self._hub.wait_epoch(shard, epoch, timeout_s=_SETTLE_S)
                batch = self._owned_resets()
                if not batch:
                    continue
                try:
                    # A pair unsubscribed meanwhile cancels its wait, not the others'.
                    await asyncio.gather(*(self._hub.ready(*pair) for pair in batch),
                                         return_exceptions=True)
                    for pair, catch in list(batch.items()):
                        if self._catching.get(pair) is not catch:
                            del batch[pair]
                            continue
                        catch.epoch = self._hub.epoch(self._hub.shard(pair[0]))
                        # Whatever was held back predates the new cursor.
                        self._buffered -= len(catch.buffer)
                        catch.buffer, catch.overflowed = [], False
                    await self._start_fresh(
                        batch,
                        snapshot_for={pair for pair, c in batch.items()
                                      if c.snapshot or c.sent is not None},
                        unrecoverable={pair: (p.GAP_EPOCH, None) for pair, c in batch.items()
                                       if c.sent is not None})
                    failures = 0
                except _EpochMoved as moved:
                    self._requeue(batch)
                    self._reset_waits[moved.shard] = moved.epoch
                except RETRYABLE as exc:
                    self._requeue(batch)
                    failures += 1
                    log.warning("cannot start %d pairs again yet: %s", len(batch), exc)
                    await asyncio.sleep(self._backoff.compute(failures))
                except ConnectionClosed:
                    raise
                except Exception:
                    self._requeue(batch)
                    failures += 1
                    log.exception("starting %d pairs again failed", len(batch))
                    await asyncio.sleep(self._backoff.compute(failures))
        except ConnectionClosed:
            pass
        finally:
            self._reset_task = None

    def _owned_resets(self) -> dict[Pair, _Catch]:
        """Take the pairs to start again that are still catching up."""
        resets, self._resets = self._resets, {}
        return {pair: self._catching[pair] for pair in resets if pair in self._catching}

    def _requeue(self, batch: Mapping[Pair, _Catch]) -> None:
        for pair, catch in batch.items():
            if self._catching.get(pair) is catch:
                self._resets[pair] = True

    def _drop(self, pair: Pair) -> None:
        symbol, channel = pair
        channels = self.subscribed.get(symbol)
        if channels is not None:
            channels.discard(channel)
            if not channels:
                del self.subscribed[symbol]
        self._hub.remove(self, symbol, channel)
        catch = self._catching.pop(pair, None)
        if catch is not None:
            self._buffered -= len(catch.buffer)
        self._resets.pop(pair, None)
        self._floors.pop(pair, None)
        if channel is Channel.TRADES:
            self._last_trade.pop(symbol, None)
            self._held_trades.pop(symbol, None)
        elif channel is Channel.QUOTES:
            self._latest_quotes.pop(symbol, None)
        elif channel is p.STATUS:
            self._held_status, self._status_skipped, self._last_status = [], 0, None
        elif self._latest_bars:
            for key in [key for key in self._latest_bars if key[0] == symbol]:
                del self._latest_bars[key]

    def _release(self) -> None:
        self._closing = True
        for symbol, channels in list(self.subscribed.items()):
            for channel in list(channels):
                self._drop((symbol, channel))
        self._pending = []
        if self._drain_task is not None:
            self._drain_task.cancel()
        if self._reset_task is not None:
            self._reset_task.cancel()

    # --- live path (called by the hub) -----------------------------------------------------

    def feed(self, batch: Batch) -> None:
        # The common case (live, caught up, not behind) in three checks: this
        # runs once per subscriber per stream per read.
        if self._catching or self._floors or self.behind:
            self._feed_held(batch)
        else:
            self._pending.append(batch)

    def _feed_held(self, batch: Batch) -> None:
        pair = batch.pair
        catch = self._catching.get(pair)
        if catch is not None:
            if catch.overflowed:
                return
            catch.buffer.extend(batch.entries)
            self._buffered += len(batch.entries)
            if self._buffered > self._settings.catchup_buffer_max:
                for held in self._catching.values():
                    held.buffer = []
                    held.overflowed = True
                self._buffered = 0
                self._stats.catchup_overflows += 1
            return
        floor = self._floors.get(pair)
        if floor is not None:
            entries = [entry for entry in batch.entries if entry[0] > floor]
            if not entries:
                return
            del self._floors[pair]  # the hub's batches only go forward from here
            if len(entries) < len(batch.entries):
                batch = batch.with_entries(entries)
        if self.behind:
            self._hold(batch)
        else:
            self._pending.append(batch)

    def _hold(self, batch: Batch) -> None:
        """Keep what a conflated frame needs of ``batch`` (the client is behind)."""
        entries = batch.entries
        if batch.kind == TRADES:
            held = self._held_trades.get(batch.symbol)
            if held is None:
                self._held_trades[batch.symbol] = _HeldTrades(len(entries), entries[-1])
            else:
                held.count += len(entries)
                held.latest = entries[-1]
        elif batch.kind == QUOTES:
            self._latest_quotes[batch.symbol] = entries[-1][2]
        elif batch.kind == STATUS_KIND:
            held_status = self._held_status
            held_status.extend(entries)
            extra = len(held_status) - _HELD_STATUS_MAX
            if extra > 0:
                del held_status[:extra]
                self._status_skipped += extra
        else:
            bars = self._latest_bars
            for entry in entries:
                key = (batch.symbol, bar_bucket(entry[2]))
                # Re-inserted so the frame keeps stream order (the latest change last).
                bars.pop(key, None)
                bars[key] = entry

    def flush(self) -> None:
        pending = self._pending
        if not pending or self.behind or self._closing:
            return
        ws = self.ws
        transport = ws.transport
        if transport is None or transport.get_write_buffer_size() > self._high_bytes:
            self._fall_behind()
            return
        self._pending = []
        if len(pending) == 1 and self._raw_frames:
            # The usual flush with many subscribers per stream: one stream's
            # batch, whose whole frame (header included) is built once and
            # written to each of them as the same bytes (as broadcast does).
            batch = pending[0]
            kind = batch.kind
            if kind == TRADES:
                self._last_trade[batch.symbol] = batch.entries[-1][1]
            elif kind == STATUS_KIND:
                self._last_status = batch.entries[-1][1]
            if ws.protocol.state is State.OPEN:
                transport.write(batch.wire())
                stats = self._stats
                stats.frames += 1
                stats.deliveries += len(batch.entries)
            return
        # Several batches of one channel: one frame, joined for this client.
        # Several channels take the general path, one frame per channel.
        kind = pending[0].kind
        count = 0
        for batch in pending:
            if batch.kind != kind:
                self._write_mixed(pending)
                return
            count += len(batch.entries)
        if kind == TRADES:
            last_trade = self._last_trade
            for batch in pending:
                last_trade[batch.symbol] = batch.entries[-1][1]
        elif kind == STATUS_KIND:
            self._last_status = pending[-1].entries[-1][1]
        self._write_one(LIVE_HEADS[kind] + b",".join([batch.joined for batch in pending])
                        + FRAME_END, count)

    def _write_mixed(self, pending: list[Batch]) -> None:
        joined: tuple[list[bytes], ...] = tuple([] for _ in ALL_CHANNELS)
        count = 0
        last_trade = self._last_trade
        for batch in pending:
            kind = batch.kind
            joined[kind].append(batch.joined)
            count += len(batch.entries)
            if kind == TRADES:
                last_trade[batch.symbol] = batch.entries[-1][1]
            elif kind == STATUS_KIND:
                self._last_status = batch.entries[-1][1]
        self._write([p.live_frame(kind, parts) for kind, parts in enumerate(joined) if parts],
                    count)

    def _write_one(self, frame: bytes, count: int) -> None:
        """:meth:`_write` of one frame (the hot path)."""
        ws = self.ws
        if not self._raw_frames:
            broadcast([ws], frame, text=True)
        elif ws.protocol.state is State.OPEN:
            ws.transport.write(p.text_frame(frame))
        else:
            return
        stats = self._stats
        stats.frames += 1
        stats.deliveries += count

    def _write(self, frames: list[bytes], count: int) -> None:
        # Written without awaiting the drain: the buffer check in flush() is
        # what bounds memory, not send()'s flow control. Both paths skip a
        # connection that is closing; everything websockets writes itself
        # (control frames, pongs, the close frame) goes through the same
        # transport, in call order, so frames never interleave.
        ws = self.ws
        if not self._raw_frames:
            for frame in frames:
                broadcast([ws], frame, text=True)
        elif ws.protocol.state is State.OPEN:
            # One write, one system call, however many channels.
            ws.transport.write(b"".join([p.text_frame(frame) for frame in frames]))
        else:
            return
        self._stats.frames += len(frames)
        self._stats.deliveries += count

    def _fall_behind(self) -> None:
        self.behind = True
        self._behind_since = time.monotonic()
        for batch in self._pending:
            self._hold(batch)
        self._pending = []
        self._stats.conflations += 1
        self._drain_task = asyncio.create_task(self._drain())

    def _conflated_frames(self) -> tuple[list[bytes], int]:
        """The frames that end a spell behind, and how many entries they carry;
        empties what was held."""
        frames: list[bytes] = []
        count = 0
        held, self._held_trades = self._held_trades, {}
        if held:
            gaps = []
            for symbol, trades in held.items():
                until = trades.latest[1]
                if trades.count > 1:
                    gaps.append(p.Gap(symbol, self._last_trade.get(symbol, "0-0"), until))
                self._last_trade[symbol] = until
            parts = [trades.latest[2] for trades in held.values()]
            if gaps:
                frames.append(p.conflated_trades_frame(parts, gaps))
                self._stats.gaps += len(gaps)
            else:  # one trade per symbol: nothing was skipped
                frames.append(p.live_frame(TRADES, parts))
            count += len(parts)
        quotes, self._latest_quotes = self._latest_quotes, {}
        if quotes:
            frames.append(p.data_frame(Channel.QUOTES, quotes.values(), conflated=True))
            count += len(quotes)
        bars, self._latest_bars = self._latest_bars, {}
        if bars:
            frames.append(p.data_frame(Channel.BARS_1M, [entry[2] for entry in bars.values()],
                                       conflated=True))
            count += len(bars)
        status, self._held_status = self._held_status, []
        if status:
            parts = [entry[2] for entry in status]
            if self._status_skipped:
                frames.append(p.conflated_status_frame(parts, [p.Gap(
                    p.FEEDS, self._last_status or "0-0", status[0][1])]))
                self._stats.gaps += 1
                self._status_skipped = 0
            else:  # every event is here: nothing was skipped
                frames.append(p.live_frame(STATUS_KIND, parts))
            self._last_status = status[-1][1]
            count += len(parts)
        return frames, count

    async def _drain(self) -> None:
        """Wait for the send buffer to drain, then send what was held, conflated."""
        low = self._settings.buffer_low_bytes
        while not self._closing:
            await asyncio.sleep(_DRAIN_POLL_S)
            transport = self.ws.transport
            if transport is None or transport.is_closing():
                return
            if transport.get_write_buffer_size() <= low:
                frames, count = self._conflated_frames()
                self.behind = False
                self._drain_task = None
                if frames:
                    self._write(frames, count)
                return
            if time.monotonic() - self._behind_since > self._settings.slow_timeout_s:
                self._stats.slow_closes += 1
                log.info("closing slow consumer %s", self.ws.remote_address)
                await self._close(p.CLOSE_SLOW_CONSUMER, "slow consumer")
                return

    # --- sending ---------------------------------------------------------------------------

    async def _send(self, frame: bytes) -> None:
        """Send one control, snapshot or replay frame, waiting for the buffer
        to drain. A client that does not drain within ``slow_timeout_s`` is
        closed (4008)."""
        try:
            await asyncio.wait_for(self.ws.send(frame, text=True), self._settings.slow_timeout_s)
        except TimeoutError:
            self._stats.slow_closes += 1
            await self._close(p.CLOSE_SLOW_CONSUMER, "slow consumer")
            raise ConnectionClosed(None, None) from None

    async def _close(self, code: int, reason: str) -> None:
        """Close with ``code``; abort the TCP connection if the client does not
        take part in the closing handshake (a stalled reader never will)."""
        self._closing = True
        try:
            await asyncio.wait_for(self.ws.close(code, reason), self._settings.close_timeout_s)
        except TimeoutError:
            if self.ws.transport is not None:
                self.ws.transport.abort()


def token_ok(token: str, tokens: tuple[str, ...]) -> bool:
    """Constant-time check of ``token`` against every accepted token."""
    candidate = token.encode()
    ok = False
    for accepted in tokens:
        ok |= hmac.compare_digest(candidate, accepted.encode())
    return ok
