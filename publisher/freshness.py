"""Freshness: tells a genuine update from the same trade or quote polled
again, per (symbol, channel). Pure code.

* A **trade** with a numeric trade id (Binance, Coinbase: ids count up per
  symbol) is new when its id is above the highest one seen, so an old trade
  answered again (a lagging cache, a list that overlaps the last poll) is
  never published twice. A trade with another id is new when the id differs
  from the last one; without an id, when its upstream time, price or size
  differ (price and size only, when the upstream gives no time).
* A **quote** is new when its book (prices and sizes, and the upstream time
  when there is one) differs from the last one.

Nothing is remembered until :meth:`Freshness.commit`: the poller commits
only what it published, so an update that failed to publish still counts as
new at the next poll.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TypeVar

from pricepipe.keys import Channel

from .providers.base import QuoteReport, Report, TradeReport

R = TypeVar("R", bound=TradeReport | QuoteReport)


def identity(report: Report) -> tuple[object, ...]:
    """What makes two reports of one symbol the same update."""
    if isinstance(report, TradeReport):
        if report.trade_id is not None:
            return ("id", report.trade_id)
        if report.ts_us is None:
            return ("p", report.price, report.size)
        return ("t", report.ts_us, report.price, report.size)
    return ("q", report.ts_us, report.bid, report.bid_size, report.ask, report.ask_size)


def numeric_id(report: Report) -> int | None:
    """The trade id as an integer, when it is one (decimal digits)."""
    if isinstance(report, TradeReport) and report.trade_id is not None \
            and report.trade_id.isdigit():
        return int(report.trade_id)
    return None


class Freshness:
    """The last update seen per (symbol, channel), and the highest numeric
    trade id per symbol; thread-safe."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, Channel], tuple[object, ...]] = {}
        self._high: dict[str, int] = {}
        self._lock = threading.Lock()

    def highest_trade_id(self, symbol: str) -> int | None:
        with self._lock:
            return self._high.get(symbol)

    def fresh(self, symbol: str, channel: Channel, reports: Sequence[R]) -> list[R]:
        """The new ones of ``reports`` (one answer's, in order), without
        remembering them. Repeats within the answer count once."""
        with self._lock:
            last = self._last.get((symbol, channel))
            high = self._high.get(symbol) if channel is Channel.TRADES else None
        out: list[R] = []
        for report in reports:
            ident = identity(report)
            number = numeric_id(report)
            if number is not None:
                if high is not None and number <= high:
                    continue
                high = number
            elif ident == last:
                continue
            out.append(report)
            last = ident
        return out

    def commit(self, symbol: str, channel: Channel, reports: Sequence[Report]) -> None:
        """Remember ``reports`` (published, in order) as seen."""
        if not reports:
            return
        numbers = [n for n in map(numeric_id, reports) if n is not None]
        with self._lock:
            self._last[(symbol, channel)] = identity(reports[-1])
            if numbers:
                self._high[symbol] = max(self._high.get(symbol, numbers[0]), *numbers)

    def seed(self, symbol: str, channel: Channel, report: Report) -> None:
        """Start from ``report`` (e.g. rebuilt from the stream's newest entry
        after a restart), as if it had been published."""
        self.commit(symbol, channel, [report])
