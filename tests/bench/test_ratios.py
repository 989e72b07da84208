"""The ratio maths of the benchmarks (pure): medians and min-max of per-pair
ratios, goals judged on the median, interleaving order, and the reports'
ratios-first layout."""

from __future__ import annotations

from typing import Any

import pytest

from pricepipe.bench import e2e, instructions, ws
from pricepipe.bench.ratios import (
    Ratio,
    Spread,
    collect,
    interleave,
    medians,
    pair_ratios,
    summary_text,
    target_report,
)
from pricepipe.bench.report import markdown


def test_spread_is_median_min_and_max() -> None:
    assert Spread.of([3.0, 1.0, 2.0]) == Spread(2.0, 1.0, 3.0, 3)
    assert Spread.of([4.0, 1.0]) == Spread(2.5, 1.0, 4.0, 2)  # an even count: the middle
    assert Spread.of([]) == Spread(None, None, None, 0)


def test_ratios_are_per_pair_not_of_medians() -> None:
    # Pair 2's baseline ran on a busy machine: its ratio is still its own.
    figures, baselines = [50.0, 30.0, 60.0], [100.0, 40.0, 100.0]
    assert pair_ratios(figures, baselines) == [0.5, 0.75, 0.6]
    assert Ratio("r", 1.0, samples=tuple(pair_ratios(figures, baselines))).median == 0.6
    assert pair_ratios([1.0, 2.0], [0.0, 4.0]) == [0.5]  # no ratio without a baseline
    with pytest.raises(ValueError, match="2 figures for 3 baselines"):
        pair_ratios([1.0, 2.0], [1.0, 1.0, 1.0])


def test_a_goal_is_judged_on_the_median() -> None:
    higher = Ratio("publish", 1.0, "higher", (0.9, 1.2, 0.95))
    assert higher.met is False  # the best pair alone would have met it
    assert Ratio("publish", 1.0, "higher", (1.0, 0.8, 1.3)).met is True  # >= is met
    assert Ratio("publish", 1.0, "higher", (1.0,), strict=True).met is False
    lower = Ratio("p99", 50.0, "lower", (48.0, 49.9, 70.0), unit="ms", strict=True)
    assert lower.met is True and lower.spread == Spread(49.9, 48.0, 70.0, 3)
    assert Ratio("p99", 50.0, "lower", (50.0,), strict=True).met is False
    assert Ratio("csv", 1.0, "lower", (1.0,)).met is True
    assert Ratio("info", None, samples=(2.0,)).met is None  # reported, not judged
    assert Ratio("empty", 1.0).met is None
    with pytest.raises(ValueError, match="better"):
        Ratio("x", 1.0, "bigger")  # type: ignore[arg-type]


def test_goal_texts_and_round_trip() -> None:
    assert Ratio("a", 1.0).goal_text() == ">= 1.00x"
    assert Ratio("a", 50.0, "lower", unit="ms", strict=True).goal_text() == "< 50.0 ms"
    assert Ratio("a", 30.0, "lower", unit="kB").goal_text() == "<= 30.0 kB"
    assert Ratio("a", 99_000, "higher", unit="/s").goal_text() == ">= 99,000/s"
    assert Ratio("a", None).goal_text() == ""
    ratio = Ratio("r", 0.3, "higher", (0.2, 0.4, 0.35), note="why")
    data = ratio.to_dict()
    assert (data["median"], data["min"], data["max"], data["met"]) == (0.35, 0.2, 0.4, True)
    assert Ratio.from_dict("r", data) == ratio


def test_interleave_alternates_baseline_and_contender() -> None:
    calls: list[str] = []

    def base(i: int) -> str:
        calls.append(f"b{i}")
        return f"b{i}"

    def ours(i: int) -> str:
        calls.append(f"p{i}")
        return f"p{i}"

    pairs = interleave(base, ours, 3, say=None)
    assert calls == ["b0", "p0", "b1", "p1", "b2", "p2"]
    assert pairs == [("b0", "p0"), ("b1", "p1"), ("b2", "p2")]
    assert len(interleave(base, ours, 0, say=None)) == 1  # at least one pair


def _report() -> dict[str, Any]:
    runs = [{"rate": 10.0, "cpu": 1.0}, {"rate": 30.0}, {"rate": 20.0, "cpu": 3.0}]
    bases = [{"raw": 20.0}, {"raw": 40.0}, {"raw": 20.0}]
    figures, baselines = collect(runs), collect(bases)
    assert figures == {"rate": [10.0, 30.0, 20.0], "cpu": [1.0, 3.0]}
    assert medians(figures) == {"rate": 20.0, "cpu": 2.0}
    ratio = Ratio("rate_vs_raw", 1.0, samples=tuple(pair_ratios(figures["rate"],
                                                                baselines["raw"])))
    return target_report("publish", figures=figures, baselines=baselines,
                         ratios=[ratio, Ratio("info", None, samples=(1.0,))],
                         params={"repeats": 3})


