"""``pricepipe bench persist``: how fast a persist worker drains the trades and
quotes streams into PostgreSQL, beside baselines measured in the same run on
the same rows.

The streams hold the realistic mix: :data:`QUOTES_PER_TRADE` quotes per
trade, interleaved in time, over :data:`SYMBOLS`. Figures (events per second,
wall clock, one worker; an event is a trade or a quote):

* ``persist_events_per_s`` - the worker as deployed (pipelined writer thread,
  idempotent insert, trades and quotes and bars in one transaction, the bars
  stream published, XACK after COMMIT); ``persist_trades_per_s`` and
  ``persist_quotes_per_s`` - the same drain counted per type;
* ``persist_sequential_events_per_s`` - the same without the writer thread;
* ``redelivery_events_per_s`` - every entry delivered a second time (the
  group rewound): the duplicate-skipping path;
* ``persist_events_per_worker_cpu_s`` - events per second of the worker
  process's own CPU time: its efficiency, independent of what else shares the
  machine (Redis and PostgreSQL work on top of it);
* ``worker_cpu_us_per_event``, ``redis_cpu_us_per_event``,
  ``postgres_cpu_us_per_event`` - where the CPU of the pipelined drain goes
  (Redis and PostgreSQL only when they run on this machine; PostgreSQL
  summed over its backends). Their sum against the machine's cores bounds the
  wall-clock figure when everything shares one machine.

Baselines, per type and together: ``raw_copy_*_per_s`` (the same rows
``COPY``'d into index-free tables: the bulk-load ceiling) and
``row_insert_commit_*_per_s`` (one ``INSERT`` and one ``COMMIT`` per event,
as the seed stockstreamer wrote; measured on a sample of the mix and
extrapolated). Beside them ``schema_copy_events_per_s``: the same rows taken
into the real ``trades`` and ``quotes`` tables the way the worker's first
delivery takes them (``COPY`` into its staging tables, ``INSERT ... SELECT``
into the logged, partitioned tables with their unique keys and indexes), in
one transaction, with no Redis, no worker and no bars. It is what PostgreSQL
alone spends on this schema, so no worker writing through one connection can
be faster: ``schema_copy_vs_raw_copy`` is the ceiling of
``persist_vs_raw_copy`` in the same run, and ``persist_vs_schema_copy`` says
how near the worker comes to it.

The baselines and the worker run in interleaved pairs (the baselines, then
the worker's three drains; ``repeats`` of them), each ratio per pair,
reported as the median with its min and max
(:mod:`pricepipe.bench.ratios`). The goal: ``persist_vs_raw_copy`` >= 0.3.
The baselines' rows are made from the same events as the worker makes them
(:func:`rows_of`), so they are ready before the first drain.

Everything lives under its own key prefix and symbols (``BENCH*``), removed
at the end, so pointing it at a real deployment leaves no trace in it.
"""

from __future__ import annotations

import io
import time
from typing import Any

from .ratios import (
    DEFAULT_REPEATS,
    Ratio,
    collect,
    interleave,
    pair_ratios,
    summary_text,
    target_report,
)

N_DEFAULT = 120_000
ROW_INSERT_SAMPLE = 1_200
SYMBOLS = tuple(f"BENCH{i}" for i in range(20))
PREFIX = "ppbench"
SHARDS = 4
#: The mix of the streams: quotes change more often than anything trades.
QUOTES_PER_TRADE = 5


def events_of(n: int, start_us: int) -> list[Any]:
    """``n`` events of the mix, 1 ms apart: every sixth a trade, the rest quotes."""
    from pricepipe.events import Quote, Side, Trade

    out: list[Any] = []
    for i in range(n):
        symbol = SYMBOLS[i % len(SYMBOLS)]
        ts_us = start_us + i * 1000
        mid = 100.0 + (i % 997) / 100.0
        if i % (QUOTES_PER_TRADE + 1) == 0:
            out.append(Trade(symbol, ts_us, mid, float(i % 50 + 1), "bench", str(i),
                             Side.BUY if i % 2 else Side.SELL))
        else:
            out.append(Quote(symbol, ts_us, mid - 0.01, float(i % 9 + 1), mid + 0.01,
                             float(i % 7 + 1), "bench"))
    return out


