"""Smoke test of the persist benchmark: the report's shape, not its speed."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg2 import sql

from pricepipe.bench import persist as bench


def test_bench_reports_per_type_figures_baselines_and_ratios(
        redis_url: str, database_url: str, db: Any, r: Any) -> None:
    report = bench.run(redis_url=redis_url, database_url=database_url, n=1500, repeats=2)
    assert report["target"] == "persist" and report["params"]["n"] == 1500
    assert report["params"]["quotes_per_trade"] == 5 and report["params"]["repeats"] == 2
    assert set(report["figures"]) == {
        "persist_events_per_s", "persist_trades_per_s", "persist_quotes_per_s",
        "redelivery_events_per_s", "persist_sequential_events_per_s",
        "persist_events_per_worker_cpu_s", "worker_cpu_us_per_event",
        "redis_cpu_us_per_event", "postgres_cpu_us_per_event", "bars_published"}
    assert set(report["baselines"]) == {
        "raw_copy_events_per_s", "raw_copy_trades_per_s", "raw_copy_quotes_per_s",
        "row_insert_commit_events_per_s", "schema_copy_events_per_s"}
    assert set(report["ratios"]) == {"persist_vs_raw_copy", "persist_vs_row_insert_commit",
                                     "pipelined_vs_sequential", "schema_copy_vs_raw_copy",
                                     "persist_vs_schema_copy"}
    for group in ("figures", "baselines"):
        # CPU is counted in clock ticks (10 ms): a tiny run may show 0 for a server.
        assert all(value > 0 or (name.endswith("_cpu_us_per_event") and value == 0)
                   for name, value in report[group].items()), report[group]
    # Two pairs: two samples of everything, a ratio per pair.
    samples = report["samples"]
    ours = samples["figures"]["persist_events_per_s"]
    raw = samples["baselines"]["raw_copy_events_per_s"]
    goal = report["ratios"]["persist_vs_raw_copy"]
    assert len(ours) == len(raw) == 2
    assert goal["samples"] == pytest.approx([o / b for o, b in zip(ours, raw, strict=True)])
    assert goal["goal"] == 0.3 and goal["met"] is (goal["median"] >= 0.3)
    assert report["ratios"]["pipelined_vs_sequential"]["goal"] is None
    # The schema's ceiling is its own pair's ratio too, reported, not judged.
    ceiling = report["ratios"]["schema_copy_vs_raw_copy"]
    schema = samples["baselines"]["schema_copy_events_per_s"]
    assert ceiling["goal"] is None and ceiling["samples"] == pytest.approx(
        [s / b for s, b in zip(schema, raw, strict=True)])
    # The mix: five quotes drained per trade.
    figures = report["figures"]
    assert figures["persist_quotes_per_s"] == pytest.approx(5 * figures["persist_trades_per_s"])
    assert figures["persist_events_per_s"] == pytest.approx(
        figures["persist_trades_per_s"] + figures["persist_quotes_per_s"])
    # It cleans up after itself.
    with db.cursor() as cur:
        for table in ("trades", "quotes", "bars_1m"):
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            assert cur.fetchone()[0] == 0
    assert not list(r.scan_iter(match="ppbench:*"))


def test_baseline_rows_are_the_workers_rows_of_the_same_events() -> None:
    events = bench.events_of(12, 1_767_323_045_000_000)
    trades, quotes = bench.rows_of(events)
    assert len(trades) == 2 and len(quotes) == 10  # every sixth event a trade
    symbol, ts_us, price, *_, entry_id = trades[0]
    assert (symbol, ts_us, price) == (events[0].symbol, events[0].ts_us, events[0].price)
    assert entry_id >> 21 == events[0].ts_us // 1000  # the entry ID of its millisecond
