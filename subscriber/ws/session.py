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

Live frames are framed once by websockets' own :class:`~websockets.frames.Frame`
and written straight to the transport (what ``broadcast`` does, without its
per-call overhead): a server's frames are unmasked and the server negotiates
no extension, so the bytes are exactly what ``send`` would write. One flush
writes one frame per channel that has entries, all in one ``write`` (one
system call, as with a single frame). A connection that did negotiate an
extension goes through ``broadcast``.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem
from limits.strategies import RateLimiter
from websockets.asyncio.server import ServerConnection, broadcast
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from pricepipe import codec
from pricepipe.exceptions import ProtocolError
from pricepipe.keys import Channel, Keys

from . import protocol as p
from .hub import QUOTES, RETRYABLE, TRADES, Batch, Entry, Hub
from .protocol import CHANNELS, FRAME_END, LIVE_HEADS, Pair
from .settings import WsSettings

log = logging.getLogger(__name__)

_DRAIN_POLL_S = 0.02
_REPLAY_PAGE = 500
_BUCKET_KEY = b'"bucket_us":'


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


class _TooFarBehind(Exception):
    pass


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
        limiter: RateLimiter, rate: RateLimitItem, stats: Stats, authenticated: bool,
        gate: asyncio.Semaphore,
    ) -> None:
        self.ws = ws
        self._hub = hub
        self._r = r
        self._keys = keys
        self._settings = settings
        self._limiter = limiter
        self._rate = rate
        self._stats = stats
        # Shared by every session: bounds concurrent Redis reads (and so
        # pool connections) when many clients subscribe at once.
        self._gate = gate
        self._rate_key = f"ws-{id(self)}"
        self.authenticated = authenticated
        #: Every subscribed pair, live or catching up, as symbol -> channels.
        self.subscribed: dict[str, set[Channel]] = {}
        self._catching: dict[Pair, list[Entry]] = {}
        self._overflowed: set[Pair] = set()
        self._floors: dict[Pair, tuple[int, int]] = {}
        self._buffered = 0
        #: Live batches for the next flush.
        self._pending: list[Batch] = []
        #: The last trade ID sent per symbol: where a conflated frame's gap starts.
        self._last_trade: dict[str, str] = {}
        # While behind, what the conflated frames will carry:
        self._held_trades: dict[str, _HeldTrades] = {}
        self._latest_quotes: dict[str, bytes] = {}
        #: (symbol, bucket digits) -> latest entry, in the order of last change.
        self._latest_bars: dict[tuple[str, bytes], Entry] = {}
        self.behind = False
        self._behind_since = 0.0
        self._drain_task: asyncio.Task[None] | None = None
        self._closing = False
        # Frames may be written as raw bytes only when no extension (such as
        # per-message deflate) transforms them.
        self._raw_frames = not ws.protocol.extensions

    # --- conversation ----------------------------------------------------------------------

    async def serve(self) -> None:
        """Talk to the client until it leaves; always releases the subscriptions."""
        try:
            await self._send(p.hello(auth_required=not self.authenticated, limits={
                "max_symbols": self._settings.max_symbols,
                "max_message_bytes": self._settings.max_message_bytes,
                "subscribe_rate": self._settings.subscribe_rate,
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
            cmd = p.parse_message(message, max_symbols=self._settings.max_symbols)
            if isinstance(cmd, p.Subscribe | p.Unsubscribe) and not self._limiter.hit(
                self._rate, self._rate_key
            ):
                raise ProtocolError(p.RATE_LIMITED, f"more than {self._settings.subscribe_rate} "
                                    "subscribe/unsubscribe requests", req=cmd.req)
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
        if dropped and self._pending:
            # Nothing of a pair after its "unsubscribed".
            self._pending = [batch for batch in self._pending if batch.pair not in dropped]
        await self._send(p.unsubscribed(gone, cmd.channels, cmd.req))

    async def _subscribe(self, cmd: p.Subscribe) -> None:
        subscribed = self.subscribed
        new = [(s, c) for s, c in cmd.pairs if c not in subscribed.get(s, ())]
        symbols = len(subscribed) + len({s for s, _ in new if s not in subscribed})
        if symbols > self._settings.max_symbols:
            raise ProtocolError(
                p.TOO_MANY_SYMBOLS, f"would hold {symbols} symbols; "
                f"the limit is {self._settings.max_symbols}", req=cmd.req,
            )
        for pair in new:
            subscribed.setdefault(pair[0], set()).add(pair[1])
            self._catching[pair] = []
        await self._send(p.subscribed(cmd.symbols, cmd.channels, cmd.req))
        if not new:
            return
        try:
            await self._catch_up_new(cmd, new)
        except RETRYABLE as exc:
            # Redis went away mid-way: undo what did not go live, so that
            # repeating the request (which the error asks for) starts clean.
            failed = [pair for pair in new if pair in self._catching]
            for pair in failed:
                self._drop(pair)
            names = ", ".join(f"{symbol} {channel}" for symbol, channel in failed)
            raise ProtocolError(
                p.UNAVAILABLE, f"redis is unreachable ({exc}); subscribe again to {names}",
                req=cmd.req) from exc

    async def _catch_up_new(self, cmd: p.Subscribe, new: list[Pair]) -> None:
        await asyncio.gather(*(self._hub.add(self, symbol, channel) for symbol, channel in new))
        fresh = [pair for pair in new if pair not in cmd.resume]
        if fresh:
            await self._start_fresh(fresh, send_snapshot=cmd.snapshot)
        for pair in new:
            if pair in cmd.resume and pair in self._catching:
                self._stats.resumes += 1
                await self._resume(pair, cmd.resume[pair])

    async def _start_fresh(self, pairs: list[Pair], *, send_snapshot: bool) -> None:
        """Snapshot (the latest entry of each pair), then live from there."""
        pipe = self._r.pipeline(transaction=False)
        for symbol, channel in pairs:
            pipe.xrevrange(self._keys.stream(symbol, channel), count=1)
        async with self._gate:
            replies = await pipe.execute()
        wanted = {channel for _, channel in pairs}
        parts: dict[Channel, list[bytes]] = {c: [] for c in CHANNELS if c in wanted}
        cursors: dict[Pair, str] = {}
        for (symbol, channel), rows in zip(pairs, replies, strict=True):
            if not rows:
                cursors[(symbol, channel)] = "0-0"
                continue
            entry_id, fields = rows[0][0].decode(), rows[0][1]
            cursors[(symbol, channel)] = entry_id
            try:
                parts[channel].append(codec.entry_to_json(channel, symbol, fields, entry_id))
            except ValueError as exc:
                log.warning("bad entry %s of %s %s left out of a snapshot: %s", entry_id,
                            symbol, channel, exc)
        if send_snapshot and any(parts.values()):
            await self._send(p.snapshot_frame(parts))
        for pair in pairs:
            if pair in self._catching:
                await self._go_live(pair, cursors[pair])

    async def _resume(self, pair: Pair, cursor: str) -> None:
        """Replay what the client missed after ``cursor``, or say it can't."""
        reason, first_id = await self._check_resumable(pair, cursor)
        if reason is None:
            try:
                await self._go_live(pair, cursor, replay_first=True)
                return
            except _TooFarBehind:
                reason = p.GAP_TOO_FAR_BEHIND
        self._stats.unrecoverable += 1
        await self._send(p.unrecoverable(*pair, cursor, reason, first_id=first_id))
        if pair in self._catching:
            self._buffered -= len(self._catching[pair])
            self._catching[pair] = []
            self._overflowed.discard(pair)
            await self._start_fresh([pair], send_snapshot=True)

    async def _check_resumable(self, pair: Pair, cursor: str) -> tuple[str | None, str | None]:
        """``(reason, first_id)``: reason None when every entry after ``cursor``
        is certainly still in the stream.

        From ``XINFO STREAM`` (Redis 7): nothing was ever removed when
        ``entries-added`` equals ``length``; an ``XDEL`` after the cursor shows
        in ``max-deleted-entry-id``; trimming (which Redis 7.0 does not record
        there) removes from the front, so a cursor before the first retained
        entry may have missed trimmed entries. That last case is ambiguous
        (the client may have seen the very last trimmed entry) and is reported
        as not recoverable: a needless HTTP fetch beats a silent gap.
        """
        try:
            async with self._gate:
                info = await self._r.xinfo_stream(self._keys.stream(*pair))
        except RETRYABLE:
            raise
        except Exception:  # no such key: the client saw entries this Redis never had
            return (None if p.id_key(cursor) == (0, 0) else p.GAP_CURSOR_AHEAD), None
        first = info.get("first-entry")
        first_id = first[0].decode() if first else None
        key = p.id_key(cursor)
        last_generated = info.get("last-generated-id")
        if last_generated is not None and key > p.id_key(last_generated):
            return p.GAP_CURSOR_AHEAD, first_id
        max_deleted = info.get("max-deleted-entry-id")
        if max_deleted is not None and key < p.id_key(max_deleted):
            return p.GAP_TRIMMED, first_id
        added = info.get("entries-added")
        if added is not None and int(added) == int(info["length"]):
            return None, first_id
        if first_id is None:  # emptied: fine only if the client had seen the end
            caught_up = last_generated is not None and key >= p.id_key(last_generated)
            return (None if caught_up else p.GAP_TRIMMED), None
        if key < p.id_key(first_id):
            return p.GAP_TRIMMED, first_id
        return None, first_id

    async def _go_live(self, pair: Pair, cursor: str, *, replay_first: bool = False) -> None:
        """Send what follows ``cursor`` up to the live edge, then switch to live."""
        replayed = 0
        need_read = replay_first
        while pair in self._catching:
            if need_read:
                cursor, replayed = await self._replay(pair, cursor, replayed)
                if pair not in self._catching:
                    return  # the connection went away meanwhile
            if pair in self._overflowed:
                # Live entries were dropped from the buffer: they are still in
                # the stream, so read again from the cursor.
                self._overflowed.discard(pair)
                self._buffered -= len(self._catching[pair])
                self._catching[pair] = []
                need_read = True
                continue
            # No await from here on: nothing may be fed in between.
            buffer = self._catching.pop(pair)
            self._buffered -= len(buffer)
            floor = p.id_key(cursor)
            if pair[1] is Channel.TRADES:
                self._last_trade[pair[0]] = cursor  # what the client has
            # A hub read issued before our own read may still be in flight
            # with entries we just sent: feed() drops those until it passes
            # the floor.
            self._floors[pair] = floor
            pending = [entry for entry in buffer if entry[0] > floor]
            if pending:
                self.feed(Batch(pair[0], pair[1], pending))
                self.flush()
            return

    async def _replay(self, pair: Pair, cursor: str, replayed: int) -> tuple[str, int]:
        symbol, channel = pair
        stream = self._keys.stream(symbol, channel)
        limit = self._settings.max_replay_entries
        while True:
            async with self._gate:
                rows = await self._r.xrange(stream, min=f"({cursor}", max="+",
                                            count=_REPLAY_PAGE)
            if not rows:
                return cursor, replayed
            replayed += len(rows)
            if limit is not None and replayed > limit:
                raise _TooFarBehind
            parts = []
            for raw_id, fields in rows:
                cursor = raw_id.decode()
                try:
                    parts.append(codec.entry_to_json(channel, symbol, fields, cursor))
                except ValueError as exc:
                    log.warning("bad entry %s of %s %s left out of a replay: %s", cursor,
                                symbol, channel, exc)
            if parts:
                await self._send(p.data_frame(channel, parts, replay=True))
                self._stats.deliveries += len(parts)
            if len(rows) < _REPLAY_PAGE:
                return cursor, replayed

    def _drop(self, pair: Pair) -> None:
        symbol, channel = pair
        channels = self.subscribed.get(symbol)
        if channels is not None:
            channels.discard(channel)
            if not channels:
                del self.subscribed[symbol]
        self._hub.remove(self, symbol, channel)
        buffer = self._catching.pop(pair, None)
        if buffer is not None:
            self._buffered -= len(buffer)
        self._overflowed.discard(pair)
        self._floors.pop(pair, None)
        if channel is Channel.TRADES:
            self._last_trade.pop(symbol, None)
            self._held_trades.pop(symbol, None)
        elif channel is Channel.QUOTES:
            self._latest_quotes.pop(symbol, None)
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
        with contextlib.suppress(Exception):
            self._limiter.clear(self._rate, self._rate_key)

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
        buffer = self._catching.get(pair)
        if buffer is not None:
            if pair in self._overflowed:
                return
            buffer.extend(batch.entries)
            self._buffered += len(batch.entries)
            if self._buffered > self._settings.catchup_buffer_max:
                for name, held in self._catching.items():
                    held.clear()
                    self._overflowed.add(name)
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
        transport = self.ws.transport
        high = self._settings.buffer_high_bytes
        if transport is None or transport.get_write_buffer_size() > high:
            self._fall_behind()
            return
        self._pending = []
        # The usual flush holds one channel's batches: one frame, built as
        # cheaply as before there were channels. Several channels take the
        # general path, one frame per channel.
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
        self._write_one(LIVE_HEADS[kind] + b",".join([batch.joined for batch in pending])
                        + FRAME_END, count)

    def _write_mixed(self, pending: list[Batch]) -> None:
        joined: tuple[list[bytes], ...] = ([], [], [])
        count = 0
        last_trade = self._last_trade
        for batch in pending:
            kind = batch.kind
            joined[kind].append(batch.joined)
            count += len(batch.entries)
            if kind == TRADES:
                last_trade[batch.symbol] = batch.entries[-1][1]
        self._write([p.live_frame(kind, parts) for kind, parts in enumerate(joined) if parts],
                    count)

    def _write_one(self, frame: bytes, count: int) -> None:
        """:meth:`_write` of one frame (the hot path)."""
        ws = self.ws
        if not self._raw_frames:
            broadcast([ws], frame, text=True)
        elif ws.protocol.state is State.OPEN:
            ws.transport.write(Frame(Opcode.TEXT, frame).serialize(mask=False))
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
            ws.transport.write(b"".join([Frame(Opcode.TEXT, frame).serialize(mask=False)
                                         for frame in frames]))
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
