"""The GBM generator: a simulated market of trades and quotes for a set of
symbols, vectorised with numpy. Pure code, no I/O.

The model, per period (one event per symbol per period):

* **Mid price.** Every symbol's mid advances one step of ``dt_years`` of
  geometric Brownian motion (:func:`pricepipe.gbm.gbm_paths`), the symbols'
  shocks correlated by ``correlation``.
* **Event type.** Each symbol's event is a trade with probability
  ``1 / (1 + quotes_per_trade)``, else a quote; a symbol's first event is
  always a quote (a trade needs a book to trade against). With
  ``quotes_per_trade == 0`` every event is a trade, against the book of its
  own period's mid, which is never published.
* **Quote.** The book around the current mid: ``bid = mid * (1 - h)``,
  ``ask = mid * (1 + h)`` with ``h = spread_bps / 2 / 10_000``, so
  ``ask - bid = spread_bps`` basis points of the mid. Each side's size is
  ``quote_notional / mid`` units times a log-normal factor of mean 1.
* **Trade.** A marketable order against the symbol's last published quote:
  the aggressor buys at its ask or sells at its bid (even odds), for
  ``trade_notional / mid`` units times a log-normal factor of mean 1. So a
  trade's price always equals the bid or the ask of the quote before it in
  its symbol's stream (when there are quotes), and its side says which.

Determinism: the same seed, specs, settings and sequence of calls give the
same events, however the periods are split into calls (each random stream
-- shocks, event types, sides, sizes -- has its own generator and draws a
fixed amount per period; prices then agree up to float rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pricepipe.events import validate_source, validate_symbol
from pricepipe.gbm import FloatArray, cholesky_factor, gbm_paths

from .batch import EventBatch
from .catalog import SymbolSpec

BoolArray = npt.NDArray[np.bool_]

#: Default time step: one trading minute (252 days of 6.5 hours) per period,
#: so that a demo at a few events per second moves visibly.
TRADING_MINUTE_YEARS = 1.0 / (252 * 390)

#: Volatility of the log-normal size factors: the middle two thirds of the
#: sizes span a factor of e**2 (about 7), as order sizes do.
SIZE_SIGMA = 1.0

BPS = 10_000.0


@dataclass(frozen=True, slots=True)
class MarketStep:
    """Several periods of every symbol, arrays of shape ``(periods, n_symbols)``.

    For a quote cell, ``bid``/``ask`` and their sizes are the quote. For a
    trade cell they are the book it trades against (the symbol's last
    quote), ``buy`` says whether the aggressor bought (at the ask; else it
    sold at the bid) and ``trade_size`` is its size.
    """

    mid: FloatArray
    is_trade: BoolArray
    bid: FloatArray
    bid_size: FloatArray
    ask: FloatArray
    ask_size: FloatArray
    buy: BoolArray
    trade_size: FloatArray

    @property
    def trade_price(self) -> FloatArray:
        """The price of each trade cell (meaningless for quote cells)."""
        return np.where(self.buy, self.ask, self.bid)


def _lognormal_factor(rng: np.random.Generator, shape: tuple[int, ...]) -> FloatArray:
    """Factors of mean 1 (``exp(sigma Z - sigma^2 / 2)``), always > 0."""
    out: FloatArray = rng.lognormal(-SIZE_SIGMA**2 / 2, SIZE_SIGMA, shape)
    return out


class GbmGenerator:
    """Stateful simulator of correlated GBM trades and quotes.

    ``correlation`` is an n x n correlation matrix over ``specs`` (in order).
    Raises ``ValueError`` on invalid parameters.
    """

    def __init__(
        self, specs: Sequence[SymbolSpec], *, dt_years: float = TRADING_MINUTE_YEARS,
        seed: int | None = None, correlation: Sequence[Sequence[float]] | None = None,
        source: str = "gbm", spread_bps: float = 2.0, quotes_per_trade: float = 5.0,
        trade_notional: float = 10_000.0, quote_notional: float = 50_000.0,
    ) -> None:
        if not specs:
            raise ValueError("at least one symbol is needed")
        if not 0 < spread_bps < 2 * BPS:
            raise ValueError("spread_bps must be > 0 and < 20000 (the bid must stay positive)")
        if not 0 <= quotes_per_trade < float("inf"):
            raise ValueError("quotes_per_trade must be a finite number >= 0")
        if not (0 < trade_notional < float("inf") and 0 < quote_notional < float("inf")):
            raise ValueError("trade_notional and quote_notional must be finite and > 0")
        self.specs = list(specs)
        # Validated once here: the batches' events are encoded without being built.
        self.symbols = [validate_symbol(spec.symbol) for spec in self.specs]
        validate_source(source)
        n = len(self.specs)
        self.source = source
        self.dt_years = dt_years
        self.half_spread = spread_bps / 2 / BPS
        self.trade_probability = 1.0 / (1.0 + quotes_per_trade)
        self.trade_notional = trade_notional
        self.quote_notional = quote_notional
        self.prices: FloatArray = np.array([s.start_price for s in self.specs], dtype=np.float64)
        self.mu: FloatArray = np.array([s.mu for s in self.specs], dtype=np.float64)
        self.sigma: FloatArray = np.array([s.sigma for s in self.specs], dtype=np.float64)
        self.correlation: FloatArray | None = None
        if correlation is not None:
            self.correlation = np.asarray(correlation, dtype=np.float64)
            cholesky_factor(self.correlation, n)  # validate now, not mid-run
        # One generator per random stream (see the module docstring).
        streams = np.random.SeedSequence(seed).spawn(4)
        self.rng, self._mix_rng, self._side_rng, self._size_rng = (
            np.random.default_rng(s) for s in streams)
        # Validates prices, mu, sigma and dt once, up front.
        gbm_paths(self.prices, self.mu, self.sigma, dt_years, 0, np.random.default_rng(0))
        # The last quote of each symbol (NaN: none yet).
        nan = np.full(n, np.nan)
        self._book = [nan.copy(), nan.copy(), nan.copy(), nan.copy()]  # bid, bid_size, ask, ...

    def step(self, periods: int) -> FloatArray:
        """The next ``periods`` mid prices of every symbol, shape ``(periods, n)``."""
        if periods <= 0:
            return np.empty((0, len(self.specs)))
        paths = gbm_paths(self.prices, self.mu, self.sigma, self.dt_years, periods, self.rng,
                          correlation=self.correlation)[1:]
        self.prices = paths[-1].copy()
        return paths

    def draw(self, periods: int) -> MarketStep:
        """The next ``periods`` periods of every symbol (see :class:`MarketStep`)."""
        n = len(self.specs)
        mid = self.step(periods)
        shape = (max(periods, 0), n)
        is_trade = self._mix_rng.random(shape) < self.trade_probability
        buy = self._side_rng.random(shape) < 0.5
        # One draw per period and symbol, of both quote sides and the trade,
        # so that splitting the periods differently draws the same sizes.
        sizes = _lognormal_factor(self._size_rng, (*shape, 3))
        trade_size = self.trade_notional / mid * sizes[..., 2]
        if periods <= 0:
            return MarketStep(mid, is_trade, mid, mid, mid, mid, buy, trade_size)
        # The quote each cell would show, then, for trade cells, the latest
        # quote at or before it: forward fill along the periods, from the
        # book carried over from the previous call.
        fresh = [mid * (1 - self.half_spread), self.quote_notional / mid * sizes[..., 0],
                 mid * (1 + self.half_spread), self.quote_notional / mid * sizes[..., 1]]
        if self.trade_probability >= 1.0:
            # Trades only: each trades against the (unpublished) book of its mid.
            return MarketStep(mid, is_trade, fresh[0], fresh[1], fresh[2], fresh[3], buy,
                              trade_size)
        no_book = np.isnan(self._book[0])
        is_trade[0, no_book] = False  # a symbol's first event is a quote
        rows = np.arange(periods)[:, None]
        latest = np.maximum.accumulate(np.where(is_trade, -1, rows), axis=0)
        index = np.maximum(latest, 0)
        book = []
        for now, carried in zip(fresh, self._book, strict=True):
            filled = np.take_along_axis(now, index, axis=0)
            book.append(np.where(latest >= 0, filled, carried))
        self._book = [side[-1].copy() for side in book]
        bid, bid_size, ask, ask_size = book
        return MarketStep(mid, is_trade, bid, bid_size, ask, ask_size, buy, trade_size)

    def events(self, ts_us: Sequence[int]) -> EventBatch:
        """One period per event time in ``ts_us``: every symbol's event, in
        spec order, period after period, as a columnar :class:`EventBatch`
        (a ``Sequence`` of the events, which the streams encode without
        building them)."""
        m = self.draw(len(ts_us))
        return EventBatch(self.symbols, self.source, ts_us, is_trade=m.is_trade, buy=m.buy,
                          price=m.trade_price, size=m.trade_size, bid=m.bid,
                          bid_size=m.bid_size, ask=m.ask, ask_size=m.ask_size)
