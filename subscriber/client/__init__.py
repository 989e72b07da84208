"""The strategy client library: trades, quotes and one-minute bars for given
symbols, straight from Redis Streams or replayed from PostgreSQL, through one
interface. Each delivery carries a typed event (:class:`~pricepipe.events.Trade`,
:class:`~pricepipe.events.Quote`, :class:`~pricepipe.events.Bar`).

Readers, sync (:mod:`.sync`) and asyncio (:mod:`.aio`), whose every
decision is made once in :mod:`.core`; ``channels`` picks what they read
(``("trades", "quotes")`` by default, or either alone: a reader of quotes
never decodes a trade, or ``"bars.1m"``):

* :class:`StreamReader` / :class:`AsyncStreamReader` - latest-only: plain
  ``XREAD`` from now on (``start="$"``), from the latest event (``"last"``),
  from the oldest retained (``"0"``) or from your own saved entry IDs.
* :class:`GroupReader` / :class:`AsyncGroupReader` - a named consumer group:
  every event goes to one consumer of the group; ``ack()`` it once handled.
  After a crash, a consumer restarted under the same name first receives the
  entries it had not acknowledged (``Delivery.redelivered``), then new ones:
  nothing is lost, and what was acknowledged never comes back. With
  ``checkpoint=path`` it keeps its place in a local file too, so a consumer
  that was stopped while Redis failed over to a replica that was behind is
  told of what the replica lacked (an ``epoch`` :class:`Gap`).
* :class:`ReplayReader` / :class:`AsyncReplayReader` - history from the
  ``trades`` and ``quotes`` tables, interleaved in event-time order, at N×
  speed (``speed=None``: as fast as possible), for backtests; ``ack()`` is a
  no-op.

Nothing is lost silently: where entries may be missing (trimmed before the
reader got them, past a stopped group by the hard cap, or lost by Redis in a
restart or failover) a reader hands out a :class:`Gap` naming the symbol,
channel and the range of entry IDs. With ``fill_gaps=PgHistory(conn)`` it
first delivers the range from PostgreSQL (marked ``filled``), in stream
order, and carries on live: a strategy down for a day catches up with every
event, in order, exactly once.

For research, :mod:`.frames` gives history as pandas DataFrames
(:func:`trades_frame`, :func:`quotes_frame`, :func:`bars_frame`; several
symbols at once, UTC time index) from PostgreSQL or over HTTP
(:class:`HttpHistory`); pandas and pyarrow, the ``research`` extra, are
imported only when a frame is asked for.

Every reader: ``get(timeout_s)`` returns the next :class:`Delivery` (or
:class:`Gap`) or None,
iteration yields deliveries (forever for stream readers, until the end for
replays), ``ack(*deliveries)``, ``close()``, and context-manager use. The
async readers have the same methods as coroutines (``aclose()``, ``async for``,
``async with``).
"""

from .aio import AsyncGroupReader, AsyncStreamReader
from .checkpoint import Checkpoint
from .delivery import Delivery, Gap, GapReason
from .frames import HttpHistory, bars_frame, quotes_frame, trades_frame
from .history import HistorySource, PgHistory
from .replay import AsyncReplayReader, ReplayReader
from .settings import ClientSettings
from .sync import GroupReader, StreamReader

__all__ = [
    "AsyncGroupReader", "AsyncReplayReader", "AsyncStreamReader", "Checkpoint",
    "ClientSettings", "Delivery",
    "Gap", "GapReason", "GroupReader", "HistorySource", "HttpHistory", "PgHistory",
    "ReplayReader", "StreamReader", "bars_frame", "quotes_frame", "trades_frame",
]
