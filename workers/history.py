"""Sources of historical trades for backfills.

:class:`HistorySource` is the protocol the simulated backfill reads from.
The built-in :class:`GBMHistory` simulates history with geometric Brownian
motion, deterministically: the same symbol, range, interval and seed always
give the same trades, with the same trade ids, so re-running a backfill
writes nothing new.

A venue's real history comes from :class:`BinanceHistory` and
:class:`CoinbaseHistory`: thin I/O over the core's venue parsers
(:mod:`pricepipe.venues`), its resilient HTTP client and request budget
(:mod:`pricepipe.upstream`, :mod:`pricepipe.budget`). Both page by trade id,
which is what makes a backfill resumable (see :mod:`.backfill`):

* Binance serves aggregate trades forward: ``aggTrades?startTime=`` (under
  an hour wide) finds the first id at a time, then ``fromId=`` pages of 1000
  go up. Its ids are the websocket feed's (``binance-ws``), so live data and
  backfills of a symbol never double.
* Coinbase serves trades backward: ``trades?after=<id>`` pages of 1000 go
  down from an id. The id at a time is found by bisection on trade ids
  (about 30 requests for a billion trades), then pages go down to the start.
* Both give one-minute candles (Binance ``klines``, Coinbase ``candles``)
  for the minutes whose trades are not served.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from pricepipe.budget import Budget
from pricepipe.clock import US_PER_MS
from pricepipe.events import US_PER_MINUTE, Side, Trade
from pricepipe.upstream import Request, Upstream
from pricepipe.venues import binance, coinbase
from pricepipe.venues.messages import Candle, VenueTrade

US_PER_S = 1_000_000
SECONDS_PER_YEAR = 365.25 * 86_400


class HistorySource(Protocol):
    """Trades of one symbol in ``[start_us, end_us)``, in time order, in chunks."""

    @property
    def name(self) -> str: ...

    def trades(self, symbol: str, start_us: int, end_us: int, *,
               chunk: int = 10_000) -> Iterator[list[Trade]]: ...

    def expected_count(self, symbol: str, start_us: int, end_us: int) -> int | None:
        """How many trades :meth:`trades` will yield, if known (for progress bars)."""
        ...


@dataclass(frozen=True)
class GBMHistory:
    """Simulated history: one trade every ``interval_s`` on a GBM path.

    Trades fall on the epoch-aligned grid of ``interval_s``; the path is
    seeded from ``seed``, the symbol and the first instant, and starts at
    ``start_price``. Sizes are whole units, the aggressor side random. Each
    trade's id is ``<source>-<seed>-<ts_us>``: the same instant of the same
    simulation is the same trade, whatever range it was backfilled in.
    """

    interval_s: float = 1.0
    mu: float = 0.05
    sigma: float = 0.3
    start_price: float = 100.0
    seed: int = 0
    source: str = "backfill-gbm"
    name: str = "gbm"

    def _grid(self, start_us: int, end_us: int) -> tuple[int, int, int]:
        step = max(int(self.interval_s * US_PER_S), 1)
        first = start_us + (-start_us) % step
        n = 0 if end_us <= first else (end_us - first + step - 1) // step
        return first, step, n

    def expected_count(self, symbol: str, start_us: int, end_us: int) -> int | None:
        return self._grid(start_us, end_us)[2]

    def trade_id(self, ts_us: int) -> str:
        return f"{self.source}-{self.seed}-{ts_us}"

    def trades(self, symbol: str, start_us: int, end_us: int, *,
               chunk: int = 10_000) -> Iterator[list[Trade]]:
        import numpy as np

        from pricepipe.gbm import gbm_path

        first, step, n = self._grid(start_us, end_us)
        if n == 0:
            return
        rng = np.random.default_rng([self.seed, zlib.crc32(symbol.encode()), first])
        dt = step / US_PER_S / SECONDS_PER_YEAR
        prices = gbm_path(self.start_price, self.mu, self.sigma, dt, n - 1, rng)
        sizes = rng.integers(1, 500, size=n)
        buys = rng.random(n) < 0.5
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            yield [Trade(symbol, first + i * step, float(prices[i]), float(sizes[i]),
                         self.source, self.trade_id(first + i * step),
                         Side.BUY if buys[i] else Side.SELL)
                   for i in range(lo, hi)]


# --- a venue's real history ------------------------------------------------------------------

US_PER_HOUR = 3_600_000_000


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


class VenueHistory:
    """A venue's trade history over REST, within its request budget.

    A backfill asks :meth:`bounds` for the trade ids of its time range, then
    :meth:`pages` for the trades of an id range, in the venue's direction
    (:attr:`forward`), each page sorted by id. Every method raises
    :exc:`~pricepipe.exceptions.UpstreamError` (and its
    :exc:`~pricepipe.exceptions.BadResponseError`) when the venue fails.
    """

    #: ``--source`` name, and the source written into every row.
    name: str = "venue"
    source: str = "backfill-venue"
    forward: bool = True

    def __init__(self, upstream: Upstream, budget: Budget, *,
                 wait: Callable[[float], bool] = _sleep) -> None:
        self.upstream = upstream
        self.budget = budget
        self.wait = wait
        #: REST requests sent so far
        self.requests = 0

    def _get(self, request: Request) -> Any:
        self.requests += 1
        return self.upstream.get_json(request, self.budget, wait=self.wait)

    def bounds(self, symbol: str, start_us: int, end_us: int) -> tuple[int, int]:
        """``(first, until)``: the trades of ``[start_us, end_us)`` the venue
        serves have ids ``first <= id < until`` (``first == until``: none)."""
        raise NotImplementedError

    def pages(self, symbol: str, first_id: int, until_id: int) -> Iterator[list[VenueTrade]]:
        """The served trades with ids in ``[first_id, until_id)``, a page at a time."""
        raise NotImplementedError

    def candles(self, symbol: str, start_us: int, end_us: int) -> Iterator[list[Candle]]:
        """The one-minute candles starting in ``[start_us, end_us)``, oldest first."""
        raise NotImplementedError

    def close(self) -> None:
        self.upstream.close()


class BinanceHistory(VenueHistory):
    """Binance spot aggregate trades and klines (see the module docstring)."""

    name = "binance"
    source = "backfill-binance"
    forward = True

    def _first_id_at(self, symbol: str, start_us: int, end_us: int) -> int | None:
        """The first aggregate trade id at or after ``start_us`` and before
        ``end_us``, hour by hour (the widest window the venue allows)."""
        t = start_us
        while t < end_us:
            until = min(t + US_PER_HOUR, end_us) - US_PER_MS
            page = binance.parse_agg_trades(symbol, self._get(binance.agg_trades_request(
                symbol, start_ms=t // US_PER_MS, end_ms=until // US_PER_MS, limit=1)))
            if page:
                return page[0].trade_id
            t += US_PER_HOUR
        return None

    def bounds(self, symbol: str, start_us: int, end_us: int) -> tuple[int, int]:
        newest = binance.parse_agg_trades(symbol, self._get(
            binance.agg_trades_request(symbol, limit=1)))
        if not newest:
            return 0, 0
        top = newest[-1]
        first = self._first_id_at(symbol, start_us, min(end_us, top.ts_us + 1))
        if first is None:
            return 0, 0
        until = None if top.ts_us < end_us else \
            self._first_id_at(symbol, end_us, top.ts_us + 1)
        return first, until if until is not None else top.trade_id + 1

    def pages(self, symbol: str, first_id: int, until_id: int) -> Iterator[list[VenueTrade]]:
        cursor = first_id
        while cursor < until_id:
            page = binance.parse_agg_trades(symbol, self._get(
                binance.agg_trades_request(symbol, from_id=cursor)))
            fresh = [t for t in page if cursor <= t.trade_id < until_id]
            if fresh:
                yield fresh
            if not page or len(page) < binance.MAX_LIMIT:
                return  # the venue has nothing newer
            cursor = page[-1].trade_id + 1

    def candles(self, symbol: str, start_us: int, end_us: int) -> Iterator[list[Candle]]:
        t = start_us - start_us % US_PER_MINUTE
        step = binance.MAX_LIMIT * US_PER_MINUTE
        while t < end_us:
            until = min(t + step, end_us) - US_PER_MS
            page = binance.parse_klines(symbol, self._get(binance.klines_request(
                symbol, t // US_PER_MS, until // US_PER_MS)))
            inside = [c for c in page if t <= c.bucket_us < end_us]
            if inside:
                yield inside
            t += step


class CoinbaseHistory(VenueHistory):
    """Coinbase Exchange trades and candles (see the module docstring)."""

    name = "coinbase"
    source = "backfill-coinbase"
    forward = False

    def _at_or_below(self, product: str, trade_id: int) -> VenueTrade | None:
        """The newest served trade with an id at most ``trade_id``, or None."""
        page = coinbase.parse_trades(product, self._get(
            coinbase.trades_request(product, after=trade_id + 1, limit=1)))
        return page[-1] if page else None

    def _first_id_at(self, product: str, ts_us: int, newest: VenueTrade) -> int:
        """The smallest trade id whose time is at or after ``ts_us`` (the
        newest id + 1 when there is none): bisection on ids. "The newest
        trade at or below id x is at or after ``ts_us``" only turns true as x
        grows (ids and times rise together); ids the venue no longer serves
        count as older than any time."""
        if newest.ts_us < ts_us:
            return newest.trade_id + 1
        lo, hi = 0, newest.trade_id
        while lo < hi:
            mid = (lo + hi) // 2
            trade = self._at_or_below(product, mid)
            if trade is not None and trade.ts_us >= ts_us:
                hi = trade.trade_id
            else:
                lo = mid + 1
        return lo

    def bounds(self, product: str, start_us: int, end_us: int) -> tuple[int, int]:
        page = coinbase.parse_trades(product, self._get(coinbase.trades_request(product,
                                                                                limit=1)))
        if not page:
            return 0, 0
        newest = page[-1]
        return (self._first_id_at(product, start_us, newest),
                self._first_id_at(product, end_us, newest))

    def pages(self, product: str, first_id: int, until_id: int) -> Iterator[list[VenueTrade]]:
        after = until_id
        while after > first_id:
            page = coinbase.parse_trades(product, self._get(coinbase.trades_request(
                product, after=after)))
            fresh = [t for t in page if first_id <= t.trade_id < after]
            if fresh:
                yield fresh
            if not page or len(page) < coinbase.MAX_TRADES_LIMIT:
                return  # the venue serves nothing older
            after = page[0].trade_id

    def candles(self, product: str, start_us: int, end_us: int) -> Iterator[list[Candle]]:
        t = start_us - start_us % US_PER_MINUTE
        step = coinbase.MAX_CANDLES * US_PER_MINUTE
        while t < end_us:
            # Both bounds inclusive: stop a minute short of the next window.
            last = max(min(t + step, end_us) - US_PER_MINUTE, t)
            page = coinbase.parse_candles(product, self._get(coinbase.candles_request(
                product, t, last)))
            inside = [c for c in page if t <= c.bucket_us <= last and c.bucket_us < end_us]
            if inside:
                yield inside
            t += step


VENUE_HISTORIES: dict[str, type[VenueHistory]] = {
    BinanceHistory.name: BinanceHistory,
    CoinbaseHistory.name: CoinbaseHistory,
}
