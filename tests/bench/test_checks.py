"""The soak's verdicts, the e2e ramp and judge, the probe's bookkeeping: pure code."""

from __future__ import annotations

from pricepipe.bench.e2e import Bounds, judge, ramp, split, symbol_names
from pricepipe.bench.probe import ProbeState
from pricepipe.bench.soak import (
    FAULT_KINDS,
    check_client,
    check_exactly_once,
    declared_ranges,
    fault_plan,
    memory_verdict,
)
from pricepipe.codec import encode_json, pack_entry_id


def test_fault_plan_is_seeded_spaced_and_covers_every_kind_first() -> None:
    plan = fault_plan(100, 10, seed=3, warmup_s=5)
    assert plan == fault_plan(100, 10, seed=3, warmup_s=5)
    assert plan != fault_plan(100, 10, seed=4, warmup_s=5)
    times = [at for at, _ in plan]
    assert times[0] == 15 and all(b - a == 10 for a, b in zip(times, times[1:], strict=False))
    assert times[-1] <= 95  # room to heal after the last fault
    assert sorted(kind for _, kind in plan[:len(FAULT_KINDS)]) == sorted(FAULT_KINDS)
    assert fault_plan(10, 10, seed=1) == []


def test_exactly_once_passes_when_rows_match_the_streams() -> None:
    verdict = check_exactly_once({"A": 5, "B": 3}, {"A": (5, 5), "B": (3, 3)}, {}, {}, 0)
    assert verdict["ok"] and verdict["lost"] == 0 and verdict["published"] == 8


def test_exactly_once_counts_loss_duplicates_and_dead_letters() -> None:
    verdict = check_exactly_once(
        {"A": 5, "B": 3, "C": 2}, {"A": (4, 4), "B": (3, 3), "C": (2, 2)},
        missing_in_db={"B": 1}, extra_in_db={"C": 1}, dead_letters=2)
    assert not verdict["ok"]
    assert verdict["lost"] == 1 + 1 + 2  # A short by one, B's entry missing, 2 dead letters
    assert verdict["duplicated"] == 1  # C holds a row its stream lacks
    assert set(verdict["bad_symbols"]) == {"A", "B", "C"}


def test_exactly_once_counts_rows_beyond_what_was_published() -> None:
    verdict = check_exactly_once({"A": 2}, {"A": (3, 3)}, {}, {}, 0)
    assert verdict["duplicated"] == 1 and not verdict["ok"]


def test_client_check_accepts_a_contiguous_tail() -> None:
    truth = {"A": [1, 2, 3, 4, 5, 6], "B": [10, 20]}
    result = check_client({"A": [3, 4, 5, 6], "B": [10, 20]}, truth, {"A": 6, "B": 20})
    assert result["ok"], result
    assert result["ticks"] == 6


def test_client_check_finds_gaps_duplicates_and_a_missed_end() -> None:
    truth = {"A": [1, 2, 3, 4, 5, 6]}
    result = check_client({"A": [1, 2, 4, 4, 5]}, truth, {"A": 6})
    assert not result["ok"]
    assert result["gaps"] == 1  # 3 never arrived
    assert result["duplicates"] == 1  # 4 twice
    assert result["not_at_end"] == ["A"]  # 6 never arrived
    assert "A: 1 missing from 0-3 to 0-3" in result["examples"]


def test_client_check_reports_declared_unrecoverable_ranges_apart() -> None:
    truth = {"A": [1, 2, 3, 4, 5, 6]}
    result = check_client({"A": [1, 5, 6]}, truth, {"A": 6}, {"A": [(1, 5)]})
    assert result["ok"], result
    assert result["declared_unrecoverable"] == 3


def test_client_check_flags_a_symbol_never_received() -> None:
    result = check_client({"A": [1]}, {"A": [1], "B": [2]}, {"A": 1, "B": 2})
    assert result["never_received"] == ["B"] and not result["ok"]


def test_memory_verdict() -> None:
    flat = [(float(t), 100.0) for t in range(90)]
    assert memory_verdict(flat, 0, 90)["bounded"]
    growing = [(float(t), 100.0 + 10 * t) for t in range(90)]
    verdict = memory_verdict(growing, 0, 90)
    assert not verdict["bounded"] and verdict["last_peak_mib"] > verdict["first_peak_mib"]
    assert memory_verdict([], 0, 90)["bounded"]


def test_ramp_and_split() -> None:
    assert ramp(100_000) == [1000, 2000, 5000, 10000, 20000, 35000, 50000, 75000, 100000]
    assert ramp(4000) == [1000, 2000, 4000]
    assert ramp(400) == [200, 400]
    assert ramp(0) == [1]
    names = symbol_names(5)
    assert names == ["E2E000", "E2E001", "E2E002", "E2E003", "E2E004"]
    parts = split(names, 2)
    assert parts == [["E2E000", "E2E002", "E2E004"], ["E2E001", "E2E003"]]
    assert split(names, 9) == [[n] for n in names]


