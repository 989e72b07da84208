"""Repair planning: which REST pages fetch a gap's trades, and what a
sequence of answers covered. Pure code, no I/O (the feed's repairer sends
the requests and feeds the answers back).

* Binance pages **forward** by aggregate trade id: ``GET /api/v3/aggTrades?
  fromId=<first>&limit=1000`` answers the ids from ``first`` up, oldest
  first; the next page starts after the last id received. A page shorter
  than the limit means the venue has nothing newer (yet).
* Coinbase pages **backward** by trade id: ``GET /products/{id}/trades?
  after=<until>&limit=1000`` answers the ids below ``until``, newest first;
  the next page is ``after=<lowest id received>``. An open-ended gap starts
  from the newest trades (no ``after``).

Either way a plan stops when the gap is covered, when the venue has
nothing more, or at ``max_trades`` (the repair's share of the request
budget: beyond, the rest of the gap is reported lost with reason
``budget``). :meth:`result` states the id range answered for completely, so
the sequencer can tell ids the venue does not serve from ids never asked.
"""

from __future__ import annotations

from typing import Protocol

from pricepipe.upstream import Request
from pricepipe.venues import binance, coinbase
from pricepipe.venues.messages import VenueTrade

from .sequencer import Gap, RepairResult


class RepairPlan(Protocol):
    def next_request(self) -> Request | None:
        """The next page to fetch, or None when done."""
        ...

    def add(self, page: list[VenueTrade]) -> None:
        """An answer to the last request."""
        ...

    def result(self, reason: str | None = None) -> RepairResult[VenueTrade]:
        """What was fetched; ``reason``: why it stopped early (``budget``, ``error``)."""
        ...


class ForwardPlan:
    """Binance: pages from ``gap.first_id`` up (see the module docstring)."""

    def __init__(self, upstream: str, gap: Gap, *, max_trades: int,
                 limit: int = binance.MAX_LIMIT) -> None:
        self.upstream = upstream
        self.gap = gap
        self.max_trades = max_trades
        self.limit = limit
        self.cursor = gap.first_id
        self.trades: list[VenueTrade] = []
        self.exhausted = False  # the venue had nothing more

    def next_request(self) -> Request | None:
        if self.exhausted or self._covered() or len(self.trades) >= self.max_trades:
            return None
        return binance.agg_trades_request(self.upstream, from_id=self.cursor, limit=self.limit)

    def _covered(self) -> bool:
        return self.gap.until_id is not None and self.cursor >= self.gap.until_id

    def add(self, page: list[VenueTrade]) -> None:
        fresh = [t for t in page if t.trade_id >= self.cursor]
        if not fresh:
            self.exhausted = True
            return
        self.trades.extend(fresh)
        self.cursor = max(t.trade_id for t in fresh) + 1
        if len(page) < self.limit:
            self.exhausted = True

    def result(self, reason: str | None = None) -> RepairResult[VenueTrade]:
        hi = self.cursor
        if self.exhausted and self.gap.until_id is not None:
            # The venue answered with everything it has from first_id on.
            hi = max(hi, self.gap.until_id)
        complete = self.exhausted or self._covered()
        if reason is None and not complete:
            reason = "budget"  # stopped at max_trades
        return RepairResult(self.gap, [(t.trade_id, t) for t in self.trades],
                            self.gap.first_id, hi, None if complete else reason)


class BackwardPlan:
    """Coinbase: pages from ``gap.until_id`` (or the newest trade) down."""

    def __init__(self, upstream: str, gap: Gap, *, max_trades: int,
                 limit: int = coinbase.MAX_TRADES_LIMIT) -> None:
        self.upstream = upstream
        self.gap = gap
        self.max_trades = max_trades
        self.limit = limit
        self.after = gap.until_id
        self.top = gap.until_id
        self.trades: list[VenueTrade] = []
        self.exhausted = False
        self._started = False

    def next_request(self) -> Request | None:
        if self.exhausted or self._covered() or len(self.trades) >= self.max_trades:
            return None
        self._started = True
        return coinbase.trades_request(self.upstream, after=self.after, limit=self.limit)

    def _covered(self) -> bool:
        return self.after is not None and self.after <= self.gap.first_id

    def add(self, page: list[VenueTrade]) -> None:
        fresh = [t for t in page if self.after is None or t.trade_id < self.after]
        if not fresh:
            self.exhausted = True
            if self.top is None:
                self.top = self.gap.first_id  # the venue has nothing at all
            return
        self.trades.extend(fresh)
        if self.top is None:
            self.top = max(t.trade_id for t in fresh) + 1
        self.after = min(t.trade_id for t in fresh)
        if len(page) < self.limit:
            self.exhausted = True

    def result(self, reason: str | None = None) -> RepairResult[VenueTrade]:
        top = self.top if self.top is not None else self.gap.first_id
        complete = self.exhausted or self._covered()
        lo = self.gap.first_id if complete else (self.after if self.after is not None else top)
        if reason is None and not complete:
            reason = "budget"
        return RepairResult(self.gap, [(t.trade_id, t) for t in self.trades],
                            min(lo, top), top, None if complete else reason)
