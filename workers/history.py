"""Sources of historical trades for backfills.

:class:`HistorySource` is the protocol a backfill reads from: an adapter to
an upstream provider's history endpoint implements it (the publisher's
provider adapters can be wrapped by a deployment without this package
importing them). The built-in :class:`GBMHistory` simulates history with
geometric Brownian motion, deterministically: the same symbol, range,
interval and seed always give the same trades, with the same trade ids, so
re-running a backfill writes nothing new.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from pricepipe.events import Side, Trade

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
