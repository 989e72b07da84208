"""Finnhub stock quotes: ``GET /api/v1/quote?symbol=AAPL``, one symbol per
request, API key required (sent in the ``X-Finnhub-Token`` header, so it
never appears in URLs or logs).

Documented answer (``c`` current price, ``t`` its time in epoch seconds)::

    {"c": 261.74, "d": 2.29, "dp": 0.8827, "h": 263.31, "l": 260.68,
     "o": 261.07, "pc": 259.45, "t": 1582641000}

Each answer is one trade: the last price ``c`` at ``t``, without size, side
or trade id (the poller publishes it when ``t`` or ``c`` changes). Finnhub's
quote has no bid or ask. An unknown symbol answers all zeros (rejected with
reason ``unknown_symbol``); errors come as ``{"error": "..."}``. Free plan: 60
calls per minute, and never more than 30 per second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pricepipe.exceptions import BadResponseError, ConfigError

from .base import Parsed, Provider, Request, TradeReport, epoch_us, number, require


class FinnhubProvider(Provider):
    name: ClassVar[str] = "finnhub"
    default_base_url: ClassVar[str] = "https://finnhub.io/api/v1"
    default_rate_limit: ClassVar[str] = "60/minute;30/second"
    example_symbols: ClassVar[str] = "AAPL,MSFT,GOOG"

    def __init__(self, *, base_url: str, rate_limit: str | None = None,
                 api_key: str | None = None) -> None:
        if not api_key:
            raise ConfigError("finnhub needs an API key: set PRICEPIPE_FINNHUB_API_KEY")
        super().__init__(base_url=base_url, rate_limit=rate_limit, api_key=api_key)

    def headers(self) -> dict[str, str]:
        assert self.api_key is not None
        return {**super().headers(), "X-Finnhub-Token": self.api_key}

    def requests(self, upstream_symbols: Sequence[str]) -> list[Request]:
        return [Request("/quote", (("symbol", s),), (s,)) for s in upstream_symbols]

    def parse(self, request: Request, payload: Any) -> Parsed:
        (upstream,) = request.symbols
        if not isinstance(payload, Mapping):
            raise BadResponseError("finnhub: expected a JSON object", reason="malformed")
        if "error" in payload:
            raise BadResponseError(f"finnhub error: {payload['error']}", reason="upstream_error")
        parsed = Parsed()
        try:
            if payload.get("c") == 0 and payload.get("t") == 0:
                raise BadResponseError(f"{upstream}: all zeros, an unknown symbol",
                                       reason="unknown_symbol")
            parsed.trades.append(TradeReport(
                upstream,
                number(require(payload, "c"), "c"),
                epoch_us(require(payload, "t"), "t", "s"),
            ))
        except BadResponseError as exc:
            parsed.reject(upstream, exc)
        return parsed

    # --- metadata (see publisher.metadata) ----------------------------------------------------

    def profile_request(self, upstream: str) -> Request:
        """``/stock/profile2``: name, logo, currency, exchange."""
        return Request("/stock/profile2", (("symbol", upstream),), (upstream,))

    def metric_request(self, upstream: str) -> Request:
        """``/stock/metric?metric=all``: ``52WeekHigh`` / ``52WeekLow``."""
        return Request("/stock/metric", (("symbol", upstream), ("metric", "all")), (upstream,))
