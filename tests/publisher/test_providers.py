"""Provider parsing on the documented response shapes (fixtures), and the
quote checks. Pure code, no servers."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from pricepipe.publisher.budget import Budget
from pricepipe.publisher.freshness import Freshness
from pricepipe.publisher.providers import make_provider
from pricepipe.publisher.providers.base import Quote, QuoteChecks, epoch_us, number, to_tick
from pricepipe.publisher.providers.binance import BinanceProvider, request_weight
from pricepipe.publisher.providers.coinbase import CoinbaseProvider
from pricepipe.publisher.providers.finnhub import FinnhubProvider
from pricepipe.publisher.providers.generic import GenericProvider, dig, parse_headers

from pricepipe.exceptions import BadResponseError, ConfigError

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> Any:
    return orjson.loads((FIXTURES / name).read_bytes())


def test_binance_batches_symbols_with_documented_weights() -> None:
    provider = BinanceProvider(base_url="http://x")
    symbols = [f"S{i}USDT" for i in range(45)]
    requests = provider.requests(symbols)
    assert [len(r.symbols) for r in requests] == [20, 20, 5]
    assert {r.weight for r in requests} == {2}
    assert requests[0].path == "/api/v3/ticker/24hr"
    assert dict(requests[2].params)["symbols"] == \
        '["S40USDT","S41USDT","S42USDT","S43USDT","S44USDT"]'
    assert (request_weight(1), request_weight(21), request_weight(101)) == (2, 40, 80)


def test_binance_parses_documented_answer() -> None:
    provider = BinanceProvider(base_url="http://x")
    (request,) = provider.requests(["BNBBTC", "BTCUSDT"])
    parsed = provider.parse(request, fixture("binance_ticker_24hr.json"))
    assert parsed.rejections == []
    assert parsed.quotes == [
        Quote("BNBBTC", 4.000002, 1499869899040_000, 200.0, "28460"),
        Quote("BTCUSDT", 26221.67, 1695772799999_000, 0.00043, "3220849281"),
    ]
    # A single-symbol answer is an object, not a list.
    (one,) = provider.requests(["BNBBTC"])
    assert len(provider.parse(one, fixture("binance_ticker_24hr.json")[0]).quotes) == 1
    with pytest.raises(BadResponseError) as err:
        provider.parse(request, fixture("binance_error.json"))
    assert err.value.reason == "upstream_error"


def test_binance_rejects_bad_items_but_keeps_good_ones() -> None:
    provider = BinanceProvider(base_url="http://x")
    (request,) = provider.requests(["BNBBTC", "BTCUSDT", "ETHUSDT"])
    good, other = fixture("binance_ticker_24hr.json")
    payload = [good, {**other, "lastPrice": "abc"}, {**other, "symbol": "XRPUSDT"},
               {"symbol": "ETHUSDT", "closeTime": 1}]
    parsed = provider.parse(request, payload)
    assert [q.upstream for q in parsed.quotes] == ["BNBBTC"]
    assert [r.reason for r in parsed.rejections] == ["not_numeric", "unexpected_symbol",
                                                     "missing_field"]
    with pytest.raises(BadResponseError):
        provider.parse(request, "not a list")


def test_coinbase_parses_documented_answer() -> None:
    provider = CoinbaseProvider(base_url="http://x")
    (request,) = provider.requests(["BTC-USD"])
    assert request.path == "/products/BTC-USD/ticker"
    parsed = provider.parse(request, fixture("coinbase_ticker.json"))
    assert parsed.quotes == [Quote("BTC-USD", 6268.48, 1584663777833897, 0.00698254, "86326522")]
    with pytest.raises(BadResponseError) as err:
        provider.parse(request, fixture("coinbase_error.json"))
    assert err.value.reason == "upstream_error"
    bad = provider.parse(request, {**fixture("coinbase_ticker.json"), "time": "yesterday"})
    assert [r.reason for r in bad.rejections] == ["bad_timestamp"]


def test_finnhub_parses_documented_answer_and_needs_a_key() -> None:
    with pytest.raises(ConfigError):
        FinnhubProvider(base_url="http://x")
    provider = FinnhubProvider(base_url="http://x", api_key="k")
    assert provider.headers()["X-Finnhub-Token"] == "k"
    (request,) = provider.requests(["AAPL"])
    assert (request.path, request.params) == ("/quote", (("symbol", "AAPL"),))
    parsed = provider.parse(request, fixture("finnhub_quote.json"))
    assert parsed.quotes == [Quote("AAPL", 261.74, 1582641000_000_000)]
    unknown = provider.parse(request, fixture("finnhub_quote_unknown_symbol.json"))
    (quote,) = unknown.quotes
    with pytest.raises(BadResponseError) as err:
        to_tick(quote, symbol="AAPL", source="finnhub", recv_ts_us=1582641000_000_000)
    assert err.value.reason == "non_positive"
    with pytest.raises(BadResponseError) as err:
        provider.parse(request, fixture("finnhub_error.json"))
    assert err.value.reason == "upstream_error"


def test_generic_provider() -> None:
    provider = GenericProvider(url="http://h/q/{symbol}?x=1", price_path="data.0.px",
                               time_path="data.0.t", time_unit="ms", version_path="data.0.id",
                               headers="X-A: 1; X-B: two", api_key="sekret",
                               api_key_param="apikey")
    (request,) = provider.requests(["BRK.B"])
    assert request.path == "http://h/q/BRK.B?x=1"
    assert request.params == (("apikey", "sekret"),)
    assert provider.headers()["X-B"] == "two"
    parsed = provider.parse(request, {"data": [{"px": "12.5", "t": 1700000000123, "id": 9}]})
    assert parsed.quotes == [Quote("BRK.B", 12.5, 1700000000123000, None, "9")]
    missing = provider.parse(request, {"data": []})
    assert [r.reason for r in missing.rejections] == ["missing_field"]
    no_time = GenericProvider(url="http://h/{symbol}", price_path="price")
    (req,) = no_time.requests(["X"])
    assert no_time.parse(req, {"price": 3}).quotes == [Quote("X", 3.0, None)]
    for bad in ({"url": "http://h/", "price_path": "p"},
                {"url": "http://h/{symbol}", "price_path": ""},
                {"url": "http://h/{symbol}", "price_path": "p", "time_unit": "days"},
                {"url": "http://h/{symbol}", "price_path": "p", "api_key": "k"}):
        with pytest.raises(ConfigError):
            GenericProvider(**bad)
    assert dig({"a": [1, {"b": 2}]}, "a.1.b") == 2
    assert parse_headers("A: b:c") == {"A": "b:c"}
    with pytest.raises(ConfigError):
        parse_headers("nocolon")


def test_make_provider_reads_the_environment() -> None:
    env = {"PRICEPIPE_FINNHUB_API_KEY": "k", "PRICEPIPE_FINNHUB_BASE_URL": "http://fake/api"}
    provider = make_provider("finnhub", env)
    assert provider.base_url == "http://fake/api" and provider.api_key == "k"
    assert make_provider("binance", {}, base_url="http://b/").base_url == "http://b"
    with pytest.raises(ConfigError):
        make_provider("generic", {})
    with pytest.raises(ConfigError):
        make_provider("nope", {})


@pytest.mark.parametrize("value, reason", [
    ("abc", "not_numeric"), (True, "not_numeric"), (None, "not_numeric"), ([1], "not_numeric"),
])
def test_number_rejects(value: Any, reason: str) -> None:
    with pytest.raises(BadResponseError) as err:
        number(value, "price")
    assert err.value.reason == reason


def test_epoch_units() -> None:
    assert epoch_us(1700000000, "t", "s") == 1700000000_000_000
    assert epoch_us("1700000000123", "t", "ms") == 1700000000123_000
    assert epoch_us(1700000000.5, "t", "auto") == 1700000000_500_000
    assert epoch_us(1700000000123, "t", "auto") == 1700000000123_000
    assert epoch_us("2023-11-14T22:13:20Z", "t", "auto") == 1700000000_000_000
    for bad, unit in (("x", "s"), (float("nan"), "s"), (12, "iso"), ("2023-13-45", "iso")):
        with pytest.raises(BadResponseError):
            epoch_us(bad, "t", unit)


RECV = 1_700_000_000_000_000


@pytest.mark.parametrize("quote, reason", [
    (Quote("X", math.nan, RECV), "not_finite"),
    (Quote("X", math.inf, RECV), "not_finite"),
    (Quote("X", -math.inf, RECV), "not_finite"),
    (Quote("X", 0.0, RECV), "non_positive"),
    (Quote("X", -3.0, RECV), "non_positive"),
    (Quote("X", 1.0, 1_700_000_000), "bad_timestamp"),  # seconds given as microseconds
    (Quote("X", 1.0, RECV + 3_600_000_000), "future_timestamp"),
    (Quote("X", 1.0, RECV - 30 * 86_400_000_000), "stale_timestamp"),
])
def test_to_tick_rejects(quote: Quote, reason: str) -> None:
    with pytest.raises(BadResponseError) as err:
        to_tick(quote, symbol="X", source="test", recv_ts_us=RECV)
    assert err.value.reason == reason


def test_to_tick_keeps_upstream_time_and_receipt_time() -> None:
    tick = to_tick(Quote("BTCUSDT", 5.0, RECV - 1000, -1.0), symbol="BTC-USD", source="binance",
                   recv_ts_us=RECV, checks=QuoteChecks())
    assert (tick.symbol, tick.ts_us, tick.recv_ts_us, tick.price) == ("BTC-USD", RECV - 1000,
                                                                      RECV, 5.0)
    assert tick.size is None  # a negative size is dropped, the price kept
    untimed = to_tick(Quote("X", 5.0, None), symbol="X", source="generic", recv_ts_us=RECV)
    assert untimed.ts_us == RECV


def test_freshness() -> None:
    fresh = Freshness()
    assert fresh.is_new(Quote("A", 1.0, 10))
    assert not fresh.is_new(Quote("A", 1.0, 10))
    assert fresh.is_new(Quote("A", 1.0, 11))  # new time, same price: a new trade
    assert fresh.is_new(Quote("B", 1.0, 11))
    assert fresh.is_new(Quote("C", 1.0, 11, None, "7"))
    assert not fresh.is_new(Quote("C", 1.0, 99, None, "7"))  # same trade id
    fresh.forget(Quote("C", 1.0, 99, None, "7"))
    assert fresh.is_new(Quote("C", 1.0, 99, None, "7"))


def test_budget_never_exceeds_the_limit() -> None:
    # ``limits`` keeps its windows on the real clock, so this waits for real
    # (about 2 s). Only upper bounds are checked: a slow machine grants less.
    budget = Budget("4/second;6/2 seconds")
    granted_at = []

    def sleep(delay_s: float) -> bool:
        time.sleep(delay_s)
        return False

    for _ in range(9):
        assert budget.acquire(1, wait=sleep)
        granted_at.append(time.time())
    for t in granted_at:
        assert sum(1 for g in granted_at if t <= g < t + 0.99) <= 4
        assert sum(1 for g in granted_at if t <= g < t + 1.99) <= 6
    assert granted_at[-1] - granted_at[0] >= 2.0  # it did have to wait


def test_budget_pause_and_stop() -> None:
    now = [1000.0]
    budget = Budget("100/second", clock=lambda: now[0])
    budget.pause(30)
    assert budget.try_acquire(1) == pytest.approx(30)
    assert budget.acquire(1, wait=lambda s: True) is False  # a stop abandons the wait
    now[0] += 31
    assert budget.try_acquire(1) == 0.0
    with pytest.raises(ConfigError):
        Budget("lots")
    with pytest.raises(ConfigError):
        Budget("5/second").try_acquire(6)
