"""A fake upstream: a real HTTP server on a free port, in a thread, speaking
the documented JSON of Binance (``ticker/bookTicker``, ``trades``,
``aggTrades``, ``klines``), Coinbase Exchange (``products/{id}/ticker``,
``/trades``, ``/candles``), Finnhub (``quote``, ``stock/profile2``,
``stock/metric``) and a generic API, and misbehaving on cue.

The history endpoints (``aggTrades``, Coinbase ``trades``) serve the tape
from :attr:`FakeUpstream.horizon` on (a symbol's older trades are "no
longer served"); the candles (``klines``, Coinbase ``candles``) are built
from the whole tape, so they cover minutes whose trades are not served.

The market it serves is set by the test: :meth:`FakeUpstream.add_trade`
appends a trade to a symbol's tape (ids count up per symbol, as Binance's
and Coinbase's do), :meth:`FakeUpstream.set_book` sets its best bid and ask,
:meth:`FakeUpstream.set_market` does both around one price.

``fake.script("500", "503", "ok")`` makes the next requests (whatever their
path) answer 500, then 503, then normally. Behaviours:

* ``ok`` (also when the script is empty): the documented answer;
* ``<status>`` (e.g. ``"500"``) or ``"429:<retry-after>"``: that status with
  a JSON error body (the provider's error shape where it has one);
* ``html``: 200 with a text/html page (a captive portal or proxy page);
* ``html503``: 503 with an HTML page;
* ``malformed``: 200 with broken JSON; ``truncated``: a body cut short
  (Content-Length larger than what is sent); ``reset``: the connection
  closed with RST before any answer; ``timeout``: no answer until after
  the client's read timeout; ``slow``: the answer after ``slow_s``;
* ``bad:<json>``: 200 with this body, verbatim.
"""

from __future__ import annotations

import collections
import socket
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from pricepipe.clock import parse_time_us


