"""The pure parts of the websocket feeds: the per-symbol trade sequencer and
the repair plans (every id is published exactly once, in order, or reported
lost with a reason, however the live stream, reconnects and repairs
interleave), the reconnect backoff and the venues' subscriptions."""

from __future__ import annotations

import itertools
import random
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from pricepipe.events import Side
from pricepipe.publisher.feeds.adapters import BinanceAdapter, CoinbaseAdapter
from pricepipe.publisher.feeds.backoff import Backoff
from pricepipe.publisher.feeds.plans import BackwardPlan, ForwardPlan
from pricepipe.publisher.feeds.sequencer import (
    Detected,
    Filled,
    Gap,
    Lost,
    Publish,
    RepairResult,
    Step,
    TradeSequencer,
)
from pricepipe.venues.messages import VenueTrade


def ids(step: Step[Any]) -> list[int]:
    return [a.trade_id for a in step.actions if isinstance(a, Publish)]


def complete(gap: Gap, have: range | set[int], *, hi: int | None = None) -> RepairResult[int]:
    """A repair that answered for the whole gap with the ids the venue ``have``s."""
    top = gap.until_id if gap.until_id is not None else (hi if hi is not None else gap.first_id)
    got = [(i, i) for i in sorted(have) if gap.first_id <= i < top]
    return RepairResult(gap, got, gap.first_id, top)


def test_in_order_trades_go_straight_out_and_repeats_are_dropped() -> None:
    seq: TradeSequencer[int] = TradeSequencer()
    assert ids(seq.live(100, 100)) == [100]  # the first trade sets the start
    assert ids(seq.live(101, 101)) == [101]
    again = seq.live(101, 101)
    assert ids(again) == [] and again.duplicates == 1 and again.repair is None
    assert seq.live(50, 50).duplicates == 1


def test_a_gap_waits_for_its_repair_then_everything_goes_out_in_order() -> None:
    seq: TradeSequencer[int] = TradeSequencer(last_id=10)
    step = seq.live(14, 14)
    assert ids(step) == [] and step.repair == Gap(11, 14, 1)
    assert step.actions == [Detected(11, 13)]
    assert ids(seq.live(15, 15)) == []  # waits behind the gap
    assert ids(seq.live(12, 12)) == []  # the live stream delivers one late: still a hole at 11
    done = seq.repaired(complete(step.repair, range(11, 14)))
    assert ids(done) == [11, 12, 13, 14, 15]
    assert done.duplicates == 1  # 12 came both ways
    assert done.actions[-1] == Filled(11, 13, 2)
    assert seq.last_id == 15 and not seq.waiting and seq.repairing is None


def test_ids_the_venue_does_not_serve_are_reported_lost() -> None:
    seq: TradeSequencer[int] = TradeSequencer(last_id=10)
    gap = seq.live(20, 20).repair
    assert gap is not None
    done = seq.repaired(complete(gap, {11, 12, 15, 19}))
    assert ids(done) == [11, 12, 15, 19, 20]
    lost = [a for a in done.actions if isinstance(a, Lost)]
    assert lost == [Lost(13, 14, "not_served"), Lost(16, 18, "not_served")]
    assert done.actions[-1] == Filled(11, 19, 4)


def test_a_repair_cut_short_reports_the_rest_with_its_reason() -> None:
    seq: TradeSequencer[int] = TradeSequencer(last_id=10)
    gap = seq.live(30, 30).repair
    assert gap is not None
    # Forward paging got 11..19, then the budget ran out.
    result = RepairResult(gap, [(i, i) for i in range(11, 20)], 11, 20, "budget")
    done = seq.repaired(result)
    assert ids(done) == [*range(11, 20), 30]
    assert [a for a in done.actions if isinstance(a, Lost)] == [Lost(20, 29, "budget")]
    # Backward paging got 25..29, then an error: the older part is lost.
    seq2: TradeSequencer[int] = TradeSequencer(last_id=10)
    gap2 = seq2.live(30, 30).repair
    assert gap2 is not None
    done2 = seq2.repaired(RepairResult(gap2, [(i, i) for i in range(25, 30)], 25, 30, "error"))
    assert [a for a in done2.actions if isinstance(a, Lost)] == [Lost(11, 24, "error")]
    assert ids(done2) == [25, 26, 27, 28, 29, 30]


