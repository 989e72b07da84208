"""Smoke test of ``pricepipe.bench.publish.run``: the report's shape and its
mix of trades and quotes, not speed."""

from __future__ import annotations

from typing import Any

import pytest

from pricepipe.bench import publish as bench


def test_bench_report_shape(redis_url: str, r: Any, capsys: Any) -> None:
    report = bench.run(redis_url=redis_url, database_url="unused", n=2000)
    assert report["target"] == "publish"
    assert set(report["figures"]) == {"gbm_publish_events_per_s", "gbm_publish_trades_per_s",
                                      "gbm_publish_quotes_per_s", "gbm_generate_events_per_s"}
    assert set(report["baselines"]) == {"raw_xadd_events_per_s"}
    assert set(report["ratios"]) == {"publish_vs_raw_xadd"}
    values = [*report["figures"].values(), *report["baselines"].values(),
              *report["ratios"].values()]
    assert all(isinstance(v, float) and v > 0 for v in values)
    params = report["params"]
    assert params["published"] == 2000 == params["trades"] + params["quotes"]
    # The realistic mix: about 5 quotes per trade (1 in 6 events trades).
    assert params["quotes_per_trade"] == 5.0
    assert 0.10 < params["trades"] / params["published"] < 0.24
    figures = report["figures"]
    assert figures["gbm_publish_trades_per_s"] + figures["gbm_publish_quotes_per_s"] == \
        pytest.approx(figures["gbm_publish_events_per_s"])
    out = capsys.readouterr().out
    assert "raw_xadd_events_per_s" in out and "gbm_publish_trades_per_s" in out
    assert list(r.scan_iter(match="ppbench:*")) == []  # cleaned up
