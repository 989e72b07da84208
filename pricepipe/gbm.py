"""Geometric Brownian motion, vectorised with numpy. Pure maths, no I/O.

For a price S with drift ``mu`` and volatility ``sigma`` (both per unit of
time), the exact discretisation over a step ``dt`` is

    S[t+dt] = S[t] * exp((mu - sigma**2 / 2) * dt + sigma * sqrt(dt) * Z),  Z ~ N(0, 1)

(the seed price service's ``/gbm?periods&startPrice&mu&sigma&delta``).
Same seed, same path: every function takes a ``numpy.random.Generator``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def gbm_path(
    start_price: float, mu: float, sigma: float, dt: float, periods: int,
    rng: np.random.Generator,
) -> FloatArray:
    """``periods + 1`` prices starting at ``start_price`` (included)."""
    return gbm_paths(np.array([start_price]), np.array([mu]), np.array([sigma]), dt, periods,
                     rng)[:, 0]


def gbm_paths(
    start_prices: FloatArray, mu: FloatArray, sigma: FloatArray, dt: float, periods: int,
    rng: np.random.Generator, *, correlation: FloatArray | None = None,
) -> FloatArray:
    """Paths of several symbols at once: shape ``(periods + 1, n_symbols)``.

    ``correlation`` (n x n, symmetric positive semi-definite, unit diagonal)
    correlates the symbols' shocks through its Cholesky factor.
    Raises ``ValueError`` on invalid parameters.
    """
    start = np.asarray(start_prices, dtype=np.float64)
    mu = np.broadcast_to(np.asarray(mu, dtype=np.float64), start.shape)
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), start.shape)
    if periods < 0:
        raise ValueError("periods must be >= 0")
    if not dt > 0:
        raise ValueError("dt must be > 0")
    if np.any(~np.isfinite(start)) or np.any(start <= 0):
        raise ValueError("start prices must be finite and > 0")
    if np.any(sigma < 0) or not np.all(np.isfinite(sigma)) or not np.all(np.isfinite(mu)):
        raise ValueError("sigma must be >= 0 and mu, sigma finite")
    shocks = rng.standard_normal((periods, start.size))
    if correlation is not None:
        shocks = shocks @ cholesky_factor(correlation, start.size).T
    steps = (mu - 0.5 * sigma**2) * dt + sigma * np.sqrt(dt) * shocks
    log_paths = np.vstack([np.zeros((1, start.size)), np.cumsum(steps, axis=0)])
    return start * np.exp(log_paths)


def cholesky_factor(correlation: FloatArray, n: int) -> FloatArray:
    """Lower-triangular L with L @ L.T == correlation; raises ``ValueError``
    unless it is an n x n correlation matrix."""
    corr = np.asarray(correlation, dtype=np.float64)
    if corr.shape != (n, n):
        raise ValueError(f"correlation must be {n}x{n}, not {corr.shape}")
    if not np.allclose(corr, corr.T) or not np.allclose(np.diag(corr), 1.0):
        raise ValueError("correlation must be symmetric with a unit diagonal")
    try:
        factor = np.asarray(np.linalg.cholesky(corr), dtype=np.float64)
        return factor
    except np.linalg.LinAlgError as exc:
        raise ValueError("correlation matrix is not positive definite") from exc
