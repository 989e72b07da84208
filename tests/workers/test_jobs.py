"""rq jobs: partitions ahead, retention by dropping partitions, partition
pruning, the cron schedule, retries and failed-job visibility; backfill and
export through the CLI."""

from __future__ import annotations

import csv
import subprocess
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from psycopg2 import sql
from rq import SimpleWorker

from pricepipe.clock import datetime_to_us, format_us, utcnow
from pricepipe.events import Quote
from pricepipe.keys import Keys
from pricepipe.status import job_stats
from pricepipe.workers import jobqueue, jobs, partitions, rollup, schedule
from pricepipe.workers.backfill import entry_id_for, rows_of
from pricepipe.workers.history import GBMHistory
from pricepipe.workers.persister import PersistWorker
from pricepipe.workers.settings import JobsSettings

from .helpers import BASE_TS_US, make_events, make_trades, publish, row_counts

DAY_US = 86_400_000_000


def test_partition_names_and_expiry_are_pure() -> None:
    assert partitions.partition_day("trades_20260102") == ("trades", date(2026, 1, 2))
    assert partitions.partition_day("quotes_20260102") == ("quotes", date(2026, 1, 2))
    assert partitions.partition_day("trades_20261340") is None
    assert partitions.partition_day("trades_default") is None
    assert partitions.partition_day("ticks_20260102") is None
    names = ["trades_20251230", "trades_20251231", "trades_20260101", "trades_20260110",
             "quotes_20251230", "quotes_20260103", "quotes_20260105", "other"]
    assert partitions.expired(names, today=date(2026, 1, 10),
                              retention_days={"trades": 9, "quotes": 5}) == [
        "trades_20251230", "trades_20251231", "quotes_20251230", "quotes_20260103"]
    # No retention: kept forever.
    assert partitions.expired(names, today=date(2026, 1, 10),
                              retention_days={"trades": None, "quotes": 5}) == [
        "quotes_20251230", "quotes_20260103"]


@pytest.mark.parametrize("table", ["trades", "quotes"])
def test_range_queries_prune_to_the_partitions_of_the_range(db: Any, table: str) -> None:
    with db.cursor() as cur:
        cur.execute("SELECT ensure_partitions(%s, '2026-01-01', '2026-01-05')", (table,))
        cur.execute(sql.SQL("EXPLAIN SELECT * FROM {} WHERE symbol = %s"
                            " AND ts >= '2026-01-02T00:00:00Z' AND ts < '2026-01-03T12:00:00Z'"
                            ).format(sql.Identifier(table)), ("AAPL",))
        plan = "\n".join(row[0] for row in cur.fetchall())
    assert f"{table}_20260102" in plan and f"{table}_20260103" in plan
    for day in ("20260101", "20260104", "20260105"):
        assert f"{table}_{day}" not in plan


def test_retention_drops_whole_old_partitions_only_each_table_its_own(
        database_url: str, db: Any) -> None:
    with db.cursor() as cur:
        for table in ("trades", "quotes"):
            cur.execute("SELECT ensure_partitions(%s, '2026-01-01', '2026-01-10')", (table,))
        cur.execute("INSERT INTO trades (symbol, ts, price, size, source, entry_id) VALUES"
                    " ('AAPL', '2026-01-01T10:00:00Z', 1, 1, 'x', 1),"
                    " ('AAPL', '2026-01-09T10:00:00Z', 2, 1, 'x', 2)")
        cur.execute("INSERT INTO quotes (symbol, ts, bid, ask, source, entry_id) VALUES"
                    " ('AAPL', '2026-01-04T10:00:00Z', 1, 2, 'x', 1),"
                    " ('AAPL', '2026-01-09T10:00:00Z', 3, 4, 'x', 2)")
    import psycopg2

    conn = psycopg2.connect(database_url)
    try:
        dropped = partitions.drop_expired(conn, today=date(2026, 1, 10),
                                          retention_days={"trades": 7, "quotes": 3})
    finally:
        conn.close()
    assert dropped == ["quotes_20260101", "quotes_20260102", "quotes_20260103",
                       "quotes_20260104", "quotes_20260105", "quotes_20260106",
                       "trades_20260101", "trades_20260102"]
    names = partitions.list_partitions(db)
    assert "trades_20260101" not in names and "trades_20260103" in names
    assert partitions.list_partitions(db, "quotes")[0] == "quotes_20260107"
    with db.cursor() as cur:
        cur.execute("SELECT price FROM trades")
        assert cur.fetchall() == [(2.0,)]
        cur.execute("SELECT bid FROM quotes")
        assert cur.fetchall() == [(3.0,)]


