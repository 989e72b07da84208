"""Each venue's endpoints and request budget (``PRICEPIPE_BINANCE_*``,
``PRICEPIPE_COINBASE_*``): read by the publisher (pollers and feeds) and
by the workers (backfills), so they live in the core."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pricepipe.config import Settings, setting


@dataclass(frozen=True, kw_only=True, repr=False)
class BinanceSettings(Settings):
    """Binance spot public market data (no key needed)."""

    env_prefix: ClassVar[str] = "PRICEPIPE_BINANCE_"

    base_url: str = setting("https://api.binance.com", "Base URL (point at a fake upstream)")
    ws_url: str = setting(
        "wss://stream.binance.com:9443",
        "Websocket base URL of the market data streams (the feed connects to <this>/stream)")
    rate_limit: str = setting(
        "5000/minute", "Request-weight budget (documented limit: 6000/minute per IP; "
        "bookTicker weighs 2-4 per request, trades 25 per symbol, aggTrades 4, klines 2)")
    trades_limit: int = setting(
        500, "Trades asked per symbol and poll (`/api/v3/trades` limit, 1-1000; same weight)")


@dataclass(frozen=True, kw_only=True, repr=False)
class CoinbaseSettings(Settings):
    """Coinbase Exchange public market data (no key needed)."""

    env_prefix: ClassVar[str] = "PRICEPIPE_COINBASE_"

    base_url: str = setting("https://api.exchange.coinbase.com", "Base URL")
    ws_url: str = setting("wss://ws-feed.exchange.coinbase.com", "Websocket feed URL")
    rate_limit: str = setting("10/second", "Request budget (documented: 10/second per IP)")
