"""No silent loss for strategy readers, on real servers: a plain reader behind
the trimming, a consumer group stopped past the hard cap, a Redis that
restarts from an older AOF or fails over to a replica that was behind. Each
gets a gap naming the range; with ``fill_gaps`` the reader delivers the range
from PostgreSQL, in stream order, exactly once, and carries on live."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import pytest
import redis

from pricepipe import streams
from pricepipe.bench.proxy import TcpProxy
from pricepipe.embedded import PostgresServer, RedisServer
from pricepipe.keys import PERSIST_GROUP, Channel, Keys
from pricepipe.subscriber.client import (
    Delivery,
    Gap,
    GapReason,
    GroupReader,
    PgHistory,
    StreamReader,
)
from tests.helpers import wait_until

from .helpers import FAST, insert_events, inside, take, trade

TRADES = ["trades"]
#: The group reader that the failover tests stop and start again.
STOPPED_GROUP: dict[str, Any] = {"group": "strat", "consumer": "c", "channels": TRADES,
                                 "settings": FAST}


def persist_all(r: redis.Redis, keys: Keys, db: Any, symbol: str) -> list[str]:
    """What a persist worker does, in short: every entry of the symbol's trades
    stream the persist group has not read yet into the table, then
    acknowledged. Their entry IDs."""
    stream = keys.trades(symbol)
    reply: Any = r.xreadgroup(PERSIST_GROUP, "w", {stream: ">"})
    rows = [row for _, entries in streams.reply_streams(reply) for row in entries]
    with db.cursor() as cur:  # idempotent, as the workers are (a restore redelivers)
        cur.execute("SELECT entry_id FROM trades WHERE symbol = %s AND entry_id = ANY(%s)",
                    (symbol, [streams.codec.pack_entry_id(i) for i, _ in rows]))
        stored = {streams.codec.unpack_entry_id(i) for (i,) in cur.fetchall()}
    rows = [row for row in rows if row[0].decode() not in stored]
    insert_events(db, [(streams.codec.parse_trade(symbol, fields[b"t"]), entry_id.decode())
                       for entry_id, fields in rows])
    ids = [entry_id.decode() for entry_id, _ in rows]
    if ids or stored:
        r.xack(stream, PERSIST_GROUP, *ids, *stored)
    return ids


def trim(r: redis.Redis, keys: Keys, symbol: str, *, max_age_ms: int | None = None) -> int:
    time.sleep(0.005)  # a window of 0 ms keeps what was appended this millisecond
    return streams.trim_stream(r, keys, keys.trades(symbol), window_ms=0,
                               max_age_ms=max_age_ms, persisted=True)


def publish(r: redis.Redis, keys: Keys, symbol: str, start: int, n: int) -> list[str]:
    streams.register_symbols(r, keys, [symbol])
    events = [trade(symbol, start + i) for i in range(n)]
    return [i.decode() for i in streams.append_events(r, keys, events)]


def test_a_plain_reader_behind_the_trimming_gets_the_gap_or_the_range_filled(
        r: redis.Redis, keys: Keys, db: Any) -> None:
    first = publish(r, keys, "AAPL", 0, 3)
    start = {"AAPL": {"trades": first[-1]}}
    later = publish(r, keys, "AAPL", 10, 5)
    persist_all(r, keys, db, "AAPL")
    assert trim(r, keys, "AAPL") == 8  # everything persisted and outside the window
    newest = publish(r, keys, "AAPL", 20, 2)
    with StreamReader(r, keys, ["AAPL"], channels=TRADES, start=start,
                      settings=FAST) as reader:
        gap, *rest = take(reader, 3)
        assert gap == Gap("AAPL", Channel.TRADES, first[-1], newest[0], GapReason.TRIMMED)
        assert [d.entry_id for d in rest] == newest
    with StreamReader(r, keys, ["AAPL"], channels=TRADES, start=start, settings=FAST,
                      fill_gaps=PgHistory(db)) as reader:
        got = take(reader, len(later) + 1 + len(newest))
        assert [d.entry_id for d in got[:5]] == later
        assert all(isinstance(d, Delivery) and d.filled for d in got[:5])
        assert got[5] == Gap("AAPL", Channel.TRADES, first[-1], newest[0], GapReason.TRIMMED,
                             filled=True)
        assert [(d.entry_id, d.filled) for d in got[6:]] == [(i, False) for i in newest]


def test_a_fill_rides_through_a_postgres_restart_when_it_may_reconnect(
        r: redis.Redis, keys: Keys, make_pg_server: Callable[..., PostgresServer]) -> None:
    server = make_pg_server()
    db = psycopg2.connect(server.url)
    try:
        first = publish(r, keys, "AAPL", 0, 1)
        later = publish(r, keys, "AAPL", 10, 4)
        persist_all(r, keys, db, "AAPL")
    finally:
        db.close()
    trim(r, keys, "AAPL")
    newest = publish(r, keys, "AAPL", 20, 1)
    server.stop()  # down when the reader finds the gap; back a moment later
    restart = threading.Timer(1.0, server.start)
    restart.start()
    history = PgHistory(connect=lambda: psycopg2.connect(server.url, connect_timeout=2))
    try:
        with StreamReader(r, keys, ["AAPL"], channels=TRADES,
                          start={"AAPL": {"trades": first[-1]}}, settings=FAST,
                          fill_gaps=history) as reader:
            got = take(reader, len(later) + 2, timeout_s=30)
    finally:
        restart.join()
    assert [d.entry_id for d in got[:4]] == later and all(d.filled for d in got[:4])
    assert isinstance(got[4], Gap) and got[4].filled
    assert got[5].entry_id == newest[0]
    with pytest.raises(TypeError):
        PgHistory()


def test_a_group_stopped_past_the_cap_catches_up_with_every_event_in_order(
        r: redis.Redis, keys: Keys, db: Any) -> None:
    ids = publish(r, keys, "AAPL", 0, 4)
    with GroupReader(r, keys, ["AAPL"], group="strat", consumer="c", channels=TRADES,
                     start="0", settings=FAST) as reader:
        got = take(reader, 2)
        reader.ack(*got)  # it handled two, then stopped
    ids += publish(r, keys, "AAPL", 10, 6)
    persist_all(r, keys, db, "AAPL")
    # The group holds the trimming back...
    assert trim(r, keys, "AAPL") == 2
    # ...until the hard cap passes it.
    assert trim(r, keys, "AAPL", max_age_ms=0) == 8
    ids += publish(r, keys, "AAPL", 20, 2)
    with GroupReader(r, keys, ["AAPL"], group="strat", consumer="c", channels=TRADES,
                     settings=FAST, fill_gaps=PgHistory(db)) as reader:
        got = take(reader, 8 + 1 + 2)
        events = [d for d in got if isinstance(d, Delivery)]
        assert [d.entry_id for d in events] == ids[2:]  # every one, in order, once
        (gap,) = [g for g in got if isinstance(g, Gap)]
        assert (gap.reason, gap.after, gap.filled) == (GapReason.TRIMMED, ids[1], True)
        reader.ack(*events)
        assert reader.get(timeout_s=0.3) is None  # reported once, not again


def test_a_restart_from_an_older_aof_is_an_epoch_gap(
        make_redis_server: Callable[..., RedisServer], keys: Keys, db: Any,
        tmp_path: Any) -> None:
    server = make_redis_server(extra_args=("--appendfsync", "always"))
    r = redis.Redis.from_url(server.url, socket_timeout=2)
    try:
        kept = publish(r, keys, "AAPL", 0, 3)
        backup = tmp_path / "aof"
        shutil.copytree(server.data_dir / "appendonlydir", backup)
        lost = publish(r, keys, "AAPL", 10, 3)  # in Redis, then lost with the restore
        persist_all(r, keys, db, "AAPL")  # ...but a worker had persisted them
        with StreamReader(r, keys, ["AAPL"], channels=TRADES, start="0", settings=FAST,
                          fill_gaps=PgHistory(db)) as reader:
            assert [d.entry_id for d in take(reader, 6)] == kept + lost
            server.stop()
            shutil.rmtree(server.data_dir / "appendonlydir")
            shutil.copytree(backup, server.data_dir / "appendonlydir")
            server.start()
            after = publish(r, keys, "AAPL", 20, 2)
            # The fill waits for the persist workers: what the restored
            # server holds of the gap reaches the history only through them.
            persist_all(r, keys, db, "AAPL")
            got = take(reader, 3)
            (gap,) = [g for g in got if isinstance(g, Gap)]
            assert gap.reason is GapReason.EPOCH and gap.filled
            assert gap.after == lost[-1]  # the reader's place; Redis went back to kept[-1]
            # Appended before the reader saw the restart, they are filled from
            # the history (before the gap); after it, read live (after it).
            events = [d for d in got if isinstance(d, Delivery)]
            assert [d.entry_id for d in events] == after
            assert all(d.filled == inside(gap, d.entry_id) for d in events)
    finally:
        r.close()


class Failover:
    """A primary and a replica whose replication link can be paused (to make
    the replica fall behind); clients reach the primary through a proxy that
    :meth:`promote` points at the replica once it is promoted."""

    def __init__(self, make_redis_server: Callable[..., RedisServer]) -> None:
        self.primary = make_redis_server()
        self.link = TcpProxy(self.primary.port)
        self.replica = make_redis_server(
            extra_args=("--replicaof", "127.0.0.1", str(self.link.port)))
        self.proxy = TcpProxy(self.primary.port)
        self.to_primary = redis.Redis.from_url(self.primary.url)
        # redis-py's sync/async union types
        self.to_replica: Any = redis.Redis.from_url(self.replica.url)
        self.through = redis.Redis.from_url(self.primary.url_at(self.proxy.port),
                                            socket_timeout=2)
        wait_until(lambda: self.to_replica.info("replication")["master_link_status"] == "up",
                   timeout_s=30)

    def synced(self, keys: Keys, n: int) -> None:
        wait_until(lambda: self.to_replica.xlen(keys.trades("AAPL")) == n, timeout_s=30)

    def promote(self) -> None:
        """The primary dies with what it had not sent; the replica takes over."""
        self.primary.kill()
        self.link.close()
        self.to_replica.replicaof("NO", "ONE")
        self.proxy.retarget(self.replica.port)

    def stop_group_through_failover(self, keys: Keys, db: Any, checkpoint: Any,
                                    group: dict[str, Any]) -> tuple[list[str], list[str]]:
        """A consumer with a checkpoint reads and acknowledges 3 entries and
        stops; meanwhile the replica misses 2 more (a persist worker stored
        them) and is promoted. Their entry IDs: (read, unreplicated)."""
        synced = publish(self.to_primary, keys, "AAPL", 0, 3)
        with GroupReader(self.through, keys, ["AAPL"], start="0", checkpoint=checkpoint,
                         **group) as reader:
            got = take(reader, 3)
            assert [d.entry_id for d in got] == synced
            reader.ack(*got)
        self.synced(keys, 3)
        wait_until(
            lambda: self.to_replica.xinfo_groups(keys.trades("AAPL"))[0]["pending"] == 0)
        self.link.pause()
        unreplicated = publish(self.to_primary, keys, "AAPL", 10, 2)
        persist_all(self.to_primary, keys, db, "AAPL")
        self.promote()
        return synced, unreplicated

    def close(self) -> None:
        self.through.close()
        self.to_primary.close()
        self.to_replica.close()
        self.proxy.close()
        self.link.close()


def test_a_failover_to_a_replica_that_was_behind_is_an_epoch_gap(
        make_redis_server: Callable[..., RedisServer], keys: Keys) -> None:
    f = Failover(make_redis_server)
    try:
        synced = publish(f.to_primary, keys, "AAPL", 0, 3)
        f.synced(keys, 3)
        with StreamReader(f.through, keys, ["AAPL"], channels=TRADES, start="0",
                          settings=FAST) as reader:
            assert [d.entry_id for d in take(reader, 3)] == synced
            f.link.pause()  # the replica falls behind...
            unreplicated = publish(f.to_primary, keys, "AAPL", 10, 2)
            assert [d.entry_id for d in take(reader, 2)] == unreplicated
            f.promote()  # ...and the primary dies with what it had not sent
            assert f.to_replica.xlen(keys.trades("AAPL")) == 3  # really lost
            after = publish(f.to_replica, keys, "AAPL", 20, 2)
            (gap,) = take(reader, 1, timeout_s=30)
            newer = publish(f.to_replica, keys, "AAPL", 30, 2)
            # After what the reader had, past what the new server held when
            # the reader saw the change.
            assert isinstance(gap, Gap) and (gap.after, gap.reason) == (unreplicated[-1],
                                                                        GapReason.EPOCH)
            assert not streams.entry_key(gap.until) > streams.entry_key(newer[0])
            outside = [i for i in after if not inside(gap, i)]
            assert [d.entry_id for d in take(reader, len(outside) + 2)] == outside + newer
    finally:
        f.close()


def test_a_cursor_behind_what_a_lagging_replica_holds_gets_the_lost_range(
        make_redis_server: Callable[..., RedisServer], keys: Keys) -> None:
    """The lost entries are a suffix of the old primary's stream: a cursor
    older than what the replica holds must not get a gap that ends at the
    next entry it holds, which would pass over them."""
    f = Failover(make_redis_server)
    try:
        synced = publish(f.to_primary, keys, "AAPL", 0, 3)
        f.synced(keys, 3)
        old_epoch = streams.epoch(f.to_primary, keys.trades("AAPL"))
        f.link.pause()
        unreplicated = publish(f.to_primary, keys, "AAPL", 10, 2)
        f.promote()
        # A strategy saved its cursor after the first entry, in the old epoch.
        start = {"AAPL": {"trades": synced[0], "epoch": old_epoch}}
        with StreamReader(f.through, keys, ["AAPL"], channels=TRADES, start=start,
                          settings=FAST) as reader:
            (gap,) = take(reader, 1)
            assert isinstance(gap, Gap) and (gap.after, gap.reason) == (synced[0],
                                                                        GapReason.EPOCH)
            assert all(inside(gap, i) for i in unreplicated)
            newer = publish(f.to_replica, keys, "AAPL", 30, 2)
            assert [d.entry_id for d in take(reader, 2)] == newer
    finally:
        f.close()


def test_a_group_stopped_through_a_failover_is_told_from_its_checkpoint(
        make_redis_server: Callable[..., RedisServer], keys: Keys, db: Any,
        tmp_path: Any) -> None:
    """The group's own state fails over with Redis: only the checkpoint file
    remembers the epoch the consumer last read in. Filling from PostgreSQL,
    the restarted consumer gets every entry, in order, exactly once."""
    f = Failover(make_redis_server)
    checkpoint = tmp_path / "strat-c.json"
    group = STOPPED_GROUP
    try:
        synced, unreplicated = f.stop_group_through_failover(keys, db, checkpoint, group)
        after = publish(f.to_replica, keys, "AAPL", 20, 2)
        persist_all(f.to_replica, keys, db, "AAPL")
        # Without the checkpoint, the promoted replica's group says nothing.
        with GroupReader(f.through, keys, ["AAPL"], **group) as blind:
            assert [d.entry_id for d in take(blind, 2)] == after
            assert blind.get(timeout_s=0.3) is None
        f.to_replica.xgroup_setid(keys.trades("AAPL"), "strat", synced[-1])  # undo that read
        with GroupReader(f.through, keys, ["AAPL"], checkpoint=checkpoint,
                         fill_gaps=PgHistory(db), **group) as reader:
            got = take(reader, 2 + 2 + 1)
            gap = got[4]
            assert isinstance(gap, Gap) and (gap.reason, gap.after, gap.filled) == (
                GapReason.EPOCH, synced[-1], True)
            assert [(d.entry_id, d.filled) for d in got[:4]] == [
                (i, True) for i in unreplicated + after]
            newer = publish(f.to_replica, keys, "AAPL", 30, 2)
            live = take(reader, 2)
            assert [(d.entry_id, d.filled) for d in live] == [(i, False) for i in newer]
            reader.ack(*live)
            assert reader.get(timeout_s=0.3) is None
        assert f.to_replica.xpending(keys.trades("AAPL"), "strat")["pending"] == 0
    finally:
        f.close()


def test_a_second_epoch_change_right_after_a_filled_one_fills_nothing_twice(
        make_redis_server: Callable[..., RedisServer], keys: Keys, db: Any,
        tmp_path: Any) -> None:
    """What the soak caught: a consumer restarted after a failover fills its
    epoch gap, and Redis restarts (another epoch) before the group hands it
    anything past that gap. The second gap starts where the first ended; the
    group's entries inside the first stay acknowledged unread."""
    f = Failover(make_redis_server)
    checkpoint = tmp_path / "strat-c.json"
    group = STOPPED_GROUP
    try:
        _, unreplicated = f.stop_group_through_failover(keys, db, checkpoint, group)
        # Enough that the group still holds some when the second change comes.
        after = publish(f.to_replica, keys, "AAPL", 20, 120)
        persist_all(f.to_replica, keys, db, "AAPL")
        with GroupReader(f.through, keys, ["AAPL"], checkpoint=checkpoint,
                         fill_gaps=PgHistory(db), **group) as reader:
            filled = take(reader, 2 + 120 + 1)
            first = filled[-1]
            assert isinstance(first, Gap) and first.filled
            # Restarted as the primary it now is: the AOF keeps the group; the
            # epoch changes.
            f.replica.extra_args = ()
            f.replica.restart()
            newer = publish(f.to_replica, keys, "AAPL", 200, 2)
            persist_all(f.to_replica, keys, db, "AAPL")
            # The new entries come live after the gap, or filled inside it
            # when the reader saw the restart only after they were appended.
            rest = take(reader, 3, timeout_s=30)
            (second,) = [item for item in rest if isinstance(item, Gap)]
            assert second.reason is GapReason.EPOCH
            assert not streams.entry_key(second.after) < streams.entry_key(after[-1])
            deliveries = [d for d in [*filled, *rest] if isinstance(d, Delivery)]
            ids = [d.entry_id for d in deliveries]
            assert ids == unreplicated + after + newer  # each once, in order
            reader.ack(*deliveries)
            assert reader.get(timeout_s=0.3) is None
    finally:
        f.close()