@pytest.fixture
def job_env(monkeypatch: pytest.MonkeyPatch, database_url: str, redis_url: str) -> None:
    """Jobs read their settings from the environment, as in `pricepipe jobs worker`."""
    monkeypatch.setenv("PRICEPIPE_DATABASE_URL", database_url)
    monkeypatch.setenv("PRICEPIPE_REDIS_URL", redis_url)
    monkeypatch.setenv("PRICEPIPE_JOBS_RETRY_INTERVALS_S", "0")


def _work(r: Any, keys: Keys) -> None:
    queues = [jobqueue.queue(keys.rq_queue(q), r) for q in jobs.QUEUES]
    SimpleWorker(queues, connection=r, **jobqueue.WORKER_OPTIONS).work(burst=True)


def test_scheduled_jobs_run_through_rq(job_env: None, r: Any, keys: Keys, db: Any,
                                       run_worker: Callable[..., PersistWorker]) -> None:
    today = utcnow().date()
    old = today - timedelta(days=45)
    with db.cursor() as cur:
        for table in ("trades", "quotes"):
            cur.execute("SELECT ensure_partitions(%s, %s, %s)", (table, old, old))
    # Recent trades and quotes, and then a bar that drifted from them.
    now = datetime_to_us(utcnow())
    publish(r, keys, make_events(300, start_us=now - 20 * 60_000_000, step_us=200_000))
    run_worker()
    with db.cursor() as cur:
        cur.execute("UPDATE bars_1m SET high = high + 1")
    scheduler = jobqueue.JsonCronScheduler(connection=r)
    cron_jobs = schedule.install(scheduler, keys)
    assert {j.name for j in cron_jobs} == {"partitions", "retention", "bars-verify",
                                           "instruments"}
    assert len(scheduler.enqueue_jobs()) == 4  # interval jobs: due at start
    _work(r, keys)  # runs the dispatchers, then the jobs they enqueued (with Retry)
    names = partitions.list_partitions(db)
    ahead = JobsSettings().partitions_ahead_days
    for table in ("trades", "quotes"):
        assert f"{table}_{(today + timedelta(days=ahead)):%Y%m%d}" in names
        assert f"{table}_{old:%Y%m%d}" not in names
    assert rollup.verify(db, now - 3_600_000_000, now) == []
    # Metadata refresh: 52-week range from stored history (no provider here).
    with db.cursor() as cur:
        cur.execute("SELECT symbol, week52_high, week52_low FROM instruments ORDER BY symbol")
        instruments = cur.fetchall()
    assert instruments and all(high >= low > 0 for _, high, low in instruments)
    stats = {q["queue"]: q for q in job_stats(r, keys)}
    assert stats[keys.rq_queue("maintenance")]["failed"] == 0
    assert stats[keys.rq_queue("maintenance")]["queued"] == 0


def test_failed_jobs_are_retried_then_kept_visible(job_env: None, monkeypatch: pytest.MonkeyPatch,
                                                   r: Any, keys: Keys, tmp_path: Path) -> None:
    monkeypatch.setenv("PRICEPIPE_JOBS_RETRY_MAX", "2")
    job = jobs.enqueue(r, keys.rq_queue(jobs.BULK), "pricepipe.workers.jobs.export_events", kwargs={
        "symbol": "AAPL", "start_us": BASE_TS_US, "end_us": BASE_TS_US + DAY_US,
        "path": str(tmp_path / "missing-dir" / "out.csv")})
    assert job.retries_left == 2
    _work(r, keys)
    job.refresh()
    assert job.is_failed and job.retries_left == 0
    assert "FileNotFoundError" in (job.latest_result().exc_string or "")
    stats = {q["queue"]: q for q in job_stats(r, keys)}
    assert stats[keys.rq_queue(jobs.BULK)]["failed"] == 1


