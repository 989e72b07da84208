"""Settings of the HTTP API (``PRICEPIPE_API_*``).

Database and Redis connections come from the core's
:class:`~pricepipe.config.DatabaseSettings` (the API reads through
``PRICEPIPE_DATABASE_READ_URL``) and :class:`~pricepipe.config.RedisSettings`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import ClassVar

from limits import parse_many

from pricepipe.config import Settings, setting
from pricepipe.exceptions import ConfigError
from pricepipe.feedstatus import STALE_AFTER_S


@dataclass(frozen=True, kw_only=True, repr=False)
class ApiSettings(Settings):
    """How the HTTP API listens, what it allows, and whom it trusts."""

    env_prefix: ClassVar[str] = "PRICEPIPE_API_"

    # Listening
    host: str = setting("127.0.0.1", "Address the HTTP API listens on")
    port: int = setting(8000, "TCP port of the HTTP API")
    ws_url: str | None = setting(
        None, "Websocket URL the dashboard connects to; unset: ws(s)://<same host>/ws"
    )

    # Clients
    trusted_proxies: tuple[str, ...] = setting(
        ("127.0.0.1", "::1"),
        "Peers (addresses or CIDR networks) whose X-Forwarded-For is believed",
    )
    rate_limit: str | None = setting(
        "50/second;1000/minute",
        "Requests per client address (limits syntax, `;`-separated); empty: no limit",
    )
    api_keys: tuple[str, ...] = setting(
        (), "Accepted X-API-Key values, comma-separated; a key is limited per key", secret=True
    )
    api_key_required: bool = setting(False, "Refuse /v1 requests without a valid X-API-Key")
    key_rate_limit: str | None = setting(
        "500/second", "Requests per API key (limits syntax); empty: no limit"
    )

    # Limits
    default_page_rows: int = setting(1000, "Trades or quotes per page when `limit` is not given")
    max_page_rows: int = setting(100_000, "Most trades or quotes per JSON page")
    max_range_days: int = setting(366, "Longest time range of one query, days")
    max_bars: int = setting(100_000, "Most bars one query may return")
    max_quote_symbols: int = setting(100, "Most symbols in one /v1/quotes request")
    max_gbm_periods: int = setting(100_000, "Most periods of /v1/simulate/gbm")
    feed_stale_after_s: float = setting(
        STALE_AFTER_S, "/v1/feeds shows a feed stale when it has not rewritten its state for "
        "this long (its process is gone, hung or cut off from Redis), seconds")

    # Timeouts
    pool_wait_s: float = setting(5.0, "How long a request waits for a free database connection")
    csv_chunk_bytes: int = setting(256 * 1024, "Size of the chunks of a CSV download, bytes")

    def __post_init__(self) -> None:
        for name in ("rate_limit", "key_rate_limit"):
            value = getattr(self, name)
            if value:
                try:
                    parse_many(value)
                except ValueError as exc:
                    raise ConfigError(f"{self.env_name(name)}: {exc}") from exc
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError as exc:
                raise ConfigError(
                    f"{self.env_name('trusted_proxies')}: {proxy!r} is not an address or network"
                ) from exc
        if not 1 <= self.default_page_rows <= self.max_page_rows:
            raise ConfigError("PRICEPIPE_API_DEFAULT_PAGE_ROWS must be 1..MAX_PAGE_ROWS")
        if not self.feed_stale_after_s > 0:
            raise ConfigError(f"{self.env_name('feed_stale_after_s')} must be positive")
        for name in ("max_range_days", "max_bars", "max_quote_symbols", "max_gbm_periods",
                     "csv_chunk_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{self.env_name(name)} must be at least 1")
        if self.api_key_required and not self.api_keys:
            raise ConfigError("PRICEPIPE_API_API_KEY_REQUIRED needs PRICEPIPE_API_API_KEYS")


SETTINGS = (ApiSettings,)
