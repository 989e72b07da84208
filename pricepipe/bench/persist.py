"""``pricepipe bench persist``: how fast a persist worker drains the streams
into PostgreSQL, beside baselines measured in the same run on the same rows.

Figures (ticks per second, wall clock, one worker):

* ``persist_ticks_per_s`` - the worker as deployed (pipelined writer thread,
  idempotent insert, bars in the same transaction, XACK after COMMIT);
* ``persist_sequential_ticks_per_s`` - the same without the writer thread;
* ``redelivery_ticks_per_s`` - every entry delivered a second time (the
  group rewound): the duplicate-skipping path;
* ``persist_ticks_per_worker_cpu_s`` - ticks per second of the worker
  process's own CPU time: its efficiency, independent of what else shares the
  machine (Redis and PostgreSQL work on top of it);
* ``worker_cpu_us_per_tick``, ``redis_cpu_us_per_tick``,
  ``postgres_cpu_us_per_tick`` - where the CPU of the pipelined drain goes
  (Redis and PostgreSQL only when they run on this machine; PostgreSQL
  summed over its backends). Their sum against the machine's cores bounds the
  wall-clock figure when everything shares one machine.

Baselines: ``raw_copy_ticks_per_s`` (the same rows ``COPY``'d into an
index-free table: the bulk-load ceiling) and ``row_insert_commit_ticks_per_s``
(one ``INSERT`` and one ``COMMIT`` per tick, as the seed stockstreamer wrote;
measured on a sample and extrapolated).

Everything lives under its own key prefix and symbols (``BENCH*``), removed
at the end, so pointing it at a real deployment leaves no trace in it.
"""

from __future__ import annotations

import io
import time
from typing import Any

N_DEFAULT = 100_000
ROW_INSERT_SAMPLE = 1_000
SYMBOLS = tuple(f"BENCH{i}" for i in range(20))
PREFIX = "ppbench"
SHARDS = 4


def _fill(r: Any, keys: Any, n: int) -> list[Any]:
    from pricepipe import streams
    from pricepipe.clock import now_us
    from pricepipe.tick import Tick

    streams.register_symbols(r, keys, SYMBOLS)
    start = now_us() - n * 1000
    ticks = [Tick(SYMBOLS[i % len(SYMBOLS)], start + i * 1000, 100.0 + (i % 997) / 100.0,
                  float(i % 50 + 1), "bench") for i in range(n)]
    for lo in range(0, n, 10_000):
        streams.append_ticks(r, keys, ticks[lo:lo + 10_000])
    return ticks


def _drain(r: Any, keys: Any, database_url: str, *, pipeline: bool, name: str
           ) -> tuple[float, float, Any]:
    """Run a burst worker; returns (wall seconds, its CPU seconds, its stats).

    The worker runs in this process, so its CPU time is this process's."""
    from pricepipe.workers.consumer import GroupConsumer
    from pricepipe.workers.persister import PersistWorker
    from pricepipe.workers.settings import WorkerSettings
    from pricepipe.workers.sink import TickSink

    settings = WorkerSettings(pipeline=pipeline, block_ms=50)
    worker = PersistWorker(r, TickSink(database_url, application_name="pricepipe-bench"),
                           GroupConsumer(r, keys, name), settings, burst=True)
    t0, cpu0 = time.perf_counter(), time.process_time()
    worker.run(install_signals=False)
    return time.perf_counter() - t0, time.process_time() - cpu0, worker.stats


def _cleanup(r: Any, keys: Any, conn: Any) -> None:
    for symbol in SYMBOLS:
        r.delete(keys.stream(symbol))
    for shard in keys.all_shards():
        r.delete(keys.symbols(shard), keys.dead_letters(shard))
    for key in r.scan_iter(match=keys.heartbeat_pattern("persist")):
        r.delete(key)
    with conn.cursor() as cur:
        cur.execute("DELETE FROM ticks WHERE symbol = ANY(%s)", (list(SYMBOLS),))
        cur.execute("DELETE FROM bars_1m WHERE symbol = ANY(%s)", (list(SYMBOLS),))
    conn.commit()


def _raw_copy(conn: Any, rows: list[Any]) -> float:
    from pricepipe.workers.batch import copy_text
    from pricepipe.workers.sink import COPY_SQL

    with conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS tick_stage (symbol text, ts_us bigint,"
                    " price float8, size float8, source text, recv_ts_us bigint,"
                    " entry_id bigint)")
        conn.commit()
        t0 = time.perf_counter()
        cur.copy_expert(COPY_SQL, io.StringIO(copy_text(rows)))
        conn.commit()
        elapsed = time.perf_counter() - t0
        cur.execute("DROP TABLE tick_stage")
    conn.commit()
    return elapsed


def _row_inserts(conn: Any, rows: list[Any]) -> float:
    from pricepipe.clock import us_to_datetime

    with conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE bench_row_ticks (symbol text, ts timestamptz,"
                    " price float8, size float8, source text, recv_ts timestamptz,"
                    " entry_id bigint, PRIMARY KEY (symbol, ts, entry_id))")
        conn.commit()
        t0 = time.perf_counter()
        for symbol, ts_us, price, size, source, _recv, entry_id in rows:
            cur.execute("INSERT INTO bench_row_ticks VALUES (%s, %s, %s, %s, %s, NULL, %s)",
                        (symbol, us_to_datetime(ts_us), price, size, source, entry_id))
            conn.commit()
        elapsed = time.perf_counter() - t0
        cur.execute("DROP TABLE bench_row_ticks")
    conn.commit()
    return elapsed