def test_backfill_rows_are_deterministic_and_never_stream_ids() -> None:
    source = GBMHistory(interval_s=0.5, seed=3)
    a = [t for chunk in source.trades("AAPL", BASE_TS_US, BASE_TS_US + 10_000_000, chunk=7)
         for t in chunk]
    b = [t for chunk in source.trades("AAPL", BASE_TS_US, BASE_TS_US + 10_000_000)
         for t in chunk]
    assert a == b and len(a) == 20 == source.expected_count("AAPL", BASE_TS_US,
                                                            BASE_TS_US + 10_000_000)
    assert len({t.trade_id for t in a}) == 20 and all(t.size and t.side for t in a)
    # A later range overlapping this one gives the same trades where they overlap.
    c = [t for chunk in source.trades("AAPL", BASE_TS_US + 5_000_000, BASE_TS_US + 20_000_000)
         for t in chunk]
    assert {t.trade_id for t in a} & {t.trade_id for t in c}
    rows, _ = rows_of(a)
    assert all(row[8] < 0 for row in rows)
    assert len({row[8] for row in rows}) == 20
    assert entry_id_for(BASE_TS_US, 1) == entry_id_for(BASE_TS_US, 0) - 1


def test_backfill_and_export_cli(db: Any, pipeline_env: dict[str, str], tmp_path: Path,
                                 spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    args = ["backfill", "AAPL", "--start", "2026-01-02T00:00:00Z",
            "--end", "2026-01-02T00:10:00Z", "--interval-s", "2"]
    first = spawn(args, env=pipeline_env)
    out = first.communicate(timeout=60)[0].decode()
    assert first.returncode == 0, out
    assert "300 trade(s)" in out and "300 new" in out and "trade/s" in out  # tqdm's bar
    again = spawn(args, env=pipeline_env)
    out = again.communicate(timeout=60)[0].decode()
    assert again.returncode == 0 and "0 new" in out, out
    # An overlapping range: only the trades not stored yet are new.
    wider = spawn([*args[:4], "--end", "2026-01-02T00:12:00Z", *args[6:]], env=pipeline_env)
    out = wider.communicate(timeout=60)[0].decode()
    assert wider.returncode == 0 and "360 trade(s)" in out and "60 new" in out, out
    assert row_counts(db) == {"trades": 360, "quotes": 0}
    with db.cursor() as cur:
        cur.execute("SELECT sum(trade_count), count(*) FROM bars_1m WHERE symbol = 'AAPL'")
        assert cur.fetchone() == (360, 12)
    target = tmp_path / "aapl.csv"
    export = spawn(["export", "AAPL", "--start", "2026-01-02T00:02:00Z",
                    "--end", "2026-01-02T00:04:00Z", "--out", str(target)], env=pipeline_env)
    out = export.communicate(timeout=60)[0].decode()
    assert export.returncode == 0 and "exported 60 trade(s)" in out, out
    with target.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 60 and rows[0]["ts"] == "2026-01-02 00:02:00+00"
    assert [r["ts"] for r in rows] == sorted(r["ts"] for r in rows)
    assert {r["symbol"] for r in rows} == {"AAPL"}
    assert {r["side"] for r in rows} <= {"buy", "sell"} and all(r["trade_id"] for r in rows)
    assert set(rows[0]) == {"symbol", "ts", "price", "size", "side", "trade_id", "source",
                            "recv_ts", "entry_id"}


def test_export_of_quotes_with_the_option(
        r: Any, keys: Keys, pipeline_env: dict[str, str], tmp_path: Path,
        spawn: Callable[..., subprocess.Popen[bytes]],
        run_worker: Callable[..., PersistWorker]) -> None:
    events = make_events(120, symbols=("AAPL",), step_us=1_000_000)
    publish(r, keys, events)
    run_worker()
    span = ["--start", str(BASE_TS_US // 1_000_000), "--end", str(BASE_TS_US // 1_000_000 + 600)]
    for flag, what, n, columns in (
            ([], "trade(s)", 20, {"price", "size", "side", "trade_id"}),
            (["--quotes"], "quote(s)", 100, {"bid", "bid_size", "ask", "ask_size"})):
        target = tmp_path / f"aapl-{what}.csv"
        proc = spawn(["export", "AAPL", *span, "--out", str(target), *flag], env=pipeline_env)
        out = proc.communicate(timeout=60)[0].decode()
        assert proc.returncode == 0 and f"exported {n} {what}" in out, out
        with target.open() as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == n and columns <= set(rows[0])
    one_sided = [q for q in events if isinstance(q, Quote) and q.ask is None]
    assert one_sided and sum(1 for row in rows if row["ask"] == "") == len(one_sided)


def test_bars_verify_and_rebuild_cli(
        r: Any, keys: Keys, db: Any, pipeline_env: dict[str, str],
        spawn: Callable[..., subprocess.Popen[bytes]],
        run_worker: Callable[..., PersistWorker]) -> None:
    publish(r, keys, make_events(600, step_us=100_000))
    run_worker()
    hour = BASE_TS_US // 3_600_000_000 * 3_600_000_000  # 03:00 of the events' day
    span = ["--start", format_us(hour), "--end", format_us(hour + 3_600_000_000)]

    def bars(*args: str) -> tuple[int, str]:
        proc = spawn(["bars", *args, *span], env=pipeline_env)
        out = proc.communicate(timeout=60)[0].decode()
        return proc.returncode, out

    code, out = bars("verify")
    assert code == 0 and "0 bar(s) differ from their trades" in out, out
    with db.cursor() as cur:  # drift: a trade lost from its bar, a bar lost
        cur.execute("UPDATE bars_1m SET trade_count = trade_count - 1, volume = volume - 1"
                    " WHERE symbol = 'AAPL'")
        cur.execute("DELETE FROM bars_1m WHERE symbol = 'MSFT'")
    code, out = bars("verify", "--symbol", "AAPL")
    assert code == 1 and "AAPL" in out and "MSFT" not in out and "trades in bar" in out, out
    code, out = bars("verify", "--repair")
    assert code == 0 and "rebuilt" in out, out
    assert rollup.verify(db, BASE_TS_US - 3_600_000_000, BASE_TS_US + 3_600_000_000) == []
    code, out = bars("rebuild", "--symbol", "SPY")
    assert code == 0 and "rebuilt" in out, out
    assert bars("verify")[0] == 0


def test_cli_refuses_bad_input_clearly(pipeline_env: dict[str, str],
                                       spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    for args, message in (
        (["backfill", "aapl", "--start", "2026-01-02", "--end", "2026-01-03"], "invalid symbol"),
        (["backfill", "AAPL", "--start", "yesterday", "--end", "2026-01-03"], "invalid time"),
        (["export", "AAPL", "--start", "2026-01-03", "--end", "2026-01-02", "--out", "-"],
         "--end must be after --start"),
        (["jobs", "enqueue", "nope"], "unknown job"),
    ):
        proc = spawn(args, env=pipeline_env)
        out = proc.communicate(timeout=60)[0].decode()
        assert proc.returncode == 2 and message in out, (args, out)


def test_status_reports_streams_dead_letters_rows_and_jobs(
        r: Any, keys: Keys, pipeline_env: dict[str, str],
        spawn: Callable[..., subprocess.Popen[bytes]],
        run_worker: Callable[..., PersistWorker]) -> None:
    publish(r, keys, make_events(120))
    r.xadd(keys.trades("AAPL"), {b"sym": b"AAPL"})  # undecodable: a dead letter
    run_worker()
    publish(r, keys, make_trades(10, start_us=BASE_TS_US + 3_600_000_000))  # not persisted: lag
    jobs.enqueue(r, keys.rq_queue(jobs.MAINTENANCE), "pricepipe.workers.jobs.maintain_partitions")
    proc = spawn(["status", "--json"], env=pipeline_env)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    report = orjson.loads(out.splitlines()[-1])
    assert report["rows"] == {"trades": 20, "quotes": 100} and report["dead_letters"] == 1
    assert sum(s["length"] for s in report["streams"]) == 131
    assert sum(s["lag"] for s in report["streams"]) == 10
    assert sum(s["pending"] for s in report["streams"]) == 0
    (queue,) = [q for q in report["jobs"] if q["queue"] == keys.rq_queue("maintenance")]
    assert queue["queued"] == 1 and queue["failed"] == 0
    assert report["bars_1m"] > 0
    assert all(report["partitions"][table]["count"] >= 1 for table in ("trades", "quotes"))
    text = spawn(["status"], env=pipeline_env)
    rendered = text.communicate(timeout=60)[0].decode()
    assert "dead letters: 1" in rendered and "pp-maintenance" in rendered, rendered
