"""Coinbase Exchange: ``GET /products/{product_id}/ticker``, one product per
request, public (no key).

Documented answer ("snapshot information about the last trade (tick), best
bid/ask and 24h volume")::

    {"ask": "6267.71", "bid": "6265.15", "volume": "53602.03940154",
     "trade_id": 86326522, "price": "6268.48", "size": "0.00698254",
     "time": "2020-03-20T00:22:57.833897Z"}

Each answer gives a quote and the last trade:

* the quote is ``bid``/``ask``, without sizes (the ticker has none). ``time``
  is the last trade's, not the book's: the book is as of the answer, so
  the quote's event time is its receipt time;
* the trade is ``price``, ``size``, ``trade_id`` and ``time`` (ISO-8601), its
  side unknown (the ticker does not say). The poller publishes it when
  ``trade_id`` changes, i.e. when a new trade happened since the last poll.

Errors come as ``{"message": "NotFound"}``. Public endpoints allow 10
requests per second per IP (bursts of 15).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import quote

from pricepipe.exceptions import BadResponseError

from .base import (
    Parsed,
    Provider,
    QuoteReport,
    Request,
    TradeReport,
    epoch_us,
    number,
    optional_number,
    require,
    trade_id,
)


class CoinbaseProvider(Provider):
    name: ClassVar[str] = "coinbase"
    default_base_url: ClassVar[str] = "https://api.exchange.coinbase.com"
    default_rate_limit: ClassVar[str] = "10/second"
    example_symbols: ClassVar[str] = "BTC-USD,ETH-USD"

    def headers(self) -> dict[str, str]:
        # Coinbase rejects requests without a User-Agent.
        return {**super().headers(), "User-Agent": "pricepipe"}

    def requests(self, upstream_symbols: Sequence[str]) -> list[Request]:
        return [Request(f"/products/{quote(s, safe='')}/ticker", (), (s,))
                for s in upstream_symbols]

    def parse(self, request: Request, payload: Any) -> Parsed:
        (upstream,) = request.symbols
        if not isinstance(payload, Mapping):
            raise BadResponseError("coinbase: expected a JSON object", reason="malformed")
        if "message" in payload and "price" not in payload:
            raise BadResponseError(f"coinbase error: {payload['message']}",
                                   reason="upstream_error")
        parsed = Parsed()
        try:
            parsed.quotes.append(QuoteReport(
                upstream, None, optional_number(payload, "bid"), None,
                optional_number(payload, "ask"), None))
        except BadResponseError as exc:
            parsed.reject(upstream, exc)
        try:
            size = payload.get("size")
            parsed.trades.append(TradeReport(
                upstream,
                number(require(payload, "price"), "price"),
                epoch_us(require(payload, "time"), "time", "iso"),
                None if size is None else number(size, "size"),
                trade_id(require(payload, "trade_id"), "trade_id"),
            ))
        except BadResponseError as exc:
            parsed.reject(upstream, exc)
        return parsed
