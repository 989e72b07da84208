"""The group reader's checkpoint: its bookkeeping and file format, pure; and
the asyncio reader keeping one across a Redis restart while it was stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from pricepipe.embedded import RedisServer
from pricepipe.exceptions import CheckpointError
from pricepipe.keys import Keys
from pricepipe.streams import prev_id
from pricepipe.subscriber.client import AsyncGroupReader, Checkpoint, Delivery, Gap, GapReason
from pricepipe.subscriber.client.checkpoint import Mark, Progress, encode_marks, parse_marks

from .helpers import FAST, publish

S = "pp:{0}:trades:AAPL"


def test_the_mark_stays_below_what_was_got_and_not_acknowledged() -> None:
    p = Progress()
    p.seed(S, Mark("100-0", "100-0", "e1"))
    for i in (101, 102, 103):
        p.got(S, f"{i}-0", epoch="e1", pending=True)
    p.acked(S, "101-0")
    p.acked(S, "103-0")  # out of order: 102-0 is still in the application's hands
    assert p.marks() == {S: Mark(prev_id("102-0"), "103-0", "e1")}
    p.acked(S, "102-0")
    p.acked(S, "999-0")  # never got: ignored
    assert p.marks() == {S: Mark("103-0", "103-0", "e1")}
    # A gap it was told of is dealt with; filled deliveries are not pending.
    p.got(S, "104-0", epoch="e2", pending=False)
    p.told(S, "110-0", epoch="e2")
    mark = p.marks()[S]
    assert (mark.epoch, mark.handled < "110-0", mark.handled > "109-0") == ("e2", True, True)


def test_marks_round_trip_and_bad_files_are_refused() -> None:
    marks = {S: Mark("1-0", "2-3", "e1")}
    data = encode_marks("g", "c", marks)
    assert parse_marks(data, "g", "c") == marks
    with pytest.raises(CheckpointError, match="consumer 'c' of group 'g', not 'd'"):
        parse_marks(data, "g", "d")
    for bad in (b"", b"[]", b'{"version": 9}',
                b'{"version": 1, "group": "g", "consumer": "c", "streams": {"s": {}}}',
                b'{"version": 1, "group": "g", "consumer": "c", "streams": '
                b'{"s": {"handled": "x", "high": "1-0", "epoch": "e"}}}'):
        with pytest.raises(CheckpointError):
            parse_marks(bad, "g", "c")


def test_the_file_is_replaced_at_most_every_interval(tmp_path: Path) -> None:
    now = [0.0]
    cp = Checkpoint(tmp_path / "c.json", group="g", consumer="c", every_s=1.0,
                    clock=lambda: now[0])
    assert cp.load() == {} and cp.due()
    cp.save({S: Mark("1-0", "1-0", "e1")})
    assert not cp.due()
    now[0] = 1.0
    assert cp.due()
    assert cp.load() == {S: Mark("1-0", "1-0", "e1")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]  # no temporary left
    (tmp_path / "c.json").write_text("garbage")
    with pytest.raises(CheckpointError, match="c.json"):
        cp.load()


def test_an_async_group_reader_stopped_across_a_restart_is_told_from_its_checkpoint(
        make_redis_server: Callable[..., RedisServer], keys: Keys, tmp_path: Path) -> None:
    server = make_redis_server()
    group: dict[str, Any] = {"group": "g", "consumer": "c", "channels": ["trades"],
                             "settings": FAST, "checkpoint": tmp_path / "c.json"}
    sync_r = redis.Redis.from_url(server.url)

    async def life(n: int) -> list[Any]:
        # A socket_timeout, as strategies set: redis-py then sends through
        # wait_for, which can swallow aclose()'s cancel right after a restart.
        r: Any = redis.asyncio.Redis.from_url(server.url, socket_timeout=2)
        try:
            async with AsyncGroupReader(r, keys, ["AAPL"], start="0", **group) as reader:
                got = [await asyncio.wait_for(reader.get(), 10) for _ in range(n)]
                await reader.ack(*[d for d in got if isinstance(d, Delivery)])
                return got
        finally:
            await r.aclose()

    async def scenario() -> None:
        first = publish(sync_r, keys, "AAPL", 2)
        assert [d.entry_id for d in await life(2)] == first
        server.restart()  # the process that held the group is gone: it may have lost some
        later = publish(sync_r, keys, "AAPL", 2, start=5)
        gap, = await life(1)
        assert isinstance(gap, Gap) and (gap.reason, gap.after) == (GapReason.EPOCH, first[-1])
        assert all(gap.until > i for i in later)  # appended to the new server: in the gap
        newer = publish(sync_r, keys, "AAPL", 1, start=9)
        # The gap was handed out: the next life reads on, with no gap again.
        assert [d.entry_id for d in await life(1)] == newer

    try:
        asyncio.run(scenario())
    finally:
        sync_r.close()
