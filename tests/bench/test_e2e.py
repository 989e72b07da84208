"""``pricepipe bench e2e`` on the test servers, tiny: the report's shape and
that every figure is a real measurement. Never a speed assertion."""

from __future__ import annotations

import pytest

from pricepipe.bench import e2e
from tests.helpers import slow_stage


@slow_stage
def test_e2e_bench_measures_every_role(redis_url: str, database_url: str) -> None:
    report = e2e.run(redis_url=redis_url, database_url=database_url, n=400,
                          warmup_s=0.5, measure_s=1.5, symbols=4)
    assert report["target"] == "e2e"
    assert set(report) >= {"figures", "baselines", "ratios", "params", "steps"}
    steps = report["steps"]
    targets = [s["target_events_per_s"] for s in steps]
    # The ramp's steps in order, then (after a failure) bisections between them.
    assert targets and targets[:2] == [200, 400][:len(targets[:2])]
    assert all(200 < t < 400 for t in targets[2:])
    first = steps[0]
    assert first["published_events_per_s"] > 0
    assert first["persisted_events_per_s"] > 0
    assert first["ws_events_per_s"] > 0
    assert first["ws_latency_p50_ms"] is not None and first["ws_latency_p50_ms"] >= 0
    assert first["persist_lag_p99_ms"] is not None and first["persist_lag_p99_ms"] >= 0
    for role in ("publisher0", "worker0", "ws", "probe"):
        assert first["rss_max_mib"][role] > 0, role
        assert first["cpu_percent"][role] is not None, role
    baselines = report["baselines"]
    assert baselines["raw_xadd_per_s"] > 0 and baselines["raw_copy_rows_per_s"] > 0
    # The raw XADD baseline before the ramp and after every step; raw COPY
    # before and after: the ratio is the sustained step over each of them.
    xadd = report["samples"]["baselines"]["raw_xadd_per_s"]
    assert len(xadd) == len(steps) + 1
    assert len(report["samples"]["baselines"]["raw_copy_rows_per_s"]) == 2
    ratios = report["ratios"]
    assert set(ratios) == {"sustained_vs_raw_xadd", "persist_lag_p99_ms", "ws_latency_p99_ms"}
    assert len(ratios["sustained_vs_raw_xadd"]["samples"]) == len(xadd)
    assert ratios["sustained_vs_raw_xadd"]["goal"] == 1.0
    # CPU per event of every process at each step, and the breakdown.
    assert first["cpu_us_per_event"]["worker0"] > 0 and first["cpu_us_per_event"]["total"] > 0
    breakdown = report["cpu_breakdown"]
    assert breakdown and all(part["cpu_us_per_event"] for part in breakdown.values())
    # Whatever the speed, the run persisted exactly what it published.
    once = report["exactly_once"]
    assert once["ok"], once
    assert once["rows"] == report["figures"]["events_published"] > 0
    per = once["per_channel"]
    assert per["trades"]["rows"] == per["trades"]["published"] > 0
    assert per["quotes"]["rows"] == per["quotes"]["published"] > per["trades"]["published"]
    # Per type (issue 14): the run's counts are the exactly-once check's...
    figures = report["figures"]
    for kind in ("trades", "quotes"):
        assert figures[f"{kind}_published"] == per[kind]["published"]
        assert figures[f"{kind}_persisted"] == per[kind]["rows"]
    assert figures["trades_published"] + figures["quotes_published"] \
        == figures["events_published"]
    assert figures["trades_persisted"] + figures["quotes_persisted"] == figures["rows_persisted"]
    # ...and every step's rates, measured per stream, table and probe frame,
    # add up to its totals (each rounded to 0.1/s) in the default mix.
    for step in steps:
        for stage in ("published", "persisted", "ws"):
            trades, quotes = step[f"{stage}_trades_per_s"], step[f"{stage}_quotes_per_s"]
            assert trades + quotes == pytest.approx(step[f"{stage}_events_per_s"], abs=0.2)
    for stage in ("published", "persisted", "ws"):
        assert first[f"{stage}_quotes_per_s"] > first[f"{stage}_trades_per_s"] > 0, stage
    # The sustained rate per type is the highest sustained step's (0 without one),
    # the figures' rates per type the reported step's (each rounded to 1/s).
    assert abs(figures["max_sustained_trades_per_s"] + figures["max_sustained_quotes_per_s"]
               - figures["max_sustained_events_per_s"]) <= 1
    for stage in ("published", "persisted", "ws"):
        assert abs(figures[f"{stage}_trades_per_s"] + figures[f"{stage}_quotes_per_s"]
                   - figures[f"{stage}_events_per_s"]) <= 1
    assert not set(ratios) & {name for name in figures if "_trades" in name or "_quotes" in name}


def test_the_goal_is_judged_on_the_step_rate_held_to_99_percent() -> None:
    step = {"target_events_per_s": 50_000, "published_events_per_s": 49_987.0,
            "persist_lag_p99_ms": 102.0, "ws_latency_p99_ms": 24.3}
    assert e2e.meets_goal(step)
    assert not e2e.meets_goal({**step, "published_events_per_s": 49_000.0})
    assert not e2e.meets_goal({**step, "target_events_per_s": 35_000,
                                    "published_events_per_s": 35_000.0})
    assert not e2e.meets_goal({**step, "ws_latency_p99_ms": 50.0})
    assert not e2e.meets_goal({**step, "persist_lag_p99_ms": 1000.0})
    assert not e2e.meets_goal(None)
