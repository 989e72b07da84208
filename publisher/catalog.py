"""The symbol catalog: demo symbols and the parsing of ``--symbols``,
``--params`` and ``--correlation``. Pure code, no I/O.

``mu`` and ``sigma`` are annual drift and volatility (``0.08`` = 8 % a year).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from pricepipe.events import validate_symbol
from pricepipe.exceptions import ConfigError
from pricepipe.venues import resolve


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """One symbol to publish: its simulation parameters and, for pollers,
    the name the upstream knows it by."""

    symbol: str
    start_price: float = 100.0
    mu: float = 0.05
    sigma: float = 0.2
    upstream: str | None = None

    @property
    def upstream_name(self) -> str:
        return self.upstream or self.symbol


#: Well-known tickers with plausible start prices, drifts and volatilities.
#: ``--symbols N`` takes the first N (then ``SYM010``, ``SYM011``, ...).
DEMO_SYMBOLS: tuple[SymbolSpec, ...] = (
    SymbolSpec("AAPL", 190.0, 0.08, 0.25),
    SymbolSpec("MSFT", 420.0, 0.08, 0.22),
    SymbolSpec("GOOG", 170.0, 0.08, 0.28),
    SymbolSpec("AMZN", 185.0, 0.08, 0.30),
    SymbolSpec("TSLA", 250.0, 0.05, 0.55),
    SymbolSpec("NVDA", 120.0, 0.12, 0.50),
    SymbolSpec("META", 500.0, 0.10, 0.35),
    SymbolSpec("BTC-USD", 65000.0, 0.10, 0.60),
    SymbolSpec("ETH-USD", 3200.0, 0.10, 0.70),
    SymbolSpec("SPY", 550.0, 0.06, 0.15),
)
_DEMO_BY_NAME = {spec.symbol: spec for spec in DEMO_SYMBOLS}


def demo_symbols(count: int) -> list[SymbolSpec]:
    """The first ``count`` demo symbols; beyond the list, ``SYM<n>`` at 100."""
    if count < 1:
        raise ConfigError("--symbols must name at least one symbol")
    specs = list(DEMO_SYMBOLS[:count])
    specs += [SymbolSpec(f"SYM{i:03d}") for i in range(len(DEMO_SYMBOLS), count)]
    return specs


def parse_symbols(text: str, *, venue: str | None = None) -> list[SymbolSpec]:
    """``"10"`` (demo symbols) or ``"AAPL,MSFT,BTC-USD=BTCUSDT"``.

    ``LOCAL=UPSTREAM`` publishes under ``LOCAL`` what the upstream calls
    ``UPSTREAM``. Known demo names keep their demo parameters. With a
    ``venue`` (a source that reads one), a plain name is venue-qualified:
    ``BTCUSDT`` is published as ``BINANCE:BTCUSDT`` (see
    :func:`pricepipe.venues.resolve`). Raises :exc:`ConfigError` for an
    empty list, a duplicate or an invalid symbol.
    """
    text = text.strip()
    if text.isdigit():
        if venue is not None:
            raise ConfigError(f"--symbols: name the {venue} symbols (a number picks demo ones)")
        return demo_symbols(int(text))
    specs: list[SymbolSpec] = []
    seen: set[str] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if venue is not None:
            try:
                local, upstream = resolve(venue, part)
            except ConfigError as exc:
                raise ConfigError(f"--symbols: {exc}") from exc
            if local in seen:
                raise ConfigError(f"--symbols: {local} given twice")
            seen.add(local)
            specs.append(SymbolSpec(local, upstream=upstream))
            continue
        local, sep, upstream = part.partition("=")
        local = local.strip().upper()
        try:
            validate_symbol(local)
        except ValueError as exc:
            raise ConfigError(f"--symbols: {exc}") from exc
        if local in seen:
            raise ConfigError(f"--symbols: {local} given twice")
        seen.add(local)
        spec = _DEMO_BY_NAME.get(local, SymbolSpec(local))
        if sep:
            if not upstream.strip():
                raise ConfigError(f"--symbols: empty upstream name for {local}")
            spec = replace(spec, upstream=upstream.strip())
        specs.append(spec)
    if not specs:
        raise ConfigError("--symbols must name at least one symbol")
    return specs


def apply_params(specs: Sequence[SymbolSpec], params: Sequence[str]) -> list[SymbolSpec]:
    """Override GBM parameters: each item ``SYMBOL:price[:mu[:sigma]]``,
    several items may also be joined by commas.

    Raises :exc:`ConfigError` for a symbol not in ``specs`` or a bad number.
    """
    by_name = {spec.symbol: spec for spec in specs}
    for item in (p.strip() for group in params for p in group.split(",")):
        if not item:
            continue
        name, *numbers = item.split(":")
        name = name.strip().upper()
        if name not in by_name:
            raise ConfigError(f"--params: {name} is not among the published symbols")
        if not 1 <= len(numbers) <= 3:
            raise ConfigError(f"--params: want SYMBOL:price[:mu[:sigma]], not {item!r}")
        try:
            values = [float(n) for n in numbers]
        except ValueError as exc:
            raise ConfigError(f"--params: not a number in {item!r}") from exc
        spec = by_name[name]
        price = values[0]
        mu = values[1] if len(values) > 1 else spec.mu
        sigma = values[2] if len(values) > 2 else spec.sigma
        if not (price > 0 and price < float("inf")) or not sigma >= 0:
            raise ConfigError(f"--params: want price > 0 and sigma >= 0 in {item!r}")
        by_name[name] = replace(spec, start_price=price, mu=mu, sigma=sigma)
    return [by_name[spec.symbol] for spec in specs]


def parse_correlation(text: str, n: int) -> list[list[float]]:
    """An n x n correlation matrix from ``"0.6"`` (every pair 0.6) or rows
    separated by ``;`` with values separated by ``,`` or spaces.

    Only the shape is checked here; :func:`pricepipe.gbm.cholesky_factor`
    checks symmetry and definiteness. Raises :exc:`ConfigError`.
    """
    text = text.strip()
    try:
        if ";" not in text and "," not in text and " " not in text:
            rho = float(text)
            if not -1.0 <= rho <= 1.0:
                raise ConfigError(f"--correlation: {rho} is outside -1..1")
            return [[1.0 if i == j else rho for j in range(n)] for i in range(n)]
        rows = [[float(v) for v in row.replace(",", " ").split()]
                for row in text.split(";") if row.strip()]
    except ValueError as exc:
        raise ConfigError(f"--correlation: not a number in {text!r}") from exc
    if len(rows) != n or any(len(row) != n for row in rows):
        raise ConfigError(f"--correlation: want a {n}x{n} matrix for {n} symbols")
    return rows
