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
    symbols: str = setting(
        "10", "Symbols: a number N (the first N demo symbols) or a list AAPL,MSFT,"
        "LOCAL=UPSTREAM,...")
    # GBM
    rate: float = setting(5.0, "GBM real-time mode: ticks per second per symbol")
    seed: int | None = setting(None, "GBM random seed (same seed, same prices)")
    params: str | None = setting(
        None, "GBM parameters SYMBOL:price[:mu[:sigma]],... (annual mu and sigma)")
    dt_years: float = setting(
        TRADING_MINUTE_YEARS, "GBM simulated time per tick, years (default: one trading minute)")
    correlation: str | None = setting(
        None, "GBM correlation: one number for every pair, or matrix rows `1,0.5;0.5,1`")
    batch_size: int = setting(1000, "Most ticks per pipelined XADD round trip")
    max_lag_s: float = setting(
        1.0, "GBM real-time mode: skip (and count) periods when this far behind schedule")
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


SETTINGS: tuple[type[Settings], ...] = (PublisherSettings,)
