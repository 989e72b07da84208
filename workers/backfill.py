"""Backfill: historical trades from a :class:`~pricepipe.workers.history.HistorySource`
written straight into PostgreSQL through the same idempotent sink as the
persist workers (``trades`` and ``bars_1m`` together).

Backfilled rows never came through a stream, so they have no entry ID: they
get :func:`entry_id_for` = ``-(ts_us * 1024 + k) - 1`` (``k``: the trade's rank
among trades of the same instant), negative so it can never equal a packed
stream entry ID. It is deterministic, and so are the simulated trade ids,
so running the same backfill twice adds nothing the second time; a trade a
venue reports with its id is stored once even if it also came live.

A backfill changes bars in PostgreSQL only: it does not publish to the bars
stream (history is read over HTTP).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pricepipe.events import Trade

from .batch import TradeRow, trade_row
from .history import HistorySource
from .sink import EventSink

SAME_INSTANT_MAX = 1024


def entry_id_for(ts_us: int, rank: int) -> int:
    """Entry ID of the ``rank``-th backfilled trade at ``ts_us`` (see module doc)."""
    if not 0 <= rank < SAME_INSTANT_MAX:
        raise ValueError(f"more than {SAME_INSTANT_MAX} backfilled trades at one instant")
    return -(ts_us * SAME_INSTANT_MAX + rank) - 1


def rows_of(trades: list[Trade], last: tuple[int, int] | None = None
            ) -> tuple[list[TradeRow], tuple[int, int] | None]:
    """Rows for ``trades`` (time-ordered); ``last`` carries (ts_us, rank) across chunks."""
    rows: list[TradeRow] = []
    prev_ts, rank = last if last is not None else (-1, -1)
    for t in trades:
        rank = rank + 1 if t.ts_us == prev_ts else 0
        prev_ts = t.ts_us
        rows.append(trade_row(t, entry_id_for(t.ts_us, rank)))
    return rows, ((prev_ts, rank) if trades else last)


@dataclass
class BackfillResult:
    symbol: str
    source: str
    trades: int = 0
    inserted: int = 0


def backfill(sink: EventSink, source: HistorySource, symbol: str, start_us: int, end_us: int,
             *, chunk: int = 10_000, progress: Callable[[int], None] | None = None
             ) -> BackfillResult:
    """Write ``symbol``'s trade history in ``[start_us, end_us)``, one
    transaction per chunk.

    Safe to interrupt and re-run: committed chunks are skipped by the
    unique keys. ``progress(n)`` is called after each chunk with its size.
    Raises ``psycopg2.Error`` and whatever the source raises.
    """
    result = BackfillResult(symbol, source.name)
    last: tuple[int, int] | None = None
    for trades in source.trades(symbol, start_us, end_us, chunk=chunk):
        rows, last = rows_of(trades, last)
        result.inserted += sink.write(rows).trades
        result.trades += len(rows)
        if progress is not None:
            progress(len(rows))
    return result
