"""Server outages: the worker waits them out and keeps its place; what the
publishers add meanwhile is persisted exactly once afterwards, per type."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import redis

from pricepipe.embedded import PostgresServer, RedisServer
from pricepipe.keys import Keys

from .helpers import (
    duplicate_count,
    entries_added,
    fast_env,
    kinds,
    make_events,
    pending_count,
    publish,
    row_counts,
    rows_now,
    wait_until,
)


def _loaded(r: Any) -> bool:
    try:
        return bool(r.ping())
    except redis.BusyLoadingError:
        return False


def _stop_worker(proc: Any) -> str:
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0].decode(errors="replace")
    assert proc.returncode == 0, out
    return out


def test_postgresql_restart_and_dropped_connections_lose_nothing(
        r: Any, keys: Keys, database_url: str, pg_server: PostgresServer,
        pipeline_env: dict[str, str], spawn: Callable[..., Any]) -> None:
    events = make_events(12_000)
    publish(r, keys, events[:4000])
    proc = spawn(["persist", "--name", "w1", "--batch-size", "500"], env=fast_env(pipeline_env))
    wait_until(lambda: rows_now(database_url) > 0, proc=proc)
    # Connections dropped mid-transaction (mid-COPY when the timing falls so).
    admin = psycopg2.connect(database_url)
    admin.autocommit = True
    try:
        for _ in range(5):
            with admin.cursor() as cur:
                cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                            " WHERE application_name LIKE 'pricepipe-persist%%'")
            time.sleep(0.05)
    finally:
        admin.close()
    # The whole server goes away; events keep arriving in Redis meanwhile.
    pg_server.stop()
    publish(r, keys, events[4000:8000])
    time.sleep(0.5)  # let the worker hit the refused connections
    assert proc.poll() is None
    pg_server.start()
    publish(r, keys, events[8000:])
    wait_until(lambda: rows_now(database_url) == len(events), proc=proc)
    out = _stop_worker(proc)
    assert "retry" in out  # it did go through the outage, not around it
    conn = psycopg2.connect(database_url)
    try:
        assert row_counts(conn) == kinds(events) == entries_added(r, keys)
        assert duplicate_count(conn) == 0
    finally:
        conn.close()
    assert pending_count(r, keys) == 0


def test_redis_restart_loses_nothing(
        r: Any, keys: Keys, db: Any, database_url: str, redis_server: RedisServer,
        pipeline_env: dict[str, str], spawn: Callable[..., Any]) -> None:
    events = make_events(10_000)
    publish(r, keys, events[:5000])
    proc = spawn(["persist", "--name", "w1", "--batch-size", "500"], env=fast_env(pipeline_env))
    wait_until(lambda: rows_now(database_url) > 0, proc=proc)
    redis_server.restart()  # graceful: the AOF has every acknowledged write
    wait_until(lambda: _loaded(r))
    assert proc.poll() is None
    publish(r, keys, events[5000:])
    wait_until(lambda: rows_now(database_url) == len(events), proc=proc)
    _stop_worker(proc)
    assert row_counts(db) == kinds(events) == entries_added(r, keys)
    assert duplicate_count(db) == 0 and pending_count(r, keys) == 0
    with db.cursor() as cur:  # bars hold every trade once, whatever was retried
        cur.execute("SELECT sum(trade_count) FROM bars_1m")
        assert cur.fetchone()[0] == kinds(events)["trades"]
