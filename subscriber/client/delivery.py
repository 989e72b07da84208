"""What the strategy client library hands out: a :class:`Delivery` per event,
and a :class:`Gap` wherever entries may be missing, so that nothing is ever
lost silently."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from pricepipe.codec import channel_of
from pricepipe.events import Bar, Quote, Trade
from pricepipe.keys import Channel


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event as read from a stream (or replayed from the database):
    a :class:`~pricepipe.events.Trade`, a :class:`~pricepipe.events.Quote`
    or a :class:`~pricepipe.events.Bar`, with its stream entry ID.

    Entry IDs increase per stream, that is per symbol and channel; keep the
    last one handled per ``(symbol, channel)``, with ``epoch``, to resume
    from it. ``redelivered`` is True when a consumer-group entry is handed
    out again after it may have been handed out before (a crash, a failover):
    the strategy may have acted on it, so its effects should be idempotent by
    ``(symbol, channel, entry_id)``. ``filled`` marks an event read from
    PostgreSQL history to fill a :class:`Gap` (``fill_gaps``).
    """

    entry_id: str
    event: Trade | Quote | Bar
    redelivered: bool = False
    epoch: str | None = None
    filled: bool = False

    @property
    def symbol(self) -> str:
        return self.event.symbol

    @property
    def channel(self) -> Channel:
        return channel_of(self.event)


class GapReason(StrEnum):
    """Why entries may be missing."""

    #: Trimmed from the stream before this reader got them: a plain reader
    #: further behind than the stream window, a consumer group stopped for
    #: longer than the hard cap, or a cursor older than the stream holds.
    TRIMMED = "trimmed"
    #: Redis may have lost entries: it restarted or failed over since the
    #: cursor was taken (its epoch changed).
    EPOCH = "epoch"
    #: Entries pending for this consumer were deleted from the stream.
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class Gap:
    """Entries of ``symbol``'s ``channel`` stream with ``after < id < until``
    may be missing: the reader's next entry of that stream is ``until`` or
    later. Every entry persisted to PostgreSQL is in the history with its
    entry ID: fetch the range from there (``GET /v1/trades/{symbol}?after_id=
    &until_id=``), or let the reader do it (``fill_gaps``). ``filled`` says
    the reader has delivered, just before this gap, what the history holds
    of the range: all of it for ``trimmed`` (trimming never passes entries
    not yet persisted), maybe not all for ``epoch`` (what Redis lost before
    it was persisted is gone everywhere). ``epoch`` is the epoch the reader
    reads in from the gap on.

    An ``epoch`` gap runs from the reader's place to past the end of what
    the new server held when the reader saw the change: after a failover or
    a restore the entries that survived and the ones lost cannot be told
    apart (the lost ones are a suffix of the old server's stream, and new
    entries follow them), so none of the range is delivered from Redis; the
    history fills it."""

    symbol: str
    channel: Channel
    after: str
    until: str
    reason: GapReason
    filled: bool = False
    #: Not compared: which server a reader went on with does not change
    #: what the gap says may be missing.
    epoch: str | None = field(default=None, compare=False)
    #: Entries of the range up to this one may have been handed out to this
    #: consumer before (an epoch gap of a group reader): a fill marks them
    #: ``redelivered``.
    redelivered_upto: str | None = field(default=None, compare=False)