def _fill(r: Any, keys: Any, n: int) -> list[Any]:
    from pricepipe import streams
    from pricepipe.clock import now_us

    streams.register_symbols(r, keys, SYMBOLS)
    events = events_of(n, now_us() - n * 1000)
    for lo in range(0, n, 10_000):
        streams.append_events(r, keys, events[lo:lo + 10_000])
    return events


def _drain(r: Any, keys: Any, database_url: str, *, pipeline: bool, name: str
           ) -> tuple[float, float, Any]:
    """Run a burst worker; returns (wall seconds, its CPU seconds, its stats).

    The worker runs in this process, so its CPU time is this process's."""
    from pricepipe.workers.barfeed import BarFeed, FinalPass
    from pricepipe.workers.consumer import GroupConsumer
    from pricepipe.workers.persister import PersistWorker
    from pricepipe.workers.settings import WorkerSettings
    from pricepipe.workers.sink import EventSink

    settings = WorkerSettings(pipeline=pipeline, block_ms=50)
    feed = BarFeed(r, keys, grace_ms=settings.bars_final_grace_ms,
                   horizon_s=settings.bars_horizon_s)
    worker = PersistWorker(r, EventSink(database_url, application_name="pricepipe-bench"),
                           GroupConsumer(r, keys, name), settings, burst=True,
                           final_pass=FinalPass(feed, database_url))
    t0, cpu0 = time.perf_counter(), time.process_time()
    worker.run(install_signals=False)
    return time.perf_counter() - t0, time.process_time() - cpu0, worker.stats


def _cleanup(r: Any, keys: Any, conn: Any) -> None:
    from pricepipe.streams import delete_all

    delete_all(r, keys)  # streams, bar states, registry, dead letters, heartbeats
    _delete_rows(conn)


def rows_of(events: list[Any]) -> tuple[list[Any], list[Any]]:
    """The worker's COPY rows of ``events`` (trades, quotes), with entry IDs
    as the stream would give them (the event's millisecond, a sequence number):
    the raw COPY baseline's input, ready before any worker ran. Pure."""
    from pricepipe.codec import pack_entry_id
    from pricepipe.events import Trade
    from pricepipe.workers.batch import quote_row, trade_row

    trades: list[Any] = []
    quotes: list[Any] = []
    for seq, event in enumerate(events):
        entry_id = pack_entry_id(f"{event.ts_us // 1000}-{seq}")
        if isinstance(event, Trade):
            trades.append(trade_row(event, entry_id))
        else:
            quotes.append(quote_row(event, entry_id))
    return trades, quotes


#: Index-free tables shaped like the worker's staging tables, for the raw COPY.
RAW_TABLES = {"trades": ("bench_raw_trades", "trade_stage"),
              "quotes": ("bench_raw_quotes", "quote_stage")}


def _raw_copy(conn: Any, table: str, text: bytes) -> float:
    """Seconds to ``COPY`` ``text`` (rows of ``table``) into an index-free table."""
    from psycopg2 import sql

    from pricepipe.workers.batch import COPY_OPTIONS_SQL
    from pricepipe.workers.sink import STAGE_DDL

    raw, like = (sql.Identifier(name) for name in RAW_TABLES[table])
    with conn.cursor() as cur:
        cur.execute(STAGE_DDL)
        cur.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {})").format(raw, like))
        conn.commit()
        t0 = time.perf_counter()
        cur.copy_expert(sql.SQL("COPY {} FROM STDIN " + COPY_OPTIONS_SQL).format(raw)
                        .as_string(conn), io.BytesIO(text))
        conn.commit()
        elapsed = time.perf_counter() - t0
        cur.execute(sql.SQL("DROP TABLE {}").format(raw))
    conn.commit()
    return elapsed


def _delete_rows(conn: Any) -> None:
    """Delete the bench's symbols' rows from the event and bar tables."""
    from psycopg2 import sql

    with conn.cursor() as cur:
        for table in ("trades", "quotes", "bars_1m"):
            cur.execute(sql.SQL("DELETE FROM {} WHERE symbol = ANY(%s)").format(
                sql.Identifier(table)), (list(SYMBOLS),))
    conn.commit()


