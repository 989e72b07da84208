"""``pricepipe bench e2e`` on the test servers, tiny: the report's shape and
that every figure is a real measurement. Never a speed assertion."""

from __future__ import annotations

from pricepipe.bench import e2e
from tests.helpers import slow_stage


@slow_stage
def test_e2e_bench_measures_every_role(redis_url: str, database_url: str) -> None:
    report = e2e.run(redis_url=redis_url, database_url=database_url, n=400,
                          warmup_s=0.5, measure_s=1.5, symbols=4)
    assert report["target"] == "e2e"
    assert set(report) >= {"figures", "baselines", "ratios", "params", "steps"}
    steps = report["steps"]
    assert steps and [s["target_events_per_s"] for s in steps] == [200, 400][:len(steps)]
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
