"""Coinbase Exchange: ``GET /products/{product_id}/ticker``, one product per request.

Documented answer::

    {"ask": "6267.71", "bid": "6265.15", "volume": "53602.03940154",
     "trade_id": 86326522, "price": "6268.48", "size": "0.00698254",
     "time": "2020-03-20T00:22:57.833897Z"}

Errors come as ``{"message": "NotFound"}``. Public endpoints allow 10
requests per second per IP (bursts of 15).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import quote

from pricepipe.exceptions import BadResponseError

from .base import Parsed, Provider, Quote, Rejection, Request, epoch_us, number, require


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
            size = payload.get("size")
            trade_id = payload.get("trade_id")
            parsed.quotes.append(Quote(
                upstream,
                number(require(payload, "price"), "price"),
                epoch_us(require(payload, "time"), "time", "iso"),
                None if size is None else number(size, "size"),
                None if trade_id is None else str(trade_id),
            ))
        except BadResponseError as exc:
            parsed.rejections.append(Rejection(upstream, exc.reason, str(exc)))
        return parsed
