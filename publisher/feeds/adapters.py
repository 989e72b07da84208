"""Venue adapters of the websocket feeds: everything the feed loop needs to
know about a venue, decided here and nowhere else. Pure code, no I/O: the
URL to connect to, the subscription messages and their pacing, the venue's
connection limits, which messages prove the connection alive, and how a gap
is fetched over REST. The message parsers are the core's
(:mod:`pricepipe.venues.binance`, :mod:`pricepipe.venues.coinbase`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import ClassVar

from pricepipe.exceptions import ConfigError
from pricepipe.venues import binance, coinbase
from pricepipe.venues.messages import Heartbeat, VenueMessage, VenueQuote, VenueTrade
from pricepipe.venues.settings import BinanceSettings, CoinbaseSettings

from .plans import BackwardPlan, ForwardPlan, RepairPlan
from .sequencer import Gap

#: Channels of a connection, for silence timeouts and counts.
TRADES = "trades"
QUOTES = "quotes"
HEARTBEAT = "heartbeat"


class VenueAdapter:
    """Base of the venue adapters; subclasses set the class attributes."""

    #: The source name of the events (``--source``).
    source: ClassVar[str]
    #: The venue (:data:`pricepipe.venues.PREFIXES`).
    venue: ClassVar[str]
    #: Most symbols one connection carries.
    max_symbols_per_connection: ClassVar[int]
    #: Longest a connection may live (the venue closes it then), seconds; None: no limit.
    lifetime_s: ClassVar[float | None] = None
    #: Most subscription messages sent per second on a connection.
    subscribe_rate_per_s: ClassVar[float] = 1.0
    #: Channels whose silence means the connection is stuck (the others may
    #: be quiet for minutes in a calm market).
    liveness: ClassVar[tuple[str, ...]] = (QUOTES,)

    def __init__(self, *, ws_url: str, base_url: str, rate_limit: str) -> None:
        self.ws_url = ws_url
        self.base_url = base_url.rstrip("/")
        self.rate_limit = rate_limit

    def connect_url(self, upstreams: Sequence[str]) -> str:
        raise NotImplementedError

    def subscriptions(self, upstreams: Sequence[str], ids: Iterator[int]) -> list[str]:
        """The messages to send after connecting, in order (request ids, where
        the venue has them, drawn from ``ids``: unique for the feed's life)."""
        raise NotImplementedError

    def parse(self, raw: str | bytes) -> VenueMessage:
        """One message; raises :exc:`~pricepipe.exceptions.BadResponseError`."""
        raise NotImplementedError

    def repair_plan(self, upstream: str, gap: Gap, *, max_trades: int) -> RepairPlan:
        raise NotImplementedError

    def parse_repair(self, upstream: str, payload: object) -> list[VenueTrade]:
        raise NotImplementedError

    @staticmethod
    def channel_of(message: VenueMessage) -> str | None:
        """The channel a message belongs to (None: a control message)."""
        if isinstance(message, VenueTrade):
            return TRADES
        if isinstance(message, VenueQuote):
            return QUOTES
        if isinstance(message, Heartbeat):
            return HEARTBEAT
        return None


class BinanceAdapter(VenueAdapter):
    """Binance spot: ``<symbol>@aggTrade`` and ``<symbol>@bookTicker`` on the
    combined stream endpoint, subscribed by ``SUBSCRIBE`` messages."""

    source: ClassVar[str] = "binance-ws"
    venue: ClassVar[str] = "binance"
    # Two streams per symbol, 1024 streams per connection.
    max_symbols_per_connection: ClassVar[int] = binance.MAX_STREAMS_PER_CONNECTION // 2
    # The venue closes connections after 24 hours: leave before, at a time
    # of our choosing (the catch-up repair covers the switch).
    lifetime_s: ClassVar[float | None] = binance.CONNECTION_LIFETIME_S - 1800.0
    # At most 5 incoming messages per second, pongs to the server's pings
    # and our own pings included: 2 subscriptions a second leave room.
    subscribe_rate_per_s: ClassVar[float] = 2.0
    liveness: ClassVar[tuple[str, ...]] = (QUOTES,)
    #: Streams per SUBSCRIBE message.
    streams_per_message = 200

    def connect_url(self, upstreams: Sequence[str]) -> str:
        return binance.stream_url(self.ws_url)

    def subscriptions(self, upstreams: Sequence[str], ids: Iterator[int]) -> list[str]:
        streams = [name for symbol in upstreams for name in binance.stream_names(symbol)]
        return [binance.subscribe_message(chunk, next(ids))
                for chunk in binance.chunks(streams, self.streams_per_message)]

    def parse(self, raw: str | bytes) -> VenueMessage:
        return binance.parse_message(raw)

    def repair_plan(self, upstream: str, gap: Gap, *, max_trades: int) -> RepairPlan:
        return ForwardPlan(upstream, gap, max_trades=max_trades)

    def parse_repair(self, upstream: str, payload: object) -> list[VenueTrade]:
        return binance.parse_agg_trades(upstream, payload)


class CoinbaseAdapter(VenueAdapter):
    """Coinbase Exchange: ``matches``, ``ticker`` and ``heartbeat`` for every
    product of the connection, in one ``subscribe``."""

    source: ClassVar[str] = "coinbase-ws"
    venue: ClassVar[str] = "coinbase"
    # Spread products over connections (the venue's best practice).
    max_symbols_per_connection: ClassVar[int] = 50
    lifetime_s: ClassVar[float | None] = None
    # One subscribe per connection, never a duplicate (each counts towards
    # the 10 subscriptions per product and channel).
    subscribe_rate_per_s: ClassVar[float] = float(coinbase.MAX_REQUESTS_PER_S) / 2
    # A heartbeat comes every second per product, whatever the market does.
    liveness: ClassVar[tuple[str, ...]] = (HEARTBEAT,)

    def connect_url(self, upstreams: Sequence[str]) -> str:
        return self.ws_url

    def subscriptions(self, upstreams: Sequence[str], ids: Iterator[int]) -> list[str]:
        return [coinbase.subscribe_message(list(upstreams))]

    def parse(self, raw: str | bytes) -> VenueMessage:
        return coinbase.parse_message(raw)

    def repair_plan(self, upstream: str, gap: Gap, *, max_trades: int) -> RepairPlan:
        return BackwardPlan(upstream, gap, max_trades=max_trades)

    def parse_repair(self, upstream: str, payload: object) -> list[VenueTrade]:
        return coinbase.parse_trades(upstream, payload)


ADAPTERS: dict[str, type[VenueAdapter]] = {
    BinanceAdapter.source: BinanceAdapter,
    CoinbaseAdapter.source: CoinbaseAdapter,
}


def make_adapter(source: str, environ: Mapping[str, str] | None = None, *,
                 base_url: str | None = None, ws_url: str | None = None) -> VenueAdapter:
    """The adapter of ``source`` (``binance-ws``, ``coinbase-ws``) configured
    from the venue's settings. Raises :exc:`ConfigError`."""
    if source == BinanceAdapter.source:
        b = BinanceSettings.from_env(environ, base_url=base_url, ws_url=ws_url)
        return BinanceAdapter(ws_url=b.ws_url, base_url=b.base_url, rate_limit=b.rate_limit)
    if source == CoinbaseAdapter.source:
        c = CoinbaseSettings.from_env(environ, base_url=base_url, ws_url=ws_url)
        return CoinbaseAdapter(ws_url=c.ws_url, base_url=c.base_url, rate_limit=c.rate_limit)
    raise ConfigError(f"unknown feed {source!r}: want one of {sorted(ADAPTERS)}")
