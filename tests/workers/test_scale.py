"""Several workers share the streams through the consumer group; crashes,
a PostgreSQL restart and a Redis restart during a 100k-event run (trades and
quotes) lose and double nothing, per type."""

from __future__ import annotations

import os
import random
import signal
import subprocess
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson
import psycopg2
import redis

from pricepipe.keys import Keys
from tests.helpers import slow_stage

from .helpers import (
    duplicate_count,
    entries_added,
    fast_env,
    kinds,
    make_events,
    pending_count,
    publish,
    registered,
    row_count,
    row_counts,
    row_counts_now,
    rows_now,
    wait_until,
)


def _pending(r: Any, keys: Keys) -> int:
    return pending_count(r, keys, registered(r, keys))


def _stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0].decode(errors="replace")
    assert proc.returncode == 0, out
    return out


def test_three_workers_share_the_load_one_killed_mid_run(
        r: Any, keys: Keys, db: Any, pipeline_env: dict[str, str],
        spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    events = make_events(36_000)
    n = len(events)
    env = dict(fast_env(pipeline_env), PRICEPIPE_WORKER_CLAIM_IDLE_MS="500",
               PRICEPIPE_WORKER_CLAIM_INTERVAL_S="0.2")
    procs = {name: spawn(["persist", "--name", name, "--batch-size", "400"], env=env)
             for name in ("w1", "w2", "w3")}
    # All three are up before the first event, so they compete from the start.
    for name, proc in procs.items():
        wait_until(partial(_alive, r, keys, name), proc=proc)
    publish(r, keys, events)
    wait_until(lambda: row_count(db) > n // 6, proc=procs["w2"])
    procs["w2"].send_signal(signal.SIGKILL)
    procs["w2"].wait()
    # w2's unacknowledged entries are claimed by the others once idle.
    wait_until(lambda: row_count(db) == n and _pending(r, keys) == 0, proc=procs["w1"])
    for name in ("w1", "w3"):
        _stop(procs[name])
    assert row_counts(db) == kinds(events) == entries_added(r, keys)
    assert duplicate_count(db) == 0
    inserted = {name: orjson.loads(r.get(keys.heartbeat("persist", name)) or b"{}")
                .get("rows_inserted", 0) for name in ("w1", "w3")}
    assert all(count > 0 for count in inserted.values()), inserted  # both took a share


@slow_stage  # 12-21 s: in .ci/run's second stage, to keep the main suite in 10 min
def test_chaos_100k_events_with_kills_and_server_restarts(
        make_redis_server: Callable[..., Any], make_pg_server: Callable[..., Any],
        spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    rng = random.Random(20260102)
    redis_srv = make_redis_server()
    pg_srv = make_pg_server()
    keys = Keys("pp", 4)
    env = fast_env({
        **os.environ,
        "PRICEPIPE_REDIS_URL": redis_srv.url, "PRICEPIPE_DATABASE_URL": pg_srv.url,
        "PRICEPIPE_REDIS_SHARDS": "4", "PRICEPIPE_REDIS_PREFIX": "pp",
        "PRICEPIPE_WORKER_CLAIM_IDLE_MS": "1000", "PRICEPIPE_WORKER_CLAIM_INTERVAL_S": "0.5",
    })
    r = redis.Redis.from_url(redis_srv.url)
    symbols = tuple(f"SYM{i}" for i in range(12))
    events = make_events(100_000, symbols=symbols, step_us=10_000)
    try:
        publish(r, keys, events[:60_000])
        names = ["c1", "c2", "c3"]
        procs = {name: spawn(["persist", "--name", name, "--batch-size", "500"], env=env)
                 for name in names}

        def rows() -> int:
            return rows_now(pg_srv.url)

        def kill_random(at_rows: int) -> None:
            wait_until(lambda: rows() >= at_rows)
            name = rng.choice(names)
            procs[name].send_signal(signal.SIGKILL)
            procs[name].wait()
            # Half the time it comes back under its own name, else a new one.
            new = name if rng.random() < 0.5 else f"{name}x"
            names[names.index(name)] = new
            r.delete(keys.heartbeat("persist", new))  # left by its previous life
            procs[new] = spawn(["persist", "--name", new, "--batch-size", "500"], env=env)
            wait_until(lambda: _alive(r, keys, new), proc=procs[new])

        kill_random(rng.randrange(5_000, 15_000))
        wait_until(lambda: rows() >= 20_000)
        pg_srv.stop()
        publish(r, keys, events[60_000:])  # the database is down: events wait in Redis
        pg_srv.start()
        kill_random(rng.randrange(30_000, 45_000))
        wait_until(lambda: rows() >= 55_000)
        redis_srv.restart()  # graceful restart: AOF reloaded
        wait_until(lambda: _loaded(r))
        kill_random(rng.randrange(60_000, 80_000))
        added = entries_added(r, keys)
        assert added == kinds(events) and sum(added.values()) == 100_000
        wait_until(lambda: row_counts_now(pg_srv.url) == added and _pending(r, keys) == 0,
                   timeout_s=90)
        for name in names:
            _stop(procs[name])
        conn = psycopg2.connect(pg_srv.url)
        try:
            assert row_counts(conn) == added and duplicate_count(conn) == 0
            with conn.cursor() as cur:  # every trade in its bar once
                cur.execute("SELECT sum(trade_count) FROM bars_1m")
                assert cur.fetchone()[0] == added["trades"]
        finally:
            conn.close()
    finally:
        r.close()


def _alive(r: Any, keys: Keys, name: str) -> bool:
    try:
        return bool(r.exists(keys.heartbeat("persist", name)))
    except redis.ConnectionError:
        return False


def _loaded(r: Any) -> bool:
    try:
        return bool(r.ping())
    except (redis.BusyLoadingError, redis.ConnectionError):
        return False