def iso_ms(ts_ms: int) -> str:
    """Coinbase's time format (microseconds) of a millisecond time."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts_ms // 1000)) + \
        f".{ts_ms % 1000:03d}000Z"


@dataclass(frozen=True)
class FakeTrade:
    trade_id: int
    price: float
    qty: float
    ts_ms: int
    buyer_maker: bool


class FakeUpstream:
    def __init__(self, *, slow_s: float = 0.5, timeout_s: float = 1.0) -> None:
        self.slow_s = slow_s
        self.timeout_s = timeout_s
        self.lock = threading.Lock()
        self.behaviours: collections.deque[str] = collections.deque()
        #: symbol -> its trades, oldest first
        self.trades: dict[str, list[FakeTrade]] = {}
        #: symbol -> (bid, bid quantity, ask, ask quantity)
        self.books: dict[str, tuple[float, float, float, float]] = {}
        #: symbol -> the oldest trade id the history endpoints still serve
        self.horizon: dict[str, int] = {}
        #: (monotonic time, path with query, headers) of every request
        self.log: list[tuple[float, str, dict[str, str]]] = []
        self.closing = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeUpstream:
        self.thread.start()
        return self

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def script(self, *behaviours: str) -> None:
        with self.lock:
            self.behaviours.extend(behaviours)

    def add_trade(self, symbol: str, price: float, ts_ms: int | None = None, *,
                  qty: float = 0.5, buyer_maker: bool = False,
                  trade_id: int | None = None) -> int:
        """Append a trade to ``symbol``'s tape; returns its id (the next one
        unless given)."""
        with self.lock:
            tape = self.trades.setdefault(symbol, [])
            if trade_id is None:
                trade_id = tape[-1].trade_id + 1 if tape else 1000
            stamp = ts_ms if ts_ms is not None else int(time.time() * 1000)
            tape.append(FakeTrade(trade_id, price, qty, stamp, buyer_maker))
            return trade_id

    def set_book(self, symbol: str, bid: float, ask: float, *, bid_qty: float = 1.5,
                 ask_qty: float = 2.5) -> None:
        with self.lock:
            self.books[symbol] = (bid, bid_qty, ask, ask_qty)

    def set_market(self, symbol: str, price: float, ts_ms: int | None = None) -> int:
        """A new trade at ``price`` and a book one cent around it; returns the
        trade's id."""
        self.set_book(symbol, round(price - 0.01, 2), round(price + 0.01, 2))
        return self.add_trade(symbol, price, ts_ms)

    def requests_to(self, fragment: str) -> list[tuple[float, str, dict[str, str]]]:
        with self.lock:
            return [entry for entry in self.log if fragment in entry[1]]

    # --- documented answers -----------------------------------------------------------------

    def answer(self, path: str, query: dict[str, list[str]],
               headers: dict[str, str]) -> tuple[int, Any]:
        if path == "/api/v3/ticker/bookTicker":
            wanted = orjson.loads(query["symbols"][0]) if "symbols" in query else \
                [query["symbol"][0]]
            if any(s not in self.books for s in wanted):
                return 400, {"code": -1121, "msg": "Invalid symbol."}
            books = [self._binance_book(s) for s in wanted]
            return 200, books if "symbols" in query else books[0]
        if path == "/api/v3/trades":
            symbol = query["symbol"][0]
            limit = int(query.get("limit", ["500"])[0])
            if symbol not in self.trades:
                return 400, {"code": -1121, "msg": "Invalid symbol."}
            return 200, [{"id": t.trade_id, "price": f"{t.price:.8f}", "qty": f"{t.qty:.8f}",
                          "quoteQty": f"{t.price * t.qty:.8f}", "time": t.ts_ms,
                          "isBuyerMaker": t.buyer_maker, "isBestMatch": True}
                         for t in self.trades[symbol][-limit:]]
        if path == "/api/v3/aggTrades":
            return self._binance_agg_trades(query)
        if path == "/api/v3/klines":
            return self._binance_klines(query)
        if path.startswith("/products/") and path.endswith("/trades"):
            return self._coinbase_trades(unquote(path.split("/")[2]), query)
        if path.startswith("/products/") and path.endswith("/candles"):
            return self._coinbase_candles(unquote(path.split("/")[2]), query)
        if path.startswith("/products/") and path.endswith("/ticker"):
            product = unquote(path.split("/")[2])
            if product not in self.trades:
                return 404, {"message": "NotFound"}
            last = self.trades[product][-1]
            bid, _, ask, _ = self.books.get(product, (last.price, 0, last.price, 0))
            return 200, {"ask": repr(ask), "bid": repr(bid), "volume": "53602.03940154",
                         "trade_id": last.trade_id, "price": repr(last.price),
                         "size": repr(last.qty), "time": iso_ms(last.ts_ms)}
        if path in ("/quote", "/stock/profile2", "/stock/metric"):
            if headers.get("x-finnhub-token") != "test-key":
                return 401, {"error": "Invalid API key"}
            symbol = query["symbol"][0]
            if path == "/stock/profile2":
                return 200, {"country": "US", "currency": "USD", "exchange": "NASDAQ NMS",
                             "name": f"{symbol} Inc", "ticker": symbol,
                             "logo": f"https://static.example/logo/{symbol}.png",
                             "finnhubIndustry": "Technology"}
            if path == "/stock/metric":
                return 200, {"metric": {"52WeekHigh": 310.43, "52WeekLow": 149.22},
                             "metricType": "all", "series": {}, "symbol": symbol}
            if symbol not in self.trades:
                return 200, {"c": 0, "d": None, "dp": None, "h": 0, "l": 0, "o": 0, "pc": 0,
                             "t": 0}
            last = self.trades[symbol][-1]
            return 200, {"c": last.price, "d": 0.5, "dp": 0.2, "h": last.price + 1,
                         "l": last.price - 1, "o": last.price, "pc": last.price - 0.5,
                         "t": last.ts_ms // 1000}
        if path.startswith("/generic/"):
            symbol = unquote(path.split("/")[2])
            if symbol not in self.trades:
                return 404, {"error": "no such symbol"}
            last = self.trades[symbol][-1]
            bid, bid_qty, ask, ask_qty = self.books.get(symbol, (last.price, 0, last.price, 0))
            return 200, {"data": {
                "last": {"px": str(last.price), "time": last.ts_ms, "seq": last.trade_id,
                         "size": str(last.qty)},
                "book": {"bid": bid, "bidSize": bid_qty, "ask": ask, "askSize": ask_qty}}}
        return 404, {"error": "not found"}

    def served(self, symbol: str) -> list[FakeTrade]:
        """The tape the history endpoints serve (from the horizon on)."""
        horizon = self.horizon.get(symbol, 0)
        return [t for t in self.trades.get(symbol, []) if t.trade_id >= horizon]

    def _binance_agg_trades(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        symbol = query["symbol"][0]
        if symbol not in self.trades:
            return 400, {"code": -1121, "msg": "Invalid symbol."}
        limit = min(int(query.get("limit", ["500"])[0]), 1000)
        tape = self.served(symbol)
        if "fromId" in query:
            start = int(query["fromId"][0])
            chosen = [t for t in tape if t.trade_id >= start]
        elif "startTime" in query or "endTime" in query:
            lo = int(query.get("startTime", ["0"])[0])
            hi = int(query.get("endTime", [str(2**62)])[0])
            if "startTime" in query and "endTime" in query and hi - lo >= 3_600_000:
                return 400, {"code": -1127, "msg": "More than 1 hours between startTime and "
                                                   "endTime."}
            chosen = [t for t in tape if lo <= t.ts_ms <= hi]
        else:
            chosen = tape[-limit:]
        return 200, [{"a": t.trade_id, "p": f"{t.price:.8f}", "q": f"{t.qty:.8f}",
                      "f": t.trade_id * 10, "l": t.trade_id * 10, "T": t.ts_ms,
                      "m": t.buyer_maker, "M": True} for t in chosen[:limit]]

    def _minutes(self, symbol: str, lo_ms: int, hi_ms: int) -> list[list[FakeTrade]]:
        """The whole tape's trades in [lo_ms, hi_ms], by minute, oldest first."""
        by_minute: dict[int, list[FakeTrade]] = {}
        for t in self.trades.get(symbol, []):
            if lo_ms <= t.ts_ms - t.ts_ms % 60_000 <= hi_ms:
                by_minute.setdefault(t.ts_ms - t.ts_ms % 60_000, []).append(t)
        return [by_minute[m] for m in sorted(by_minute)]

    def _binance_klines(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        symbol = query["symbol"][0]
        if symbol not in self.trades:
            return 400, {"code": -1121, "msg": "Invalid symbol."}
        limit = min(int(query.get("limit", ["500"])[0]), 1000)
        out = []
        for group in self._minutes(symbol, int(query["startTime"][0]),
                                   int(query["endTime"][0]))[:limit]:
            open_ms = group[0].ts_ms - group[0].ts_ms % 60_000
            prices = [t.price for t in group]
            volume = sum(t.qty for t in group)
            out.append([open_ms, f"{prices[0]:.8f}", f"{max(prices):.8f}", f"{min(prices):.8f}",
                        f"{prices[-1]:.8f}", f"{volume:.8f}", open_ms + 59_999,
                        f"{sum(t.qty * t.price for t in group):.8f}", len(group), "0", "0",
                        "0"])
        return 200, out

    def _coinbase_trades(self, product: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        if product not in self.trades:
            return 404, {"message": "NotFound"}
        limit = min(int(query.get("limit", ["1000"])[0]), 1000)
        tape = self.served(product)
        if "after" in query:
            after = int(query["after"][0])
            tape = [t for t in tape if t.trade_id < after]
        newest_first = list(reversed(tape))[:limit]
        return 200, [{"time": iso_ms(t.ts_ms), "trade_id": t.trade_id,
                      "price": repr(t.price), "size": repr(t.qty),
                      "side": "buy" if t.buyer_maker else "sell"} for t in newest_first]

    def _coinbase_candles(self, product: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        if product not in self.trades:
            return 404, {"message": "NotFound"}
        lo_ms = parse_time_us(query["start"][0]) // 1000
        hi_ms = parse_time_us(query["end"][0]) // 1000
        if (hi_ms - lo_ms) // 60_000 > 300:
            return 400, {"message": "granularity too small for the requested time range"}
        out = []
        for group in reversed(self._minutes(product, lo_ms, hi_ms)):
            prices = [t.price for t in group]
            out.append([(group[0].ts_ms - group[0].ts_ms % 60_000) // 1000, min(prices),
                        max(prices), prices[0], prices[-1], sum(t.qty for t in group)])
        return 200, out

    def _binance_book(self, symbol: str) -> dict[str, Any]:
        bid, bid_qty, ask, ask_qty = self.books[symbol]
        return {"symbol": symbol, "bidPrice": f"{bid:.8f}", "bidQty": f"{bid_qty:.8f}",
                "askPrice": f"{ask:.8f}", "askQty": f"{ask_qty:.8f}"}

    # --- the handler ------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # quiet

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with fake.lock:
                    fake.log.append((time.monotonic(), self.path, headers))
                    behaviour = fake.behaviours.popleft() if fake.behaviours else "ok"
                split = urlsplit(self.path)
                try:
                    self.behave(behaviour, split.path, parse_qs(split.query), headers)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def send(self, status: int, body: bytes, content_type: str = "application/json",
                     extra: dict[str, str] | None = None, length: int | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                for name, value in (extra or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()

            def behave(self, behaviour: str, path: str, query: dict[str, list[str]],
                       headers: dict[str, str]) -> None:
                kind, _, arg = behaviour.partition(":")
                if kind == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                if kind == "timeout":
                    fake.closing.wait(fake.timeout_s)
                    self.close_connection = True
                    return
                if kind == "slow":
                    fake.closing.wait(fake.slow_s)
                    kind = "ok"
                if kind == "ok":
                    with fake.lock:
                        status, payload = fake.answer(path, query, headers)
                    self.send(status, orjson.dumps(payload))
                elif kind == "429":
                    self.send(429, b'{"code": -1003, "msg": "Too many requests."}',
                              extra={"Retry-After": arg or "1"})
                elif kind.isdigit():
                    self.send(int(kind), b'{"error": "upstream trouble"}')
                elif kind == "html":
                    self.send(200, b"<!DOCTYPE html><html><body>Sign in to Wi-Fi</body></html>",
                              "text/html")
                elif kind == "html503":
                    self.send(503, b"<html><body><h1>503 Service Unavailable</h1></body></html>",
                              "text/html")
                elif kind == "malformed":
                    self.send(200, b'{"c": 261.74, "t": 15826')
                elif kind == "truncated":
                    self.send(200, b'[{"symbol": "BTC', length=400)
                    self.close_connection = True
                elif kind == "bad":
                    self.send(200, arg.encode())
                else:
                    raise AssertionError(f"unknown behaviour {behaviour!r}")

        return Handler
