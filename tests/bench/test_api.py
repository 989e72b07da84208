"""Smoke test of ``pricepipe bench api``: the report's shape, tiny n, no
speed assertions."""

from __future__ import annotations

import os
from typing import Any

import pytest
from psycopg2 import sql

from pricepipe.bench import api as bench


@pytest.mark.skipif(not os.path.exists(bench.PSQL), reason="psql is the baseline")
def test_bench_reports_figures_baselines_and_ratios(redis_url: str, database_url: str,
                                                     db: Any) -> None:
    report = bench.run(redis_url=redis_url, database_url=database_url, n=300, repeats=1)
    assert report["target"] == "api"
    cases = ("trades_1d", "quotes_1d", "bars_1m")
    assert set(report["figures"]) == {f"api_{c}_{f}_ms" for c in cases for f in ("json", "csv")}
    assert set(report["baselines"]) == {f"psql_copy_{c}_ms" for c in cases}
    assert set(report["ratios"]) == {f"api_{c}_{f}_vs_psql" for c in cases
                                     for f in ("json", "csv")}
    assert all(v > 0 for part in ("figures", "baselines") for v in report[part].values())
    # At least five rounds, whatever --repeats says: each is well under a second.
    assert report["params"]["repeats"] == bench.MIN_PAIRS
    samples = report["samples"]
    for case in cases:
        base = samples["baselines"][f"psql_copy_{case}_ms"]
        for fmt, goal in (("json", 1.1), ("csv", 1.0)):
            ratio = report["ratios"][f"api_{case}_{fmt}_vs_psql"]
            ours = samples["figures"][f"api_{case}_{fmt}_ms"]
            assert len(ours) == len(base) == bench.MIN_PAIRS
            assert ratio["samples"] == pytest.approx(
                [o / b for o, b in zip(ours, base, strict=True)])
            assert (ratio["goal"], ratio["better"]) == (goal, "lower")
    assert (report["params"]["trades"], report["params"]["quotes"],
            report["params"]["bars"]) == (300, 300, 300)
    # The bench cleans up after itself.
    with db.cursor() as cur:
        for table in ("trades", "quotes", "bars_1m"):
            cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE symbol LIKE 'ZZBENCH%%'").format(
                sql.Identifier(table)))
            assert cur.fetchone() == (0,), table
