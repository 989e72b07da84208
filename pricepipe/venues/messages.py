"""What a venue's websocket message or REST answer means, venue-neutral.
Pure data, no I/O.

The venue parsers (:mod:`.binance`, :mod:`.coinbase`) turn one message into
one of these (or raise :exc:`~pricepipe.exceptions.BadResponseError`, reason
``malformed`` or a field reader's reason): a trade, a top of book, a
heartbeat, a subscription confirmed or refused, a notice that the server is
about to close the connection, or a message of a kind nobody asked for
(:class:`Unknown`, which the feeds count and skip). Values are the venue's
(its symbol, its ids); the feeds turn them into events under the local name.
"""

from __future__ import annotations

from dataclasses import dataclass

from pricepipe.events import Side


@dataclass(frozen=True, slots=True)
class VenueTrade:
    """One trade as the venue reported it: ``trade_id`` counts up by one per
    trade of the instrument (Binance: the aggregate trade id; Coinbase: the
    trade id), ``side`` is the aggressor's, ``ts_us`` the venue's time.
    ``sequence`` is the venue's message sequence number where it has one
    (Coinbase), to tell a repeated message from a new one."""

    upstream: str
    trade_id: int
    price: float
    size: float
    ts_us: int
    side: Side | None
    sequence: int | None = None


@dataclass(frozen=True, slots=True)
class VenueQuote:
    """The best bid and ask; an empty side is None. ``ts_us`` None: the
    message has no time of its own (the receipt time is the event time).
    ``update_id`` orders a venue's book updates (Binance ``u``, Coinbase
    ``sequence``): an update not newer than the last one is stale."""

    upstream: str
    ts_us: int | None
    bid: float | None
    bid_size: float | None
    ask: float | None
    ask_size: float | None
    update_id: int | None = None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The venue's sign of life for an instrument, with the id of its last
    trade (Coinbase's heartbeat channel): a trade id above the last one seen
    means trades were missed even when no new trade message came."""

    upstream: str
    last_trade_id: int | None
    sequence: int | None
    ts_us: int | None


@dataclass(frozen=True, slots=True)
class Subscribed:
    """A subscription request was accepted; ``request_id`` echoes the
    request's id where the venue has one (Binance), ``channels`` what is now
    subscribed where the venue says (Coinbase)."""

    request_id: int | str | None = None
    channels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Refused:
    """The venue refused a request (a subscription, an unknown symbol): its
    own ``message`` and ``reason``; ``request_id`` as in :class:`Subscribed`."""

    message: str
    reason: str = ""
    request_id: int | str | None = None


@dataclass(frozen=True, slots=True)
class Shutdown:
    """The server is about to close the connection (Binance ``serverShutdown``):
    reconnect now rather than at the close."""

    ts_us: int | None = None


@dataclass(frozen=True, slots=True)
class Unknown:
    """A well-formed message of a kind the feed does not use (venues add
    message types at any time; clients are expected to ignore them)."""

    kind: str


@dataclass(frozen=True, slots=True)
class Candle:
    """One bar of the venue's history: ``bucket_us`` its start. ``trades``
    is the venue's trade count and ``notional`` the sum of price x size
    (its quote volume) where it gives them (Binance klines)."""

    upstream: str
    bucket_us: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    trades: int | None = None
    notional: float | None = None


VenueMessage = VenueTrade | VenueQuote | Heartbeat | Subscribed | Refused | Shutdown | Unknown