def _step(**overrides: object) -> dict[str, object]:
    step: dict[str, object] = {
        "target_ticks_per_s": 1000, "published_ticks_per_s": 990.0,
        "persisted_ticks_per_s": 985.0, "ws_ticks_per_s": 990.0,
        "persist_lag_p99_ms": 120.0, "persist_lag_last_ms": 30.0, "ws_latency_p99_ms": 12.0}
    step.update(overrides)
    return step


def test_judge_sustained_and_each_reason() -> None:
    bounds = Bounds()
    assert judge(_step(), bounds) == []
    assert "published" in judge(_step(published_ticks_per_s=500.0), bounds)[0]
    assert "persisted" in judge(_step(persisted_ticks_per_s=500.0), bounds)[0]
    assert "websocket probe" in judge(_step(ws_ticks_per_s=10.0), bounds)[0]
    assert "persist lag p99" in judge(_step(persist_lag_p99_ms=5000.0), bounds)[0]
    assert "still" in judge(_step(persist_lag_last_ms=5000.0), bounds)[0]
    assert "websocket p99" in judge(_step(ws_latency_p99_ms=None), bounds)[0]


def _frame(kind: str, ids: list[str], **extra: object) -> bytes:
    ticks = [{"symbol": "A", "id": i, "ts_us": 1_700_000_000_000_000, "price": 1.0}
             for i in ids]
    return encode_json({"type": kind, "ticks": ticks, **extra})


def test_probe_measures_and_records_ticks() -> None:
    state = ProbeState(["A", "B"], record=True)
    now_us = 1_700_000_000_050_000
    assert state.handle(_frame("snapshot", ["1700000000000-0"]), now_us) is None
    assert state.handle(_frame("ticks", ["1700000000040-0", "1700000000040-1"]), now_us) is None
    assert state.received["A"] == [pack_entry_id("1700000000000-0"),
                                   pack_entry_id("1700000000040-0"),
                                   pack_entry_id("1700000000040-1")]
    assert state.cursors == {"A": "1700000000040-1"}
    report = state.report(123.0)
    assert report["n"] == 3 and sorted(report["lat_ms"]) == [10.0, 10.0, 50.0]
    assert report["event_ms"] == [50.0, 50.0, 50.0]
    assert state.report(124.0)["n"] == 0  # a new window
    assert b'"resume":{"A":"1700000000040-1"}' in state.subscribe_message()


def test_probe_resumes_after_a_conflated_frame_and_keeps_errors() -> None:
    state = ProbeState(["A"], record=True)
    assert state.handle(_frame("ticks", ["5-0"], conflated=True), 10_000) == "reconnect"
    assert state.received == {} and state.conflated_frames == 1
    state.handle(b'{"type":"unrecoverable","symbol":"A","after":"1-0","first_id":"3-0"}', 1)
    state.handle(b'{"type":"error","code":"bad_json","message":"x"}', 1)
    state.handle(b"not json", 1)
    assert len(state.unrecoverable) == 1 and len(state.errors) == 2
    # Redis dropped mid-subscribe: the documented answer is to send it again.
    assert state.handle(b'{"type":"error","code":"unavailable","message":"x"}', 1) \
        == "resubscribe"
    assert state.resubscribes == 1
    # Without recording, a conflated frame is just measured.
    assert ProbeState(["A"]).handle(_frame("ticks", ["5-0"], conflated=True), 10_000) is None


def test_probe_subsamples_big_windows() -> None:
    state = ProbeState(["A"], max_samples=10)
    state.handle(_frame("ticks", [f"1700000000000-{i}" for i in range(100)]),
                 1_700_000_000_001_000)
    report = state.report(1.0)
    assert report["n"] == 100 and len(report["lat_ms"]) == 10


def test_declared_ranges_run_from_after_to_the_next_recorded_tick() -> None:
    state = ProbeState(["A"], record=True)
    state.handle(_frame("ticks", ["1-0", "2-0"]), 1)
    state.handle(b'{"type":"unrecoverable","symbol":"A","after":"2-0","reason":"trimmed",'
                 b'"first_id":"4-0"}', 1)
    state.handle(_frame("snapshot", ["7-0"]), 1)
    ranges = declared_ranges(state.unrecoverable, state.received)
    assert ranges == {"A": [(pack_entry_id("2-0"), pack_entry_id("7-0"))]}
    truth = {"A": [pack_entry_id(f"{i}-0") for i in range(1, 8)]}
    result = check_client(state.received, truth, {"A": pack_entry_id("7-0")}, ranges)
    assert result["ok"] and result["declared_unrecoverable"] == 4
    # No tick after the message: everything after "after" is declared.
    assert declared_ranges([{"symbol": "B", "after": "1-0"}], {}) == {
        "B": [(pack_entry_id("1-0"), 2**63)]}