def _schema_copy(conn: Any, days: set[int], trade_text: bytes, quote_text: bytes) -> float:
    """Seconds for PostgreSQL alone to take the rows into ``trades`` and
    ``quotes`` as the worker's first delivery does (its staging ``COPY`` and
    ``INSERT ... SELECT``: the real tables' keys, indexes and WAL), in one
    transaction; the rows are deleted afterwards, outside the time."""
    from pricepipe.workers.partitions import create_partitions
    from pricepipe.workers.sink import (
        QUOTE_COPY_SQL,
        QUOTES_FROM_STAGE_SQL,
        STAGE_DDL,
        TRADE_COPY_SQL,
        TRADES_FROM_STAGE_SQL,
        day_date,
    )

    with conn.cursor() as cur:
        cur.execute(STAGE_DDL)
        for table in ("trades", "quotes"):
            for day in sorted(days):
                create_partitions(cur, table, day_date(day), day_date(day))
        conn.commit()
        t0 = time.perf_counter()
        cur.copy_expert(TRADE_COPY_SQL, io.BytesIO(trade_text))
        cur.copy_expert(QUOTE_COPY_SQL, io.BytesIO(quote_text))
        cur.execute(TRADES_FROM_STAGE_SQL)
        cur.execute(QUOTES_FROM_STAGE_SQL)
        conn.commit()
        elapsed = time.perf_counter() - t0
    _delete_rows(conn)
    return elapsed


