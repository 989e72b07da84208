"""Helpers of the publisher tests: reading back what a publisher appended."""

from __future__ import annotations

from typing import Any

from pricepipe.codec import field_value, parse_quote, parse_trade
from pricepipe.events import Quote, Trade
from pricepipe.keys import Channel, Keys


def read_trades(r: Any, keys: Keys, symbol: str) -> list[Trade]:
    """Every trade in ``symbol``'s trades stream, oldest first."""
    return [parse_trade(symbol, field_value(fields, Channel.TRADES))
            for _, fields in r.xrange(keys.trades(symbol))]


def read_quotes(r: Any, keys: Keys, symbol: str) -> list[Quote]:
    """Every quote in ``symbol``'s quotes stream, oldest first."""
    return [parse_quote(symbol, field_value(fields, Channel.QUOTES))
            for _, fields in r.xrange(keys.quotes(symbol))]


def read_events(r: Any, keys: Keys, symbol: str) -> list[Trade | Quote]:
    """A symbol's trades and quotes merged in event-time order (a GBM symbol
    has one event per period, so no two share a time)."""
    both: list[Trade | Quote] = [*read_quotes(r, keys, symbol), *read_trades(r, keys, symbol)]
    return sorted(both, key=lambda e: (e.ts_us, isinstance(e, Trade)))


def stream_length(r: Any, keys: Keys, symbol: str) -> int:
    """How many events a symbol's trades and quotes streams hold together."""
    return int(r.xlen(keys.trades(symbol))) + int(r.xlen(keys.quotes(symbol)))
