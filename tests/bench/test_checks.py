"""The soak's verdicts, the e2e ramp and judge: pure code."""

from __future__ import annotations

from typing import Any

from pricepipe.bench.e2e import Bounds, judge, next_step_rate, ramp, split, symbol_names
from pricepipe.bench.probe import ProbeState
from pricepipe.bench.soak import (
    FAULT_KINDS,
    LostRange,
    ReaderLog,
    check_exactly_once,
    check_reader,
    fault_plan,
    memory_verdict,
    probe_log,
    strategy_log,
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
    kinds = [kind for _, kind in plan]
    assert kinds.index("failover") == kinds.index("stop_strategy") + 1
    assert fault_plan(10, 10, seed=1) == []


def P(text: str) -> int:  # noqa: N802 - reads like the ID it packs
    return pack_entry_id(text)


def test_exactly_once_passes_when_rows_match_the_streams() -> None:
    ids = [P(f"{i}-0") for i in range(1, 6)]
    verdict = check_exactly_once({"trades:A": 5, "quotes:A": 0}, {"trades:A": ids},
                                 {"trades:A": ids[2:]}, 0)
    assert verdict["ok"] and verdict["lost"] == 0 and verdict["published"] == 5


def test_exactly_once_counts_loss_duplicates_and_dead_letters() -> None:
    a = [P(f"{i}-0") for i in range(1, 5)]
    verdict = check_exactly_once(
        {"trades:A": 5, "trades:B": 3, "quotes:C": 2},
        {"trades:A": a, "trades:B": [P("1-0"), P("2-0"), P("3-0"), P("3-0")],
         "quotes:C": [P("1-0"), P("2-0")]},
        {"trades:A": a, "quotes:C": [P("1-0"), P("3-0")]}, dead_letters=2)
    assert not verdict["ok"]
    # A short by one, C's 3-0 still in the stream without its row, 2 dead letters
    assert verdict["lost"] == 1 + 1 + 2
    # B's second row of 3-0; C's row 2-0 inside the stream's range the stream lacks
    assert verdict["duplicated"] == 2
    assert set(verdict["bad_streams"]) == {"trades:A", "trades:B", "quotes:C"}


def test_exactly_once_counts_rows_beyond_what_was_published() -> None:
    verdict = check_exactly_once({"trades:A": 2}, {"trades:A": [P("1-0"), P("2-0"), P("3-0")]},
                                 {}, 0)
    assert verdict["duplicated"] == 1 and not verdict["ok"]


def test_exactly_once_after_a_failover_reports_what_redis_lost() -> None:
    # The primary had 1..6; the promoted replica had 1..3, then took 10, 11.
    # Workers had persisted 4 and 5 from the primary before it died; 6 is gone.
    lost = {"trades:A": [LostRange(P("3-0"), P("6-0"), 3)]}
    rows = [P(f"{i}-0") for i in (1, 2, 3, 4, 5, 10, 11)]
    verdict = check_exactly_once({"trades:A": 5}, {"trades:A": rows},
                                 {"trades:A": [P("1-0"), P("2-0"), P("3-0"), P("10-0"),
                                               P("11-0")]}, 0, lost)
    assert verdict["ok"], verdict
    assert (verdict["failover_persisted"], verdict["failover_lost"]) == (2, 1)
    # Without the lost range, the rows 4 and 5 are rows the stream lacks.
    assert not check_exactly_once({"trades:A": 5}, {"trades:A": rows},
                                  {"trades:A": [P("1-0"), P("10-0")]}, 0)["ok"]


TRUTH = {"trades:A": [P(f"{i}-0") for i in range(1, 7)], "quotes:A": [P("10-0"), P("20-0")]}
LAST = {"trades:A": P("6-0"), "quotes:A": P("20-0")}


def test_reader_check_accepts_a_contiguous_tail() -> None:
    log = ReaderLog(received={"trades:A": [P(f"{i}-0") for i in (3, 4, 5, 6)],
                              "quotes:A": [P("10-0"), P("20-0")]})
    result = check_reader(log, TRUTH, LAST)
    assert result["ok"], result
    assert (result["expected"], result["received"], result["unexplained"]) == (6, 6, 0)


def test_reader_check_finds_silent_gaps_duplicates_and_a_missed_end() -> None:
    log = ReaderLog(received={"trades:A": [P("1-0"), P("2-0"), P("4-0"), P("4-0"), P("5-0")],
                              "quotes:A": [P("10-0"), P("20-0")]})
    result = check_reader(log, TRUTH, LAST)
    assert not result["ok"]
    assert result["unexplained"] == 2  # 3 and 6 never arrived, nobody said so
    assert result["duplicates"] == 1  # 4 twice
    assert result["not_at_end"] == ["trades:A"]
    assert "trades:A: 1 unexplained from 3-0 to 3-0" in result["examples"]


def test_reader_check_counts_flagged_ranges_and_allowed_repeats() -> None:
    log = ReaderLog(received={"trades:A": [P("1-0"), P("5-0"), P("4-0"), P("5-0"), P("6-0")],
                              "quotes:A": [P("10-0"), P("20-0")]},
                    flagged={"trades:A": [(P("1-0"), P("5-0"))]},
                    repeat_ok={"trades:A": {P("4-0"), P("5-0")}})
    result = check_reader(log, TRUTH, LAST)
    assert result["ok"], result
    assert (result["flagged"], result["duplicates"]) == (2, 0)  # 2 and 3 were announced


def test_reader_check_flags_a_stream_never_received() -> None:
    result = check_reader(ReaderLog(received={"trades:A": TRUTH["trades:A"]}), TRUTH, LAST)
    assert result["never_received"] == ["quotes:A"] and not result["ok"]


def test_probe_record_flags_unrecoverable_and_allows_an_epoch_restart() -> None:
    state = ProbeState(["A"], channels=("trades",), record=True)
    trades = [f"{i}-0" for i in range(1, 7)]

    def frame(kind: str, ids: list[str]) -> bytes:
        return encode_json({"type": kind, "trades": [
            {"symbol": "A", "id": i, "ts_us": 1_700_000_000_000_000, "price": 1.0}
            for i in ids]})

    state.handle(frame("trades", trades[:2]), 1)  # 1, 2
    state.handle(b'{"type":"unrecoverable","symbol":"A","channel":"trades","after":"2-0",'
                 b'"reason":"trimmed","first_id":"4-0"}', 1)
    state.handle(frame("snapshot", ["4-0"]), 1)  # 3 skipped, announced
    state.handle(frame("trades", ["5-0"]), 1)
    # A failover: the new Redis holds up to 4 (5 was lost), then takes 6.
    state.handle(b'{"type":"unrecoverable","symbol":"A","channel":"trades","after":"5-0",'
                 b'"reason":"epoch"}', 1)
    state.handle(frame("snapshot", ["4-0"]), 1)
    state.handle(frame("trades", ["6-0"]), 1)
    log = probe_log(state.summary())
    assert log.flagged == {"trades:A": [(P("2-0"), P("4-0")), (P("5-0"), P("6-0"))]}
    assert log.repeat_ok == {"trades:A": {P("4-0")}}
    truth = {"trades:A": [P(t) for t in trades]}
    result = check_reader(log, truth, {"trades:A": P("6-0")})
    assert result["ok"], result
    assert (result["received"], result["flagged"], result["duplicates"]) == (5, 1, 0)
    # Without the epoch message, 4 after 5 is a duplicate.
    state.unrecoverable.pop()
    assert check_reader(probe_log(state.summary()), truth,
                        {"trades:A": P("6-0")})["duplicates"] == 1


def test_strategy_lives_become_one_log() -> None:
    lives: list[dict[str, Any]] = [
        {"deliveries": [["trades", "A", P("1-0"), False, False]], "gaps": [], "errors": []},
        {"deliveries": [["trades", "A", P("1-0"), True, False],
                        ["trades", "A", P("2-0"), False, True],
                        ["trades", "A", P("6-0"), False, False]],
         "gaps": [["trades", "A", "2-0", "6-0", "trimmed", True]], "errors": []},
    ]
    log = strategy_log(lives)
    truth = {"trades:A": [P(f"{i}-0") for i in range(1, 7)]}
    result = check_reader(log, truth, {"trades:A": P("6-0")})
    assert result["ok"], result
    assert (result["received"], result["flagged"], result["unexplained"]) == (3, 3, 0)
    lives[1]["errors"] = ["RedisError: boom"]
    assert not check_reader(strategy_log(lives), truth, {"trades:A": P("6-0")})["ok"]


def test_the_ramp_bisects_after_its_first_failure() -> None:
    planned = [10_000, 50_000, 87_500, 100_000]
    # The planned steps in order while they hold.
    assert next_step_rate(planned, []) == 10_000
    assert next_step_rate(planned, [(10_000, True), (50_000, True)]) == 87_500
    assert next_step_rate(planned, [(r, True) for r in planned]) is None
    # Then between the highest held and the lowest failed, twice at most.
    done = [(10_000, True), (50_000, True), (87_500, False)]
    assert next_step_rate(planned, done) == 68_750
    assert next_step_rate(planned, [*done, (68_750, True)]) == 78_125
    assert next_step_rate(planned, [*done, (68_750, False)]) == 59_375
    assert next_step_rate(planned, [*done, (68_750, True), (78_125, False)]) is None
    assert next_step_rate(planned, done, refine=0) is None
    # Not when nothing held, nor when the two are within 10 %.
    assert next_step_rate(planned, [(10_000, False)]) is None
    assert next_step_rate(planned, [(50_000, True), (54_000, False)]) is None


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
        "target_events_per_s": 1000, "published_events_per_s": 990.0,
        "persisted_events_per_s": 985.0, "ws_events_per_s": 990.0,
        "persist_lag_p99_ms": 120.0, "persist_lag_last_ms": 30.0, "ws_latency_p99_ms": 12.0}
    step.update(overrides)
    return step


def test_judge_sustained_and_each_reason() -> None:
    bounds = Bounds()
    assert judge(_step(), bounds) == []
    assert "published" in judge(_step(published_events_per_s=500.0), bounds)[0]
    assert "persisted" in judge(_step(persisted_events_per_s=500.0), bounds)[0]
    assert "websocket probe" in judge(_step(ws_events_per_s=10.0), bounds)[0]
    assert "persist lag p99" in judge(_step(persist_lag_p99_ms=5000.0), bounds)[0]
    assert "still" in judge(_step(persist_lag_last_ms=5000.0), bounds)[0]
    assert "websocket p99" in judge(_step(ws_latency_p99_ms=None), bounds)[0]
