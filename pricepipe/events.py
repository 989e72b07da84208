"""The market events: :class:`Trade`, :class:`Quote`, and the one-minute
:class:`Bar` built from trades. Pure data and validation; no I/O.

Every event is validated when it is built, so an event in hand is always
sane: a symbol of the allowed pattern, an event time within
:data:`MIN_TS_US` .. :data:`MAX_TS_US`, finite positive prices. What is
wrong raises :exc:`~pricepipe.exceptions.InvalidEventError` (a
``ValueError``) naming the field and a stable ``reason`` code (publishers
count rejections by it).

Times are integer microseconds since the Unix epoch, UTC: ``ts_us`` is the
event time (the venue's, or the simulator's), ``recv_ts_us`` when pricepipe
received it, when that differs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum

from .exceptions import InvalidEventError

#: Upper-case letters, digits and ``._:-``; starts with a letter or digit.
#: No braces (they would break Redis hash tags), no ``/`` (URL paths), no
#: space (the stream entry format). A venue-qualified symbol is
#: ``VENUE:INSTRUMENT``, e.g. ``BINANCE:BTCUSDT`` (see docs/publisher.md).
SYMBOL_RE = re.compile(r"[A-Z0-9][A-Z0-9._:-]{0,31}")
SOURCE_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
#: A venue's trade id: Binance and Coinbase use integers; others use UUIDs.
TRADE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")

#: 2000-01-01T00:00:00Z and 2100-01-01T00:00:00Z in microseconds: anything
#: outside is a unit mix-up (seconds for microseconds) rather than a price.
MIN_TS_US = 946_684_800_000_000
MAX_TS_US = 4_102_444_800_000_000

US_PER_MINUTE = 60_000_000

#: How far an event's time may lie before / after the time its stream entry
#: was appended (the entry ID's milliseconds). Publishers refuse quotes older
#: or further ahead than their own, tighter checks; persist workers
#: dead-letter entries outside these bounds. So a range of entry IDs maps to a
#: bounded range of event times, which lets history be read by entry ID
#: through the time-partitioned tables.
MAX_EVENT_AGE_AT_APPEND_US = 7 * 86_400_000_000
MAX_EVENT_LEAD_AT_APPEND_US = 300_000_000


def id_range_span_us(after_ms: int, until_ms: int) -> tuple[int, int]:
    """Half-open ``[start_us, end_us)`` of event times holding every entry
    appended in milliseconds ``after_ms`` to ``until_ms`` (both included).

    An entry appended at millisecond ``ms`` has ``ms * 1000 -
    MAX_EVENT_AGE_AT_APPEND_US <= ts_us <= ms * 1000 + 999 +
    MAX_EVENT_LEAD_AT_APPEND_US``: the upper end keeps ``until_ms``'s own
    millisecond to its last microsecond, whichever end of it the append
    time was taken at. Clamped to the valid times; empty (``start_us >=
    end_us``) when no event can lie in it. The span only prunes partitions;
    the entry IDs select the rows.
    """
    return (max(after_ms * 1000 - MAX_EVENT_AGE_AT_APPEND_US, MIN_TS_US),
            min((until_ms + 1) * 1000 + MAX_EVENT_LEAD_AT_APPEND_US, MAX_TS_US))


class Side(StrEnum):
    """The aggressor of a trade: the side that took liquidity."""

    BUY = "buy"
    SELL = "sell"


#: Names already matched: every event is validated, and a set lookup is
#: several times cheaper than the regular expression. Cleared when it grows
#: past _SEEN_MAX so hostile input cannot grow it forever.
_SEEN_SYMBOLS: set[str] = set()
_SEEN_SOURCES: set[str] = set()
_SEEN_MAX = 100_000


def _remember(seen: set[str], value: str) -> None:
    if len(seen) >= _SEEN_MAX:
        seen.clear()
    seen.add(value)


def validate_symbol(symbol: object) -> str:
    """Return ``symbol`` if it matches :data:`SYMBOL_RE`, else raise."""
    if type(symbol) is str and symbol in _SEEN_SYMBOLS:
        return symbol
    if not isinstance(symbol, str) or SYMBOL_RE.fullmatch(symbol) is None:
        raise InvalidEventError(
            f"invalid symbol {symbol!r}: want 1-32 of A-Z 0-9 . _ : - (upper case)",
            field="symbol", reason="bad_symbol")
    _remember(_SEEN_SYMBOLS, symbol)
    return symbol


def validate_source(source: object) -> str:
    """Return ``source`` if it matches :data:`SOURCE_RE`, else raise."""
    if type(source) is str and source in _SEEN_SOURCES:
        return source
    if not isinstance(source, str) or SOURCE_RE.fullmatch(source) is None:
        raise InvalidEventError(f"invalid source {source!r}: want 1-32 of a-z 0-9 _ . -",
                                field="source", reason="bad_source")
    _remember(_SEEN_SOURCES, source)
    return source


def check_ts(value: object, name: str) -> int:
    """``value`` if it is integer microseconds within the bounds, else raise."""
    if type(value) is not int:
        raise InvalidEventError(f"{name} must be integer microseconds, not {value!r}",
                                field=name, reason="bad_timestamp")
    if not MIN_TS_US <= value < MAX_TS_US:
        raise InvalidEventError(
            f"{name}={value} is outside 2000-01-01..2100-01-01 (microseconds since epoch?)",
            field=name, reason="bad_timestamp")
    return value


def _number(obj: object, name: str) -> float:
    """The float value of field ``name`` (ints become floats); raises for
    anything else, booleans included."""
    value = getattr(obj, name)
    if type(value) is float:
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEventError(f"{name} must be a number, not {value!r}", field=name,
                                reason="not_numeric")
    object.__setattr__(obj, name, float(value))
    return float(value)


def _price(obj: object, name: str) -> float:
    value = _number(obj, name)
    if not math.isfinite(value):
        raise InvalidEventError(f"{name} must be finite, not {value!r}", field=name,
                                reason="not_finite")
    if value <= 0.0:
        raise InvalidEventError(f"{name} must be positive, not {value!r}", field=name,
                                reason="non_positive")
    return value


def _size(obj: object, name: str, *, zero_ok: bool) -> float:
    value = _number(obj, name)
    if not math.isfinite(value):
        raise InvalidEventError(f"{name} must be finite, not {value!r}", field=name,
                                reason="not_finite")
    if value < 0.0 or (value == 0.0 and not zero_ok):
        raise InvalidEventError(
            f"{name} must be {'>= 0' if zero_ok else 'positive'}, not {value!r}", field=name,
            reason="negative_size" if value < 0.0 else "non_positive")
    return value


@dataclass(frozen=True, slots=True)
class Trade:
    """A trade print: ``size`` units changed hands at ``price``.

    ``size`` is None only where the source does not report it (Finnhub's
    last price): such a trade counts in its bar's prices and trade count but
    not in its volume or VWAP. ``trade_id`` is the venue's id (it makes
    backfills and repaired gaps idempotent); ``side`` the aggressor's.
    """

    symbol: str
    ts_us: int
    price: float
    size: float | None
    source: str = "unknown"
    trade_id: str | None = None
    side: Side | None = None
    recv_ts_us: int | None = None

    def __post_init__(self) -> None:
        validate_symbol(self.symbol)
        check_ts(self.ts_us, "ts_us")
        _price(self, "price")
        if self.size is not None:
            _size(self, "size", zero_ok=False)
        validate_source(self.source)
        if self.trade_id is not None and (type(self.trade_id) is not str
                                          or TRADE_ID_RE.fullmatch(self.trade_id) is None):
            raise InvalidEventError(
                f"invalid trade_id {self.trade_id!r}: want 1-64 of A-Z a-z 0-9 . _ : -",
                field="trade_id", reason="bad_trade_id")
        if self.side is not None and type(self.side) is not Side:
            try:
                object.__setattr__(self, "side", Side(self.side))
            except ValueError as exc:
                raise InvalidEventError(f"side must be buy or sell, not {self.side!r}",
                                        field="side", reason="bad_side") from exc
        if self.recv_ts_us is not None:
            check_ts(self.recv_ts_us, "recv_ts_us")


@dataclass(frozen=True, slots=True)
class Quote:
    """The best bid and ask (top of book) at ``ts_us``.

    A one-sided book has ``bid`` (and ``bid_size``) or ``ask`` (and
    ``ask_size``) None; an empty book is not a quote. Sizes are None when the
    source does not report them. A crossed book (``bid > ask``) is refused:
    it is a stale or broken feed, not a market.
    """

    symbol: str
    ts_us: int
    bid: float | None
    bid_size: float | None
    ask: float | None
    ask_size: float | None
    source: str = "unknown"
    recv_ts_us: int | None = None

    def __post_init__(self) -> None:
        validate_symbol(self.symbol)
        check_ts(self.ts_us, "ts_us")
        for price_name, size_name in (("bid", "bid_size"), ("ask", "ask_size")):
            if getattr(self, price_name) is None:
                if getattr(self, size_name) is not None:
                    raise InvalidEventError(f"{size_name} given without {price_name}",
                                            field=size_name, reason="size_without_price")
                continue
            _price(self, price_name)
            if getattr(self, size_name) is not None:
                _size(self, size_name, zero_ok=True)
        if self.bid is None and self.ask is None:
            raise InvalidEventError("a quote needs a bid or an ask", field="bid",
                                    reason="empty_book")
        if self.bid is not None and self.ask is not None and self.bid > self.ask:
            raise InvalidEventError(f"crossed book: bid {self.bid!r} > ask {self.ask!r}",
                                    field="bid", reason="crossed_book")
        validate_source(self.source)
        if self.recv_ts_us is not None:
            check_ts(self.recv_ts_us, "recv_ts_us")

    @property
    def mid(self) -> float | None:
        """``(bid + ask) / 2`` of a two-sided book, else None."""
        if self.bid is None or self.ask is None:
            return None
        return (self.bid + self.ask) / 2

    @property
    def spread(self) -> float | None:
        """``ask - bid`` of a two-sided book, else None."""
        if self.bid is None or self.ask is None:
            return None
        return self.ask - self.bid


class BarState(StrEnum):
    """Where a bar is in its life (the ``bars.1m`` channel)."""

    #: The minute is still running; more trades may come.
    OPEN = "open"
    #: The minute has ended.
    FINAL = "final"
    #: A late trade changed the bar after it was final.
    REVISED = "revised"


@dataclass(frozen=True, slots=True)
class Bar:
    """The one-minute bar of ``symbol`` starting at ``bucket_us``, from its
    trades: open and close by (event time, entry ID), ``volume`` the sum of
    the sizes, ``vwap`` (None without sizes) and ``trades`` the count."""

    symbol: str
    bucket_us: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    vwap: float | None
    trades: int
    state: BarState = BarState.OPEN

    def __post_init__(self) -> None:
        validate_symbol(self.symbol)
        check_ts(self.bucket_us, "bucket_us")
        if self.bucket_us % US_PER_MINUTE:
            raise InvalidEventError("bucket_us must be the start of a minute",
                                    field="bucket_us", reason="bad_timestamp")
        for name in ("open", "high", "low", "close"):
            _price(self, name)
        if not self.low <= min(self.open, self.close) <= max(self.open, self.close) <= self.high:
            raise InvalidEventError("want low <= open, close <= high", field="low",
                                    reason="bad_bar")
        _size(self, "volume", zero_ok=True)
        if self.vwap is not None:
            _price(self, "vwap")
        if type(self.trades) is not int or self.trades < 1:
            raise InvalidEventError(f"trades must be a positive integer, not {self.trades!r}",
                                    field="trades", reason="bad_bar")
        if type(self.state) is not BarState:
            try:
                object.__setattr__(self, "state", BarState(self.state))
            except ValueError as exc:
                raise InvalidEventError(f"invalid bar state {self.state!r}", field="state",
                                        reason="bad_bar") from exc

    @property
    def ts_us(self) -> int:
        """A bar's event time is the start of its minute."""
        return self.bucket_us


Event = Trade | Quote | Bar


def bucket_of(ts_us: int) -> int:
    """Start of the UTC minute holding ``ts_us`` (floor, also before 1970)."""
    return ts_us - ts_us % US_PER_MINUTE