def run(*, redis_url: str, database_url: str, n: int | None = None) -> dict[str, Any]:
    """Measure, print as it goes, and return the report (never asserts speed)."""
    import redis

    from pricepipe.bench.procstat import postgres_pid, redis_pid, tree_cpu_s
    from pricepipe.connections import pg_connect
    from pricepipe.keys import PERSIST_GROUP, Keys
    from pricepipe.workers.settings import WorkerSettings

    n = n or N_DEFAULT
    keys = Keys(PREFIX, SHARDS)
    r = redis.Redis.from_url(redis_url)
    conn = pg_connect(database_url, application_name="pricepipe-bench")
    figures: dict[str, float] = {}
    baselines: dict[str, float] = {}
    rpid, ppid = redis_pid(r), postgres_pid(conn)

    def show(name: str, value: float) -> None:
        print(f"  {name:<36} {value:>14,.0f}", flush=True)

    try:
        _cleanup(r, keys, conn)
        print(f"persist: {n:,} ticks over {len(SYMBOLS)} streams, one worker")
        # Warm-up (connections, partitions, caches), not measured.
        _fill(r, keys, min(n, 5_000))
        _drain(r, keys, database_url, pipeline=True, name="bench-warmup")
        _cleanup(r, keys, conn)
        ticks = _fill(r, keys, n)
        servers_cpu0 = (tree_cpu_s(rpid), tree_cpu_s(ppid))
        elapsed, cpu_s, stats = _drain(r, keys, database_url, pipeline=True,
                                       name="bench-pipelined")
        servers_cpu = (tree_cpu_s(rpid) - servers_cpu0[0], tree_cpu_s(ppid) - servers_cpu0[1])
        figures["persist_ticks_per_s"] = stats.rows_inserted / elapsed
        show("persist_ticks_per_s", figures["persist_ticks_per_s"])
        # The worker's own CPU (both threads): what it would sustain with a
        # core to itself, whatever else the machine runs meanwhile.
        figures["persist_ticks_per_worker_cpu_s"] = stats.rows_inserted / cpu_s
        show("persist_ticks_per_worker_cpu_s", figures["persist_ticks_per_worker_cpu_s"])
        per_tick = 1e6 / max(stats.rows_inserted, 1)
        figures["worker_cpu_us_per_tick"] = cpu_s * per_tick
        if rpid is not None:
            figures["redis_cpu_us_per_tick"] = servers_cpu[0] * per_tick
        if ppid is not None:
            figures["postgres_cpu_us_per_tick"] = servers_cpu[1] * per_tick
        print("  cpu per tick (us): " + ", ".join(
            f"{name.split('_cpu')[0]} {value:.2f}" for name, value in figures.items()
            if name.endswith("_cpu_us_per_tick")), flush=True)

        for symbol in SYMBOLS:  # every entry again: the duplicate-skipping path
            r.xgroup_setid(keys.stream(symbol), PERSIST_GROUP, "0")
        elapsed, _, stats = _drain(r, keys, database_url, pipeline=True, name="bench-again")
        figures["redelivery_ticks_per_s"] = stats.entries / elapsed
        show("redelivery_ticks_per_s", figures["redelivery_ticks_per_s"])

        with conn.cursor() as cur:
            cur.execute("SELECT symbol, (extract(epoch FROM ts) * 1000000)::bigint, price,"
                        " size, source, NULL, entry_id FROM ticks WHERE symbol = ANY(%s)",
                        (list(SYMBOLS),))
            rows = cur.fetchall()
        conn.commit()

        _cleanup(r, keys, conn)
        _fill(r, keys, n)
        elapsed, _, stats = _drain(r, keys, database_url, pipeline=False,
                                   name="bench-sequential")
        figures["persist_sequential_ticks_per_s"] = stats.rows_inserted / elapsed
        show("persist_sequential_ticks_per_s", figures["persist_sequential_ticks_per_s"])

        baselines["raw_copy_ticks_per_s"] = len(rows) / _raw_copy(conn, rows)
        show("baseline raw_copy_ticks_per_s", baselines["raw_copy_ticks_per_s"])
        sample = rows[:ROW_INSERT_SAMPLE]
        baselines["row_insert_commit_ticks_per_s"] = len(sample) / _row_inserts(conn, sample)
        show("baseline row_insert_commit_ticks_per_s", baselines["row_insert_commit_ticks_per_s"])
        del ticks
    finally:
        try:
            _cleanup(r, keys, conn)
        finally:
            conn.close()
            r.close()

    persist = figures["persist_ticks_per_s"]
    ratios = {
        "persist_vs_raw_copy": persist / baselines["raw_copy_ticks_per_s"],
        "persist_vs_row_insert_commit": persist / baselines["row_insert_commit_ticks_per_s"],
        "pipelined_vs_sequential": persist / figures["persist_sequential_ticks_per_s"],
        "persist_vs_goal_100k": persist / 100_000,
    }
    for name, value in ratios.items():
        print(f"  ratio {name:<30} {value:>14.2f}")
    return {"target": "persist", "figures": figures, "baselines": baselines, "ratios": ratios,
            "params": {"n": n, "symbols": len(SYMBOLS), "row_insert_sample": len(sample),
                       "batch_size": WorkerSettings().batch_size}}
