"""The newest event of symbols' streams in Redis: what ``/v1/quotes`` and
``/v1/symbols`` show live.

One pipelined round trip for every (symbol, channel) asked for, whatever
their number (``XREVRANGE key + - COUNT 1`` each; on Redis Cluster the
pipeline sends each command to its key's node). Decoding goes through the
codec's reference parser: a handful of entries, so the fast paths would
buy nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from pricepipe import codec
from pricepipe.events import Event, Quote, Trade
from pricepipe.keys import Channel, Keys


@dataclass(frozen=True, slots=True)
class Newest:
    """The newest entry of one stream: its ID and event, or, when the
    entry cannot be read, ``error`` saying why. All None: an empty stream."""

    entry_id: str | None = None
    event: Event | None = None
    error: str | None = None


def newest(r: Any, keys: Keys, symbols: Sequence[str],
           channels: Sequence[Channel]) -> dict[tuple[str, Channel], Newest]:
    """:class:`Newest` of each symbol's stream of each channel.

    ``symbols`` must be valid (:data:`~pricepipe.events.SYMBOL_RE`). An
    unreadable entry, or a key holding something else than a stream, is a
    :class:`Newest` with ``error`` set, not an exception; connection errors
    are raised.
    """
    wanted = [(symbol, channel) for symbol in symbols for channel in channels]
    if not wanted:
        return {}
    pipe = r.pipeline(transaction=False)
    for symbol, channel in wanted:
        pipe.xrevrange(keys.stream(symbol, channel), count=1)
    out: dict[tuple[str, Channel], Newest] = {}
    for (symbol, channel), reply in zip(wanted, pipe.execute(raise_on_error=False),
                                        strict=True):
        out[(symbol, channel)] = _read(channel, symbol, reply)
    return out


def _read(channel: Channel, symbol: str, reply: Any) -> Newest:
    if isinstance(reply, redis.ResponseError):  # e.g. WRONGTYPE
        return Newest(error=f"newest {channel} entry unreadable: {reply}")
    if not reply:
        return Newest()
    entry_id, fields = reply[0]
    entry = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    try:
        event = codec.decode_entry(channel, symbol, fields)
    except ValueError as exc:  # DecodeError or InvalidEventError
        return Newest(entry_id=entry, error=f"newest {channel} entry unreadable: {exc}")
    return Newest(entry_id=entry, event=event)


def board_row(symbol: str, quote: Newest, trade: Newest) -> dict[str, Any] | None:
    """The ``/v1/quotes`` answer for one symbol: the top of book and the
    last price, then the two events in full (codec JSON, with their times
    and entry IDs). None when the symbol has neither."""
    q = quote.event if isinstance(quote.event, Quote) else None
    t = trade.event if isinstance(trade.event, Trade) else None
    if q is None and t is None:
        return None
    return {
        "symbol": symbol,
        "bid": q.bid if q else None, "bid_size": q.bid_size if q else None,
        "ask": q.ask if q else None, "ask_size": q.ask_size if q else None,
        "price": t.price if t else None,
        "quote": codec.event_to_dict(q, quote.entry_id) if q else None,
        "trade": codec.event_to_dict(t, trade.entry_id) if t else None,
    }
