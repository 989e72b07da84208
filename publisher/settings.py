"""Settings of the publishers (``PRICEPIPE_PUBLISHER_*``); CLI flags of
``pricepipe publish`` override them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pricepipe.backpressure import Policy
from pricepipe.config import Settings, setting
from pricepipe.exceptions import ConfigError

from .generator import TRADING_MINUTE_YEARS


@dataclass(frozen=True, kw_only=True, repr=False)
class PublisherSettings(Settings):
    """What to publish, how fast, and what to do when Redis is full."""

    env_prefix: ClassVar[str] = "PRICEPIPE_PUBLISHER_"

    source: str = setting("gbm", "gbm, binance, coinbase, finnhub or generic")
    symbols: str | None = setting(
        None, "Symbols: a number N (the first N demo symbols) or a list AAPL,MSFT,"
        "LOCAL=UPSTREAM,...; unset: 10 demo symbols (gbm) or the provider's examples")
    # GBM
    rate: float = setting(
        5.0, "GBM real-time mode: events (trades and quotes) per second per symbol")
    seed: int | None = setting(None, "GBM random seed (same seed, same events)")
    params: str | None = setting(
        None, "GBM parameters SYMBOL:price[:mu[:sigma]],... (annual mu and sigma)")
    dt_years: float = setting(
        TRADING_MINUTE_YEARS,
        "GBM simulated time per period (one event per symbol), years (default: one trading "
        "minute)")
    correlation: str | None = setting(
        None, "GBM correlation: one number for every pair, or matrix rows `1,0.5;0.5,1`")
    spread_bps: float = setting(
        2.0, "GBM quoted spread, basis points of the mid (bid and ask sit half of it away)")
    quotes_per_trade: float = setting(
        5.0, "GBM mix: quotes per trade on average (each event is a trade with probability "
        "1/(1+this)); 0: trades only")
    trade_notional: float = setting(
        10_000.0, "GBM mean value of a trade, in the quote currency (size = value / price)")
    quote_notional: float = setting(
        50_000.0, "GBM mean value resting at each side of a quote, in the quote currency")
    batch_size: int = setting(
        1000, "Most events per round trip to Redis (one append script call per shard)")
    max_lag_s: float = setting(
        1.0, "GBM real-time mode: skip (and count) periods when this far behind schedule")
    batch_interval_ms: float = setting(
        5.0, "GBM real-time mode: shortest time between two batches, ms (fewer, larger "
        "round trips at high rates; events keep their scheduled times)")
    # Backpressure
    backpressure: str = setting(
        "block", "When Redis memory is above the high-water mark: block (wait) or drop (count)")
    high_water: float = setting(0.9, "Backpressure starts at this fraction of Redis maxmemory")
    low_water: float = setting(0.8, "Backpressure ends below this fraction of Redis maxmemory")
    memory_check_interval_s: float = setting(1.0, "How often INFO memory is read, seconds")
    # Observability
    log_interval_s: float = setting(10.0, "Seconds between progress log lines")
    metrics_port: int | None = setting(None, "Serve Prometheus metrics on this port")

    def __post_init__(self) -> None:
        Policy.parse(self.backpressure)
        if not 0 < self.low_water <= self.high_water <= 1:
            raise ConfigError("want 0 < PRICEPIPE_PUBLISHER_LOW_WATER <= HIGH_WATER <= 1")
        if self.batch_size < 1:
            raise ConfigError("PRICEPIPE_PUBLISHER_BATCH_SIZE must be at least 1")
        if not self.rate > 0:
            raise ConfigError("PRICEPIPE_PUBLISHER_RATE must be > 0")
        if not self.dt_years > 0:
            raise ConfigError("PRICEPIPE_PUBLISHER_DT_YEARS must be > 0")
        if not 0 < self.spread_bps < 20_000:
            raise ConfigError("PRICEPIPE_PUBLISHER_SPREAD_BPS must be > 0 and < 20000")
        if not 0 <= self.quotes_per_trade < float("inf"):
            raise ConfigError("PRICEPIPE_PUBLISHER_QUOTES_PER_TRADE must be a number >= 0")
        if not (0 < self.trade_notional < float("inf")
                and 0 < self.quote_notional < float("inf")):
            raise ConfigError("PRICEPIPE_PUBLISHER_TRADE_NOTIONAL and QUOTE_NOTIONAL must be > 0")


@dataclass(frozen=True, kw_only=True, repr=False)
class PollerSettings(Settings):
    """How pollers talk to upstream APIs (every provider)."""

    env_prefix: ClassVar[str] = "PRICEPIPE_POLL_"

    interval_s: float = setting(5.0, "Seconds between two polls of the same symbol(s)")
    concurrency: int = setting(4, "Requests in flight at once, per provider")
    queue_max: int = setting(100, "Most polls waiting for a free connection; more are dropped")
    # Timeouts
    connect_timeout_s: float = setting(3.05, "HTTP connect timeout, seconds")
    read_timeout_s: float = setting(10.0, "HTTP read timeout, seconds")
    # Retries (urllib3 Retry)
    retries: int = setting(3, "Retries of one request (connection errors, 429, 5xx)")
    backoff_factor_s: float = setting(0.5, "Exponential backoff factor between retries, seconds")
    backoff_jitter_s: float = setting(0.25, "Random jitter added to each backoff, seconds")
    backoff_max_s: float = setting(30.0, "Longest backoff between retries, seconds")
    retry_after_max_s: float = setting(
        300.0, "Longest Retry-After honoured; longer waits are cut to this")
    proxy: str | None = setting(
        None, "HTTP(S) proxy URL for upstream requests (default: HTTPS_PROXY etc.)")
    # Events
    publish_unchanged: bool = setting(
        False, "Publish every poll's trade and quote, even when equal to the last one "
        "(same trade id, or same time and price; same book)")
    max_future_s: float = setting(
        300.0, "Reject events stamped further in the future than this, seconds")
    max_age_s: float = setting(7 * 86_400.0, "Reject events older than this, seconds")

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ConfigError("PRICEPIPE_POLL_INTERVAL_S must be > 0")
        if self.concurrency < 1 or self.queue_max < 1:
            raise ConfigError("PRICEPIPE_POLL_CONCURRENCY and QUEUE_MAX must be at least 1")


@dataclass(frozen=True, kw_only=True, repr=False)
class BinanceSettings(Settings):
    """Binance spot public market data (no key needed)."""

    env_prefix: ClassVar[str] = "PRICEPIPE_BINANCE_"

    base_url: str = setting("https://api.binance.com", "Base URL (point at a fake upstream)")
    rate_limit: str = setting(
        "5000/minute", "Request-weight budget (documented limit: 6000/minute per IP; "
        "bookTicker weighs 2-4 per request, trades 25 per symbol)")
    trades_limit: int = setting(
        500, "Trades asked per symbol and poll (`/api/v3/trades` limit, 1-1000; same weight)")


@dataclass(frozen=True, kw_only=True, repr=False)
class CoinbaseSettings(Settings):
    """Coinbase Exchange public market data (no key needed)."""

    env_prefix: ClassVar[str] = "PRICEPIPE_COINBASE_"

    base_url: str = setting("https://api.exchange.coinbase.com", "Base URL")
    rate_limit: str = setting("10/second", "Request budget (documented: 10/second per IP)")


@dataclass(frozen=True, kw_only=True, repr=False)
class FinnhubSettings(Settings):
    """Finnhub stock quotes and company metadata (API key required)."""

    env_prefix: ClassVar[str] = "PRICEPIPE_FINNHUB_"

    base_url: str = setting("https://finnhub.io/api/v1", "Base URL")
    api_key: str | None = setting(None, "Finnhub API key", secret=True)
    rate_limit: str = setting(
        "60/minute;30/second", "Request budget (documented free plan: 60/minute, 30/second)")


@dataclass(frozen=True, kw_only=True, repr=False)
class GenericSettings(Settings):
    """The generic JSON poller: any per-symbol JSON API, configured here."""

    env_prefix: ClassVar[str] = "PRICEPIPE_GENERIC_"

    url: str | None = setting(None, "URL template with {symbol}")
    price_path: str | None = setting(
        "price", "Dotted path of the last trade's price (data.0.price); empty: no trades")
    time_path: str | None = setting(
        None, "Dotted path of the trade's time; unset: receipt time")
    time_unit: str = setting("auto", "Unit of the trade time: s, ms, us, iso or auto")
    size_path: str | None = setting(None, "Dotted path of the traded size (optional)")
    version_path: str | None = setting(
        None, "Dotted path of the trade id, which changes with each trade (optional)")
    bid_path: str | None = setting(None, "Dotted path of the best bid: publishes quotes")
    ask_path: str | None = setting(None, "Dotted path of the best ask: publishes quotes")
    bid_size_path: str | None = setting(None, "Dotted path of the best bid's size (optional)")
    ask_size_path: str | None = setting(None, "Dotted path of the best ask's size (optional)")
    headers: str | None = setting(None, "Extra headers: 'Name: value; Name2: value'")
    api_key: str | None = setting(None, "API key", secret=True)
    api_key_header: str | None = setting(None, "Send the API key in this header")
    api_key_param: str | None = setting(None, "Send the API key in this query parameter")
    rate_limit: str = setting("60/minute", "Request budget, e.g. 60/minute;5/second")


@dataclass(frozen=True, kw_only=True, repr=False)
class MetadataSettings(Settings):
    """The instruments refresh job (``publisher.metadata.refresh_instruments``)."""

    env_prefix: ClassVar[str] = "PRICEPIPE_METADATA_"

    source: str = setting("history", "Where metadata comes from: finnhub or history")
    symbols: str | None = setting(
        None, "Symbols to refresh (LOCAL=UPSTREAM allowed); unset: every registered symbol")


SETTINGS: tuple[type[Settings], ...] = (
    PublisherSettings, PollerSettings, BinanceSettings, CoinbaseSettings, FinnhubSettings,
    GenericSettings, MetadataSettings,
)
