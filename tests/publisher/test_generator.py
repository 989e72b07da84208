"""The GBM market generator, catalog parsing and pacing: pure code, no servers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pricepipe.events import Quote, Side, Trade
from pricepipe.exceptions import ConfigError
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
from pricepipe.publisher.settings import PublisherSettings

SPECS = [SymbolSpec("AAA", 100.0, 0.1, 0.3), SymbolSpec("BBB", 50.0, -0.05, 0.2)]


TS = [1_700_000_000_000_000 + i for i in range(400)]


def test_same_seed_same_events() -> None:
    a = GbmGenerator(SPECS, seed=42, dt_years=1 / 252)
    b = GbmGenerator(SPECS, seed=42, dt_years=1 / 252)
    c = GbmGenerator(SPECS, seed=43, dt_years=1 / 252)
    ea, eb, ec = a.events(TS), b.events(TS), c.events(TS)
    assert ea == eb
    assert ea != ec
    assert len(ea) == 2 * len(TS)
    assert {type(e) for e in ea} == {Trade, Quote}
    # Continuing from the state: the next events go on from the last ones.
    assert a.events(TS[:5]) == b.events(TS[:5])


def test_split_calls_draw_the_same_market() -> None:
    whole = GbmGenerator(SPECS, seed=7, dt_years=1e-3).draw(50)
    split = GbmGenerator(SPECS, seed=7, dt_years=1e-3)
    first, second = split.draw(20), split.draw(30)
    for name in ("mid", "bid", "bid_size", "ask", "ask_size", "trade_size"):
        parts = np.vstack([getattr(first, name), getattr(second, name)])
        np.testing.assert_allclose(parts, getattr(whole, name), rtol=1e-12, err_msg=name)
    for name in ("is_trade", "buy"):
        parts = np.vstack([getattr(first, name), getattr(second, name)])
        assert np.array_equal(parts, getattr(whole, name)), name


def test_draw_is_vectorised_over_periods_and_symbols() -> None:
    gen = GbmGenerator(SPECS, seed=1)
    step = gen.draw(7)
    for name in ("mid", "is_trade", "bid", "bid_size", "ask", "ask_size", "buy", "trade_size",
                 "trade_price"):
        assert getattr(step, name).shape == (7, 2), name
    assert step.is_trade.dtype == np.bool_ and step.mid.dtype == np.float64
    assert gen.draw(0).mid.shape == (0, 2)
    assert gen.events([]) == []


def test_quotes_and_trades_are_consistent() -> None:
    gen = GbmGenerator(SPECS, seed=11, spread_bps=4.0, quotes_per_trade=2.0)
    events = [e for part in range(5) for e in gen.events(TS[part * 80:(part + 1) * 80])]
    last_quote: dict[str, Quote] = {}
    trades = 0
    for event in events:
        if isinstance(event, Quote):
            assert event.bid is not None and event.ask is not None
            assert event.bid < event.ask
            assert event.spread / event.mid == pytest.approx(4.0 / 10_000)  # type: ignore[operator]
            assert event.bid_size is not None and event.bid_size > 0
            assert event.ask_size is not None and event.ask_size > 0
            last_quote[event.symbol] = event
            continue
        assert isinstance(event, Trade)
        trades += 1
        # A trade needs a book: every symbol quotes first.
        book = last_quote[event.symbol]
        # Buy at the ask, sell at the bid: exactly the last quote's price.
        assert event.price == (book.ask if event.side is Side.BUY else book.bid)
        assert event.side in (Side.BUY, Side.SELL)
        assert event.size is not None and event.size > 0
        assert event.source == "gbm" and event.trade_id is None
    assert 0 < trades < len(events)
    sides = [e.side for e in events if isinstance(e, Trade)]
    assert Side.BUY in sides and Side.SELL in sides


def test_mix_and_sizes_follow_the_settings() -> None:
    n_periods = 30_000
    gen = GbmGenerator(SPECS, seed=5, quotes_per_trade=5.0, trade_notional=2_000.0,
                       quote_notional=8_000.0)
    step = gen.draw(n_periods)
    share = step.is_trade.mean()
    # Binomial standard error ~ 0.0015 for 60,000 events; allow 5 of them.
    assert share == pytest.approx(1 / 6, abs=0.008)
    trade_value = (step.trade_price * step.trade_size)[step.is_trade]
    assert trade_value.mean() == pytest.approx(2_000.0, rel=0.05)
    quote_value = (step.bid * step.bid_size)[~step.is_trade]
    assert quote_value.mean() == pytest.approx(8_000.0, rel=0.05)
    assert (step.trade_size > 0).all() and (step.bid_size > 0).all()
    # Trades only: every event trades, at the bid or the ask around its mid.
    only_trades = GbmGenerator(SPECS, seed=5, quotes_per_trade=0.0, spread_bps=2.0).draw(100)
    assert only_trades.is_trade.all()
    np.testing.assert_allclose(only_trades.trade_price / only_trades.mid,
                               np.where(only_trades.buy, 1.0001, 0.9999))
    events = GbmGenerator(SPECS, seed=5, quotes_per_trade=0.0).events(TS[:10])
    assert len(events) == 20 and all(isinstance(e, Trade) for e in events)


def test_mid_log_returns_match_gbm_statistics() -> None:
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
    mids = gen.draw(20_000).mid
    returns = np.diff(np.log(mids), axis=0)
    assert np.corrcoef(returns.T)[0, 1] == pytest.approx(0.8, abs=0.03)
    independent = GbmGenerator(SPECS, seed=3, dt_years=1 / 252).step(20_000)
    assert abs(np.corrcoef(np.diff(np.log(independent), axis=0).T)[0, 1]) < 0.05


@pytest.mark.parametrize("kwargs", [
    {"specs": [SymbolSpec("X", -1.0)]},
    {"specs": []},
    {"correlation": [[1, 2], [2, 1]]},
    {"dt_years": 0},
    {"spread_bps": 0.0},
    {"spread_bps": 20_000.0},
    {"quotes_per_trade": -1.0},
    {"quotes_per_trade": float("inf")},
    {"trade_notional": 0.0},
    {"quote_notional": float("nan")},
])
def test_invalid_parameters_are_refused(kwargs: dict[str, Any]) -> None:
    specs = kwargs.pop("specs", SPECS)
    with pytest.raises(ValueError):
        GbmGenerator(specs, **kwargs)


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


def test_gbm_settings_are_read_and_checked() -> None:
    settings = PublisherSettings.from_env({"PRICEPIPE_PUBLISHER_SPREAD_BPS": "3.5",
                                           "PRICEPIPE_PUBLISHER_QUOTES_PER_TRADE": "9"})
    assert (settings.spread_bps, settings.quotes_per_trade) == (3.5, 9.0)
    assert PublisherSettings().quotes_per_trade == 5.0  # the realistic default mix
    for bad in ({"spread_bps": 0.0}, {"quotes_per_trade": -1.0}, {"trade_notional": 0.0},
                {"quote_notional": float("inf")}):
        with pytest.raises(ConfigError):
            PublisherSettings(**bad)  # type: ignore[arg-type]
