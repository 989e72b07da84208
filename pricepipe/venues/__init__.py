"""Venues: the exchanges pricepipe reads directly, Binance spot and Coinbase
Exchange. Pure code, no I/O.

* :mod:`.fields` - reading one JSON field (a number, a timestamp, an id).
* :mod:`.messages` - what a venue's message or answer means, venue-neutral.
* :mod:`.binance`, :mod:`.coinbase` - each venue's documented websocket
  messages and REST answers, parsed exactly as documented, and the requests
  and subscriptions to send. The publisher's feeds and the workers'
  backfills share these parsers (roles never import each other).
* :mod:`.settings` - each venue's base URLs and request budget.

**Venue-qualified symbols.** The same instrument traded on two venues is two
instruments: their prices differ, and so do their trade ids. A symbol read
from a venue is therefore named ``VENUE:INSTRUMENT`` by default, ``VENUE``
the venue's name in upper case and ``INSTRUMENT`` the venue's own symbol:
``BINANCE:BTCUSDT``, ``COINBASE:BTC-USD``. :func:`resolve` maps what a user
types to ``(local, upstream)``:

* ``BTCUSDT`` -> ``("BINANCE:BTCUSDT", "BTCUSDT")`` (the default);
* ``BINANCE:BTCUSDT`` -> the same; another venue's prefix is an error;
* ``LOCAL=UPSTREAM`` -> ``(LOCAL, UPSTREAM)`` as given (an explicit mapping,
  e.g. ``BTC-USD=BTCUSDT``; then the registry below is what keeps two
  venues apart).

**Sources and trade-id spaces.** Each publisher writes its source name into
every event. Two sources may only feed the same symbol when their trade ids
mean the same thing: Binance's ``/api/v3/trades`` ids (the ``binance``
poller) and its aggregate-trade ids (the ``binance-ws`` feed and the
``binance`` backfill) are different numbers for different things.
:data:`TRADE_ID_SPACE` says which space each source's ids belong to.
"""

from __future__ import annotations

from pricepipe.events import validate_symbol
from pricepipe.exceptions import ConfigError

#: Venue name (as in ``--source``) -> the prefix of its qualified symbols.
PREFIXES: dict[str, str] = {"binance": "BINANCE", "coinbase": "COINBASE"}

#: Source name -> the venue it reads, for every source that reads one.
VENUE_OF_SOURCE: dict[str, str] = {
    "binance": "binance", "binance-ws": "binance", "backfill-binance": "binance",
    "coinbase": "coinbase", "coinbase-ws": "coinbase", "backfill-coinbase": "coinbase",
}

#: Source name -> what its trade ids count (sources of one space may share a symbol).
TRADE_ID_SPACE: dict[str, str] = {
    "binance": "binance:trade",
    "binance-ws": "binance:aggregate", "backfill-binance": "binance:aggregate",
    # Coinbase numbers trades once per product: the ticker's trade_id, the
    # matches channel's and the trades endpoint's are the same ids.
    "coinbase": "coinbase:trade", "coinbase-ws": "coinbase:trade",
    "backfill-coinbase": "coinbase:trade",
}


def qualified(venue: str, instrument: str) -> str:
    """``VENUE:INSTRUMENT`` (validated as a symbol; raises
    :exc:`~pricepipe.exceptions.InvalidEventError`)."""
    return validate_symbol(f"{PREFIXES[venue]}:{instrument.upper()}")


def resolve(venue: str, text: str) -> tuple[str, str]:
    """``(local symbol, upstream symbol)`` of one ``--symbols`` item for
    ``venue`` (see the module docstring). Raises :exc:`ConfigError`."""
    item = text.strip()
    local, sep, upstream = item.partition("=")
    local, upstream = local.strip().upper(), upstream.strip()
    try:
        if sep:
            if not upstream:
                raise ConfigError(f"empty upstream name for {local}")
            return validate_symbol(local), upstream
        prefix, colon, instrument = local.partition(":")
        if colon:
            if prefix != PREFIXES[venue]:
                raise ConfigError(f"{local} is not a {venue} symbol (want "
                                  f"{PREFIXES[venue]}:... or LOCAL=UPSTREAM)")
            return validate_symbol(local), instrument
        return qualified(venue, local), local
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def same_trade_ids(source_a: str, source_b: str) -> bool:
    """Whether two sources' trade ids count the same trades (same source, or
    the same :data:`TRADE_ID_SPACE`)."""
    if source_a == source_b:
        return True
    space = TRADE_ID_SPACE.get(source_a)
    return space is not None and space == TRADE_ID_SPACE.get(source_b)
