"""One websocket connection: its subscriptions, its catch-up on subscribe or
resume, and its send buffer with the slow-consumer policy.

Ordering guarantee per symbol: the client receives a symbol's ticks in
stream order, each at most once, from the snapshot (or resume cursor) on,
without a gap, except where a frame is marked ``conflated`` (a slow client)
or an ``unrecoverable`` message says what was skipped.

How a subscribe stitches history to live ticks without a gap or duplicate:
the symbol is registered with the hub first, in *catching up* state, where
the hub's live ticks for it are buffered instead of sent; once the hub holds
a cursor, the session reads the stream itself (``XREVRANGE`` for a snapshot,
``XRANGE`` from the client's cursor for a resume), sends that, and then,
without yielding to the event loop, moves the buffered ticks newer than what
it sent into the live path. The buffer is bounded: when it overflows it is
dropped and the session reads the stream again from its cursor instead.

Live frames are framed once by websockets' own :class:`~websockets.frames.Frame`
and written straight to the transport (what ``broadcast`` does, without its
per-call overhead): a server's frames are unmasked and the server negotiates
no extension, so the bytes are exactly what ``send`` would write. A
connection that did negotiate one goes through ``broadcast``.

Slow consumers: live frames are written without waiting while the
connection's send buffer is below ``buffer_high_bytes``. Above it, the
connection stops receiving frames and keeps only the latest tick per symbol;
once the buffer drains below ``buffer_low_bytes`` it gets one frame marked
``conflated`` with those ticks. A client still behind after
``slow_timeout_s`` is closed with code 4008. Memory per connection is thus
bounded by the send buffer mark plus one frame (the ticks the hub read since
its last flush: about ``read_count`` at most, see :mod:`pricepipe.subscriber.ws.hub`), one
tick per subscribed symbol, and the catch-up buffer.
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
from pricepipe.keys import Keys

from . import protocol as p
from .hub import RETRYABLE, Batch, Entry, Hub
from .settings import WsSettings

log = logging.getLogger(__name__)

_DRAIN_POLL_S = 0.02
_REPLAY_PAGE = 500


@dataclass
class Stats:
    """Counters of one server process, read by ``/metrics`` and ``/healthz``."""

    connections: int = 0
    frames: int = 0
    deliveries: int = 0
    conflations: int = 0
    slow_closes: int = 0
    protocol_errors: int = 0
    resumes: int = 0
    unrecoverable: int = 0


class _TooFarBehind(Exception):
    pass


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
        #: Every subscribed symbol, live or catching up.
        self.subscribed: set[str] = set()
        self._catching: dict[str, list[Entry]] = {}
        self._overflowed: set[str] = set()
        self._floors: dict[str, tuple[int, int]] = {}
        self._buffered = 0
        #: Live batches for the next frame.
        self._pending: list[Batch] = []
        #: While behind: the latest tick of each symbol, for the conflated frame.
        self._latest: dict[str, bytes] = {}
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
        gone = [s for s in cmd.symbols if s in self.subscribed]
        for symbol in gone:
            self._drop(symbol)
        await self._send(p.unsubscribed(gone, cmd.req))

    async def _subscribe(self, cmd: p.Subscribe) -> None:
        new = [s for s in cmd.symbols if s not in self.subscribed]
        if len(self.subscribed) + len(new) > self._settings.max_symbols:
            raise ProtocolError(
                p.TOO_MANY_SYMBOLS, f"would hold {len(self.subscribed) + len(new)} symbols; "
                f"the limit is {self._settings.max_symbols}", req=cmd.req,
            )
        for symbol in new:
            self.subscribed.add(symbol)
            self._catching[symbol] = []
        await self._send(p.subscribed(cmd.symbols, cmd.req))
        if not new:
            return
        try:
            await self._catch_up_new(cmd, new)
        except RETRYABLE as exc:
            # Redis went away mid-way: undo what did not go live, so that
            # repeating the request (which the error asks for) starts clean.
            failed = [s for s in new if s in self._catching]
            for symbol in failed:
                self._drop(symbol)
            raise ProtocolError(
                p.UNAVAILABLE, f"redis is unreachable ({exc}); subscribe again to "
                f"{', '.join(failed)}", req=cmd.req) from exc

    async def _catch_up_new(self, cmd: p.Subscribe, new: list[str]) -> None:
        await asyncio.gather(*(self._hub.add(self, s) for s in new))
        fresh = [s for s in new if s not in cmd.resume]
        if fresh:
            await self._start_fresh(fresh, send_snapshot=cmd.snapshot)
        for symbol in new:
            if symbol in cmd.resume and symbol in self._catching:
                self._stats.resumes += 1
                await self._resume(symbol, cmd.resume[symbol])

    async def _start_fresh(self, symbols: list[str], *, send_snapshot: bool) -> None:
        """Snapshot (the latest tick of each), then live from there."""
        pipe = self._r.pipeline(transaction=False)
        for symbol in symbols:
            pipe.xrevrange(self._keys.stream(symbol), count=1)
        async with self._gate:
            replies = await pipe.execute()
        parts: list[bytes] = []
        cursors: dict[str, str] = {}
        for symbol, rows in zip(symbols, replies, strict=True):
            if not rows:
                cursors[symbol] = "0-0"
                continue
            entry_id, fields = rows[0][0].decode(), rows[0][1]
            cursors[symbol] = entry_id
            try:
                parts.append(codec.entry_to_json(fields, entry_id))
            except ValueError as exc:
                log.warning("bad entry %s of %s left out of a snapshot: %s", entry_id, symbol, exc)
        if parts and send_snapshot:
            await self._send(p.snapshot_frame(parts))
        for symbol in symbols:
            if symbol in self._catching:
                await self._go_live(symbol, cursors[symbol])

    async def _resume(self, symbol: str, cursor: str) -> None:
        """Replay what the client missed after ``cursor``, or say it can't."""
        reason, first_id = await self._check_resumable(symbol, cursor)
        if reason is None:
            try:
                await self._go_live(symbol, cursor, replay_first=True)
                return
            except _TooFarBehind:
                reason = p.GAP_TOO_FAR_BEHIND
        self._stats.unrecoverable += 1
        await self._send(p.unrecoverable(symbol, cursor, reason, first_id=first_id))
        if symbol in self._catching:
            self._buffered -= len(self._catching[symbol])
            self._catching[symbol] = []
            self._overflowed.discard(symbol)
            await self._start_fresh([symbol], send_snapshot=True)

    async def _check_resumable(self, symbol: str, cursor: str) -> tuple[str | None, str | None]:
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
                info = await self._r.xinfo_stream(self._keys.stream(symbol))
        except RETRYABLE:
            raise
        except Exception:  # no such key: the client saw entries this Redis never had
            return p.GAP_CURSOR_AHEAD, None
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

    async def _go_live(self, symbol: str, cursor: str, *, replay_first: bool = False) -> None:
        """Send what follows ``cursor`` up to the live edge, then switch to live."""
        replayed = 0
        need_read = replay_first
        while symbol in self._catching:
            if need_read:
                cursor, replayed = await self._replay(symbol, cursor, replayed)
                if symbol not in self._catching:
                    return  # the connection went away meanwhile
            if symbol in self._overflowed:
                # Live ticks were dropped from the buffer: they are still in
                # the stream, so read again from the cursor.
                self._overflowed.discard(symbol)
                self._buffered -= len(self._catching[symbol])
                self._catching[symbol] = []
                need_read = True
                continue
            # No await from here on: nothing may be fed in between.
            buffer = self._catching.pop(symbol)
            self._buffered -= len(buffer)
            floor = p.id_key(cursor)
            # A hub read issued before our own read may still be in flight
            # with entries we just sent: feed() drops those until it passes
            # the floor.
            self._floors[symbol] = floor
            pending = [entry for entry in buffer if entry[0] > floor]
            if pending:
                self.feed(Batch(symbol, pending))
                self.flush()
            return

    async def _replay(self, symbol: str, cursor: str, replayed: int) -> tuple[str, int]:
        stream = self._keys.stream(symbol)
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
                    parts.append(codec.entry_to_json(fields, cursor))
                except ValueError as exc:
                    log.warning("bad entry %s of %s left out of a replay: %s", cursor, symbol,
                                exc)
            if parts:
                await self._send(p.ticks_frame(parts, replay=True))
                self._stats.deliveries += len(parts)
            if len(rows) < _REPLAY_PAGE:
                return cursor, replayed

    def _drop(self, symbol: str) -> None:
        self.subscribed.discard(symbol)
        self._hub.remove(self, symbol)
        buffer = self._catching.pop(symbol, None)
        if buffer is not None:
            self._buffered -= len(buffer)
        self._overflowed.discard(symbol)
        self._floors.pop(symbol, None)
        self._latest.pop(symbol, None)

    def _release(self) -> None:
        self._closing = True
        for symbol in list(self.subscribed):
            self._drop(symbol)
        self._pending = []
        if self._drain_task is not None:
            self._drain_task.cancel()
        with contextlib.suppress(Exception):
            self._limiter.clear(self._rate, self._rate_key)

    # --- live path (called by the hub) -----------------------------------------------------

    def feed(self, batch: Batch) -> None:
        # The common case (live, caught up, not behind) in three checks: this
        # runs once per subscriber per symbol per read.
        if self._catching or self._floors or self.behind:
            self._feed_held(batch)
        else:
            self._pending.append(batch)

    def _feed_held(self, batch: Batch) -> None:
        symbol = batch.symbol
        buffer = self._catching.get(symbol)
        if buffer is not None:
            if symbol in self._overflowed:
                return
            buffer.extend(batch.entries)
            self._buffered += len(batch.entries)
            if self._buffered > self._settings.catchup_buffer_max:
                for name, held in self._catching.items():
                    held.clear()
                    self._overflowed.add(name)
                self._buffered = 0
            return
        floor = self._floors.get(symbol)
        if floor is not None:
            entries = [entry for entry in batch.entries if entry[0] > floor]
            if not entries:
                return
            del self._floors[symbol]  # the hub's batches only go forward from here
            if len(entries) < len(batch.entries):
                batch = Batch(symbol, entries)
        if self.behind:
            self._latest[symbol] = batch.entries[-1][2]
        else:
            self._pending.append(batch)

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
        count = 0
        for batch in pending:
            count += len(batch.entries)
        self._write(p.ticks_frame([batch.joined for batch in pending]), count)

    def _write(self, frame: bytes, count: int) -> None:
        # Written without awaiting the drain: the buffer check in flush() is
        # what bounds memory, not send()'s flow control. Both paths skip a
        # connection that is closing; everything websockets writes itself
        # (control frames, pongs, the close frame) goes through the same
        # transport, in call order, so frames never interleave.
        ws = self.ws
        if not self._raw_frames:
            broadcast([ws], frame, text=True)
        elif ws.protocol.state is State.OPEN:
            ws.transport.write(Frame(Opcode.TEXT, frame).serialize(mask=False))
        else:
            return
        self._stats.frames += 1
        self._stats.deliveries += count

    def _fall_behind(self) -> None:
        self.behind = True
        self._behind_since = time.monotonic()
        for batch in self._pending:
            self._latest[batch.symbol] = batch.entries[-1][2]
        self._pending = []
        self._stats.conflations += 1
        self._drain_task = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        """Wait for the send buffer to drain, then send the latest ticks, conflated."""
        low = self._settings.buffer_low_bytes
        while not self._closing:
            await asyncio.sleep(_DRAIN_POLL_S)
            transport = self.ws.transport
            if transport is None or transport.is_closing():
                return
            if transport.get_write_buffer_size() <= low:
                latest, self._latest = self._latest, {}
                self.behind = False
                self._drain_task = None
                if latest:
                    self._write(p.ticks_frame(latest.values(), conflated=True), len(latest))
                return
            if time.monotonic() - self._behind_since > self._settings.slow_timeout_s:
                self._stats.slow_closes += 1
                log.info("closing slow consumer %s", self.ws.remote_address)
                await self._close(p.CLOSE_SLOW_CONSUMER, "slow consumer")
                return

    # --- sending ---------------------------------------------------------------------------

    async def _send(self, frame: bytes) -> None:
        """Send one control or replay frame, waiting for the buffer to drain.

        A client that does not drain within ``slow_timeout_s`` is closed (4008).
        """
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