def _row_inserts(conn: Any, trades: list[Any], quotes: list[Any]) -> float:
    """Seconds to insert the rows one statement and one commit each, in the mix's order."""
    from pricepipe.clock import us_to_datetime

    with conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE bench_row_trades (symbol text, ts timestamptz,"
                    " price float8, size float8, side text, trade_id text, source text,"
                    " recv_ts timestamptz, entry_id bigint, PRIMARY KEY (symbol, ts, entry_id))")
        cur.execute("CREATE TEMP TABLE bench_row_quotes (symbol text, ts timestamptz,"
                    " bid float8, bid_size float8, ask float8, ask_size float8, source text,"
                    " recv_ts timestamptz, entry_id bigint, PRIMARY KEY (symbol, ts, entry_id))")
        conn.commit()
        per_trade = max(len(quotes) // max(len(trades), 1), 1)
        t0 = time.perf_counter()
        qi = 0
        for trade in trades:
            symbol, ts_us, price, size, side, trade_id, source, _recv, entry_id = trade
            cur.execute("INSERT INTO bench_row_trades VALUES (%s, %s, %s, %s, %s, %s, %s,"
                        " NULL, %s)", (symbol, us_to_datetime(ts_us), price, size, side,
                                       trade_id, source, entry_id))
            conn.commit()
            for quote in quotes[qi:qi + per_trade]:
                symbol, ts_us, bid, bid_size, ask, ask_size, source, _recv, entry_id = quote
                cur.execute("INSERT INTO bench_row_quotes VALUES (%s, %s, %s, %s, %s, %s, %s,"
                            " NULL, %s)", (symbol, us_to_datetime(ts_us), bid, bid_size, ask,
                                           ask_size, source, entry_id))
                conn.commit()
            qi += per_trade
        elapsed = time.perf_counter() - t0
        cur.execute("DROP TABLE bench_row_trades, bench_row_quotes")
    conn.commit()
    return elapsed


#: The issue's goal for one idempotent worker against the bulk-load ceiling.
GOAL_PERSIST_VS_RAW_COPY = 0.3


def _vacuum(database_url: str, events: list[Any]) -> None:
    """VACUUM the day partitions the bench wrote to (after its DELETE), so
    that every pair writes into tables in the same state, not into a growing
    number of dead index entries."""
    from psycopg2 import sql

    from pricepipe.connections import pg_connect

    days = sorted({e.ts_us // 86_400_000_000 for e in events})
    conn = pg_connect(database_url, application_name="pricepipe-bench")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for parent in ("trades", "quotes"):
                for day in days:
                    name = f"{parent}_{time.strftime('%Y%m%d', time.gmtime(day * 86_400))}"
                    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
                    row = cur.fetchone()
                    if row and row[0]:
                        cur.execute(sql.SQL("VACUUM {}").format(sql.Identifier(name)))
    finally:
        conn.close()


def run(*, redis_url: str, database_url: str, n: int | None = None,
        repeats: int = DEFAULT_REPEATS) -> dict[str, Any]:
    """Measure ``repeats`` interleaved pairs (the baselines, then the worker
    three ways), print as it goes, and return the report (never asserts speed)."""
    import redis

    from pricepipe.bench.procstat import postgres_pid, redis_pid, tree_cpu_s
    from pricepipe.clock import now_us
    from pricepipe.connections import pg_connect
    from pricepipe.keys import PERSIST_GROUP, PERSISTED, Keys
    from pricepipe.workers.batch import quote_copy_text, trade_copy_text
    from pricepipe.workers.settings import WorkerSettings

    n = n or N_DEFAULT
    keys = Keys(PREFIX, SHARDS)
    r = redis.Redis.from_url(redis_url)
    conn = pg_connect(database_url, application_name="pricepipe-bench")
    rpid, ppid = redis_pid(r), postgres_pid(conn)
    # The baselines' rows: the same mix, made as the worker makes them.
    baseline_events = events_of(n, now_us() - n * 1000)
    trades, quotes = rows_of(baseline_events)
    trade_text, quote_text = trade_copy_text(trades), quote_copy_text(quotes)
    days = {e.ts_us // 86_400_000_000 for e in baseline_events}
    sample_trades = trades[:ROW_INSERT_SAMPLE // (QUOTES_PER_TRADE + 1)]
    sample_quotes = quotes[:len(sample_trades) * QUOTES_PER_TRADE]
    sample = len(sample_trades) + len(sample_quotes)

    def show(name: str, value: float) -> None:
        print(f"  {name:<40} {value:>14,.0f}", flush=True)

    def baseline(_: int) -> dict[str, float]:
        copy_trades_s = _raw_copy(conn, "trades", trade_text)
        copy_quotes_s = _raw_copy(conn, "quotes", quote_text)
        out = {"raw_copy_events_per_s": (len(trades) + len(quotes)) / (copy_trades_s
                                                                       + copy_quotes_s),
               "raw_copy_trades_per_s": len(trades) / copy_trades_s,
               "raw_copy_quotes_per_s": len(quotes) / copy_quotes_s,
               "row_insert_commit_events_per_s": sample / _row_inserts(
                   conn, sample_trades, sample_quotes)}
        out["schema_copy_events_per_s"] = (len(trades) + len(quotes)) / _schema_copy(
            conn, days, trade_text, quote_text)
        # The worker then writes into partitions without the dead rows just left.
        _vacuum(database_url, baseline_events)
        for name in ("raw_copy_events_per_s", "row_insert_commit_events_per_s",
                     "schema_copy_events_per_s"):
            show(f"baseline {name}", out[name])
        return out

    def worker(pair: int) -> dict[str, float]:
        figures: dict[str, float] = {}
        _fill(r, keys, n)
        servers_cpu0 = (tree_cpu_s(rpid), tree_cpu_s(ppid))
        elapsed, cpu_s, stats = _drain(r, keys, database_url, pipeline=True,
                                       name="bench-pipelined")
        servers_cpu = (tree_cpu_s(rpid) - servers_cpu0[0], tree_cpu_s(ppid) - servers_cpu0[1])
        for name, value in (("events", stats.rows_inserted), ("trades", stats.trades_inserted),
                            ("quotes", stats.quotes_inserted)):
            figures[f"persist_{name}_per_s"] = value / elapsed
        show("persist_events_per_s", figures["persist_events_per_s"])
        # The worker's own CPU (both threads): what it would sustain with a
        # core to itself, whatever else the machine runs meanwhile.
        figures["persist_events_per_worker_cpu_s"] = stats.rows_inserted / max(cpu_s, 1e-9)
        per_event = 1e6 / max(stats.rows_inserted, 1)
        figures["worker_cpu_us_per_event"] = cpu_s * per_event
        if rpid is not None:
            figures["redis_cpu_us_per_event"] = servers_cpu[0] * per_event
        if ppid is not None:
            figures["postgres_cpu_us_per_event"] = servers_cpu[1] * per_event
        print("  cpu per event (us): " + ", ".join(
            f"{name.split('_cpu')[0]} {value:.2f}" for name, value in figures.items()
            if name.endswith("_cpu_us_per_event")), flush=True)
        figures["bars_published"] = float(stats.bars_published + stats.bars_final)

        for symbol in SYMBOLS:  # every entry again: the duplicate-skipping path
            for channel in PERSISTED:
                r.xgroup_setid(keys.stream(symbol, channel), PERSIST_GROUP, "0")
        elapsed, _, stats = _drain(r, keys, database_url, pipeline=True, name="bench-again")
        figures["redelivery_events_per_s"] = stats.entries / elapsed
        show("redelivery_events_per_s", figures["redelivery_events_per_s"])

        _cleanup(r, keys, conn)
        events = _fill(r, keys, n)
        elapsed, _, stats = _drain(r, keys, database_url, pipeline=False,
                                   name="bench-sequential")
        figures["persist_sequential_events_per_s"] = stats.rows_inserted / elapsed
        show("persist_sequential_events_per_s", figures["persist_sequential_events_per_s"])
        _cleanup(r, keys, conn)
        _vacuum(database_url, events)
        return figures

    print(f"persist: {n:,} events ({QUOTES_PER_TRADE} quotes per trade) over "
          f"{len(SYMBOLS)} symbols' trades and quotes streams, one worker; {repeats} "
          "interleaved pairs (raw COPY and row-by-row INSERT, then the worker)", flush=True)
    try:
        _cleanup(r, keys, conn)
        # Warm-up (connections, partitions, caches, scripts), not measured.
        _fill(r, keys, min(n, 6_000))
        _drain(r, keys, database_url, pipeline=True, name="bench-warmup")
        _cleanup(r, keys, conn)
        _raw_copy(conn, "trades", trade_copy_text(trades[:2_000]))
        _raw_copy(conn, "quotes", quote_copy_text(quotes[:10_000]))
        _row_inserts(conn, sample_trades[:20], sample_quotes[:100])
        _schema_copy(conn, days, trade_copy_text(trades[:2_000]), quote_copy_text(quotes[:10_000]))
        pairs = interleave(baseline, worker, repeats)
    finally:
        try:
            _cleanup(r, keys, conn)
        finally:
            conn.close()
            r.close()

    baselines = collect([b for b, _ in pairs])
    figures = collect([f for _, f in pairs])
    persist = figures["persist_events_per_s"]
    ratios = [
        Ratio("persist_vs_raw_copy", GOAL_PERSIST_VS_RAW_COPY, "higher",
              tuple(pair_ratios(persist, baselines["raw_copy_events_per_s"])),
              note="one idempotent worker (Redis to PostgreSQL, bars too) / COPY into an "
                   "index-free table"),
        Ratio("schema_copy_vs_raw_copy", None, "higher",
              tuple(pair_ratios(baselines["schema_copy_events_per_s"],
                                baselines["raw_copy_events_per_s"])),
              note="PostgreSQL alone into the real tables (keys, indexes, WAL) / index-free "
                   "COPY: the ceiling of persist_vs_raw_copy on this schema"),
        Ratio("persist_vs_schema_copy", None, "higher",
              tuple(pair_ratios(persist, baselines["schema_copy_events_per_s"])),
              note="how near the worker comes to what PostgreSQL alone needs"),
        Ratio("persist_vs_row_insert_commit", None, "higher",
              tuple(pair_ratios(persist, baselines["row_insert_commit_events_per_s"])),
              note="against one INSERT and one COMMIT per event"),
        Ratio("pipelined_vs_sequential", None, "higher",
              tuple(pair_ratios(persist, figures["persist_sequential_events_per_s"])),
              note="the writer thread's gain (both in the same pair)"),
    ]
    report = target_report(
        "persist", figures=figures, baselines=baselines, ratios=ratios,
        params={"n": n, "symbols": len(SYMBOLS), "quotes_per_trade": QUOTES_PER_TRADE,
                "row_insert_sample": sample, "repeats": len(pairs),
                "batch_size": WorkerSettings().batch_size})
    print(summary_text(report), flush=True)
    return report
