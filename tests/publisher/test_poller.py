"""Pollers against a fake upstream (a real local HTTP server) that speaks
each provider's documented JSON and misbehaves on cue, publishing into a
real Redis."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from pricepipe.publisher.catalog import parse_symbols
from pricepipe.publisher.metrics import PublisherMetrics
from pricepipe.publisher.poller import Poller
from pricepipe.publisher.providers import make_provider
from pricepipe.publisher.settings import PollerSettings
from pricepipe.publisher.sink import StreamSink

from pricepipe.codec import decode_fields
from pricepipe.keys import Keys
from pricepipe.stop import StopRequest

from .fake_upstream import FakeUpstream

FAST = PollerSettings(
    interval_s=0.02, concurrency=2, queue_max=10, connect_timeout_s=0.5, read_timeout_s=0.3,
    retries=2, backoff_factor_s=0.01, backoff_jitter_s=0.01, backoff_max_s=0.05,
    retry_after_max_s=2.0,
)


class Harness:
    """A poller for one provider against the fake upstream, in burst mode."""

    def __init__(self, r: Any, keys: Keys, fake: FakeUpstream, source: str, symbols: str,
                 settings: PollerSettings = FAST, env: dict[str, str] | None = None,
                 rate_limit: str | None = None) -> None:
        self.r, self.keys, self.fake = r, keys, fake
        environ = {"PRICEPIPE_FINNHUB_API_KEY": "test-key",
                   "PRICEPIPE_GENERIC_PRICE_PATH": "data.last.px",
                   "PRICEPIPE_GENERIC_TIME_PATH": "data.last.time",
                   "PRICEPIPE_GENERIC_TIME_UNIT": "ms",
                   **(env or {})}
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

    def ticks(self, symbol: str) -> list[Any]:
        return [decode_fields(f) for _, f in self.r.xrange(self.keys.stream(symbol))]

    def total(self) -> int:
        return sum(len(self.ticks(s.symbol)) for s in self.specs)

    def count(self, name: str, **labels: str) -> float:
        return self.metrics.value(name, **labels) if labels else self.metrics.total(name)

    def outcomes(self, outcome: str) -> float:
        return self.metrics.value("pricepipe_publisher_requests", provider=self.provider.name,
                                  outcome=outcome)

    def rejected(self, reason: str) -> float:
        return self.metrics.value("pricepipe_publisher_quotes_rejected",
                                  provider=self.provider.name, reason=reason)


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


@pytest.mark.parametrize("source, symbols", [
    ("binance", "BTCUSDT,ETHUSDT,BNBUSDT"),
    ("coinbase", "BTC-USD,ETH-USD"),
    ("finnhub", "AAPL,MSFT"),
    ("generic", "AAPL,BRK.B"),
])
def test_each_provider_publishes_genuine_updates_only(
    make_harness: MakeHarness, fake: FakeUpstream, source: str, symbols: str
) -> None:
    h = make_harness(source, symbols)
    now_ms = int(time.time() * 1000)
    names = [s.upstream_name for s in h.specs]
    for i, name in enumerate(names):
        fake.set_quote(name, 100.0 + i, now_ms - 5000 + i)
    h.poll(3)  # three polls of the same quotes
    assert h.total() == len(names)
    first = names[0]
    tick = h.ticks(h.specs[0].symbol)[0]
    assert tick.price == 100.0 and tick.source == source
    expected_ts = (now_ms - 5000) * 1000
    if source == "finnhub":
        expected_ts = (now_ms - 5000) // 1000 * 1_000_000  # finnhub times are seconds
    assert tick.ts_us == expected_ts  # the upstream's time is the event time
    assert tick.recv_ts_us is not None and tick.recv_ts_us >= tick.ts_us
    assert h.count("pricepipe_publisher_quotes_unchanged") == 2 * len(names)
    # A genuine update of one symbol publishes exactly one more tick.
    fake.set_quote(first, 101.5, now_ms + 1000 * 2)
    h.poll(2)
    assert h.total() == len(names) + 1
    assert h.ticks(h.specs[0].symbol)[-1].price == 101.5


def test_publish_unchanged_is_configurable(make_harness: MakeHarness, fake: FakeUpstream) -> None:
    settings = PollerSettings(**{**FAST.__dict__, "publish_unchanged": True})
    h = make_harness("coinbase", "BTC-USD", settings=settings)
    fake.set_quote("BTC-USD", 60000.0)
    h.poll(3)
    assert h.total() == 3


def test_recovers_after_bursts_of_5xx(make_harness: MakeHarness, fake: FakeUpstream) -> None:
    h = make_harness("finnhub", "AAPL")
    fake.set_quote("AAPL", 190.0)
    # First poll: 500, 503 then OK within its retries; second poll: fails all
    # three attempts; third poll: a healed upstream.
    fake.script("500", "503", "ok", "502", "503", "500")
    h.poll(1)
    assert h.total() == 1 and h.outcomes("ok") == 1
    fake.set_quote("AAPL", 191.0)
    h.poll(1)
    assert h.total() == 1 and h.outcomes("http_error") == 1
    h.poll(1)
    assert [t.price for t in h.ticks("AAPL")] == [190.0, 191.0]
    # Retries were bounded: 3 + 3 + 1 requests.
    assert len(fake.requests_to("/quote")) == 7


def test_timeouts_resets_and_truncated_bodies(
    make_harness: MakeHarness, fake: FakeUpstream
) -> None:
    h = make_harness("binance", "BTCUSDT")
    fake.set_quote("BTCUSDT", 65000.0)
    fake.script("timeout", "reset")  # retried by urllib3, then OK
    h.poll(1)
    assert h.total() == 1, "the retries did not get through"
    fake.set_quote("BTCUSDT", 65001.0)
    # A body cut short breaks after the headers: that poll fails (counted),
    # and so does one whose every attempt is reset.
    fake.script("truncated", "reset", "reset", "reset")
    h.poll(2)
    assert h.total() == 1 and h.outcomes("error") == 2
    h.poll(1)
    assert [t.price for t in h.ticks("BTCUSDT")] == [65000.0, 65001.0]


def test_429_retry_after_is_honoured(make_harness: MakeHarness, fake: FakeUpstream) -> None:
    h = make_harness("coinbase", "ETH-USD")
    fake.set_quote("ETH-USD", 3000.0)
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
    h = make_harness("finnhub", "AAPL", settings=PollerSettings(
        **{**FAST.__dict__, "retries": 0}))
    now_s = int(time.time())
    def body(**fields: Any) -> str:
        return "bad:" + orjson.dumps(fields).decode()

    bad_bodies = [
        "html", "html503", "malformed",
        body(c="abc", t=now_s),
        body(c=-5, t=now_s),
        body(c=0, t=now_s),
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
    assert h.count("pricepipe_publisher_ticks_published") == 0
    assert h.rejected("html") == 1  # the 200 page; the 503 page is an HTTP error
    assert h.outcomes("http_error") == 1
    assert h.rejected("malformed") == 2
    assert h.rejected("not_numeric") == 1
    assert h.rejected("non_positive") == 2
    assert h.rejected("not_finite") == 2
    assert h.rejected("missing_field") == 1
    assert h.rejected("bad_timestamp") == 1
    assert h.rejected("future_timestamp") == 1
    assert h.rejected("upstream_error") == 1
    # Still polling: a good answer afterwards is published.
    fake.set_quote("AAPL", 190.0)
    h.poll(1)
    assert [t.price for t in h.ticks("AAPL")] == [190.0]


def test_slow_upstream_drops_stale_polls(make_harness: MakeHarness, fake: FakeUpstream) -> None:
    settings = PollerSettings(**{**FAST.__dict__, "concurrency": 1, "read_timeout_s": 2.0,
                                 "interval_s": 0.05})
    h = make_harness("coinbase", "BTC-USD,ETH-USD", settings=settings)
    fake.set_quote("BTC-USD", 60000.0)
    fake.set_quote("ETH-USD", 3000.0)
    fake.script(*["slow"] * 10)
    h.poller.run(rounds=8)  # 16 polls scheduled over ~0.4 s; each answer takes 0.4 s
    served = len(fake.requests_to("/ticker"))
    dropped = h.count("pricepipe_publisher_polls_dropped")
    assert dropped > 0
    assert served + dropped == 16  # every scheduled poll either ran or was counted
    assert h.total() == 2  # and nothing was published twice


def test_budget_is_respected(make_harness: MakeHarness, fake: FakeUpstream) -> None:
    settings = PollerSettings(**{**FAST.__dict__, "publish_unchanged": True,
                                 "interval_s": 0.01})
    h = make_harness("coinbase", "BTC-USD,ETH-USD,SOL-USD", settings=settings,
                rate_limit="6/second")
    for name in ("BTC-USD", "ETH-USD", "SOL-USD"):
        fake.set_quote(name, 10.0)
    h.poll(4)  # 12 requests wanted at once
    times = [t for t, _, _ in fake.requests_to("/ticker")]
    assert len(times) == 12
    for t in times:  # never more than 6 in any second
        assert sum(1 for u in times if t <= u < t + 0.95) <= 6


def test_api_key_in_the_query_never_reaches_the_logs(
    make_harness: MakeHarness, fake: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    h = make_harness("generic", "AAPL", env={"PRICEPIPE_GENERIC_API_KEY": "sekret-123",
                                            "PRICEPIPE_GENERIC_API_KEY_PARAM": "apikey"})
    fake.set_quote("AAPL", 190.0)
    fake.script("500", "503")  # urllib3 logs both retries with the URL
    with caplog.at_level("DEBUG"):
        h.poll(1)
    assert h.total() == 1
    assert any("apikey=sekret-123" in path for _, path, _ in fake.log)  # it was sent
    assert "apikey=****" in caplog.text
    assert "sekret-123" not in caplog.text