def test_a_reconnect_catches_up_and_says_what_it_found() -> None:
    seq: TradeSequencer[int] = TradeSequencer(last_id=10)
    step = seq.reconnected()
    assert step.repair == Gap(11, None, 1) and step.actions == []  # nothing known missing yet
    assert ids(seq.live(11, 11)) == [11]  # no jump: published at once
    done = seq.repaired(complete(step.repair, range(11, 14), hi=14))
    assert ids(done) == [12, 13]
    assert done.actions[0] == Detected(11, 13) and done.actions[-1] == Filled(11, 13, 2)
    # Nothing missed: no status at all.
    quiet = seq.reconnected()
    assert quiet.repair is not None
    assert seq.repaired(complete(quiet.repair, set(), hi=14)).actions == []


def test_a_reconnect_during_a_repair_catches_up_after_it() -> None:
    seq: TradeSequencer[int] = TradeSequencer(last_id=10)
    gap = seq.live(13, 13).repair
    assert gap is not None and seq.reconnected().repair is None
    done = seq.repaired(complete(gap, range(11, 13)))
    assert ids(done) == [11, 12, 13] and done.repair == Gap(14, None, 2)


def test_heartbeats_reveal_a_lost_last_trade() -> None:
    seq: TradeSequencer[int] = TradeSequencer()
    assert seq.heartbeat(20).actions == [] and seq.last_id == 20  # the starting point
    assert seq.heartbeat(21).repair is None  # the match may still be coming
    step = seq.heartbeat(21)
    assert step.repair == Gap(21, 22, 1) and step.actions == [Detected(21, 21)]
    assert ids(seq.repaired(complete(step.repair, {21}))) == [21]
    assert seq.heartbeat(21).repair is None


def test_too_many_waiting_trades_give_the_gap_up() -> None:
    seq: TradeSequencer[int] = TradeSequencer(last_id=10, max_waiting=3)
    gap = seq.live(20, 20).repair
    for i in (21, 22):
        assert ids(seq.live(i, i)) == []
    step = seq.live(23, 23)
    assert step.actions[0] == Lost(11, 19, "overflow")
    assert ids(step) == [20, 21, 22, 23]
    assert gap is not None and seq.repaired(complete(gap, range(11, 20))).actions == []  # late


