"""Smoke test of the persist benchmark: the report's shape, not its speed."""

from __future__ import annotations

from typing import Any

from pricepipe.bench import persist as bench


def test_bench_reports_figures_baselines_and_ratios(redis_url: str, database_url: str,
                                                    db: Any, r: Any) -> None:
    report = bench.run(redis_url=redis_url, database_url=database_url, n=1500)
    assert report["target"] == "persist" and report["params"]["n"] == 1500
    assert set(report["figures"]) == {"persist_ticks_per_s", "redelivery_ticks_per_s",
                                      "persist_sequential_ticks_per_s",
                                      "persist_ticks_per_worker_cpu_s",
                                      "worker_cpu_us_per_tick", "redis_cpu_us_per_tick",
                                      "postgres_cpu_us_per_tick"}
    assert set(report["baselines"]) == {"raw_copy_ticks_per_s", "row_insert_commit_ticks_per_s"}
    for group in ("figures", "baselines", "ratios"):
        # CPU is counted in clock ticks (10 ms): a tiny run may show 0 for a server.
        assert all(value > 0 or (name.endswith("_cpu_us_per_tick") and value == 0)
                   for name, value in report[group].items()), report[group]
    # It cleans up after itself.
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM ticks")
        assert cur.fetchone()[0] == 0
    assert not list(r.scan_iter(match="ppbench:*"))
