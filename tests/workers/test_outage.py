"""Server outages: the worker waits them out and keeps its place; what the
publishers add meanwhile is persisted exactly once afterwards."""

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
    fast_env,
    make_ticks,
    pending_count,
    publish,
    row_count,
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
    ticks = make_ticks(12_000)
    publish(r, keys, ticks[:4000])
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
    # The whole server goes away; ticks keep arriving in Redis meanwhile.
    pg_server.stop()
    publish(r, keys, ticks[4000:8000])
    time.sleep(0.5)  # let the worker hit the refused connections
    assert proc.poll() is None
    pg_server.start()
    publish(r, keys, ticks[8000:])
    wait_until(lambda: rows_now(database_url) == len(ticks), proc=proc)
    out = _stop_worker(proc)
    assert "retry" in out  # it did go through the outage, not around it
    conn = psycopg2.connect(database_url)
    try:
        assert row_count(conn) == len(ticks) and duplicate_count(conn) == 0
    finally:
        conn.close()
    assert pending_count(r, keys) == 0


def test_redis_restart_loses_nothing(
        r: Any, keys: Keys, db: Any, redis_server: RedisServer,
        pipeline_env: dict[str, str], spawn: Callable[..., Any]) -> None:
    ticks = make_ticks(10_000)
    publish(r, keys, ticks[:5000])
    proc = spawn(["persist", "--name", "w1", "--batch-size", "500"], env=fast_env(pipeline_env))
    wait_until(lambda: row_count(db) > 0, proc=proc)
    redis_server.restart()  # graceful: the AOF has every acknowledged write
    wait_until(lambda: _loaded(r))
    assert proc.poll() is None
    publish(r, keys, ticks[5000:])
    wait_until(lambda: row_count(db) == len(ticks), proc=proc)
    _stop_worker(proc)
    assert row_count(db) == len(ticks) and duplicate_count(db) == 0
    assert pending_count(r, keys) == 0
