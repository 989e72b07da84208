"""Settings of the publishers (``PRICEPIPE_PUBLISHER_*``); CLI flags of
``pricepipe publish`` override them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pricepipe.backpressure import Policy
from pricepipe.config import Settings, setting
from pricepipe.exceptions import ConfigError
from pricepipe.upstream import HttpOptions
from pricepipe.venues.settings import BinanceSettings, CoinbaseSettings

from .generator import TRADING_MINUTE_YEARS


@dataclass(frozen=True, kw_only=True, repr=False)
class PublisherSettings(Settings):
    """What to publish, how fast, and what to do when Redis is full."""

    env_prefix: ClassVar[str] = "PRICEPIPE_PUBLISHER_"

    source: str = setting(
        "gbm", "gbm, binance, coinbase, finnhub or generic (pollers), binance-ws or coinbase-ws "
        "(websocket feeds)")
    symbols: str | None = setting(
        None, "Symbols: a number N (the first N demo symbols) or a list AAPL,MSFT,"
        "LOCAL=UPSTREAM,...; a venue's symbols are named VENUE:SYMBOL unless mapped "
        "(BTCUSDT is BINANCE:BTCUSDT); unset: 10 demo symbols (gbm) or the provider's examples")
    force_source: bool = setting(
        False, "Publish even symbols the source registry records with another source "
        "(and record this one)")
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
    metrics_host: str = setting(
        "127.0.0.1", "Address the metrics port listens on (loopback: Prometheus scrapes it "
        "locally; 0.0.0.0 or :: exposes the counters to the network)")

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

    def http_options(self) -> HttpOptions:
        """The HTTP client options these settings give (one connection per worker)."""
        return HttpOptions(
            connect_timeout_s=self.connect_timeout_s, read_timeout_s=self.read_timeout_s,
            retries=self.retries, backoff_factor_s=self.backoff_factor_s,
            backoff_jitter_s=self.backoff_jitter_s, backoff_max_s=self.backoff_max_s,
            retry_after_max_s=self.retry_after_max_s, proxy=self.proxy,
            pool_size=self.concurrency)


@dataclass(frozen=True, kw_only=True, repr=False)
class FeedSettings(Settings):
    """How the websocket feeds (``binance-ws``, ``coinbase-ws``) keep their
    connections and repair gaps; REST repairs use the ``PRICEPIPE_POLL_*``
    timeouts and retries and the venue's request budget."""

    env_prefix: ClassVar[str] = "PRICEPIPE_FEED_"

    name: str | None = setting(
        None, "Feed name in the status stream and state hash (unset: the source); give each "
        "process of one source its own")
    # Connections
    connect_timeout_s: float = setting(10.0, "Websocket opening handshake timeout, seconds")
    reconnect_base_s: float = setting(
        0.5, "First reconnect delay, seconds; doubles per failed attempt, jittered")
    reconnect_cap_s: float = setting(60.0, "Longest reconnect delay, seconds")
    silence_timeout_s: float = setting(
        30.0, "A connection whose liveness channel (Binance quotes, Coinbase heartbeats) "
        "sends nothing this long is stale: reconnected, seconds")
    trades_silence_timeout_s: float | None = setting(
        None, "Also reconnect when no trade came this long, seconds (unset: trades may pause)")
    ping_interval_s: float = setting(20.0, "Websocket ping interval, seconds")
    ping_timeout_s: float = setting(20.0, "A ping unanswered this long closes the connection")
    lifetime_s: float | None = setting(
        None, "Reconnect after this long, seconds (unset: the venue's limit, Binance 23.5 h)")
    symbols_per_connection: int | None = setting(
        None, "Most symbols per connection (unset: the venue's limit)")
    # Repairs
    max_repair_trades: int = setting(
        50_000, "Most trades one gap repair fetches; the rest of the gap is reported lost "
        "(reason budget: load it with pricepipe backfill)")
    repair_max_wait_s: float = setting(
        60.0, "Longest one repair request waits for the request budget (or a 429's "
        "Retry-After), seconds; then the rest of the gap is reported lost (reason budget)")
    max_waiting: int = setting(
        100_000, "Most live trades of a symbol waiting behind a gap being repaired; beyond, "
        "the gap is given up (reason overflow)")
    # Output
    queue_max: int = setting(10_000, "Most events waiting to be appended to Redis")
    batch_max: int = setting(1_000, "Most events per append round trip")
    status_maxlen: int = setting(
        10_000, "The status stream keeps about this many events (all feeds together)")
    state_interval_s: float = setting(
        1.0, "How often the feed state hash is refreshed (last message time, counts), seconds")
    # Events
    max_future_s: float = setting(
        300.0, "Reject events stamped further in the future than this, seconds")
    max_age_s: float = setting(
        7 * 86_400.0, "Reject trades older than this (a repair reaching further back), seconds")

    def __post_init__(self) -> None:
        if not 0 < self.reconnect_base_s <= self.reconnect_cap_s:
            raise ConfigError("want 0 < PRICEPIPE_FEED_RECONNECT_BASE_S <= RECONNECT_CAP_S")
        if not self.silence_timeout_s > 0:
            raise ConfigError("PRICEPIPE_FEED_SILENCE_TIMEOUT_S must be > 0")
        if self.max_repair_trades < 1 or self.max_waiting < 1 or self.queue_max < 1 \
                or self.batch_max < 1:
            raise ConfigError("PRICEPIPE_FEED_MAX_REPAIR_TRADES, MAX_WAITING, QUEUE_MAX and "
                              "BATCH_MAX must be at least 1")
        if self.symbols_per_connection is not None and self.symbols_per_connection < 1:
            raise ConfigError("PRICEPIPE_FEED_SYMBOLS_PER_CONNECTION must be at least 1")


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
    PublisherSettings, PollerSettings, FeedSettings, BinanceSettings, CoinbaseSettings,
    FinnhubSettings, GenericSettings, MetadataSettings,
)
