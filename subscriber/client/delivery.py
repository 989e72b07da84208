"""What the strategy client library hands out."""

from __future__ import annotations

from dataclasses import dataclass

from pricepipe.codec import channel_of
from pricepipe.events import Bar, Quote, Trade
from pricepipe.keys import Channel


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event as read from a stream (or replayed from the database):
    a :class:`~pricepipe.events.Trade`, a :class:`~pricepipe.events.Quote`
    or a :class:`~pricepipe.events.Bar`, with its stream entry ID.

    Entry IDs increase per stream, that is per symbol and channel; keep the
    last one handled per ``(symbol, channel)`` to resume from it.
    ``redelivered`` is True when a consumer-group entry is handed out again
    because it was never acknowledged (for example after a crash): the
    strategy may have acted on it before, so its effects should be
    idempotent by ``(symbol, channel, entry_id)``.
    """

    entry_id: str
    event: Trade | Quote | Bar
    redelivered: bool = False

    @property
    def symbol(self) -> str:
        return self.event.symbol

    @property
    def channel(self) -> Channel:
        return channel_of(self.event)
