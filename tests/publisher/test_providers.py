"""Provider parsing on the documented response shapes (fixtures), the
conversion of reports into events, freshness and the budget. Pure code, no
servers."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from pricepipe.budget import Budget
from pricepipe.events import Quote, Side, Trade
from pricepipe.exceptions import BadResponseError, ConfigError, InvalidEventError
from pricepipe.keys import Channel
from pricepipe.publisher.freshness import Freshness
from pricepipe.publisher.providers import make_provider
from pricepipe.publisher.providers.base import (
    QuoteReport,
    TimeChecks,
    TradeReport,
    epoch_us,
    number,
    to_quote,
    to_trade,
)
from pricepipe.publisher.providers.binance import BinanceProvider, book_ticker_weight
from pricepipe.publisher.providers.coinbase import CoinbaseProvider
from pricepipe.publisher.providers.finnhub import FinnhubProvider
from pricepipe.publisher.providers.generic import GenericProvider, dig, parse_headers

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> Any:
    return orjson.loads((FIXTURES / name).read_bytes())


# --- Binance ----------------------------------------------------------------------------------


def test_binance_requests_and_documented_weights() -> None:
    provider = BinanceProvider(base_url="http://x", trades_limit=200)
    symbols = [f"S{i}USDT" for i in range(105)]
    requests = provider.requests(symbols)
    books = [r for r in requests if r.path == "/api/v3/ticker/bookTicker"]
    trades = [r for r in requests if r.path == "/api/v3/trades"]
    assert [len(r.symbols) for r in books] == [100, 5]
    assert {r.weight for r in books} == {4}
    assert dict(books[1].params)["symbols"] == \
        '["S100USDT","S101USDT","S102USDT","S103USDT","S104USDT"]'
    assert len(trades) == 105 and {r.weight for r in trades} == {25}
    assert trades[0].params == (("symbol", "S0USDT"), ("limit", "200"))
    (one, _) = provider.requests(["BTCUSDT"])
    assert (one.params, one.weight) == ((("symbol", "BTCUSDT"),), 2)
    assert (book_ticker_weight(1), book_ticker_weight(2)) == (2, 4)
    with pytest.raises(ValueError):
        BinanceProvider(base_url="http://x", trades_limit=1001)


def test_binance_parses_documented_book_ticker() -> None:
    provider = BinanceProvider(base_url="http://x")
    one = provider.requests(["LTCBTC"])[0]
    parsed = provider.parse(one, fixture("binance_book_ticker.json"))
    assert parsed.rejections == [] and parsed.trades == []
    # No time in the answer: the receipt time will be the event time.
    assert parsed.quotes == [QuoteReport("LTCBTC", None, 4.0, 431.0, 4.000002, 9.0)]
    many = provider.requests(["LTCBTC", "ETHBTC"])[0]
    parsed = provider.parse(many, fixture("binance_book_ticker_list.json"))
    assert parsed.quotes == [QuoteReport("LTCBTC", None, 4.0, 431.0, 4.000002, 9.0),
                             QuoteReport("ETHBTC", None, 0.079467, 9.0, 100000.0, 1000.0)]
    with pytest.raises(BadResponseError) as err:
        provider.parse(many, fixture("binance_error.json"))
    assert err.value.reason == "upstream_error"


def test_binance_book_ticker_rejects_bad_items_and_reads_empty_sides() -> None:
    provider = BinanceProvider(base_url="http://x")
    request = provider.requests(["LTCBTC", "ETHBTC", "BNBBTC", "XRPBTC"])[0]
    good, other = fixture("binance_book_ticker_list.json")
    payload = [good, {**other, "bidPrice": "abc"}, {**good, "symbol": "DOGEBTC"},
               {"symbol": "BNBBTC", "bidPrice": "1"},
               {"symbol": "XRPBTC", "bidPrice": "0.00000000", "bidQty": "0.00000000",
                "askPrice": "0.00002", "askQty": "5"}]
    parsed = provider.parse(request, payload)
    assert [q.upstream for q in parsed.quotes] == ["LTCBTC", "XRPBTC"]
    assert parsed.quotes[1] == QuoteReport("XRPBTC", None, None, None, 0.00002, 5.0)
    assert [r.reason for r in parsed.rejections] == ["not_numeric", "unexpected_symbol",
                                                     "missing_field"]
    with pytest.raises(BadResponseError):
        provider.parse(request, "not a list")


def test_binance_parses_documented_trades() -> None:
    provider = BinanceProvider(base_url="http://x")
    request = provider.requests(["LTCBTC"])[1]
    parsed = provider.parse(request, fixture("binance_trades.json"))
    assert parsed.rejections == [] and parsed.quotes == []
    # isBuyerMaker: the buyer's order rested, so the aggressor sold.
    assert parsed.trades == [TradeReport("LTCBTC", 4.000001, 1499865549590_000, 12.0, "28457",
                                         Side.SELL)]
    (doc,) = fixture("binance_trades.json")
    taker_bought = {**doc, "id": 28458, "isBuyerMaker": False}
    bad = [{**doc, "id": "x"}, {**doc, "id": 28459, "qty": None},
           {**doc, "id": 28460, "isBuyerMaker": "yes"}, {**doc, "id": 28461, "time": "soon"}]
    parsed = provider.parse(request, [taker_bought, doc, *bad])
    assert [(t.trade_id, t.side) for t in parsed.trades] == [("28457", Side.SELL),
                                                            ("28458", Side.BUY)]  # oldest first
    assert [r.reason for r in parsed.rejections] == ["bad_trade_id", "missing_field", "bad_side",
                                                     "bad_timestamp"]
    with pytest.raises(BadResponseError) as err:
        provider.parse(request, {"code": -1121, "msg": "Invalid symbol."})
    assert err.value.reason == "upstream_error"
    with pytest.raises(BadResponseError):
        provider.parse(request, {"trades": []})


# --- Coinbase ---------------------------------------------------------------------------------


def test_coinbase_parses_documented_ticker_into_a_quote_and_a_trade() -> None:
    provider = CoinbaseProvider(base_url="http://x")
    (request,) = provider.requests(["BTC-USD"])
    assert request.path == "/products/BTC-USD/ticker"
    parsed = provider.parse(request, fixture("coinbase_ticker.json"))
    assert parsed.rejections == []
    # The ticker has no sizes for the book; its time is the last trade's.
    assert parsed.quotes == [QuoteReport("BTC-USD", None, 6265.15, None, 6267.71, None)]
    assert parsed.trades == [TradeReport("BTC-USD", 6268.48, 1584663777833897, 0.00698254,
                                         "86326522")]
    with pytest.raises(BadResponseError) as err:
        provider.parse(request, fixture("coinbase_error.json"))
    assert err.value.reason == "upstream_error"
    bad = provider.parse(request, {**fixture("coinbase_ticker.json"), "time": "yesterday"})
    assert [r.reason for r in bad.rejections] == ["bad_timestamp"]
    assert len(bad.quotes) == 1  # a bad trade does not spoil the book
    no_book = provider.parse(request, {**fixture("coinbase_ticker.json"), "bid": "x"})
    assert [r.reason for r in no_book.rejections] == ["not_numeric"] and no_book.trades


# --- Finnhub ----------------------------------------------------------------------------------


def test_finnhub_parses_documented_quote_into_a_trade_and_needs_a_key() -> None:
    with pytest.raises(ConfigError):
        FinnhubProvider(base_url="http://x")
    provider = FinnhubProvider(base_url="http://x", api_key="k")
    assert provider.headers()["X-Finnhub-Token"] == "k"
    (request,) = provider.requests(["AAPL"])
    assert (request.path, request.params) == ("/quote", (("symbol", "AAPL"),))
    parsed = provider.parse(request, fixture("finnhub_quote.json"))
    assert parsed.trades == [TradeReport("AAPL", 261.74, 1582641000_000_000)]
    assert parsed.quotes == []
    unknown = provider.parse(request, fixture("finnhub_quote_unknown_symbol.json"))
    assert unknown.trades == [] and [r.reason for r in unknown.rejections] == ["unknown_symbol"]
    with pytest.raises(BadResponseError) as err:
        provider.parse(request, fixture("finnhub_error.json"))
    assert err.value.reason == "upstream_error"


# --- generic ----------------------------------------------------------------------------------


def test_generic_provider_trades() -> None:
    provider = GenericProvider(url="http://h/q/{symbol}?x=1", price_path="data.0.px",
                               time_path="data.0.t", time_unit="ms", version_path="data.0.id",
                               size_path="data.0.qty", headers="X-A: 1; X-B: two",
                               api_key="sekret", api_key_param="apikey")
    (request,) = provider.requests(["BRK.B"])
    assert request.path == "http://h/q/BRK.B?x=1"
    assert request.params == (("apikey", "sekret"),)
    assert provider.headers()["X-B"] == "two"
    parsed = provider.parse(request, {"data": [{"px": "12.5", "t": 1700000000123, "id": 9,
                                                "qty": 3}]})
    assert parsed.trades == [TradeReport("BRK.B", 12.5, 1700000000123000, 3.0, "9")]
    assert parsed.quotes == []
    missing = provider.parse(request, {"data": []})
    assert [r.reason for r in missing.rejections] == ["missing_field"]
    no_time = GenericProvider(url="http://h/{symbol}", price_path="price")
    (req,) = no_time.requests(["X"])
    assert no_time.parse(req, {"price": 3}).trades == [TradeReport("X", 3.0, None)]
    assert dig({"a": [1, {"b": 2}]}, "a.1.b") == 2
    assert parse_headers("A: b:c") == {"A": "b:c"}
    with pytest.raises(ConfigError):
        parse_headers("nocolon")


def test_generic_provider_quotes() -> None:
    provider = GenericProvider(url="http://h/{symbol}", price_path=None, bid_path="book.b",
                               ask_path="book.a", ask_size_path="book.as")
    (request,) = provider.requests(["X"])
    parsed = provider.parse(request, {"book": {"b": "9.5", "a": 10, "as": 7}})
    assert parsed.trades == []
    assert parsed.quotes == [QuoteReport("X", None, 9.5, None, 10.0, 7.0)]
    both = GenericProvider(url="http://h/{symbol}", price_path="p", bid_path="b")
    parsed = both.parse(request, {"p": 1, "b": "nan?"})
    assert len(parsed.trades) == 1 and [r.reason for r in parsed.rejections] == ["not_numeric"]
    for bad in ({"url": "http://h/", "price_path": "p"},
                {"url": "http://h/{symbol}", "price_path": ""},
                {"url": "http://h/{symbol}", "price_path": "p", "time_unit": "days"},
                {"url": "http://h/{symbol}", "price_path": "p", "api_key": "k"},
                {"url": "http://h/{symbol}", "price_path": "p", "bid_size_path": "s"}):
        with pytest.raises(ConfigError):
            GenericProvider(**bad)


def test_make_provider_reads_the_environment() -> None:
    env = {"PRICEPIPE_FINNHUB_API_KEY": "k", "PRICEPIPE_FINNHUB_BASE_URL": "http://fake/api"}
    provider = make_provider("finnhub", env)
    assert provider.base_url == "http://fake/api" and provider.api_key == "k"
    binance = make_provider("binance", {"PRICEPIPE_BINANCE_TRADES_LIMIT": "50"},
                            base_url="http://b/")
    assert binance.base_url == "http://b"
    assert isinstance(binance, BinanceProvider) and binance.trades_limit == 50
    generic = make_provider("generic", {"PRICEPIPE_GENERIC_PRICE_PATH": "",
                                        "PRICEPIPE_GENERIC_ASK_PATH": "a"},
                            base_url="http://g/{symbol}")
    assert isinstance(generic, GenericProvider)
    assert (generic.price_path, generic.ask_path) == (None, "a")
    with pytest.raises(ConfigError):
        make_provider("binance", {"PRICEPIPE_BINANCE_TRADES_LIMIT": "0"})
    with pytest.raises(ConfigError):
        make_provider("generic", {})
    with pytest.raises(ConfigError):
        make_provider("nope", {})


# --- parsing helpers --------------------------------------------------------------------------


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


# --- reports into events ----------------------------------------------------------------------

RECV = 1_700_000_000_000_000


@pytest.mark.parametrize("report, reason", [
    (TradeReport("X", math.nan, RECV), "not_finite"),
    (TradeReport("X", math.inf, RECV), "not_finite"),
    (TradeReport("X", -math.inf, RECV), "not_finite"),
    (TradeReport("X", 0.0, RECV), "non_positive"),
    (TradeReport("X", -3.0, RECV), "non_positive"),
    (TradeReport("X", 1.0, RECV, -2.0), "negative_size"),
    (TradeReport("X", 1.0, RECV, 0.0), "non_positive"),
    (TradeReport("X", 1.0, RECV, None, "no spaces"), "bad_trade_id"),
    (TradeReport("X", 1.0, 1_700_000_000), "bad_timestamp"),  # seconds as microseconds
    (TradeReport("X", 1.0, 1_700_000_000_000_000_000), "bad_timestamp"),  # nanoseconds
    (TradeReport("X", 1.0, RECV + 3_600_000_000), "future_timestamp"),
    (TradeReport("X", 1.0, RECV - 30 * 86_400_000_000), "stale_timestamp"),
])
def test_to_trade_rejects(report: TradeReport, reason: str) -> None:
    with pytest.raises((BadResponseError, InvalidEventError)) as err:
        to_trade(report, symbol="X", source="test", recv_ts_us=RECV)
    assert isinstance(err.value, BadResponseError | InvalidEventError)
    assert err.value.reason == reason


@pytest.mark.parametrize("report, reason", [
    (QuoteReport("X", None, 10.5, 1.0, 10.0, 1.0), "crossed_book"),
    (QuoteReport("X", None, None, None, None, None), "empty_book"),
    (QuoteReport("X", None, 0.0, 1.0, 10.0, 1.0), "non_positive"),
    (QuoteReport("X", None, math.nan, 1.0, 10.0, 1.0), "not_finite"),
    (QuoteReport("X", None, 9.0, -1.0, 10.0, 1.0), "negative_size"),
    (QuoteReport("X", None, None, 1.0, 10.0, 1.0), "size_without_price"),
])
def test_to_quote_rejects(report: QuoteReport, reason: str) -> None:
    with pytest.raises(InvalidEventError) as err:
        to_quote(report, symbol="X", source="test", recv_ts_us=RECV)
    assert err.value.reason == reason


def test_reports_keep_upstream_time_and_receipt_time() -> None:
    trade = to_trade(TradeReport("BTCUSDT", 5.0, RECV - 1000, 0.5, "77", Side.BUY),
                     symbol="BTC-USD", source="binance", recv_ts_us=RECV, checks=TimeChecks())
    assert trade == Trade("BTC-USD", RECV - 1000, 5.0, 0.5, "binance", "77", Side.BUY, RECV)
    untimed = to_trade(TradeReport("X", 5.0, None), symbol="X", source="generic",
                       recv_ts_us=RECV)
    assert (untimed.ts_us, untimed.size, untimed.trade_id) == (RECV, None, None)
    quote = to_quote(QuoteReport("X", None, None, None, 10.0, 0.0), symbol="X", source="b",
                     recv_ts_us=RECV)
    assert quote == Quote("X", RECV, None, None, 10.0, 0.0, "b", RECV)  # one-sided book


# --- freshness --------------------------------------------------------------------------------


def test_freshness_of_trades_with_numeric_ids_is_a_watermark() -> None:
    fresh = Freshness()
    tape = [TradeReport("A", 1.0, 10, 1.0, str(i)) for i in (5, 6, 7)]
    assert fresh.fresh("A", Channel.TRADES, tape) == tape
    assert fresh.fresh("A", Channel.TRADES, tape) == tape  # nothing remembered yet
    fresh.commit("A", Channel.TRADES, tape)
    assert fresh.highest_trade_id("A") == 7
    overlap = [*tape[1:], TradeReport("A", 1.1, 11, 1.0, "8")]
    assert [t.trade_id for t in fresh.fresh("A", Channel.TRADES, overlap)] == ["8"]
    # An older trade answered again (a lagging cache) is not new.
    assert fresh.fresh("A", Channel.TRADES, [tape[0]]) == []
    assert fresh.fresh("B", Channel.TRADES, [tape[0]]) == [tape[0]]  # per symbol


def test_freshness_of_other_trades_and_quotes() -> None:
    fresh = Freshness()

    def new(symbol: str, channel: Channel, report: Any) -> bool:
        found = fresh.fresh(symbol, channel, [report])
        fresh.commit(symbol, channel, found)
        return bool(found)

    assert new("A", Channel.TRADES, TradeReport("A", 1.0, 10))
    assert not new("A", Channel.TRADES, TradeReport("A", 1.0, 10))
    assert new("A", Channel.TRADES, TradeReport("A", 1.0, 11))  # new time: a new trade
    assert new("A", Channel.TRADES, TradeReport("A", 1.0, None))
    assert not new("A", Channel.TRADES, TradeReport("A", 1.0, None))
    assert new("C", Channel.TRADES, TradeReport("C", 1.0, 5, None, "u-1"))
    assert not new("C", Channel.TRADES, TradeReport("C", 2.0, 6, None, "u-1"))  # same id
    book = QuoteReport("A", None, 1.0, 2.0, 1.1, 3.0)
    assert new("A", Channel.QUOTES, book)
    assert not new("A", Channel.QUOTES, book)
    assert new("A", Channel.QUOTES, QuoteReport("A", None, 1.0, 2.5, 1.1, 3.0))  # a size moved
    # Channels are apart: a quote never hides a trade of the same symbol.
    assert new("A", Channel.TRADES, TradeReport("A", 1.0, 12))
    fresh.seed("D", Channel.TRADES, TradeReport("D", 1.0, 10, 1.0, "41"))
    assert fresh.fresh("D", Channel.TRADES, [TradeReport("D", 1.0, 10, 1.0, "41")]) == []


# --- budget -----------------------------------------------------------------------------------


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
