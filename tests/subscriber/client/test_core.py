"""The readers' decisions (:mod:`pricepipe.subscriber.client.core`) driven by a
scripted reply per command, without any server: the same plans run against
redis-py's sync and asyncio clients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from pricepipe import codec
from pricepipe.events import Trade
from pricepipe.keys import Channel, Keys
from pricepipe.subscriber.client.core import Call, GroupShard, LatestShard, Pipeline, Plan, ack_plan
from pricepipe.subscriber.client.replay import Pacer
from pricepipe.subscriber.client.settings import ClientSettings

TS = 1_767_323_045_000_000
KEYS = Keys("pp", 4)
SETTINGS = ClientSettings(block_ms=100, count=10)


def entry(i: int) -> tuple[bytes, dict[bytes, bytes]]:
    field, value = codec.encode_event(Trade("AAPL", TS + i, 10.0 + i, 1.0))
    return f"{100 + i}-0".encode(), {field: value.encode()}


def drive(plan: Plan[Any], answer: Callable[[Any], Any]) -> tuple[Any, list[Any]]:
    """Run ``plan``, answering each step with ``answer(step)`` (an exception
    is thrown into the plan, as the real drivers do); returns the plan's
    result and the steps it took."""
    steps: list[Any] = []
    try:
        step = next(plan)
        while True:
            steps.append(step)
            reply = answer(step)
            step = plan.throw(reply) if isinstance(reply, Exception) else plan.send(reply)
    except StopIteration as done:
        return done.value, steps


def test_latest_shard_resolves_starts_then_advances_past_bad_entries() -> None:
    stream = KEYS.trades("AAPL")
    shard = LatestShard(KEYS, ["AAPL"], [Channel.TRADES], "$", SETTINGS)
    _, steps = drive(shard.prepare(), lambda step: [[(b"99-0", {})]])
    assert isinstance(steps[0], Pipeline) and steps[0].calls[0].method == "xrevrange"
    assert shard.ids == {stream: "99-0"}  # "$" became an explicit ID
    bad = (b"102-0", {b"t": b"not a trade"})
    got, steps = drive(shard.read(), lambda step: [(stream.encode(), [entry(0), entry(1), bad])])
    assert steps == [Call("xread", ({stream: "99-0"},), {"count": 10, "block": 100})]
    assert [d.entry_id for d in got] == ["100-0", "101-0"] and got[1].event.price == 11.0
    assert shard.ids == {stream: "102-0"}  # past the skipped bad entry
    resp3, _ = drive(shard.read(), lambda step: {stream.encode(): [entry(3)]})
    assert [d.entry_id for d in resp3] == ["103-0"]


def test_group_shard_reads_own_pending_first_acks_the_undeliverable_then_new() -> None:
    a = KEYS.trades("AAPL")
    shard = GroupShard(KEYS, ["AAPL"], [Channel.TRADES], group="g", consumer="c", start="0",
                       settings=SETTINGS)
    _, steps = drive(shard.prepare(), lambda step: redis.ResponseError("BUSYGROUP exists"))
    assert steps[0].method == "xgroup_create"  # an existing group is fine
    assert shard.recovering
    got, steps = drive(shard.read(), lambda step: [(a.encode(), [entry(0), (b"101-0", None)])])
    assert steps[0].args[2] == {a: "0"} and steps[0].kwargs["block"] is None
    assert [(d.entry_id, d.redelivered) for d in got] == [("100-0", True)]
    # Trimmed while pending: acknowledged without being delivered.
    assert steps[1] == Pipeline((Call("xack", (a, "g", "101-0")),))
    got, _ = drive(shard.read(), lambda step: [(a.encode(), [])])
    assert got == [] and not shard.recovering
    got, steps = drive(shard.read(), lambda step: [(a.encode(), [entry(5)])])
    assert steps[0].args[2] == {a: ">"} and [d.redelivered for d in got] == [False]


def test_group_shard_recreates_a_vanished_group_and_rereads_its_pending() -> None:
    shard = GroupShard(KEYS, ["AAPL"], [Channel.TRADES], group="g", consumer="c", start="$",
                       settings=SETTINGS)
    drive(shard.read(), lambda step: [])  # pending list empty: now reading ">"
    assert not shard.recovering
    replies = iter([redis.ResponseError("NOGROUP No such key"), True])
    got, steps = drive(shard.read(), lambda step: next(replies))
    assert got == [] and steps[1].method == "xgroup_create" and shard.recovering


def test_claiming_takes_only_other_consumers_entries() -> None:
    clock = iter([100.0, 101.0])  # 1 s apart: more than half of claim_idle_ms
    shard = GroupShard(KEYS, ["AAPL"], [Channel.TRADES], group="g", consumer="me", start="0",
                       settings=ClientSettings(block_ms=100, count=10, claim_idle_ms=1000),
                       clock=lambda: next(clock))
    drive(shard.read(), lambda step: [])

    def answer(step: Any) -> Any:
        if step.method == "xreadgroup":
            return []
        if step.method == "xpending_range":
            return [{"message_id": b"100-0", "consumer": b"gone"},
                    {"message_id": b"101-0", "consumer": b"me"}]
        assert step.method == "xclaim" and step.args[4] == [b"100-0"]
        return [entry(0)]

    got, _ = drive(shard.read(), answer)
    assert [(d.entry_id, d.redelivered) for d in got] == [("100-0", True)]


def test_ack_groups_by_stream_in_one_round_trip() -> None:
    from pricepipe.subscriber.client.delivery import Delivery

    ticks = [Delivery("1-0", Trade("AAPL", TS, 1.0, 1.0)),
             Delivery("2-0", Trade("AAPL", TS, 1.0, 1.0)),
             Delivery("3-0", Trade("MSFT", TS, 1.0, 1.0))]
    _, steps = drive(ack_plan(KEYS, "g", ticks), lambda step: [1, 1])
    assert steps == [Pipeline((Call("xack", (KEYS.trades("AAPL"), "g", "1-0", "2-0")),
                               Call("xack", (KEYS.trades("MSFT"), "g", "3-0"))))]


def test_pacer_maps_event_time_to_wall_time() -> None:
    pacer = Pacer(10.0)
    assert pacer.delay_s(TS, now_s=50.0) == 0.0
    assert abs(pacer.delay_s(TS + 1_000_000, now_s=50.0) - 0.1) < 1e-9  # 1 s at 10x
    assert pacer.delay_s(TS + 1_000_000, now_s=50.5) == 0.0  # already late: no wait
    assert Pacer(None).delay_s(TS + 10**9, now_s=0.0) == 0.0
