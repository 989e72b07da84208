"""Binance spot: ``GET /api/v3/ticker/24hr?symbols=[...]``, many symbols per request.

``/api/v3/ticker/price`` would be cheaper but carries no timestamp; the 24h
ticker has ``closeTime`` (ms) and ``lastId`` (the last trade's id), which
tells a new trade from the same one polled again. Documented answer per
symbol (strings for decimals)::

    {"symbol": "BNBBTC", "lastPrice": "4.00000200", "lastQty": "200.00000000",
     "closeTime": 1499869899040, "lastId": 28460, ...}

Errors come as ``{"code": -1121, "msg": "Invalid symbol."}``.

Rate limit: 6,000 request weight per minute per IP; this request weighs 2
for 1-20 symbols, 40 for 21-100 and 80 beyond, so symbols go 20 per request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pricepipe.codec import encode_json
from pricepipe.exceptions import BadResponseError

from .base import Parsed, Provider, Quote, Rejection, Request, epoch_us, number, require

SYMBOLS_PER_REQUEST = 20


def request_weight(symbol_count: int) -> int:
    """Documented weight of ``ticker/24hr`` for ``symbol_count`` symbols."""
    if symbol_count <= 20:
        return 2
    if symbol_count <= 100:
        return 40
    return 80


class BinanceProvider(Provider):
    name: ClassVar[str] = "binance"
    default_base_url: ClassVar[str] = "https://api.binance.com"
    # Documented limit 6000 weight/minute; stay a little under it.
    default_rate_limit: ClassVar[str] = "5000/minute"
    example_symbols: ClassVar[str] = "BTCUSDT,ETHUSDT,BNBUSDT"

    def requests(self, upstream_symbols: Sequence[str]) -> list[Request]:
        out = []
        for i in range(0, len(upstream_symbols), SYMBOLS_PER_REQUEST):
            chunk = tuple(upstream_symbols[i:i + SYMBOLS_PER_REQUEST])
            out.append(Request("/api/v3/ticker/24hr",
                               (("symbols", encode_json(list(chunk)).decode()),),
                               chunk, request_weight(len(chunk))))
        return out

    def parse(self, request: Request, payload: Any) -> Parsed:
        if isinstance(payload, Mapping):
            if "code" in payload and "msg" in payload:
                raise BadResponseError(f"binance error {payload['code']}: {payload['msg']}",
                                       reason="upstream_error")
            payload = [payload]
        if not isinstance(payload, list):
            raise BadResponseError("binance: expected a list of tickers", reason="malformed")
        parsed = Parsed()
        wanted = set(request.symbols)
        for item in payload:
            upstream = item.get("symbol") if isinstance(item, Mapping) else None
            try:
                if not isinstance(upstream, str) or upstream not in wanted:
                    raise BadResponseError(f"unexpected symbol {upstream!r}",
                                           reason="unexpected_symbol")
                last_id = item.get("lastId")
                size = item.get("lastQty")
                parsed.quotes.append(Quote(
                    upstream,
                    number(require(item, "lastPrice"), "lastPrice"),
                    epoch_us(require(item, "closeTime"), "closeTime", "ms"),
                    None if size is None else number(size, "lastQty"),
                    None if last_id is None or last_id == -1 else str(last_id),
                ))
            except BadResponseError as exc:
                parsed.rejections.append(Rejection(
                    upstream if isinstance(upstream, str) else None, exc.reason, str(exc)))
        return parsed