def test_plans_page_forward_and_backward() -> None:
    def trade(i: int) -> VenueTrade:
        return VenueTrade("X", i, 1.0, 1.0, 1_700_000_000_000_000, Side.BUY)

    forward = ForwardPlan("X", Gap(100, 2600), max_trades=10_000)
    requests = []
    while (request := forward.next_request()) is not None:
        requests.append(dict(request.params)["fromId"])
        start = int(requests[-1])
        forward.add([trade(i) for i in range(start, min(start + 1000, 2700))])
    assert requests == ["100", "1100", "2100"]
    result = forward.result()
    assert (result.covered_lo, result.covered_hi, result.reason) == (100, 2700, None)
    capped = ForwardPlan("X", Gap(100, None), max_trades=1000)
    capped.next_request()
    capped.add([trade(i) for i in range(100, 1100)])
    assert capped.next_request() is None and capped.result().reason == "budget"

    backward = BackwardPlan("X", Gap(100, 2600), max_trades=10_000)
    afters = []
    while (request := backward.next_request()) is not None:
        after = int(dict(request.params)["after"])
        afters.append(after)
        backward.add([trade(i) for i in range(after - 1, max(after - 1001, 50), -1)])
    assert afters == [2600, 1600, 600]
    back = backward.result()
    assert (back.covered_lo, back.covered_hi, back.reason) == (100, 2600, None)
    newest = BackwardPlan("X", Gap(100, None), max_trades=10_000)
    request = newest.next_request()
    assert request is not None and "after" not in dict(request.params)
    newest.add([trade(i) for i in range(150, 99, -1)])
    assert (newest.result().covered_lo, newest.result().covered_hi) == (100, 151)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_every_id_once_in_order_or_reported_lost(data: st.DataObject) -> None:
    """A venue with trades 1..n (some not served over REST) and a live
    stream that drops, repeats, reorders and reconnects: every id ends up
    published exactly once in increasing order, or reported lost."""
    n = data.draw(st.integers(5, 60))
    unserved = data.draw(st.sets(st.integers(2, n)))
    seq: TradeSequencer[int] = TradeSequencer(last_id=1, max_waiting=data.draw(
        st.integers(3, 100)))
    published: list[int] = []
    lost: list[int] = []
    pending: list[Gap] = []

    def run(step: Step[int]) -> None:
        for action in step.actions:
            if isinstance(action, Publish):
                published.append(action.trade_id)
            elif isinstance(action, Lost):
                lost.extend(range(action.first_id, action.last_id + 1))
        if step.repair is not None:
            pending.append(step.repair)

    def repair_one() -> None:
        gap = pending.pop(data.draw(st.integers(0, len(pending) - 1)))
        cut = data.draw(st.sampled_from([None, "budget", "error"]))
        top = gap.until_id if gap.until_id is not None else max(n + 2, gap.first_id)
        hi = top if cut is None else data.draw(st.integers(gap.first_id, top))
        have = [(i, i) for i in range(gap.first_id, hi) if i not in unserved]
        run(seq.repaired(RepairResult(gap, have, gap.first_id, hi, cut)))

    i = 2
    while i <= n:
        move = data.draw(st.sampled_from(["deliver", "drop", "repeat", "reconnect", "repair"]))
        if move == "deliver":
            run(seq.live(i, i))
            i += 1
        elif move == "drop":
            i += 1
        elif move == "repeat" and i > 2:
            old = data.draw(st.integers(2, i - 1))
            run(seq.live(old, old))
        elif move == "reconnect":
            run(seq.reconnected())
        elif move == "repair" and pending:
            repair_one()
    run(seq.live(n + 1, n + 1))  # a last trade shows any gap at the end
    while pending:
        repair_one()
    assert published == sorted(set(published))  # once each, in order
    assert not set(published) & set(lost)
    assert set(published) | set(lost) == set(range(2, n + 2))


def test_backoff_doubles_up_to_its_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(base_s=0.5, cap_s=4.0, rng=random.Random(7))
    delays = [backoff.next_s() for _ in range(8)]
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # jittered
    backoff.reset()
    assert backoff.next_s() <= 0.5


def test_venue_subscriptions_respect_the_venues_limits() -> None:
    binance = BinanceAdapter(ws_url="wss://x", base_url="https://x", rate_limit="1/second")
    symbols = [f"S{i:03d}USDT" for i in range(250)]
    messages = [orjson.loads(m) for m in binance.subscriptions(symbols, itertools.count(1))]
    assert [len(m["params"]) for m in messages] == [200, 200, 100]  # two streams a symbol
    assert [m["id"] for m in messages] == [1, 2, 3] and messages[0]["method"] == "SUBSCRIBE"
    assert messages[0]["params"][:2] == ["s000usdt@aggTrade", "s000usdt@bookTicker"]
    assert binance.connect_url(symbols) == "wss://x/stream"
    assert binance.max_symbols_per_connection * 2 == 1024 and binance.subscribe_rate_per_s < 5
    assert binance.lifetime_s is not None and binance.lifetime_s < 24 * 3600
    coinbase = CoinbaseAdapter(ws_url="wss://y", base_url="https://y", rate_limit="1/second")
    (only,) = [orjson.loads(m) for m in coinbase.subscriptions(["BTC-USD", "ETH-USD"],
                                                               itertools.count(1))]
    assert only == {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"],
                    "channels": ["matches", "ticker", "heartbeat"]}
    assert coinbase.liveness == ("heartbeat",) and binance.liveness == ("quotes",)
