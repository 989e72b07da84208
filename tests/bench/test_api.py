"""Smoke test of ``pricepipe bench api``: the report's shape, tiny n, no
speed assertions."""

from __future__ import annotations

import os
from typing import Any

import pytest

from pricepipe.bench import api as bench


@pytest.mark.skipif(not os.path.exists(bench.PSQL), reason="psql is the baseline")
def test_bench_reports_figures_baselines_and_ratios(redis_url: str, database_url: str,
                                                     db: Any) -> None:
    report = bench.run(redis_url=redis_url, database_url=database_url, n=300)
    assert report["target"] == "api"
    assert set(report["figures"]) == {"api_ticks_1d_json_ms", "api_ticks_1d_csv_ms",
                                      "api_bars_1m_json_ms", "api_bars_1m_csv_ms"}
    assert set(report["baselines"]) == {"psql_copy_ticks_1d_ms", "psql_copy_bars_1m_ms"}
    assert all(v > 0 for part in ("figures", "baselines", "ratios")
               for v in report[part].values())
    assert report["params"]["ticks"] == 300 and report["params"]["bars"] == 300
    # The bench cleans up after itself.
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM ticks WHERE symbol LIKE 'ZZBENCH%%'")
        assert cur.fetchone() == (0,)
