"""GBM generator, catalog parsing and pacing: pure code, no servers."""

from __future__ import annotations

import numpy as np
import pytest
from pricepipe.publisher.catalog import (
    DEMO_SYMBOLS,
    SymbolSpec,
    apply_params,
    demo_symbols,
    parse_correlation,
    parse_symbols,
)
from pricepipe.publisher.generator import GbmGenerator
from pricepipe.publisher.pacer import Pacer

from pricepipe.exceptions import ConfigError

SPECS = [SymbolSpec("AAA", 100.0, 0.1, 0.3), SymbolSpec("BBB", 50.0, -0.05, 0.2)]


def test_same_seed_same_prices() -> None:
    a = GbmGenerator(SPECS, seed=42, dt_years=1 / 252)
    b = GbmGenerator(SPECS, seed=42, dt_years=1 / 252)
    c = GbmGenerator(SPECS, seed=43, dt_years=1 / 252)
    pa, pb, pc = a.step(100), b.step(100), c.step(100)
    assert np.array_equal(pa, pb)
    assert not np.array_equal(pa, pc)
    assert pa.shape == (100, 2)
    # Continuing from the state: the next step starts from the last price.
    assert np.array_equal(a.step(5), b.step(5))


def test_split_calls_draw_the_same_path() -> None:
    whole = GbmGenerator(SPECS, seed=7, dt_years=1e-3).step(50)
    split = GbmGenerator(SPECS, seed=7, dt_years=1e-3)
    parts = np.vstack([split.step(20), split.step(30)])
    np.testing.assert_allclose(parts, whole, rtol=1e-12)


def test_ticks_carry_symbols_times_and_prices_in_order() -> None:
    gen = GbmGenerator(SPECS, seed=1)
    twin = GbmGenerator(SPECS, seed=1)
    ts = [1_700_000_000_000_000, 1_700_000_000_000_001]
    ticks = gen.ticks(ts)
    prices = twin.step(2)
    assert [t.symbol for t in ticks] == ["AAA", "BBB", "AAA", "BBB"]
    assert [t.ts_us for t in ticks] == [ts[0], ts[0], ts[1], ts[1]]
    assert [t.price for t in ticks] == prices.ravel().tolist()
    assert {t.source for t in ticks} == {"gbm"}


def test_log_returns_match_gbm_statistics() -> None:
    mu, sigma, dt = 0.1, 0.4, 1 / 252
    gen = GbmGenerator([SymbolSpec("X", 100.0, mu, sigma)], seed=2024, dt_years=dt)
    prices = np.concatenate([[100.0], gen.step(200_000)[:, 0]])
    log_returns = np.diff(np.log(prices))
    expected_mean = (mu - sigma**2 / 2) * dt
    expected_var = sigma**2 * dt
    # Standard error of the mean is sigma*sqrt(dt/N) ~ 5.6e-5; allow 5 of them.
    assert abs(log_returns.mean() - expected_mean) < 5 * sigma * np.sqrt(dt / log_returns.size)
    assert log_returns.var() == pytest.approx(expected_var, rel=0.02)


def test_correlated_symbols() -> None:
    gen = GbmGenerator(SPECS, seed=3, dt_years=1 / 252, correlation=[[1, 0.8], [0.8, 1]])
    prices = gen.step(20_000)
    returns = np.diff(np.log(prices), axis=0)
    assert np.corrcoef(returns.T)[0, 1] == pytest.approx(0.8, abs=0.03)
    independent = GbmGenerator(SPECS, seed=3, dt_years=1 / 252).step(20_000)
    assert abs(np.corrcoef(np.diff(np.log(independent), axis=0).T)[0, 1]) < 0.05


def test_invalid_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        GbmGenerator([SymbolSpec("X", -1.0)])
    with pytest.raises(ValueError):
        GbmGenerator(SPECS, correlation=[[1, 2], [2, 1]])
    with pytest.raises(ValueError):
        GbmGenerator(SPECS, dt_years=0)


def test_parse_symbols() -> None:
    assert [s.symbol for s in parse_symbols("3")] == ["AAPL", "MSFT", "GOOG"]
    assert parse_symbols("10") == list(DEMO_SYMBOLS)
    assert [s.symbol for s in demo_symbols(12)][-2:] == ["SYM010", "SYM011"]
    specs = parse_symbols(" aapl, BTC-USD=BTCUSDT ,XYZ")
    assert [s.symbol for s in specs] == ["AAPL", "BTC-USD", "XYZ"]
    assert specs[0].start_price == 190.0  # demo parameters kept
    assert specs[1].upstream_name == "BTCUSDT"
    assert specs[2].upstream_name == "XYZ"
    for bad in ("", "0", "a b", "AAPL,AAPL", "X{1}", "A="):
        with pytest.raises(ConfigError):
            parse_symbols(bad)


def test_apply_params() -> None:
    specs = apply_params(parse_symbols("AAPL,XYZ"), ["AAPL:200:0.01:0.3", "XYZ:5"])
    assert (specs[0].start_price, specs[0].mu, specs[0].sigma) == (200.0, 0.01, 0.3)
    assert (specs[1].start_price, specs[1].mu, specs[1].sigma) == (5.0, 0.05, 0.2)
    for bad in ("MSFT:1", "AAPL", "AAPL:x", "AAPL:-5", "AAPL:1:0:-1", "AAPL:1:2:3:4"):
        with pytest.raises(ConfigError):
            apply_params(parse_symbols("AAPL"), [bad])


def test_parse_correlation() -> None:
    assert parse_correlation("0.5", 2) == [[1.0, 0.5], [0.5, 1.0]]
    assert parse_correlation("1,0.3;0.3,1", 2) == [[1.0, 0.3], [0.3, 1.0]]
    for bad in ("2", "x", "1,0.3;0.3", "1,0;0,1;1,1"):
        with pytest.raises(ConfigError):
            parse_correlation(bad, 2)


def test_pacer_keeps_the_rate_without_drift() -> None:
    pacer = Pacer(10.0, 100.0)
    assert pacer.due(100.0) == [100.0]
    assert pacer.due(100.05) == []
    assert pacer.next_due_s() == pytest.approx(100.1)
    # A late look-up returns every period due, at its own scheduled time.
    assert pacer.due(100.35) == pytest.approx([100.1, 100.2, 100.3])
    # Over 100 s of checks at irregular instants, exactly 10 per second.
    total = 4
    now = 100.35
    for step in range(1000):
        now += 0.07 + 0.06 * (step % 3)
        total += len(pacer.due(now))
    assert total == int((now - 100.0) * 10) + 1
    assert pacer.skipped == 0


def test_pacer_skips_when_far_behind() -> None:
    pacer = Pacer(10.0, 0.0, max_lag_s=1.0, max_batch=5)
    pacer.due(0.0)
    assert len(pacer.due(0.45)) == 4
    late = pacer.due(60.0)  # suspended for a minute
    assert late == [60.0]
    assert pacer.skipped == 595
    assert len(pacer.due(60.95)) == 5  # max_batch caps one batch
    assert len(pacer.due(60.95)) == 4
