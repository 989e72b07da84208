"""Smoke test of ``publisher.bench.run``: the report's shape, not speed."""

from __future__ import annotations

from typing import Any

from pricepipe.bench import publish as bench


def test_bench_report_shape(redis_url: str, r: Any, capsys: Any) -> None:
    report = bench.run(redis_url=redis_url, database_url="unused", n=2000)
    assert report["target"] == "publish"
    assert set(report["figures"]) == {"gbm_publish_ticks_per_s", "gbm_generate_ticks_per_s"}
    assert set(report["baselines"]) == {"raw_xadd_ticks_per_s"}
    values = [*report["figures"].values(), *report["baselines"].values(),
              *report["ratios"].values()]
    assert all(isinstance(v, float) and v > 0 for v in values)
    assert report["params"]["published"] == 2000
    assert "raw_xadd_ticks_per_s" in capsys.readouterr().out
    assert list(r.scan_iter(match="ppbench:*")) == []  # cleaned up
