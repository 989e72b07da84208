"""Pollers against a fake upstream (a real local HTTP server) that speaks
each provider's documented JSON and misbehaves on cue, publishing trades and
quotes into a real Redis."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from pricepipe.events import Quote, Side, Trade
from pricepipe.keys import Channel, Keys
from pricepipe.publisher.catalog import parse_symbols
from pricepipe.publisher.metrics import PublisherMetrics
from pricepipe.publisher.poller import Poller
from pricepipe.publisher.providers import make_provider
from pricepipe.publisher.settings import PollerSettings
from pricepipe.publisher.sink import StreamSink
from pricepipe.stop import StopRequest

from .fake_upstream import FakeUpstream
from .helpers import read_quotes, read_trades

FAST = PollerSettings(
    interval_s=0.02, concurrency=2, queue_max=10, connect_timeout_s=0.5, read_timeout_s=0.3,
    retries=2, backoff_factor_s=0.01, backoff_jitter_s=0.01, backoff_max_s=0.05,
    retry_after_max_s=2.0,
)

GENERIC_ENV = {
    "PRICEPIPE_GENERIC_PRICE_PATH": "data.last.px",
    "PRICEPIPE_GENERIC_TIME_PATH": "data.last.time",
    "PRICEPIPE_GENERIC_TIME_UNIT": "ms",
    "PRICEPIPE_GENERIC_SIZE_PATH": "data.last.size",
    "PRICEPIPE_GENERIC_VERSION_PATH": "data.last.seq",
    "PRICEPIPE_GENERIC_BID_PATH": "data.book.bid",
    "PRICEPIPE_GENERIC_ASK_PATH": "data.book.ask",
    "PRICEPIPE_GENERIC_BID_SIZE_PATH": "data.book.bidSize",
    "PRICEPIPE_GENERIC_ASK_SIZE_PATH": "data.book.askSize",
}


def with_settings(**changes: Any) -> PollerSettings:
    return PollerSettings(**{**FAST.__dict__, **changes})


class Harness:
    """A poller for one provider against the fake upstream, in burst mode."""

    def __init__(self, r: Any, keys: Keys, fake: FakeUpstream, source: str, symbols: str,
                 settings: PollerSettings = FAST, env: dict[str, str] | None = None,
                 rate_limit: str | None = None) -> None:
        self.r, self.keys, self.fake = r, keys, fake
        environ = {"PRICEPIPE_FINNHUB_API_KEY": "test-key", **GENERIC_ENV, **(env or {})}
        base = fake.url + ("/generic/{symbol}" if source == "generic" else "")
        self.provider = make_provider(source, environ, base_url=base)
        if rate_limit:
            self.provider.rate_limit = rate_limit
        self.metrics = PublisherMetrics()
        self.stop = StopRequest()
        self.sink = StreamSink(r, keys, stop=self.stop, metrics=self.metrics)
        self.specs = parse_symbols(symbols)
        self.poller = Poller(self.provider, self.specs, self.sink, settings=settings,
                             stop=self.stop, metrics=self.metrics)

    def poll(self, times: int = 1) -> None:
        """``times`` complete polls, one after the other."""
        for _ in range(times):
            self.poller.run(rounds=1)

    def close(self) -> None:
        self.poller.close()

    def trades(self, symbol: str) -> list[Trade]:
        return read_trades(self.r, self.keys, symbol)

    def quotes(self, symbol: str) -> list[Quote]:
        return read_quotes(self.r, self.keys, symbol)

    def total(self, channel: Channel = Channel.TRADES) -> int:
        return sum(self.r.xlen(self.keys.stream(s.symbol, channel)) for s in self.specs)

    def count(self, name: str, **labels: str) -> float:
        return self.metrics.value(name, **labels) if labels else self.metrics.total(name)

    def outcomes(self, outcome: str) -> float:
        return self.metrics.value("pricepipe_publisher_requests", provider=self.provider.name,
                                  outcome=outcome)

    def rejected(self, reason: str) -> float:
        return self.metrics.value("pricepipe_publisher_rejected", provider=self.provider.name,
                                  reason=reason)

    def unchanged(self, channel: Channel) -> float:
        return self.metrics.value("pricepipe_publisher_unchanged", provider=self.provider.name,
                                  channel=str(channel))


MakeHarness = Callable[..., Harness]


@pytest.fixture
def make_harness(r: Any, keys: Keys, fake: FakeUpstream) -> Iterator[MakeHarness]:
    made: list[Harness] = []

    def make(source: str, symbols: str, **kwargs: Any) -> Harness:
        harness = Harness(r, keys, fake, source, symbols, **kwargs)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


@pytest.mark.parametrize("source, symbols, has_quotes", [
    ("binance", "BTCUSDT,ETHUSDT,BNBUSDT", True),
    ("coinbase", "BTC-USD,ETH-USD", True),
    ("finnhub", "AAPL,MSFT", False),
    ("generic", "AAPL,BRK.B", True),
])
def test_each_provider_publishes_genuine_updates_only(
    make_harness: MakeHarness, fake: FakeUpstream, source: str, symbols: str, has_quotes: bool
) -> None:
    h = make_harness(source, symbols)
    now_ms = int(time.time() * 1000)
    names = [s.upstream_name for s in h.specs]
    for i, name in enumerate(names):
        fake.set_market(name, 100.0 + i, now_ms - 5000 + i)
    h.poll(3)  # three polls of the same market
    assert h.total(Channel.TRADES) == len(names)
    assert h.total(Channel.QUOTES) == (len(names) if has_quotes else 0)
    symbol = h.specs[0].symbol
    (trade,) = h.trades(symbol)
    assert trade.price == 100.0 and trade.source == source
    expected_ts = (now_ms - 5000) * 1000
    if source == "finnhub":
        expected_ts = (now_ms - 5000) // 1000 * 1_000_000  # finnhub times are seconds
    assert trade.ts_us == expected_ts  # the upstream's time is the event time
    assert trade.recv_ts_us is not None and trade.recv_ts_us >= trade.ts_us
    if source in ("binance", "coinbase", "generic"):
        assert trade.trade_id == "1000" and trade.size == 0.5
    assert h.unchanged(Channel.TRADES) == 2 * len(names)
    if has_quotes:
        (quote,) = h.quotes(symbol)
        assert (quote.bid, quote.ask, quote.source) == (99.99, 100.01, source)
        if source != "coinbase":  # the ticker has no book sizes
            assert (quote.bid_size, quote.ask_size) == (1.5, 2.5)
        # A book snapshot carries no time: it is stamped when received.
        assert quote.ts_us == quote.recv_ts_us
        assert h.unchanged(Channel.QUOTES) == 2 * len(names)
    # A genuine update of one symbol publishes exactly one more trade (and quote).
    fake.set_market(names[0], 101.5, now_ms + 1000 * 2)
    h.poll(2)
    assert h.total(Channel.TRADES) == len(names) + 1
    assert h.trades(symbol)[-1].price == 101.5
    if has_quotes:
        assert h.total(Channel.QUOTES) == len(names) + 1
        assert h.quotes(symbol)[-1].ask == 101.51


def test_binance_publishes_only_newer_trades_with_their_sides(
    make_harness: MakeHarness, fake: FakeUpstream, r: Any, keys: Keys
) -> None:
    h = make_harness("binance", "BTC-USD=BTCUSDT", env={"PRICEPIPE_BINANCE_TRADES_LIMIT": "3"})
    now_ms = int(time.time() * 1000)
    fake.set_book("BTCUSDT", 65000.0, 65000.5)
    fake.add_trade("BTCUSDT", 65000.5, now_ms - 3000, qty=0.25, buyer_maker=False)
    fake.add_trade("BTCUSDT", 65000.0, now_ms - 2000, qty=0.5, buyer_maker=True)
    h.poll(2)
    trades = h.trades("BTC-USD")
    assert [(t.trade_id, t.price, t.size, t.side) for t in trades] == [
        ("1000", 65000.5, 0.25, Side.BUY),   # the buyer took the offer
        ("1001", 65000.0, 0.5, Side.SELL),   # the buyer was the maker: a sell
    ]
    # One bookTicker (weight 2) and one trades request (weight 25) per poll.
    assert len(fake.requests_to("/api/v3/ticker/bookTicker?symbol=BTCUSDT")) == 2
    assert len(fake.requests_to("/api/v3/trades?symbol=BTCUSDT&limit=3")) == 2
    # The next answer overlaps the last (limit 3): only the new trade goes out.
    fake.add_trade("BTCUSDT", 65000.5, now_ms - 1000)
    h.poll(1)
    assert [t.trade_id for t in h.trades("BTC-USD")] == ["1000", "1001", "1002"]
    assert h.count("pricepipe_publisher_trades_missed") == 0
    # Five trades between two polls, but only the last three are answered:
    # two were missed, and counted.
    for i in range(5):
        fake.add_trade("BTCUSDT", 65001.0 + i, now_ms + i)
    h.poll(1)
    assert [t.trade_id for t in h.trades("BTC-USD")][-3:] == ["1005", "1006", "1007"]
    assert h.count("pricepipe_publisher_trades_missed") == 2
    # A restarted poller starts from the newest trade in Redis: nothing twice.
    again = make_harness("binance", "BTC-USD=BTCUSDT",
                         env={"PRICEPIPE_BINANCE_TRADES_LIMIT": "3"})
    again.poll(1)
    assert len(again.trades("BTC-USD")) == 6
    fake.add_trade("BTCUSDT", 65010.0, now_ms + 10)
    again.poll(1)
    assert [t.trade_id for t in again.trades("BTC-USD")][-2:] == ["1007", "1008"]
    assert again.count("pricepipe_publisher_trades_missed") == 0


def test_rejected_items_are_counted_and_never_fatal(
    make_harness: MakeHarness, fake: FakeUpstream
) -> None:
    h = make_harness("coinbase", "BTC-USD")
    fake.add_trade("BTC-USD", 64000.0)
    fake.set_book("BTC-USD", 64001.0, 63999.0)  # crossed: a broken book
    h.poll(1)
    assert h.rejected("crossed_book") == 1
    assert h.total(Channel.QUOTES) == 0
    assert [t.price for t in h.trades("BTC-USD")] == [64000.0]  # the trade still counts
    fake.set_book("BTC-USD", 63999.0, 64001.0)
    h.poll(1)
    assert [(q.bid, q.ask) for q in h.quotes("BTC-USD")] == [(63999.0, 64001.0)]
    # Bad numbers in a Binance book: counted by reason, the other symbol goes out.
    b = make_harness("binance", "BTCUSDT,ETHUSDT")
    fake.set_market("ETHUSDT", 3000.0)
    fake.add_trade("BTCUSDT", 65000.0)
    fake.books["BTCUSDT"] = (-1.0, 1.0, 65000.0, 1.0)
    b.poll(1)
    assert b.rejected("non_positive") == 1
    assert [q.symbol for s in ("BTCUSDT", "ETHUSDT") for q in b.quotes(s)] == ["ETHUSDT"]
    assert b.total(Channel.TRADES) == 2


def test_publish_unchanged_is_configurable(make_harness: MakeHarness, fake: FakeUpstream) -> None:
    h = make_harness("coinbase", "BTC-USD", settings=with_settings(publish_unchanged=True))
    fake.set_market("BTC-USD", 60000.0)
    h.poll(3)
    assert h.total(Channel.TRADES) == 3 and h.total(Channel.QUOTES) == 3


def test_recovers_after_bursts_of_5xx(make_harness: MakeHarness, fake: FakeUpstream) -> None:
    h = make_harness("finnhub", "AAPL")
    fake.add_trade("AAPL", 190.0, int(time.time() * 1000) - 5000)
    # First poll: 500, 503 then OK within its retries; second poll: fails all
    # three attempts; third poll: a healed upstream.
    fake.script("500", "503", "ok", "502", "503", "500")
    h.poll(1)
    assert h.total() == 1 and h.outcomes("ok") == 1
    fake.add_trade("AAPL", 191.0)
    h.poll(1)
    assert h.total() == 1 and h.outcomes("http_error") == 1
    h.poll(1)
    assert [t.price for t in h.trades("AAPL")] == [190.0, 191.0]
    # Retries were bounded: 3 + 3 + 1 requests.
    assert len(fake.requests_to("/quote")) == 7


def test_timeouts_resets_and_truncated_bodies(
    make_harness: MakeHarness, fake: FakeUpstream
) -> None:
    h = make_harness("coinbase", "BTC-USD")
    fake.set_market("BTC-USD", 65000.0)
    fake.script("timeout", "reset")  # retried by urllib3, then OK
    h.poll(1)
    assert h.total() == 1, "the retries did not get through"
    fake.set_market("BTC-USD", 65001.0)
    # A body cut short breaks after the headers: that poll fails (counted),
    # and so does one whose every attempt is reset.
    fake.script("truncated", "reset", "reset", "reset")
    h.poll(2)
    assert h.total() == 1 and h.outcomes("error") == 2
    h.poll(1)
    assert [t.price for t in h.trades("BTC-USD")] == [65000.0, 65001.0]


def test_429_retry_after_is_honoured(make_harness: MakeHarness, fake: FakeUpstream) -> None:
    h = make_harness("coinbase", "ETH-USD")
    fake.set_market("ETH-USD", 3000.0)
    fake.script("429:1")
    h.poll(1)
    assert h.total() == 1
    (first, _, _), (second, _, _) = fake.requests_to("/ticker")
    assert second - first >= 0.9  # waited for Retry-After (a lower bound only)
    # A 429 that outlasts the retries pauses the whole provider budget.
    fake.script("429:1", "429:1", "429:1")
    h.poll(1)
    assert h.outcomes("rate_limited") == 1
    assert h.poller.budget.try_acquire(1) > 0  # paused for the Retry-After time
    assert h.total() == 1


def test_bad_answers_are_rejected_and_nothing_reaches_the_stream(
    make_harness: MakeHarness, fake: FakeUpstream
) -> None:
    h = make_harness("finnhub", "AAPL", settings=with_settings(retries=0))
    now_s = int(time.time())

    def body(**fields: Any) -> str:
        return "bad:" + orjson.dumps(fields).decode()

    bad_bodies = [
        "html", "html503", "malformed",
        body(c="abc", t=now_s),
        body(c=-5, t=now_s),
        body(c=0, t=now_s),
        body(c=0, t=0),  # Finnhub's answer for an unknown symbol
        body(c="NaN", t=now_s),
        body(c="Infinity", t=now_s),
        body(t=now_s),
        body(c=10.0, t=now_s * 1000),  # milliseconds where seconds belong
        body(c=10.0, t=now_s + 86_400),  # a day in the future
        "bad:[1, 2, 3]",
        body(error="You don't have access to this resource."),
    ]
    fake.script(*bad_bodies)
    h.poll(len(bad_bodies))
    assert h.total() == 0
    assert h.count("pricepipe_publisher_events_published") == 0
    assert h.rejected("html") == 1  # the 200 page; the 503 page is an HTTP error
    assert h.outcomes("http_error") == 1
    assert h.rejected("malformed") == 2
    assert h.rejected("not_numeric") == 1
    assert h.rejected("non_positive") == 2
    assert h.rejected("unknown_symbol") == 1
    assert h.rejected("not_finite") == 2
    assert h.rejected("missing_field") == 1
    assert h.rejected("bad_timestamp") == 1
    assert h.rejected("future_timestamp") == 1
    assert h.rejected("upstream_error") == 1
    # Still polling: a good answer afterwards is published.
    fake.add_trade("AAPL", 190.0)
    h.poll(1)
    assert [t.price for t in h.trades("AAPL")] == [190.0]


def test_slow_upstream_drops_stale_polls(make_harness: MakeHarness, fake: FakeUpstream) -> None:
    settings = with_settings(concurrency=1, read_timeout_s=2.0, interval_s=0.05)
    h = make_harness("coinbase", "BTC-USD,ETH-USD", settings=settings)
    fake.set_market("BTC-USD", 60000.0)
    fake.set_market("ETH-USD", 3000.0)
    fake.script(*["slow"] * 10)
    h.poller.run(rounds=8)  # 16 polls scheduled over ~0.4 s; each answer takes 0.4 s
    served = len(fake.requests_to("/ticker"))
    dropped = h.count("pricepipe_publisher_polls_dropped")
    assert dropped > 0
    assert served + dropped == 16  # every scheduled poll either ran or was counted
    assert h.total() == 2 and h.total(Channel.QUOTES) == 2  # nothing published twice


def test_budget_is_respected(make_harness: MakeHarness, fake: FakeUpstream) -> None:
    settings = with_settings(publish_unchanged=True, interval_s=0.01)
    h = make_harness("coinbase", "BTC-USD,ETH-USD,SOL-USD", settings=settings,
                     rate_limit="6/second")
    for name in ("BTC-USD", "ETH-USD", "SOL-USD"):
        fake.set_market(name, 10.0)
    h.poll(4)  # 12 requests wanted at once
    times = [t for t, _, _ in fake.requests_to("/ticker")]
    assert len(times) == 12
    for t in times:  # never more than 6 in any second
        assert sum(1 for u in times if t <= u < t + 0.95) <= 6


def test_a_schedule_over_budget_is_reported(
    make_harness: MakeHarness, caplog: pytest.LogCaptureFixture
) -> None:
    symbols = ",".join(f"S{i}USDT" for i in range(30))
    with caplog.at_level(logging.WARNING):
        make_harness("binance", symbols, settings=with_settings(interval_s=5.0))
    # 30 trades requests of weight 25 plus one bookTicker of 4, every 5 s:
    # 151/s, over the 5000/minute budget (83/s).
    assert "budget 5000 per 1 minute" in caplog.text


def test_api_key_in_the_query_never_reaches_the_logs(
    make_harness: MakeHarness, fake: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    h = make_harness("generic", "AAPL", env={"PRICEPIPE_GENERIC_API_KEY": "sekret-123",
                                            "PRICEPIPE_GENERIC_API_KEY_PARAM": "apikey"})
    fake.set_market("AAPL", 190.0)
    fake.script("500", "503")  # urllib3 logs both retries with the URL
    with caplog.at_level("DEBUG"):
        h.poll(1)
    assert h.total() == 1
    assert any("apikey=sekret-123" in path for _, path, _ in fake.log)  # it was sent
    assert "apikey=****" in caplog.text
    assert "sekret-123" not in caplog.text
