"""Backfill: historical ticks from a :class:`~pricepipe.workers.history.HistorySource`
written straight into PostgreSQL through the same idempotent sink as the
persist workers (``ticks`` and ``bars_1m`` together).

Backfilled rows never came through a stream, so they have no entry ID: they
get :func:`entry_id_for` = ``-(ts_us * 1024 + k) - 1`` (``k``: the tick's rank
among ticks of the same instant), negative so it can never equal a packed
stream entry ID. It is deterministic, so running the same backfill twice
adds nothing the second time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pricepipe.tick import Tick

from .batch import TickRow
from .history import HistorySource
from .sink import TickSink

SAME_INSTANT_MAX = 1024


def entry_id_for(ts_us: int, rank: int) -> int:
    """Entry ID of the ``rank``-th backfilled tick at ``ts_us`` (see module doc)."""
    if not 0 <= rank < SAME_INSTANT_MAX:
        raise ValueError(f"more than {SAME_INSTANT_MAX} backfilled ticks at one instant")
    return -(ts_us * SAME_INSTANT_MAX + rank) - 1


def rows_of(ticks: list[Tick], last: tuple[int, int] | None = None
            ) -> tuple[list[TickRow], tuple[int, int] | None]:
    """Rows for ``ticks`` (time-ordered); ``last`` carries (ts_us, rank) across chunks."""
    rows: list[TickRow] = []
    prev_ts, rank = last if last is not None else (-1, -1)
    for t in ticks:
        rank = rank + 1 if t.ts_us == prev_ts else 0
        prev_ts = t.ts_us
        rows.append((t.symbol, t.ts_us, t.price, t.size, t.source, t.recv_ts_us,
                     entry_id_for(t.ts_us, rank)))
    return rows, ((prev_ts, rank) if ticks else last)


@dataclass
class BackfillResult:
    symbol: str
    source: str
    ticks: int = 0
    inserted: int = 0


def backfill(sink: TickSink, source: HistorySource, symbol: str, start_us: int, end_us: int,
             *, chunk: int = 10_000, progress: Callable[[int], None] | None = None
             ) -> BackfillResult:
    """Write ``symbol``'s history in ``[start_us, end_us)``, one transaction per chunk.

    Safe to interrupt and re-run: committed chunks are skipped by the
    primary key. ``progress(n)`` is called after each chunk with its size.
    Raises ``psycopg2.Error`` and whatever the source raises.
    """
    result = BackfillResult(symbol, source.name)
    last: tuple[int, int] | None = None
    for ticks in source.ticks(symbol, start_us, end_us, chunk=chunk):
        rows, last = rows_of(ticks, last)
        result.inserted += sink.write(rows)
        result.ticks += len(rows)
        if progress is not None:
            progress(len(rows))
    return result
