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

from .helpers import FAST, insert_events, take, trade

TRADES = ["trades"]


def persist_all(r: redis.Redis, keys: Keys, db: Any, symbol: str) -> list[str]:
    """What a persist worker does, in short: every entry of the symbol's trades
    stream into the table, then acknowledged. The stream's entry IDs."""
    stream = keys.trades(symbol)
    rows: Any = r.xrange(stream)
    insert_events(db, [(streams.codec.parse_trade(symbol, fields[b"t"]), entry_id.decode())
                       for entry_id, fields in rows])
    ids = [entry_id.decode() for entry_id, _ in rows]
    r.xreadgroup(PERSIST_GROUP, "w", {stream: ">"})
    if ids:
        r.xack(stream, PERSIST_GROUP, *ids)
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
            got = take(reader, 3)
            gap = got[0]
            assert isinstance(gap, Gap) and gap.reason is GapReason.EPOCH and gap.filled
            assert gap.after == lost[-1]  # the reader's place; Redis went back to kept[-1]
            assert [d.entry_id for d in got[1:]] == after
    finally:
        r.close()


def test_a_failover_to_a_replica_that_was_behind_is_an_epoch_gap(
        make_redis_server: Callable[..., RedisServer], keys: Keys) -> None:
    primary = make_redis_server()
    link = TcpProxy(primary.port)  # the replication link, paused to make the replica lag
    replica = make_redis_server(extra_args=("--replicaof", "127.0.0.1", str(link.port)))
    proxy = TcpProxy(primary.port)
    to_primary = redis.Redis.from_url(primary.url)
    to_replica: Any = redis.Redis.from_url(replica.url)  # redis-py's sync/async union types
    through = redis.Redis.from_url(primary.url_at(proxy.port), socket_timeout=2)
    try:
        wait_until(lambda: to_replica.info("replication")["master_link_status"] == "up",
                   timeout_s=30)
        synced = publish(to_primary, keys, "AAPL", 0, 3)
        wait_until(lambda: to_replica.xlen(keys.trades("AAPL")) == 3, timeout_s=30)
        with StreamReader(through, keys, ["AAPL"], channels=TRADES, start="0",
                          settings=FAST) as reader:
            assert [d.entry_id for d in take(reader, 3)] == synced
            link.pause()  # the replica falls behind...
            unreplicated = publish(to_primary, keys, "AAPL", 10, 2)
            assert [d.entry_id for d in take(reader, 2)] == unreplicated
            primary.kill()  # ...and the primary dies with what it had not sent
            link.close()
            to_replica.replicaof("NO", "ONE")
            assert to_replica.xlen(keys.trades("AAPL")) == 3  # really lost
            proxy.retarget(replica.port)
            after = publish(to_replica, keys, "AAPL", 20, 2)
            gap, *rest = take(reader, 3, timeout_s=30)
            # After what the reader had; up to the first entry it reads next
            # (or, when it reconnected before that was appended, the time then).
            assert isinstance(gap, Gap) and (gap.after, gap.reason) == (unreplicated[-1],
                                                                        GapReason.EPOCH)
            assert not streams.entry_key(gap.until) > streams.entry_key(after[0])
            assert [d.entry_id for d in rest] == after
    finally:
        through.close()
        to_primary.close()
        to_replica.close()
        proxy.close()
        link.close()
