"""The GBM generator: simulated prices for a set of symbols, vectorised with
numpy through :func:`pricepipe.gbm.gbm_paths`. Pure code, no I/O.

Each period advances every symbol by one step of ``dt_years`` of simulated
time. The same seed, specs and sequence of :meth:`GbmGenerator.step` calls
give the same prices (the random shocks are the same however the periods are
split into calls; the prices then agree up to float rounding).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pricepipe.gbm import FloatArray, cholesky_factor, gbm_paths
from pricepipe.tick import Tick

from .catalog import SymbolSpec

#: Default time step: one trading minute (252 days of 6.5 hours) per tick,
#: so that a demo at a few ticks per second moves visibly.
TRADING_MINUTE_YEARS = 1.0 / (252 * 390)


class GbmGenerator:
    """Stateful simulator of correlated GBM prices.

    ``correlation`` is an n x n correlation matrix over ``specs`` (in order).
    Raises ``ValueError`` on invalid parameters.
    """

    def __init__(
        self, specs: Sequence[SymbolSpec], *, dt_years: float = TRADING_MINUTE_YEARS,
        seed: int | None = None, correlation: Sequence[Sequence[float]] | None = None,
        source: str = "gbm",
    ) -> None:
        if not specs:
            raise ValueError("at least one symbol is needed")
        self.specs = list(specs)
        self.symbols = [spec.symbol for spec in self.specs]
        self.source = source
        self.dt_years = dt_years
        self.prices: FloatArray = np.array([s.start_price for s in self.specs], dtype=np.float64)
        self.mu: FloatArray = np.array([s.mu for s in self.specs], dtype=np.float64)
        self.sigma: FloatArray = np.array([s.sigma for s in self.specs], dtype=np.float64)
        self.correlation: FloatArray | None = None
        if correlation is not None:
            self.correlation = np.asarray(correlation, dtype=np.float64)
            cholesky_factor(self.correlation, len(self.specs))  # validate now, not mid-run
        self.rng = np.random.default_rng(seed)
        # Validates prices, mu, sigma and dt once, up front.
        gbm_paths(self.prices, self.mu, self.sigma, dt_years, 0, np.random.default_rng(0))

    def step(self, periods: int) -> FloatArray:
        """The next ``periods`` prices of every symbol, shape ``(periods, n)``."""
        if periods <= 0:
            return np.empty((0, len(self.specs)))
        paths = gbm_paths(self.prices, self.mu, self.sigma, self.dt_years, periods, self.rng,
                          correlation=self.correlation)[1:]
        self.prices = paths[-1].copy()
        return paths

    def ticks(self, ts_us: Sequence[int]) -> list[Tick]:
        """One period per event time in ``ts_us``; every symbol once per period,
        in spec order."""
        prices = self.step(len(ts_us)).tolist()
        source = self.source
        symbols = self.symbols
        return [
            Tick(symbol, ts, price, None, source)
            for ts, row in zip(ts_us, prices, strict=True)
            for symbol, price in zip(symbols, row, strict=True)
        ]
