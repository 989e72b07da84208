"""Websocket feeds against fake venues that are real sockets (a websockets
server and an HTTP server on loopback) speaking Binance's and Coinbase's
documented messages, and misbehaving on cue: closing abruptly, going
silent, skipping trades, repeating messages, sending malformed JSON,
refusing a subscription, serving the REST repair slowly, with 429 or not at
all. Every test checks: no crash, every trade the venue served published
exactly once in id order, gaps repaired or reported, status events in
order, recovery without a restart."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from pricepipe.events import Side
from pricepipe.feedstatus import FeedEvent
from pricepipe.keys import Keys

from ..helpers import wait_until
from .fake_upstream import FakeUpstream
from .fake_venue import FakeVenue
from .helpers import FAST_FEED, FAST_HTTP, FeedHarness, in_order, read_quotes, read_trades

SYMBOL = {"binance": "BTCUSDT", "coinbase": "BTC-USD"}
QUALIFIED = {"binance": "BINANCE:BTCUSDT", "coinbase": "COINBASE:BTC-USD"}

MakeFeed = Callable[..., FeedHarness]


@pytest.fixture
def make_feed(r: Any, keys: Keys, venue: FakeVenue, fake: FakeUpstream) -> Iterator[MakeFeed]:
    made: list[FeedHarness] = []

    def make(symbols: str | None = None, **kwargs: Any) -> FeedHarness:
        harness = FeedHarness(r, keys, venue, fake, symbols or SYMBOL[venue.kind], **kwargs)
        made.append(harness.start())
        wait_until(venue.subscribed, timeout_s=30)
        return harness

    yield make
    for harness in made:
        if harness.thread.is_alive():
            harness.close()


def served_ids(fake: FakeUpstream, symbol: str) -> list[int]:
    with fake.lock:
        return [t.trade_id for t in fake.trades.get(symbol, [])]


def wait_for_all(feed: FeedHarness, fake: FakeUpstream, symbol: str) -> None:
    """Until every trade of the tape is in the stream (then check it is once each)."""
    wait_until(lambda: set(feed.trade_ids(symbol)) >= set(served_ids(fake, symbol)),
               timeout_s=30)


def wait_story(feed: FeedHarness, *kinds: str) -> None:
    """Until the feed's status events hold ``kinds`` in this order: a repair's
    status is written after its trades, so it may trail them."""
    wait_until(lambda: in_order(feed.story(), *kinds), timeout_s=30)


def test_trades_and_quotes_go_out_once_each_under_venue_qualified_names(
        make_feed: MakeFeed, venue: FakeVenue, fake: FakeUpstream, r: Any, keys: Keys) -> None:
    symbol = SYMBOL[venue.kind]
    feed = make_feed()
    venue.quote(symbol, 64999.5, 65000.5, repeat=2)  # a repeated message: one quote
    venue.trade(symbol, 65000.5, qty=0.25)                 # the aggressor bought
    venue.trade(symbol, 64999.5, qty=0.5, buyer_maker=True, repeat=2)  # sold; sent twice
    venue.quote(symbol, 65000.0, 65001.0)
    wait_until(lambda: len(read_quotes(r, keys, QUALIFIED[venue.kind])) >= 2 and
               len(feed.trade_ids(symbol)) >= 2)
    feed.close()
    trades = read_trades(r, keys, QUALIFIED[venue.kind])
    assert [(t.price, t.size, t.side, t.source) for t in trades] == [
        (65000.5, 0.25, Side.BUY, f"{venue.kind}-ws"), (64999.5, 0.5, Side.SELL,
                                                        f"{venue.kind}-ws")]
    assert [int(t.trade_id or 0) for t in trades] == served_ids(fake, symbol)
    assert all(t.recv_ts_us and t.ts_us <= t.recv_ts_us for t in trades)
    quotes = read_quotes(r, keys, QUALIFIED[venue.kind])
    assert [(q.bid, q.bid_size, q.ask, q.ask_size) for q in quotes] == [
        (64999.5, 1.5, 65000.5, 2.5), (65000.0, 1.5, 65001.0, 2.5)]
    state = feed.state()
    assert state is not None and state["state"] == "stopped"
    assert state["counts"]["trades"] == 2 and state["counts"]["duplicates"] >= 2
    assert state["symbols"] == [QUALIFIED[venue.kind]] and state["venue"] == venue.kind
    assert feed.story()[0] == "connected" and feed.story()[-1] == "disconnected"


def test_skipped_trades_are_repaired_from_rest_in_id_order(
        make_feed: MakeFeed, venue: FakeVenue, fake: FakeUpstream) -> None:
    symbol = SYMBOL[venue.kind]
    feed = make_feed()
    for i in range(3):
        venue.trade(symbol, 100.0 + i)
    wait_until(lambda: len(feed.trade_ids(symbol)) == 3)
    skipped = [venue.trade(symbol, 200.0 + i, deliver=False) for i in range(4)]
    venue.trade(symbol, 300.0)  # shows the gap
    wait_for_all(feed, fake, symbol)
    assert feed.trade_ids(symbol) == served_ids(fake, symbol)  # once each, in order
    wait_story(feed, "connected", "gap_detected", "gap_repaired")
    story = feed.story()
    detected = next(s for s in feed.statuses() if s.kind is FeedEvent.GAP_DETECTED)
    repaired = next(s for s in feed.statuses() if s.kind is FeedEvent.GAP_REPAIRED)
    assert (detected.first_id, detected.last_id) == (skipped[0], skipped[-1])
    assert (repaired.first_id, repaired.last_id, repaired.trades) == (skipped[0], skipped[-1], 4)
    assert detected.symbol == repaired.symbol == QUALIFIED[venue.kind]
    assert "gap_unrepairable" not in story
    feed.close()
    assert feed.metrics.value("pricepipe_feed_trades_repaired", feed=feed.name) == 4


def test_an_abrupt_close_reconnects_resubscribes_and_catches_up(
        make_feed: MakeFeed, venue: FakeVenue, fake: FakeUpstream) -> None:
    symbol = SYMBOL[venue.kind]
    feed = make_feed()
    venue.trade(symbol, 100.0)
    wait_until(lambda: len(feed.trade_ids(symbol)) == 1)
    venue.drop()
    # Traded while the feed was away: on no connection.
    missed = [venue.trade(symbol, 101.0 + i, deliver=False) for i in range(3)]
    wait_until(lambda: venue.accepted >= 2 and venue.subscribed(), timeout_s=30)
    venue.trade(symbol, 200.0)
    wait_for_all(feed, fake, symbol)
    assert feed.trade_ids(symbol) == served_ids(fake, symbol)
    wait_story(feed, "connected", "disconnected", "connected", "gap_detected", "gap_repaired")
    gap = next(s for s in feed.statuses() if s.kind is FeedEvent.GAP_DETECTED)
    assert gap.first_id == missed[0] and (gap.last_id or 0) >= missed[-1]
    assert len(venue.subscriptions) >= 2  # subscribed again on the new connection
    feed.close()
    state = feed.state()
    assert state is not None and state["counts"]["reconnects"] >= 1


def test_a_silent_connection_is_noticed_and_replaced(
        make_feed: MakeFeed, venue: FakeVenue, fake: FakeUpstream) -> None:
    symbol = SYMBOL[venue.kind]
    feed = make_feed(settings=replace(FAST_FEED, silence_timeout_s=0.6))
    venue.quote(symbol, 99.0, 101.0)
    venue.trade(symbol, 100.0)
    wait_until(lambda: len(feed.trade_ids(symbol)) == 1)
    venue.silence()  # open, but says nothing more
    venue.trade(symbol, 100.5)  # not heard: the connection is silent
    wait_until(lambda: "stale" in feed.story() and venue.subscribed(), timeout_s=30)
    venue.quote(symbol, 99.5, 101.5)
    venue.trade(symbol, 101.0)
    wait_for_all(feed, fake, symbol)
    assert feed.trade_ids(symbol) == served_ids(fake, symbol)
    story = feed.story()
    assert in_order(story, "connected", "stale", "disconnected", "connected"), story
    stale = next(s for s in feed.statuses() if s.kind is FeedEvent.STALE)
    assert stale.reason == ("quotes" if venue.kind == "binance" else "heartbeat")
    assert next(s for s in feed.statuses() if s.kind is FeedEvent.DISCONNECTED).reason == \
        "silent"
    feed.close()


def test_malformed_and_unknown_messages_are_counted_and_skipped(
        make_feed: MakeFeed, venue: FakeVenue, fake: FakeUpstream) -> None:
    symbol = SYMBOL[venue.kind]
    feed = make_feed()
    venue.send_raw('{"stream": "btcusdt@aggTrade", "data": {"e": "aggTrade"')  # cut short
    venue.send_raw("not json at all")
    venue.send_raw('{"stream": "btcusdt@kline_1m", "data": {"e": "kline"}}'
                   if venue.kind == "binance" else '{"type": "l2update"}')
    venue.send_raw('{"stream": "x", "data": {"e": "aggTrade", "s": "BTCUSDT", "a": 1}}'
                   if venue.kind == "binance" else
                   '{"type": "match", "product_id": "BTC-USD", "trade_id": 1}')
    venue.trade(symbol, 100.0)
    venue.trade(symbol, 101.0)
    wait_for_all(feed, fake, symbol)
    feed.close()
    assert feed.trade_ids(symbol) == served_ids(fake, symbol)
    state = feed.state()
    assert state is not None
    assert state["counts"]["malformed"] == 3 and state["counts"]["unknown"] >= 1
    assert feed.metrics.value("pricepipe_feed_messages", feed=feed.name, kind="malformed") == 3
    assert feed.story().count("connected") == 1  # never reconnected for it


def test_a_refused_subscription_is_reported_and_retried(
        r: Any, keys: Keys, venue: FakeVenue, fake: FakeUpstream) -> None:
    symbol = SYMBOL[venue.kind]
    venue.refuse(1)
    feed = FeedHarness(r, keys, venue, fake, symbol).start()
    try:
        wait_until(lambda: venue.accepted >= 2 and venue.subscribed(), timeout_s=30)
        venue.trade(symbol, 100.0)
        wait_for_all(feed, fake, symbol)
    finally:
        feed.close()
    story = feed.story()
    assert in_order(story, "connected", "subscription_refused", "disconnected", "connected")
    refused = next(s for s in feed.statuses() if s.kind is FeedEvent.SUBSCRIPTION_REFUSED)
    assert refused.reason
    assert next(s for s in feed.statuses() if s.kind is FeedEvent.DISCONNECTED).reason == \
        "refused"
    assert feed.trade_ids(symbol) == served_ids(fake, symbol)


def test_a_slow_or_rate_limited_repair_still_repairs(
        make_feed: MakeFeed, venue: FakeVenue, fake: FakeUpstream) -> None:
    symbol = SYMBOL[venue.kind]
    feed = make_feed()
    venue.trade(symbol, 100.0)
    wait_until(lambda: len(feed.trade_ids(symbol)) == 1)
    fake.script("429:1", "slow")  # the repair's first answer: 429, then a slow one
    venue.trade(symbol, 101.0, deliver=False)
    for i in range(3):  # live trades keep coming while the repair waits
        venue.trade(symbol, 102.0 + i)
    wait_for_all(feed, fake, symbol)
    assert feed.trade_ids(symbol) == served_ids(fake, symbol)
    wait_story(feed, "gap_detected", "gap_repaired")
    assert any("429" not in path for _, path, _ in fake.log)
    feed.close()


def test_trades_the_venue_no_longer_serves_are_reported_lost(
        make_feed: MakeFeed, venue: FakeVenue, fake: FakeUpstream) -> None:
    symbol = SYMBOL[venue.kind]
    feed = make_feed()
    venue.trade(symbol, 100.0)
    wait_until(lambda: len(feed.trade_ids(symbol)) == 1)
    skipped = [venue.trade(symbol, 101.0 + i, deliver=False) for i in range(3)]
    fake.horizon[symbol] = skipped[2]  # the first two are no longer served over REST
    last = venue.trade(symbol, 200.0)
    wait_until(lambda: last in feed.trade_ids(symbol))
    assert feed.trade_ids(symbol) == [skipped[0] - 1, skipped[2], last]
    lost = next(s for s in feed.statuses() if s.kind is FeedEvent.GAP_UNREPAIRABLE)
    assert (lost.first_id, lost.last_id, lost.reason) == (skipped[0], skipped[1], "not_served")
    repaired = next(s for s in feed.statuses() if s.kind is FeedEvent.GAP_REPAIRED)
    assert repaired.trades == 1
    wait_story(feed, "gap_detected", "gap_unrepairable", "gap_repaired")
    feed.close()
    state = feed.state()
    assert state is not None and state["counts"]["trades_unrepairable"] == 2


def test_an_exhausted_budget_is_reported_not_hidden(
        make_feed: MakeFeed, venue: FakeVenue, fake: FakeUpstream) -> None:
    symbol = SYMBOL[venue.kind]
    feed = make_feed(settings=replace(FAST_FEED, repair_max_wait_s=0.5),
                     http=replace(FAST_HTTP, retries=0))
    venue.trade(symbol, 100.0)
    wait_until(lambda: len(feed.trade_ids(symbol)) == 1)
    fake.script("429:30")  # "come back in 30 s": longer than a repair may wait
    skipped = venue.trade(symbol, 101.0, deliver=False)
    last = venue.trade(symbol, 102.0)
    wait_until(lambda: last in feed.trade_ids(symbol))
    lost = next(s for s in feed.statuses() if s.kind is FeedEvent.GAP_UNREPAIRABLE)
    assert (lost.first_id, lost.last_id, lost.reason) == (skipped, skipped, "budget")
    assert feed.trade_ids(symbol) == [skipped - 1, last]
    feed.close()


def test_a_restart_picks_up_after_the_last_trade_in_the_stream(
        r: Any, keys: Keys, venue: FakeVenue, fake: FakeUpstream) -> None:
    symbol = SYMBOL[venue.kind]
    first = FeedHarness(r, keys, venue, fake, symbol).start()
    wait_until(venue.subscribed, timeout_s=30)
    venue.trade(symbol, 100.0)
    wait_until(lambda: len(first.trade_ids(symbol)) == 1)
    first.close()
    for i in range(3):  # traded while no feed ran
        venue.trade(symbol, 101.0 + i, deliver=False)
    second = FeedHarness(r, keys, venue, fake, symbol).start()
    try:
        wait_for_all(second, fake, symbol)
        assert second.trade_ids(symbol) == served_ids(fake, symbol)
    finally:
        second.close()
    # Repaired from REST (Coinbase's last_match may bring the newest one live).
    missed = served_ids(fake, symbol)[1:]
    assert any(s.kind is FeedEvent.GAP_REPAIRED and s.first_id == missed[0] and
               (s.last_id or 0) >= missed[-1] and (s.trades or 0) >= 2
               for s in second.statuses()), second.statuses()


@pytest.mark.parametrize("venue", ["coinbase"], indirect=True)
def test_a_coinbase_heartbeat_reveals_a_lost_last_trade(
        make_feed: MakeFeed, venue: FakeVenue, fake: FakeUpstream) -> None:
    feed = make_feed()
    venue.trade("BTC-USD", 100.0)
    wait_until(lambda: len(feed.trade_ids("BTC-USD")) == 1)
    venue.trade("BTC-USD", 101.0, deliver=False)  # and no trade after it to show the gap
    wait_for_all(feed, fake, "BTC-USD")
    assert feed.trade_ids("BTC-USD") == served_ids(fake, "BTC-USD")
    wait_story(feed, "gap_detected", "gap_repaired")
    feed.close()


@pytest.mark.parametrize("venue", ["binance"], indirect=True)
def test_binance_connections_are_replaced_before_their_lifetime_ends(
        make_feed: MakeFeed, venue: FakeVenue, fake: FakeUpstream) -> None:
    feed = make_feed(settings=replace(FAST_FEED, lifetime_s=0.5))
    venue.trade("BTCUSDT", 100.0)
    wait_until(lambda: venue.accepted >= 3, timeout_s=30)
    wait_until(venue.subscribed, timeout_s=30)
    venue.trade("BTCUSDT", 101.0)
    wait_for_all(feed, fake, "BTCUSDT")
    feed.close()
    assert feed.trade_ids("BTCUSDT") == served_ids(fake, "BTCUSDT")
    reasons = {s.reason for s in feed.statuses() if s.kind is FeedEvent.DISCONNECTED}
    assert "lifetime" in reasons


@pytest.mark.parametrize("venue", ["binance"], indirect=True)
def test_many_symbols_are_spread_over_connections(
        make_feed: MakeFeed, venue: FakeVenue, fake: FakeUpstream) -> None:
    symbols = ["BTCUSDT", "ETHUSDT", "BNBUSDT"]
    feed = make_feed(",".join(symbols), settings=replace(FAST_FEED, symbols_per_connection=2))
    wait_until(lambda: venue.open_connections == 2 and
               sum(1 for s in feed.statuses() if s.kind is FeedEvent.CONNECTED) == 2)
    for symbol in symbols:
        venue.trade(symbol, 10.0)
    for symbol in symbols:
        wait_for_all(feed, fake, symbol)
    feed.close()
    assert {s.connection for s in feed.statuses() if s.kind is FeedEvent.CONNECTED} == {0, 1}
