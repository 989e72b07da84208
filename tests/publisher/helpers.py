"""Helpers of the publisher tests: reading back what a publisher appended,
and an in-process websocket feed against a fake venue."""

from __future__ import annotations

import threading
from typing import Any

from pricepipe.codec import field_value, parse_quote, parse_trade
from pricepipe.events import Quote, Trade
from pricepipe.feedstatus import FeedStatus, decode_state, decode_status
from pricepipe.keys import Channel, Keys
from pricepipe.publisher.catalog import parse_symbols
from pricepipe.publisher.feeds.adapters import BinanceAdapter, CoinbaseAdapter
from pricepipe.publisher.feeds.feed import Feed
from pricepipe.publisher.metrics import PublisherMetrics
from pricepipe.publisher.settings import FeedSettings
from pricepipe.publisher.sink import StreamSink
from pricepipe.stop import StopRequest
from pricepipe.upstream import HttpOptions

from .fake_upstream import FakeUpstream
from .fake_venue import FakeVenue


def read_trades(r: Any, keys: Keys, symbol: str) -> list[Trade]:
    """Every trade in ``symbol``'s trades stream, oldest first."""
    return [parse_trade(symbol, field_value(fields, Channel.TRADES))
            for _, fields in r.xrange(keys.trades(symbol))]


def read_quotes(r: Any, keys: Keys, symbol: str) -> list[Quote]:
    """Every quote in ``symbol``'s quotes stream, oldest first."""
    return [parse_quote(symbol, field_value(fields, Channel.QUOTES))
            for _, fields in r.xrange(keys.quotes(symbol))]


def read_events(r: Any, keys: Keys, symbol: str) -> list[Trade | Quote]:
    """A symbol's trades and quotes merged in event-time order (a GBM symbol
    has one event per period, so no two share a time)."""
    both: list[Trade | Quote] = [*read_quotes(r, keys, symbol), *read_trades(r, keys, symbol)]
    return sorted(both, key=lambda e: (e.ts_us, isinstance(e, Trade)))


def stream_length(r: Any, keys: Keys, symbol: str) -> int:
    """How many events a symbol's trades and quotes streams hold together."""
    return int(r.xlen(keys.trades(symbol))) + int(r.xlen(keys.quotes(symbol)))


# --- websocket feeds -------------------------------------------------------------------------


def read_statuses(r: Any, keys: Keys, feed: str | None = None) -> list[FeedStatus]:
    """Every status event in the stream (of ``feed`` only, if given), oldest first."""
    out = [decode_status(fields) for _, fields in r.xrange(keys.feed_status())]
    return [s for s in out if feed is None or s.feed == feed]


def read_state(r: Any, keys: Keys, feed: str) -> dict[str, Any] | None:
    """A feed's current state, or None."""
    value = r.hget(keys.feed_states(), feed)
    return None if value is None else decode_state(value)


def status_story(statuses: list[FeedStatus]) -> list[str]:
    """The kinds of the events, in order (``gap_detected`` etc.)."""
    return [str(s.kind) for s in statuses]


def in_order(story: list[str], *kinds: str) -> bool:
    """Whether ``kinds`` appear in ``story`` in this order (not necessarily adjacent)."""
    it = iter(story)
    return all(kind in it for kind in kinds)


#: Feed settings for tests: short timeouts, fast reconnects.
FAST_FEED = FeedSettings(
    connect_timeout_s=5.0, reconnect_base_s=0.05, reconnect_cap_s=0.3,
    silence_timeout_s=1.5, ping_interval_s=5.0, ping_timeout_s=5.0, repair_max_wait_s=10.0,
    state_interval_s=0.1)

#: HTTP options for repairs in tests: short timeouts, one quick retry.
FAST_HTTP = HttpOptions(connect_timeout_s=1.0, read_timeout_s=3.0, retries=1,
                        backoff_factor_s=0.01, backoff_jitter_s=0.01, backoff_max_s=0.05,
                        retry_after_max_s=2.0, pool_size=2)


class FeedHarness:
    """An in-process feed (its own thread) against a fake venue, into a real Redis."""

    def __init__(self, r: Any, keys: Keys, venue: FakeVenue, rest: FakeUpstream, symbols: str,
                 *, settings: FeedSettings = FAST_FEED, http: HttpOptions = FAST_HTTP,
                 rate_limit: str = "1000/second") -> None:
        self.r, self.keys = r, keys
        adapter_class = BinanceAdapter if venue.kind == "binance" else CoinbaseAdapter
        self.adapter = adapter_class(ws_url=venue.url, base_url=rest.url, rate_limit=rate_limit)
        self.specs = parse_symbols(symbols, venue=venue.kind)
        self.stop = StopRequest()
        self.metrics = PublisherMetrics()
        self.sink = StreamSink(r, keys, stop=self.stop, metrics=self.metrics)
        self.feed = Feed(self.adapter, self.specs, self.sink, r=r, keys=keys, settings=settings,
                         stop=self.stop, metrics=self.metrics, http=http, log_interval_s=1.0)
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="feed", daemon=True)

    def _run(self) -> None:
        try:
            self.feed.run()
        except BaseException as exc:  # reported by close(): a crash fails the test
            self.errors.append(exc)

    def start(self) -> FeedHarness:
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the feed did not stop"
        assert not self.errors, self.errors

    @property
    def name(self) -> str:
        return self.feed.name

    def local(self, upstream: str) -> str:
        return next(s.symbol for s in self.specs if s.upstream_name == upstream)

    def trade_ids(self, upstream: str) -> list[int]:
        return [int(t.trade_id or -1) for t in read_trades(self.r, self.keys,
                                                           self.local(upstream))]

    def statuses(self) -> list[FeedStatus]:
        return read_statuses(self.r, self.keys, self.name)

    def story(self) -> list[str]:
        return status_story(self.statuses())

    def state(self) -> dict[str, Any] | None:
        return read_state(self.r, self.keys, self.name)
