"""A fake venue's websocket feed: a real ``websockets`` server on a free
loopback port, in its own thread and event loop, speaking Binance's
combined streams (``/stream``, ``SUBSCRIBE``, ``<symbol>@aggTrade``,
``<symbol>@bookTicker``) or Coinbase Exchange's feed (``subscribe``,
``subscriptions``, ``last_match``, ``match``, ``ticker``, ``heartbeat``), as
documented, and misbehaving on cue.

Trades live on the REST fake's tape (:class:`~.fake_upstream.FakeUpstream`),
so what the websocket announces, the REST repair endpoints serve:
:meth:`FakeVenue.trade` appends a trade to the tape and sends it to every
subscribed connection, unless ``deliver=False`` (the live stream skips it:
a gap) or ``repeat=2`` (sent twice). Cues:

* :meth:`drop`: every connection is cut (TCP abort, no close frame);
* :meth:`silence`: the connections open now stop sending anything
  (heartbeats too) but stay open; new connections speak normally;
* :meth:`send_raw`: any text to every connection (malformed JSON, unknown kinds);
* :meth:`refuse`: the next subscriptions are refused, as the venue refuses them.

Coinbase heartbeats go out every ``heartbeat_s`` per product with the tape's
last trade id (so a trade not delivered shows there).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve

from .fake_upstream import FakeTrade, FakeUpstream, iso_ms


@dataclass
class _Conn:
    ws: ServerConnection
    subscribed: set[str] = field(default_factory=set)  # Binance streams or Coinbase products
    silent: bool = False


class FakeVenue:
    def __init__(self, kind: str, rest: FakeUpstream, *, heartbeat_s: float = 0.1) -> None:
        if kind not in ("binance", "coinbase"):
            raise ValueError(kind)
        self.kind = kind
        self.rest = rest
        self.heartbeat_s = heartbeat_s
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: Server | None = None
        self.conns: list[_Conn] = []
        #: every subscription message received, in order
        self.subscriptions: list[Any] = []
        #: connections accepted so far
        self.accepted = 0
        self._refusals = 0
        self._lock = threading.Lock()  # the counters: the test's thread and the loop's
        self._sequence = 1000
        self._update_id = 5000

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> FakeVenue:
        self.thread.start()

        async def listen() -> Server:
            return await serve(self._handle, "127.0.0.1", 0)

        self.server = self._run(listen())
        return self

    def close(self) -> None:
        async def shutdown() -> None:
            assert self.server is not None
            self.server.close()
            await self.server.wait_closed()

        try:
            self._run(shutdown(), timeout_s=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = next(iter(self.server.sockets)).getsockname()[:2]
        return f"ws://{host}:{port}"

    def _run(self, coro: Any, *, timeout_s: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def _call(self, fn: Callable[[], Any]) -> Any:
        async def call() -> Any:
            return fn()

        return self._run(call())

    @property
    def open_connections(self) -> int:
        return int(self._call(lambda: len(self.conns)))

    def subscribed(self) -> bool:
        """Whether a connection is open and subscribed."""
        return bool(self._call(lambda: any(c.subscribed and not c.silent for c in self.conns)))

    # --- the market -----------------------------------------------------------------------

    def trade(self, symbol: str, price: float, *, qty: float = 0.5, buyer_maker: bool = False,
              deliver: bool = True, repeat: int = 1, ts_ms: int | None = None) -> int:
        """A new trade on the tape; sent live ``repeat`` times unless not ``deliver``."""
        trade_id = self.rest.add_trade(symbol, price, ts_ms, qty=qty, buyer_maker=buyer_maker)
        with self.rest.lock:
            trade = self.rest.trades[symbol][-1]
        if deliver:
            self._run(self._send(symbol, "trade", [self._trade_message(symbol, trade)] * repeat))
        return trade_id

    def quote(self, symbol: str, bid: float, ask: float, *, bid_qty: float = 1.5,
              ask_qty: float = 2.5, repeat: int = 1) -> None:
        """A new best bid and ask, sent live ``repeat`` times (same update id)."""
        self.rest.set_book(symbol, bid, ask, bid_qty=bid_qty, ask_qty=ask_qty)
        self._run(self._send(symbol, "quote",
                             [self._quote_message(symbol, bid, ask, bid_qty, ask_qty)] * repeat))

    # --- misbehaviour ---------------------------------------------------------------------

    def drop(self) -> None:
        """Cut every connection, no close frame (a network failure)."""
        def cut() -> None:
            for conn in self.conns:
                conn.ws.transport.abort()

        self._call(cut)

    def silence(self) -> None:
        """The connections open now send nothing more, but stay open."""
        def mute() -> None:
            for conn in self.conns:
                conn.silent = True

        self._call(mute)

    def send_raw(self, text: str) -> None:
        async def send() -> None:
            for conn in list(self.conns):
                if not conn.silent:
                    await conn.ws.send(text)

        self._run(send())

    def refuse(self, count: int = 1) -> None:
        """Refuse the next ``count`` subscriptions."""
        def set_refusals() -> None:
            self._refusals += count

        self._call(set_refusals)

    # --- messages -------------------------------------------------------------------------

    def _next_sequence(self) -> int:
        with self._lock:
            self._sequence += 1
            return self._sequence

    def _trade_message(self, symbol: str, t: FakeTrade) -> bytes:
        if self.kind == "binance":
            return orjson.dumps({"stream": f"{symbol.lower()}@aggTrade", "data": {
                "e": "aggTrade", "E": t.ts_ms, "s": symbol, "a": t.trade_id,
                "p": f"{t.price:.8f}", "q": f"{t.qty:.8f}", "f": t.trade_id * 10,
                "l": t.trade_id * 10, "T": t.ts_ms, "m": t.buyer_maker, "M": True}})
        return orjson.dumps({
            "type": "match", "trade_id": t.trade_id, "sequence": self._next_sequence(),
            "maker_order_id": str(uuid.uuid4()), "taker_order_id": str(uuid.uuid4()),
            "time": iso_ms(t.ts_ms), "product_id": symbol, "size": repr(t.qty),
            "price": repr(t.price), "side": "buy" if t.buyer_maker else "sell"})

    def _quote_message(self, symbol: str, bid: float, ask: float, bid_qty: float,
                       ask_qty: float) -> bytes:
        if self.kind == "binance":
            with self._lock:
                self._update_id += 1
                update_id = self._update_id
            return orjson.dumps({"stream": f"{symbol.lower()}@bookTicker", "data": {
                "u": update_id, "s": symbol, "b": f"{bid:.8f}", "B": f"{bid_qty:.8f}",
                "a": f"{ask:.8f}", "A": f"{ask_qty:.8f}"}})
        with self.rest.lock:
            tape = self.rest.trades.get(symbol, [])
            last = tape[-1] if tape else None
        return orjson.dumps({
            "type": "ticker", "sequence": self._next_sequence(), "product_id": symbol,
            "price": repr(last.price if last else bid), "open_24h": "1", "volume_24h": "1",
            "low_24h": "1", "high_24h": "1", "volume_30d": "1", "best_bid": repr(bid),
            "best_bid_size": repr(bid_qty), "best_ask": repr(ask), "best_ask_size": repr(ask_qty),
            "side": "buy", "time": iso_ms(int(time.time() * 1000)),
            "trade_id": last.trade_id if last else 0, "last_size": "0.1"})

    def _wants(self, conn: _Conn, symbol: str, what: str) -> bool:
        if conn.silent:
            return False
        if self.kind == "binance":
            stream = "aggTrade" if what == "trade" else "bookTicker"
            return f"{symbol.lower()}@{stream}" in conn.subscribed
        return symbol in conn.subscribed

    async def _send(self, symbol: str, what: str, messages: list[bytes]) -> None:
        for conn in list(self.conns):
            if self._wants(conn, symbol, what):
                for message in messages:
                    try:
                        await conn.ws.send(message.decode())
                    except Exception:  # a connection closing under us: the client reconnects
                        pass

    # --- the server side ------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        conn = _Conn(ws)
        self.conns.append(conn)
        self.accepted += 1
        beat: asyncio.Task[None] | None = None
        try:
            path = ws.request.path if ws.request is not None else ""
            if self.kind == "binance" and not path.startswith("/stream"):
                await ws.close(1008, "combined streams only in this fake")
                return
            async for raw in ws:
                message = orjson.loads(raw)
                self.subscriptions.append(message)
                if self.kind == "binance":
                    await self._binance_request(conn, message)
                else:
                    await self._coinbase_request(conn, message)
                    if beat is None and conn.subscribed:
                        beat = asyncio.create_task(self._heartbeats(conn))
        except Exception:  # noqa: S110 - an aborted connection ends its handler
            pass
        finally:
            if beat is not None:
                beat.cancel()
            self.conns.remove(conn)

    async def _binance_request(self, conn: _Conn, message: dict[str, Any]) -> None:
        if message.get("method") != "SUBSCRIBE":
            await conn.ws.send(orjson.dumps({"result": None, "id": message.get("id")}).decode())
            return
        if self._refusals:
            self._refusals -= 1
            await conn.ws.send(orjson.dumps({
                "code": 2, "msg": "Invalid request: too many parameters",
                "id": message.get("id")}).decode())
            return
        conn.subscribed.update(message["params"])
        await conn.ws.send(orjson.dumps({"result": None, "id": message["id"]}).decode())

    async def _coinbase_request(self, conn: _Conn, message: dict[str, Any]) -> None:
        if message.get("type") != "subscribe":
            await conn.ws.send(orjson.dumps({"type": "error", "message": "Failed",
                                             "reason": "unknown request"}).decode())
            return
        if self._refusals:
            self._refusals -= 1
            await conn.ws.send(orjson.dumps({
                "type": "error", "message": "Failed to subscribe",
                "reason": "You need to specify at least one product ID"}).decode())
            return
        products = list(message["product_ids"])
        conn.subscribed.update(products)
        await conn.ws.send(orjson.dumps({"type": "subscriptions", "channels": [
            {"name": name, "product_ids": products} for name in message["channels"]]}).decode())
        for product in products:  # the last match before subscribing, as documented
            with self.rest.lock:
                tape = self.rest.trades.get(product, [])
                last = tape[-1] if tape else None
            if last is not None:
                text = self._trade_message(product, last).replace(b'"match"', b'"last_match"', 1)
                await conn.ws.send(text.decode())

    async def _heartbeats(self, conn: _Conn) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if conn.silent:
                continue
            for product in sorted(conn.subscribed):
                with self.rest.lock:
                    tape = self.rest.trades.get(product, [])
                    last_id = tape[-1].trade_id if tape else 0
                try:
                    await conn.ws.send(orjson.dumps({
                        "type": "heartbeat", "sequence": self._next_sequence(),
                        "last_trade_id": last_id, "product_id": product,
                        "time": iso_ms(int(time.time() * 1000))}).decode())
                except Exception:
                    return
