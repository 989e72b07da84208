"""A full Redis (``maxmemory`` + ``noeviction``) is survivable: the persist
worker trims first, keeps persisting, skips its heartbeat and bar messages,
leaves entries whose dead letter is refused pending; publishers wait (block)
or count (drop); once PostgreSQL is back every event Redis accepted is
persisted exactly once. Real servers throughout."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import redis

from pricepipe import streams
from pricepipe.backpressure import Policy, is_oom_error
from pricepipe.embedded import RedisServer
from pricepipe.events import BarState, Event, bucket_of
from pricepipe.keys import PERSIST_GROUP, Keys
from pricepipe.publisher.metrics import PublisherMetrics
from pricepipe.publisher.sink import StreamSink
from pricepipe.stop import StopRequest
from pricepipe.workers import deadletter
from pricepipe.workers.barfeed import BarFeed, FinalPass
from pricepipe.workers.batch import decode_entries
from pricepipe.workers.consumer import GroupConsumer
from pricepipe.workers.episode import Episode
from pricepipe.workers.persister import PersistWorker
from pricepipe.workers.sink import EventSink
from tests.helpers import slow_stage

from .helpers import (
    BASE_TS_US,
    bar_messages,
    duplicate_count,
    entries_added,
    entries_added_per_stream,
    fast_env,
    fast_settings,
    kinds,
    make_events,
    make_trades,
    pending_count,
    row_counts,
    row_counts_now,
    rows_per_stream,
    wait_until,
)

#: Small enough to fill in a second; several times what an empty Redis uses.
MAXMEMORY_BYTES = 6_000_000
#: How far beyond ``maxmemory`` a full Redis is made (see :func:`_tighten`).
FULL_MARGIN_BYTES = 64_000

SYMBOLS = ("AAPL", "MSFT", "SPY")


def _oom_count(r: Any) -> int:
    """Commands Redis refused for memory since it started (``INFO errorstats``)."""
    return int(r.info("errorstats").get("errorstat_OOM", {}).get("count", 0))


def _fill(r: Any, keys: Keys, symbols: tuple[str, ...]) -> list[Event]:
    """Append events until Redis refuses them; returns those it accepted."""
    stored: list[Event] = []
    start_us = BASE_TS_US
    while True:
        events = make_events(3000, symbols=symbols, start_us=start_us)
        start_us = events[-1].ts_us + 1_000_000
        results = streams.append_events(r, keys, events, raise_on_error=False)
        refused = [res for res in results if isinstance(res, Exception)]
        assert all(is_oom_error(res) for res in refused), refused
        stored.extend(e for e, res in zip(events, results, strict=True)
                      if not isinstance(res, Exception))
        if refused:
            return stored


def _tighten(r: Any) -> None:
    """Set ``maxmemory`` a margin below what Redis uses now. Redis refuses a
    write while it uses more than ``maxmemory`` (checked before the write),
    so once a fill is refused it is full by a few bytes only, and a client
    buffer freed meanwhile would let the next small write in: with the margin
    Redis stays full until something is trimmed.

    The fill's connections are closed first, so their query buffers (which
    Redis shrinks on its own clock, by far more than the margin) are already
    gone from what is measured; and it is measured again until a small
    write is refused."""
    r.connection_pool.disconnect()
    for _ in range(50):
        used = int(r.info("memory")["used_memory"])
        r.config_set("maxmemory", used - FULL_MARGIN_BYTES)
        try:
            r.set("tighten-probe", "x")
        except redis.exceptions.OutOfMemoryError:
            return
        r.delete("tighten-probe")
    raise AssertionError("Redis would not stay full")


@pytest.fixture
def small_redis(make_redis_server: Callable[..., RedisServer]) -> Iterator[tuple[Any, Keys]]:
    server = make_redis_server(maxmemory_bytes=MAXMEMORY_BYTES)
    client = redis.Redis.from_url(server.url)
    yield client, Keys("pp", 4)
    client.close()


def test_an_episode_is_logged_once_at_each_end_and_counted_throughout(
        caplog: pytest.LogCaptureFixture) -> None:
    episode = Episode("the heartbeat", "skipped")
    with caplog.at_level(logging.WARNING):
        assert episode.accepted() is False  # nothing to end
        assert [episode.refused(ValueError("full")) for _ in range(3)] == [True, False, False]
        assert episode.active and episode.current == 3
        assert episode.accepted() is True and not episode.active
        assert episode.accepted() is False
        assert episode.refused(ValueError("full again")) is True
    lines = [rec.getMessage() for rec in caplog.records]
    assert len(lines) == 3 and episode.refusals == 4
    assert "refuses the heartbeat" in lines[0] and "after 3 refusal(s)" in lines[1]


def test_the_worker_rides_out_a_full_redis_and_persists_everything_once(
        small_redis: tuple[Any, Keys], database_url: str, db: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    r, keys = small_redis
    streams.register_symbols(r, keys, SYMBOLS)
    poison_fields = {b"t": b"not a trade"}
    poison = r.xadd(keys.trades("AAPL"), poison_fields).decode()
    stored = _fill(r, keys, SYMBOLS)
    _tighten(r)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        r.set("probe", "x")  # full: even a small write is refused
    r.script_flush()  # the trim script must load into a full Redis, too
    refused_before = _oom_count(r)
    worker = PersistWorker(r, EventSink(database_url), GroupConsumer(r, keys, "w1"),
                           fast_settings(stream_window_s=0), burst=True)
    with caplog.at_level(logging.WARNING):
        assert worker.run(install_signals=False) == 0
    stats = worker.stats
    # The heartbeat at start and the poison's dead letter were refused; the
    # worker went on: every valid entry is one row, and trimming freed Redis.
    assert _oom_count(r) > refused_before
    assert stats.redis_full_refusals >= 2 and stats.dead_letters_deferred == 1
    assert "redis refuses the heartbeat" in caplog.text
    assert "redis refuses dead letters" in caplog.text
    assert row_counts(db) == kinds(stored) and duplicate_count(db) == 0
    assert stats.trimmed > 0
    r.set("probe", "x")  # room again
    # The refused dead letter left its entry pending, never acknowledged unkept.
    assert deadletter.count(r, keys) == 0
    assert [p["message_id"].decode() for p in r.xpending_range(
        keys.trades("AAPL"), PERSIST_GROUP, min="-", max="+", count=10)] == [poison]
    # Delivered again (claimed once idle), it is dead-lettered with its reason.
    again = PersistWorker(r, EventSink(database_url), GroupConsumer(r, keys, "w2"),
                          fast_settings(claim_idle_ms=0), burst=True)
    assert again.run(install_signals=False) == 0
    (letter,) = deadletter.list_dead_letters(r, keys)
    (want,) = decode_entries(keys, keys.trades("AAPL"), [(poison, poison_fields)]).rejects
    assert (letter.entry_id, letter.reason, letter.fields) == (poison, want.reason, poison_fields)
    assert pending_count(r, keys, SYMBOLS) == 0
    added = entries_added(r, keys)
    assert row_counts(db) == kinds(stored) == dict(added, trades=added["trades"] - 1)


def test_a_sink_registering_into_a_full_redis_drops_or_waits_by_its_policy(
        small_redis: tuple[Any, Keys]) -> None:
    r, keys = small_redis
    streams.register_symbols(r, keys, ["AAPL"])
    _fill(r, keys, ("AAPL",))
    _tighten(r)
    metrics = PublisherMetrics()
    sink = StreamSink(r, keys, stop=StopRequest(), metrics=metrics, policy=Policy.DROP,
                      check_interval_s=0.05)
    # XGROUP CREATE and SADD may grow memory: refused even for a new symbol's
    # first registration. Drop counts the events and registers nothing.
    events = make_events(10, symbols=("NEWSYM",))
    assert sink.register(["NEWSYM"]) is False
    assert sink.publish(events) == 0
    assert metrics.value("pricepipe_publisher_events_dropped", reason="backpressure") == 10
    assert not r.sismember(keys.symbols(keys.shard("NEWSYM")), "NEWSYM")
    # Block waits for memory, then registers and publishes everything.
    blocking = StreamSink(r, keys, stop=StopRequest(), metrics=metrics, policy=Policy.BLOCK,
                          check_interval_s=0.05)
    published: list[int] = []
    thread = threading.Thread(target=lambda: published.append(blocking.publish(events)))
    thread.start()
    try:
        wait_until(lambda: blocking.pressure)
        assert thread.is_alive() and published == []
    finally:
        r.delete(keys.trades("AAPL"), keys.quotes("AAPL"))  # room again
        thread.join(timeout=60)
    assert published == [10] and r.xlen(keys.quotes("NEWSYM")) + r.xlen(
        keys.trades("NEWSYM")) == 10
    assert r.sismember(keys.symbols(keys.shard("NEWSYM")), "NEWSYM")
    # The dropping sink registers on its next call, now that there is room.
    assert sink.publish(make_events(10, symbols=("NEWSYM",), start_us=BASE_TS_US + 10**9)) == 10


def _log_has(path: Path, text: str) -> bool:
    return text in path.read_text(errors="replace")


def _spawn_logged(spawn: Callable[..., Any], args: list[str], env: dict[str, str],
                  log_path: Path) -> Any:
    """``spawn`` with output to a file (a pipe nobody reads would fill and
    stall a long-running process); the child keeps its own descriptor."""
    with log_path.open("wb") as out:
        return spawn(args, env=env, stdout=out)


@slow_stage  # 12-21 s: in .ci/run's second stage, to keep the main suite in 10 min
def test_publishers_and_worker_survive_a_full_redis_with_postgresql_down(
        make_redis_server: Callable[..., RedisServer], make_pg_server: Callable[..., Any],
        spawn: Callable[..., Any], tmp_path: Path) -> None:
    # Real processes: `pricepipe publish --source gbm` (block) and `pricepipe
    # persist`; PostgreSQL stopped until Redis is full, then started.
    redis_server = make_redis_server(maxmemory_bytes=MAXMEMORY_BYTES)
    pg = make_pg_server()
    r = redis.Redis.from_url(redis_server.url)
    keys = Keys("pp", 4)
    env = dict(os.environ, PRICEPIPE_REDIS_URL=redis_server.url,
               PRICEPIPE_DATABASE_URL=pg.url, PRICEPIPE_REDIS_SHARDS="4",
               PRICEPIPE_REDIS_PREFIX="pp", PYTHONUNBUFFERED="1")
    worker_log, pub_log, late_log = (tmp_path / n for n in ("worker", "pub", "late"))
    worker = _spawn_logged(spawn, ["persist", "--name", "w1", "--batch-size", "2000"],
                           dict(fast_env(env), PRICEPIPE_WORKER_STREAM_WINDOW_S="0",
                                PRICEPIPE_WORKER_TRIM_INTERVAL_S="0.5",
                                PRICEPIPE_WORKER_HEARTBEAT_TTL_S="3"), worker_log)
    heartbeat = keys.heartbeat("persist", "w1")
    wait_until(lambda: bool(r.exists(heartbeat)), proc=worker)
    pg.stop()
    # Up to the high-water mark 1.0: the publisher writes until Redis refuses.
    pub_env = dict(env, PRICEPIPE_PUBLISHER_HIGH_WATER="1.0", PRICEPIPE_PUBLISHER_LOW_WATER="0.7",
                   PRICEPIPE_PUBLISHER_MEMORY_CHECK_INTERVAL_S="0.2")
    publisher = _spawn_logged(spawn, ["publish", "--source", "gbm", "--symbols", "4",
                                      "--count", "200000", "--seed", "1",
                                      "--backpressure", "block"], pub_env, pub_log)
    wait_until(lambda: _oom_count(r) > 0, proc=publisher)
    wait_until(lambda: _log_has(pub_log, "backpressure on"), proc=publisher)
    _tighten(r)
    wait_until(lambda: _log_has(worker_log, "redis refuses the heartbeat"), proc=worker)
    # A publisher started now cannot even register its symbols: it waits.
    late = _spawn_logged(spawn, ["publish", "--source", "gbm", "--symbols", "ZZA,ZZB",
                                 "--count", "3000", "--seed", "2"], pub_env, late_log)
    wait_until(lambda: _log_has(late_log, "backpressure on (redis refused writes: OOM)"),
               proc=late)
    assert worker.poll() is None and publisher.poll() is None and late.poll() is None
    pg.start()
    # Everything goes through: the worker persists and trims, memory frees,
    # both publishers finish their counts.
    assert publisher.wait(timeout=300) == 0, pub_log.read_text()
    assert late.wait(timeout=300) == 0, late_log.read_text()
    added = entries_added(r, keys)
    assert sum(added.values()) == 200_000 + 3000  # blocking: nothing dropped
    wait_until(lambda: row_counts_now(pg.url) == added, proc=worker, timeout_s=300)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    out = worker_log.read_text()
    assert "redis accepts the heartbeat again" in out
    conn = psycopg2.connect(pg.url)
    try:  # per stream: every entry Redis accepted is one row, none twice
        per_stream = entries_added_per_stream(r, keys)
        assert len(per_stream) == 2 * 6  # four symbols and the late publisher's two
        assert rows_per_stream(conn) == per_stream and duplicate_count(conn) == 0
    finally:
        conn.close()
    assert pending_count(r, keys, tuple(streams.known_symbols(r, keys))) == 0
    assert "dropped 0" in pub_log.read_text()
    r.close()



def test_the_final_pass_publishes_what_a_full_redis_refused_once_there_is_room(
        small_redis: tuple[Any, Keys], database_url: str) -> None:
    r, keys = small_redis
    minute = bucket_of(BASE_TS_US)
    now = [minute + 30 * 1_000_000]
    feed = BarFeed(r, keys, grace_ms=2000, horizon_s=3600, clock=lambda: now[0])
    streams.register_symbols(r, keys, ["AAPL"])
    streams.append_events(r, keys, make_trades(5, symbols=("AAPL",), start_us=minute + 1))
    worker = PersistWorker(r, EventSink(database_url), GroupConsumer(r, keys, "w1"),
                           fast_settings(), burst=True, feed=feed)
    assert worker.run(install_signals=False) == 0 and worker.stats.bars_published == 1
    _fill(r, keys, ("FILL",))
    _tighten(r)
    now[0] = minute + 70 * 1_000_000  # the minute ended: its bar is due final
    final = FinalPass(feed, database_url)
    try:
        assert final.run(["AAPL"]) == 0 and feed.refusals.active  # refused: Redis is full
        r.delete(keys.trades("FILL"), keys.quotes("FILL"))  # room again
        assert final.run(["AAPL"]) == 1  # read again and published, not forgotten
    finally:
        final.close()
    states = [bar.state for _, bar in bar_messages(r, keys, "AAPL")]
    assert states == [BarState.OPEN, BarState.FINAL] and not feed.refusals.active
