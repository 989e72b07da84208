"""``pricepipe.bench.publish.run`` on the test Redis, tiny: the interleaved
pairs, the per-pair ratio and the report's shape and mix. Never speed."""

from __future__ import annotations

from typing import Any

import pytest

from pricepipe.bench import publish as bench


def test_bench_interleaves_pairs_and_reports_ratios_per_pair(
        redis_url: str, r: Any, capsys: Any) -> None:
    report = bench.run(redis_url=redis_url, database_url="unused", n=2000, repeats=3)
    assert report["target"] == "publish" and report["params"]["repeats"] == 3
    assert set(report["figures"]) == {"gbm_publish_events_per_s", "gbm_publish_trades_per_s",
                                      "gbm_publish_quotes_per_s", "gbm_generate_events_per_s"}
    assert set(report["baselines"]) == {"raw_xadd_events_per_s"}
    samples = report["samples"]
    ours = samples["figures"]["gbm_publish_events_per_s"]
    raw = samples["baselines"]["raw_xadd_events_per_s"]
    assert len(ours) == len(raw) == 3 and all(v > 0 for v in ours + raw)
    # One ratio per pair, each of its own pair's figures; the median reported.
    ratio = report["ratios"]["publish_vs_raw_xadd"]
    assert ratio["samples"] == pytest.approx([o / b for o, b in zip(ours, raw, strict=True)])
    assert ratio["median"] == pytest.approx(sorted(ratio["samples"])[1])
    assert ratio["min"] <= ratio["median"] <= ratio["max"]
    assert ratio["goal"] == 1.0 and ratio["better"] == "higher"
    assert ratio["met"] is (ratio["median"] >= 1.0) and report["goals_met"] is ratio["met"]
    params = report["params"]
    assert params["published"] == 2000 == params["trades"] + params["quotes"]
    # The realistic mix: about 5 quotes per trade (1 in 6 events trades).
    assert params["quotes_per_trade"] == 5.0
    assert 0.10 < params["trades"] / params["published"] < 0.24
    figures = report["figures"]
    assert figures["gbm_publish_events_per_s"] == pytest.approx(sorted(ours)[1])
    out = capsys.readouterr().out
    # Baseline first in each pair, and the ratio printed before the figures at the end.
    assert out.index("raw_xadd_events_per_s") < out.index("gbm_publish_events_per_s")
    summary = out[out.index("== publish: ratios"):]
    assert summary.index("publish_vs_raw_xadd") < summary.index("figures:")
    assert "goal >= 1.00x" in summary
    assert list(r.scan_iter(match="ppbench:*")) == []  # cleaned up
