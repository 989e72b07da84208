"""Binance spot: quotes from ``GET /api/v3/ticker/bookTicker`` (many symbols
per request) and trades from ``GET /api/v3/trades?symbol=..&limit=..`` (one
symbol per request). Public market data, no key.

Documented answers (decimals as strings)::

    bookTicker  {"symbol": "LTCBTC", "bidPrice": "4.00000000", "bidQty": "431.00000000",
                 "askPrice": "4.00000200", "askQty": "9.00000000"}
                (a list of those for ``symbols=[...]``)
    trades      [{"id": 28457, "price": "4.00000100", "qty": "12.00000000",
                  "quoteQty": "48.000012", "time": 1499865549590,
                  "isBuyerMaker": true, "isBestMatch": true}]

The book ticker carries no time: a quote's event time is its receipt time.
An empty side reads as price and quantity zero; it becomes an absent side (a
one-sided quote). A trade's ``time`` is in milliseconds; ``isBuyerMaker``
true means the buyer's order was resting, so the aggressor **sold**. Trades
come oldest first, their ids counting up by one per trade of the symbol.
Errors come as ``{"code": -1121, "msg": "Invalid symbol."}``.

Request weight (the budget is 6,000 per minute per IP): ``bookTicker`` 2 for
one symbol, 4 for a ``symbols`` list; ``trades`` 25 whatever the ``limit``
(default 500, at most 1,000), so the poller asks for many trades per request
and rarely misses any between two polls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pricepipe.codec import encode_json
from pricepipe.events import Side
from pricepipe.exceptions import BadResponseError

from .base import (
    Parsed,
    Provider,
    QuoteReport,
    Request,
    TradeReport,
    epoch_us,
    number,
    require,
    trade_id,
)

BOOK_TICKER = "/api/v3/ticker/bookTicker"
TRADES = "/api/v3/trades"
#: Symbols per ``bookTicker`` request (the weight does not depend on it;
#: the URL length does).
SYMBOLS_PER_REQUEST = 100
TRADES_WEIGHT = 25
MAX_TRADES_LIMIT = 1000


def book_ticker_weight(symbol_count: int) -> int:
    """Documented weight of ``ticker/bookTicker``: 2 for one symbol, else 4."""
    return 2 if symbol_count == 1 else 4


class BinanceProvider(Provider):
    name: ClassVar[str] = "binance"
    default_base_url: ClassVar[str] = "https://api.binance.com"
    # Documented limit 6000 weight/minute; stay a little under it.
    default_rate_limit: ClassVar[str] = "5000/minute"
    example_symbols: ClassVar[str] = "BTCUSDT,ETHUSDT,BNBUSDT"
    lists_trades: ClassVar[bool] = True

    def __init__(self, *, base_url: str, rate_limit: str | None = None,
                 trades_limit: int = 500) -> None:
        if not 1 <= trades_limit <= MAX_TRADES_LIMIT:
            raise ValueError(f"binance trades_limit must be 1..{MAX_TRADES_LIMIT}")
        super().__init__(base_url=base_url, rate_limit=rate_limit)
        self.trades_limit = trades_limit

    def requests(self, upstream_symbols: Sequence[str]) -> list[Request]:
        out = []
        for i in range(0, len(upstream_symbols), SYMBOLS_PER_REQUEST):
            chunk = tuple(upstream_symbols[i:i + SYMBOLS_PER_REQUEST])
            params = (("symbol", chunk[0]),) if len(chunk) == 1 else \
                (("symbols", encode_json(list(chunk)).decode()),)
            out.append(Request(BOOK_TICKER, params, chunk, book_ticker_weight(len(chunk))))
        for symbol in upstream_symbols:
            out.append(Request(TRADES, (("symbol", symbol), ("limit", str(self.trades_limit))),
                               (symbol,), TRADES_WEIGHT))
        return out

    def parse(self, request: Request, payload: Any) -> Parsed:
        if isinstance(payload, Mapping) and "code" in payload and "msg" in payload:
            raise BadResponseError(f"binance error {payload['code']}: {payload['msg']}",
                                   reason="upstream_error")
        if request.path == TRADES:
            return self._parse_trades(request, payload)
        return self._parse_book(request, payload)

    def _parse_book(self, request: Request, payload: Any) -> Parsed:
        if isinstance(payload, Mapping):
            payload = [payload]  # one symbol asked: one object
        if not isinstance(payload, list):
            raise BadResponseError("binance: expected a book ticker or a list of them",
                                   reason="malformed")
        parsed = Parsed()
        wanted = set(request.symbols)
        for item in payload:
            upstream = item.get("symbol") if isinstance(item, Mapping) else None
            try:
                if not isinstance(upstream, str) or upstream not in wanted:
                    raise BadResponseError(f"unexpected symbol {upstream!r}",
                                           reason="unexpected_symbol")
                bid, bid_size = _side(item, "bidPrice", "bidQty")
                ask, ask_size = _side(item, "askPrice", "askQty")
                parsed.quotes.append(QuoteReport(upstream, None, bid, bid_size, ask, ask_size))
            except BadResponseError as exc:
                parsed.reject(upstream if isinstance(upstream, str) else None, exc)
        return parsed

    def _parse_trades(self, request: Request, payload: Any) -> Parsed:
        (upstream,) = request.symbols
        if not isinstance(payload, list):
            raise BadResponseError("binance: expected a list of trades", reason="malformed")
        parsed = Parsed()
        for item in payload:
            try:
                ident = require(item, "id")
                if isinstance(ident, bool) or not isinstance(ident, int):
                    raise BadResponseError(f"id={ident!r} is not an integer",
                                           reason="bad_trade_id")
                maker = item.get("isBuyerMaker")
                if maker is not None and not isinstance(maker, bool):
                    raise BadResponseError(f"isBuyerMaker={maker!r} is not a boolean",
                                           reason="bad_side")
                parsed.trades.append(TradeReport(
                    upstream,
                    number(require(item, "price"), "price"),
                    epoch_us(require(item, "time"), "time", "ms"),
                    number(require(item, "qty"), "qty"),
                    trade_id(ident, "id"),
                    None if maker is None else (Side.SELL if maker else Side.BUY),
                ))
            except BadResponseError as exc:
                parsed.reject(upstream, exc)
        parsed.trades.sort(key=lambda t: int(t.trade_id or 0))  # documented: oldest first
        return parsed


def _side(item: Mapping[str, Any], price_name: str, size_name: str) -> tuple[
        float | None, float | None]:
    """``(price, size)`` of one side of the book; ``(None, None)`` for an empty
    side, which Binance writes as zeros."""
    price = number(require(item, price_name), price_name)
    size = number(require(item, size_name), size_name)
    if price == 0.0 and size == 0.0:
        return None, None
    return price, size
