"""Upstream price APIs: built-in adapters and the generic JSON poller.

:func:`make_provider` builds one from its settings class
(``PRICEPIPE_<PROVIDER>_*``); ``base_url`` overrides the configured base URL
(a fake upstream in tests and demos). :func:`make_upstream` gives a
provider its HTTP client (the core's :class:`~pricepipe.upstream.Upstream`).
"""

from __future__ import annotations

from collections.abc import Mapping

from pricepipe.exceptions import ConfigError
from pricepipe.upstream import HttpOptions, Upstream
from pricepipe.venues.settings import BinanceSettings, CoinbaseSettings

from ..settings import FinnhubSettings, GenericSettings
from .base import Provider
from .binance import BinanceProvider
from .coinbase import CoinbaseProvider
from .finnhub import FinnhubProvider
from .generic import GenericProvider

PROVIDERS: dict[str, type[Provider]] = {
    "binance": BinanceProvider,
    "coinbase": CoinbaseProvider,
    "finnhub": FinnhubProvider,
    "generic": GenericProvider,
}


def make_provider(name: str, environ: Mapping[str, str] | None = None, *,
                  base_url: str | None = None) -> Provider:
    """The provider ``name`` configured from the environment. Raises :exc:`ConfigError`."""
    if name == "binance":
        b = BinanceSettings.from_env(environ, base_url=base_url)
        try:
            return BinanceProvider(base_url=b.base_url, rate_limit=b.rate_limit,
                                   trades_limit=b.trades_limit)
        except ValueError as exc:
            raise ConfigError(f"PRICEPIPE_BINANCE_TRADES_LIMIT: {exc}") from exc
    if name == "coinbase":
        c = CoinbaseSettings.from_env(environ, base_url=base_url)
        return CoinbaseProvider(base_url=c.base_url, rate_limit=c.rate_limit)
    if name == "finnhub":
        f = FinnhubSettings.from_env(environ, base_url=base_url)
        return FinnhubProvider(base_url=f.base_url, rate_limit=f.rate_limit, api_key=f.api_key)
    if name == "generic":
        g = GenericSettings.from_env(environ, url=base_url)
        if not g.url:
            raise ConfigError("generic poller needs PRICEPIPE_GENERIC_URL (a template with "
                              "{symbol})")
        return GenericProvider(
            url=g.url, price_path=g.price_path, time_path=g.time_path, time_unit=g.time_unit,
            size_path=g.size_path, version_path=g.version_path, bid_path=g.bid_path,
            ask_path=g.ask_path, bid_size_path=g.bid_size_path, ask_size_path=g.ask_size_path,
            headers=g.headers,
            api_key=g.api_key, api_key_header=g.api_key_header, api_key_param=g.api_key_param,
            rate_limit=g.rate_limit)
    raise ConfigError(f"unknown provider {name!r}: want one of {sorted(PROVIDERS)}")


def make_upstream(provider: Provider, options: HttpOptions, *,
                  pool_size: int | None = None) -> Upstream:
    """The HTTP client of ``provider``: its base URL, headers, secrets (masked
    in urllib3's logs) and signing hook."""
    return Upstream(provider.base_url, options, headers=provider.headers(),
                    secrets=provider.secrets(), sign=provider.sign, pool_size=pool_size)


__all__ = ["PROVIDERS", "Provider", "make_provider", "make_upstream"]
