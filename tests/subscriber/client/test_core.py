"""The readers' decisions (:mod:`pricepipe.subscriber.client.core`) driven by a
scripted server, without any: the same plans run against redis-py's sync
and asyncio clients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from pricepipe import codec, streams
from pricepipe.events import Trade
from pricepipe.keys import Channel, Keys
from pricepipe.subscriber.client.checkpoint import Mark
from pricepipe.subscriber.client.core import (
    Call,
    EpochOf,
    GroupShard,
    LatestShard,
    Pipeline,
    Plan,
    Script,
    ack_plan,
    persisted_plan,
)
from pricepipe.subscriber.client.delivery import Delivery, Gap, GapReason
from pricepipe.subscriber.client.replay import Pacer
from pricepipe.subscriber.client.settings import ClientSettings

TS = 1_767_323_045_000_000
KEYS = Keys("pp", 4)
SETTINGS = ClientSettings(block_ms=100, count=10)
STREAM = KEYS.trades("AAPL")


def entry(i: int) -> tuple[bytes, dict[bytes, bytes]]:
    field, value = codec.encode_event(Trade("AAPL", TS + i, 10.0 + i, 1.0))
    return f"{100 + i}-0".encode(), {field: value.encode()}


class Server:
    """Answers each step by its kind; ``reads`` are the XREAD / XREADGROUP
    replies, in order. Records every step."""

    def __init__(self, *reads: Any, epoch: str = "e1", trimmed: bytes | None = None,
                 group_gaps: list[Any] | None = None, **answers: Any) -> None:
        self.reads = list(reads)
        self.epoch = epoch
        self.trimmed = trimmed
        self.group_gaps = group_gaps or []
        self.answers = answers
        self.steps: list[Any] = []

    def __call__(self, step: Any) -> Any:
        self.steps.append(step)
        if isinstance(step, EpochOf):
            return self.epoch
        if isinstance(step, Script):
            gaps, self.group_gaps = self.group_gaps, []
            return gaps
        if isinstance(step, Pipeline):
            return [self.answers.get(c.method, []) for c in step.calls]
        if step.method in ("xread", "xreadgroup"):
            reply = self.reads.pop(0)
            if isinstance(reply, Exception):
                return reply
            return reply
        if step.method == "hmget":
            return [self.trimmed] * len(step.args[1])
        if step.method == "time":
            return (1_767_323_999, 5000)
        return self.answers.get(step.method, [])


def drive(plan: Plan[Any], answer: Callable[[Any], Any]) -> Any:
    """Run ``plan``, answering each step with ``answer(step)`` (an exception
    is thrown into the plan, as the real drivers do); returns its result."""
    try:
        step = next(plan)
        while True:
            reply = answer(step)
            step = plan.throw(reply) if isinstance(reply, Exception) else plan.send(reply)
    except StopIteration as done:
        return done.value


def test_latest_shard_resolves_starts_then_advances_past_bad_entries() -> None:
    shard = LatestShard(KEYS, ["AAPL"], [Channel.TRADES], "$", SETTINGS)
    server = Server(xrevrange=[(b"99-0", {})])
    assert drive(shard.prepare(), server) == []
    assert isinstance(server.steps[0], Pipeline)
    assert shard.ids == {STREAM: "99-0"}  # "$" became an explicit ID
    bad = (b"102-0", {b"t": b"not a trade"})
    server = Server([(STREAM.encode(), [entry(0), entry(1), bad])])
    got = drive(shard.read(), server)
    assert server.steps[0] == Call("xread", ({STREAM: "99-0"},), {"count": 10, "block": 100})
    assert [d.entry_id for d in got] == ["100-0", "101-0"] and got[1].event.price == 11.0
    assert got[0].epoch == "e1"
    assert shard.ids == {STREAM: "102-0"}  # past the skipped bad entry
    resp3 = drive(shard.read(), Server({STREAM.encode(): [entry(3)]}))
    assert [d.entry_id for d in resp3] == ["103-0"]


def test_a_plain_reader_passed_by_trimming_gets_a_gap_before_what_follows() -> None:
    shard = LatestShard(KEYS, ["AAPL"], [Channel.TRADES], "$", SETTINGS)
    drive(shard.prepare(), Server(xrevrange=[(b"99-0", {})]))
    # 100-0 .. 104-0 were trimmed before this read: it starts at 105-0.
    got = drive(shard.read(), Server([(STREAM.encode(), [entry(5)])], trimmed=b"104-0"))
    assert got[0] == Gap("AAPL", Channel.TRADES, "99-0", "105-0", GapReason.TRIMMED)
    assert [d.entry_id for d in got[1:]] == ["105-0"]
    # A trim after the read (the record is newer than what was read) is no gap.
    got = drive(shard.read(), Server([(STREAM.encode(), [entry(6)])], trimmed=b"106-0"))
    assert [type(d) for d in got] == [Delivery]


def test_a_saved_cursor_from_another_epoch_or_behind_a_trim_gets_a_gap() -> None:
    start = {"AAPL": {"trades": "50-0", "epoch": "e0"}}
    shard = LatestShard(KEYS, ["AAPL"], [Channel.TRADES], start, SETTINGS)
    server = Server(epoch="e1", xrange=[(b"60-0", {})])
    assert drive(shard.prepare(), server) == [
        Gap("AAPL", Channel.TRADES, "50-0", "60-0", GapReason.EPOCH)]
    shard = LatestShard(KEYS, ["AAPL"], [Channel.TRADES], {"AAPL": {"trades": "50-0"}},
                        SETTINGS)
    # Nothing after the cursor any more: the gap ends at the server's time now.
    server = Server(trimmed=b"55-0")
    assert drive(shard.prepare(), server) == [
        Gap("AAPL", Channel.TRADES, "50-0", "1767323999005-0", GapReason.TRIMMED)]


def test_after_a_reconnect_to_another_redis_each_stream_gets_an_epoch_gap() -> None:
    shard = LatestShard(KEYS, ["AAPL"], [Channel.TRADES], "$", SETTINGS)
    drive(shard.prepare(), Server(xrevrange=[(b"99-0", {})]))
    shard.connection_lost()
    server = Server([(STREAM.encode(), [entry(7)])], epoch="e2", xrange=[(b"107-0", {})])
    got = drive(shard.read(), server)
    assert got[0] == Gap("AAPL", Channel.TRADES, "99-0", "107-0", GapReason.EPOCH)
    assert got[1].entry_id == "107-0" and got[1].epoch == "e2"
    # The same server after a reconnect: no gap.
    shard.connection_lost()
    got = drive(shard.read(), Server([(STREAM.encode(), [entry(8)])], epoch="e2"))
    assert [type(d) for d in got] == [Delivery]


def test_group_shard_reads_own_pending_first_then_new() -> None:
    shard = GroupShard(KEYS, ["AAPL"], [Channel.TRADES], group="g", consumer="c", start="0",
                       settings=SETTINGS)
    server = Server(xgroup_create=redis.ResponseError("BUSYGROUP exists"))
    assert drive(shard.prepare(), server) == []  # an existing group is fine
    assert shard.recovering
    server = Server([(STREAM.encode(), [entry(0)])])
    got = drive(shard.read(), server)
    assert server.steps[0].args[2] == {STREAM: "0"} and server.steps[0].kwargs["block"] is None
    assert [(d.entry_id, d.redelivered) for d in got] == [("100-0", True)]
    assert drive(shard.read(), Server([(STREAM.encode(), [])])) == []
    assert not shard.recovering
    server = Server([(STREAM.encode(), [entry(5)])])
    got = drive(shard.read(), server)
    assert server.steps[0].args[2] == {STREAM: ">"} and [d.redelivered for d in got] == [False]


def test_a_pending_entry_deleted_from_the_stream_is_acknowledged_and_reported() -> None:
    shard = GroupShard(KEYS, ["AAPL"], [Channel.TRADES], group="g", consumer="c", start="0",
                       settings=SETTINGS)
    server = Server([(STREAM.encode(), [entry(0), (b"101-0", None)])])
    got = drive(shard.read(), server)
    assert [d.entry_id for d in got if isinstance(d, Delivery)] == ["100-0"]
    gaps = [g for g in got if isinstance(g, Gap)]
    assert gaps == [Gap("AAPL", Channel.TRADES, streams.prev_id("101-0"), "101-1",
                        GapReason.DELETED)]
    assert Pipeline((Call("xack", (STREAM, "g", "101-0")),)) in server.steps


def test_a_group_gap_is_reported_and_covers_its_deleted_pending_entries() -> None:
    shard = GroupShard(KEYS, ["AAPL"], [Channel.TRADES], group="g", consumer="c", start="0",
                       settings=SETTINGS)
    field = streams.group_gap_field(STREAM, "g").encode()
    server = Server([(STREAM.encode(), [(b"101-0", None)])],
                    group_gaps=[field, b"100-5 102-0"])
    got = drive(shard.read(), server)
    assert got == [Gap("AAPL", Channel.TRADES, "100-5", "102-0", GapReason.TRIMMED)]


def test_a_group_gap_the_reader_is_past_is_dropped_or_shortened() -> None:
    # After a failover the promoted replica may still hold a gap record this
    # reader took (and filled) before: reporting it again would double it.
    shard = GroupShard(KEYS, ["AAPL"], [Channel.TRADES], group="g", consumer="c", start="$",
                       settings=SETTINGS)
    drive(shard.read(), Server([]))
    drive(shard.read(), Server([(STREAM.encode(), [entry(5)])]))
    assert shard.handed == {STREAM: "105-0"}
    field = streams.group_gap_field(STREAM, "g").encode()
    assert drive(shard.read(), Server([(STREAM.encode(), [])],
                                      group_gaps=[field, b"101-0 104-0"])) == []
    got = drive(shard.read(), Server([(STREAM.encode(), [])],
                                     group_gaps=[field, b"101-0 108-0"]))
    assert got == [Gap("AAPL", Channel.TRADES, "105-0", "108-0", GapReason.TRIMMED)]
    # The cap trimmed on while the reader filled that gap: the group had not
    # read on, so the next record starts where the last began.
    got = drive(shard.read(), Server([(STREAM.encode(), [])],
                                     group_gaps=[field, b"105-1 110-0"]))
    assert got == [Gap("AAPL", Channel.TRADES, streams.prev_id("108-0"), "110-0",
                       GapReason.TRIMMED)]


def test_after_a_lost_reply_the_group_reader_rereads_its_own_pending_entries() -> None:
    shard = GroupShard(KEYS, ["AAPL"], [Channel.TRADES], group="g", consumer="c", start="$",
                       settings=SETTINGS)
    drive(shard.read(), Server([]))  # pending list empty: now reading ">"
    got = drive(shard.read(), Server([(STREAM.encode(), [entry(1)])]))
    assert shard.handed == {STREAM: "101-0"}
    # The next read's reply is lost: Redis delivered 102-0 and 103-0 into it.
    shard.connection_lost()
    server = Server([(STREAM.encode(), [entry(2), entry(3)])])
    got = drive(shard.read(), server)
    read = [s for s in server.steps if isinstance(s, Call) and s.method == "xreadgroup"][0]
    assert read.args[2] == {STREAM: "101-0"}  # its pending list after what it handed out
    assert [(d.entry_id, d.redelivered) for d in got] == [("102-0", False), ("103-0", False)]


def test_group_shard_recreates_a_vanished_group_and_rereads_its_pending() -> None:
    shard = GroupShard(KEYS, ["AAPL"], [Channel.TRADES], group="g", consumer="c", start="$",
                       settings=SETTINGS)
    drive(shard.read(), Server([]))
    assert not shard.recovering
    server = Server(redis.ResponseError("NOGROUP No such key"))
    assert drive(shard.read(), server) == []
    assert any(isinstance(s, Call) and s.method == "xgroup_create" for s in server.steps)
    assert shard.recovering


def test_claiming_takes_only_other_consumers_entries() -> None:
    clock = iter([100.0, 101.0])  # 1 s apart: more than half of claim_idle_ms
    shard = GroupShard(KEYS, ["AAPL"], [Channel.TRADES], group="g", consumer="me", start="0",
                       settings=ClientSettings(block_ms=100, count=10, claim_idle_ms=1000),
                       clock=lambda: next(clock))
    drive(shard.read(), Server([]))
    server = Server([], xpending_range=[{"message_id": b"100-0", "consumer": b"gone"},
                                        {"message_id": b"101-0", "consumer": b"me"}],
                    xclaim=[entry(0)])
    got = drive(shard.read(), server)
    claim = [s for s in server.steps if isinstance(s, Call) and s.method == "xclaim"][0]
    assert claim.args[4] == [b"100-0"]
    assert [(d.entry_id, d.redelivered) for d in got] == [("100-0", True)]


def test_ack_groups_by_stream_in_one_round_trip_and_skips_filled_ones() -> None:
    deliveries = [Delivery("1-0", Trade("AAPL", TS, 1.0, 1.0)),
                  Delivery("2-0", Trade("AAPL", TS, 1.0, 1.0)),
                  Delivery("3-0", Trade("MSFT", TS, 1.0, 1.0)),
                  Delivery("4-0", Trade("MSFT", TS, 1.0, 1.0), filled=True)]
    server = Server()
    drive(ack_plan(KEYS, "g", deliveries), server)
    assert server.steps == [Pipeline((Call("xack", (KEYS.trades("AAPL"), "g", "1-0", "2-0")),
                                      Call("xack", (KEYS.trades("MSFT"), "g", "3-0"))))]


def test_pacer_maps_event_time_to_wall_time() -> None:
    pacer = Pacer(10.0)
    assert pacer.delay_s(TS, now_s=50.0) == 0.0
    assert abs(pacer.delay_s(TS + 1_000_000, now_s=50.0) - 0.1) < 1e-9  # 1 s at 10x
    assert pacer.delay_s(TS + 1_000_000, now_s=50.5) == 0.0  # already late: no wait
    assert Pacer(None).delay_s(TS + 10**9, now_s=0.0) == 0.0


def test_an_epoch_gap_runs_past_what_the_new_server_holds_after_the_cursor() -> None:
    # The cursor is behind what the new server holds: what it lost lies
    # somewhere after what it held of the old stream, and the reader cannot
    # tell where, so the gap runs past all of it and the reader reads on
    # after it (a gap up to 51-0 would pass over the lost ones silently).
    start = {"AAPL": {"trades": "50-0", "epoch": "e0"}}
    shard = LatestShard(KEYS, ["AAPL"], [Channel.TRADES], start, SETTINGS)
    server = Server(epoch="e1", xrevrange=[(b"80-0", {})], xrange=[])
    assert drive(shard.prepare(), server) == [
        Gap("AAPL", Channel.TRADES, "50-0", "1767323999005-0", GapReason.EPOCH)]
    assert shard.ids == {STREAM: "80-0"}


def test_a_group_resumed_from_a_mark_of_another_epoch_gets_a_gap_and_skips_inside_it() -> None:
    saved = {STREAM: Mark("103-0", "104-0", "e0")}
    shard = GroupShard(KEYS, ["AAPL"], [Channel.TRADES], group="g", consumer="c", start="0",
                       settings=SETTINGS, saved=saved)
    server = Server(epoch="e1", xrevrange=[(b"106-0", {})], xrange=[(b"109-0", {})])
    assert drive(shard.prepare(), server) == [
        Gap("AAPL", Channel.TRADES, "103-0", "109-0", GapReason.EPOCH)]
    assert shard.floors == saved  # the checkpoint starts from the saved mark
    # The new server's group hands out what the old one had handed this
    # consumer (flagged) and entries inside the gap (acknowledged, not delivered).
    server = Server([(STREAM.encode(), [entry(2), entry(5), entry(9)])])
    got = drive(shard.read(), server)
    assert [(d.entry_id, d.redelivered) for d in got] == [("102-0", True), ("109-0", True)]
    assert Pipeline((Call("xack", (STREAM, "g", "105-0")),)) in server.steps


def test_a_group_with_a_mark_of_the_same_epoch_starts_from_its_place_in_the_group() -> None:
    saved = {STREAM: Mark("90-0", "95-0", "e1")}
    shard = GroupShard(KEYS, ["AAPL"], [Channel.TRADES], group="g", consumer="c", start="0",
                       settings=SETTINGS, saved=saved)
    server = Server(epoch="e1", xinfo_groups=[{"name": b"g", "last-delivered-id": b"105-0"}],
                    xpending_range=[{"message_id": b"103-0", "consumer": b"c"}])
    assert drive(shard.prepare(), server) == []
    # Its own oldest pending entry is not handled yet: the mark is below it.
    assert shard.floors == {STREAM: Mark(streams.prev_id("103-0"), streams.prev_id("103-0"),
                                         "e1")}
    server = Server(epoch="e1", xinfo_groups=[{"name": b"g", "last-delivered-id": b"105-0"}])
    drive(shard.prepare(), server)
    assert shard.floors[STREAM].handled == "105-0"


def test_a_fill_of_an_epoch_gap_waits_for_the_persist_group() -> None:
    gap = Gap("AAPL", Channel.TRADES, "100-0", "120-0", GapReason.EPOCH)
    info = {"name": b"persist", "last-delivered-id": b"110-0", "pending": 0}

    def persisted(**answers: Any) -> bool:
        replies = [answers.get("xinfo_groups", [info]), answers.get("xpending", {"min": None}),
                   answers.get("xrevrange", [(b"110-0", {})])]
        return bool(drive(persisted_plan(KEYS, gap), lambda step: replies))

    assert persisted()  # read and acknowledged up to the last entry before the gap's end
    assert not persisted(xrevrange=[(b"115-0", {})])  # 115-0 not read yet
    assert not persisted(xpending={"min": b"108-0"})  # read, not yet committed
    assert persisted(xpending={"min": b"125-0"})
    assert persisted(xinfo_groups=[])  # nobody persists the stream: nothing to wait for
    assert drive(persisted_plan(KEYS, gap), lambda step: redis.ResponseError("no such key"))


def test_a_group_restarted_in_the_same_epoch_skips_what_its_last_gap_covered() -> None:
    # The last life was told of a gap up to 109-0 and stopped before the
    # group handed it the entries inside (it acknowledges them unread): they
    # must not come now, after the application has dealt with the range.
    saved = {STREAM: Mark(streams.prev_id("109-0"), streams.prev_id("109-0"), "e1")}
    shard = GroupShard(KEYS, ["AAPL"], [Channel.TRADES], group="g", consumer="c", start="0",
                       settings=SETTINGS, saved=saved)
    server = Server(epoch="e1", xinfo_groups=[{"name": b"g", "last-delivered-id": b"103-0"}])
    assert drive(shard.prepare(), server) == []
    assert shard.floors == saved
    drive(shard.read(), Server([(STREAM.encode(), [])]))  # its pending list is empty
    server = Server([(STREAM.encode(), [entry(5), entry(9)])])
    got = drive(shard.read(), server)
    assert [d.entry_id for d in got] == ["109-0"]
    assert Pipeline((Call("xack", (STREAM, "g", "105-0")),)) in server.steps