def test_target_report_keeps_medians_samples_and_verdicts() -> None:
    report = _report()
    assert report["figures"] == {"rate": 20.0, "cpu": 2.0}
    assert report["baselines"] == {"raw": 20.0}
    assert report["samples"]["figures"]["rate"] == [10.0, 30.0, 20.0]
    assert report["ratios"]["rate_vs_raw"]["samples"] == [0.5, 0.75, 1.0]
    assert report["ratios"]["rate_vs_raw"]["median"] == 0.75
    assert report["goals_met"] is False  # judged ratios only: "info" has no goal


def test_ratios_come_first_in_the_summary_and_the_markdown() -> None:
    text = summary_text(_report())
    assert text.index("rate_vs_raw") < text.index("figures:") < text.index("baselines:")
    assert "0.75x  (0.50x - 1.00x, n=3)  goal >= 1.00x NOT MET" in text
    e2e_report: dict[str, Any] = {
        "target": "e2e", "ratios": {}, "figures": {}, "baselines": {},
        "cpu_breakdown": e2e.cpu_breakdown(
            {"target_events_per_s": 1000, "published_events_per_s": 1000.0,
             "cpu_percent": {"ws": 1.0, "worker0": 0.5}}, None)}
    inst = {"target": "instructions", "ratios": {}, "figures": {"hub_ir_per_event": 10.0},
            "samples": {"figures": {"hub_ir_per_event": [10.0, 10.0]}},
            "params": {"events": 1000, "workload_version": "abc"}, "stable": True}
    machine = {"cpus": 2, "cpu_model": "test", "memory_gib": 1.0, "python": "3.11"}
    md = markdown([_report(), e2e_report, inst], machine)
    ratio_at = md.index("| benchmark | ratio | goal |")
    assert ratio_at < md.index("| process |") < md.index("| workload |") \
        < md.index("| benchmark | figure |")
    assert "| publish | rate_vs_raw | >= 1.00x | 0.75x | 0.50x - 1.00x (3) | no |" in md
    assert "| ws (websocket server) | 10.0 |" in md and "| **total** | 15.0 |" in md
    assert "| hub | 10 | 10 | 10 |" in md


def test_e2e_cpu_per_event_and_goals() -> None:
    step = {"target_events_per_s": 50_000, "published_events_per_s": 50_000.0,
            "cpu_percent": {"ws": 40.0, "redis": 30.0, "gone": None},
            "persist_lag_p99_ms": 120.0, "ws_latency_p99_ms": 60.0}
    # 40 % of a core over 50,000 events/s: 8 us of CPU per event.
    assert e2e.cpu_us_per_event(step) == {"ws": 8.0, "redis": 6.0, "total": 14.0}
    assert e2e.cpu_us_per_event({**step, "published_events_per_s": 0.0}) == {}
    goals = {r.name: r for r in e2e.judge_goals(step, [40_000.0, 50_000.0, 62_500.0])}
    assert goals["sustained_vs_raw_xadd"].samples == (1.25, 1.0, 0.8)
    assert goals["sustained_vs_raw_xadd"].met is True
    assert goals["persist_lag_p99_ms"].met is True and goals["ws_latency_p99_ms"].met is False
    nothing = {r.name: r for r in e2e.judge_goals(None, [40_000.0])}
    assert nothing["sustained_vs_raw_xadd"].samples == (0.0,)
    assert nothing["ws_latency_p99_ms"].met is None
    assert e2e.ramp_top(50_000) == 100_000 and e2e.ramp_top(171_226) == 180_000


def test_ws_scenario_client_shares_and_merged_percentiles() -> None:
    goal = ws.scenario(10_000)
    assert goal["events_per_s"] == 100 and goal["offered_deliveries_per_s"] == 100_000
    assert goal["goal_scenario"]
    small = ws.scenario(4)
    assert small["events_per_s"] == ws.MAX_EVENTS_PER_S and not small["goal_scenario"]
    assert ws._shares(10_000, 2500) == [2500] * 4
    assert ws._shares(10_001, 2500) == [2001, 2000, 2000, 2000, 2000]
    assert ws._shares(4, 2500) == [4]
    merged = ws.merge_tallies([
        {"deliveries": 10, "frames": 5, "conflated_frames": 0, "elapsed_s": 1.0,
         "latencies_ms": [1.0, 2.0, 3.0]},
        {"deliveries": 20, "frames": 7, "conflated_frames": 1, "elapsed_s": 1.5,
         "latencies_ms": [4.0, 5.0]}])
    assert (merged["deliveries"], merged["frames"], merged["conflated_frames"]) == (30, 12, 1)
    assert merged["elapsed_s"] == 1.5 and merged["p50_ms"] == 3.0 and merged["max_ms"] == 5.0
    assert merged["latency_samples"] == 5 and merged["client_processes"] == 2


def test_callgrind_totals_are_read_from_its_summary_line() -> None:
    assert instructions.parse_totals("events: Ir\nsummary: 12345\n") == 12345
    assert instructions.parse_totals("events: Ir\ntotals: 99\n") == 99
    assert instructions.parse_totals("nothing here") == 0
