"""A short soak: load, every kind of fault once, then the full check.

It runs for a minute and a half, so it runs in its own CI stage, after the
main suite (``.ci/run``), with ``PRICEPIPE_SOAK_TEST=1``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pricepipe.bench.soak import FAULT_KINDS, SoakParams, run_soak


@pytest.mark.skipif(os.environ.get("PRICEPIPE_SOAK_TEST") != "1",
                    reason="a 90 s soak: PRICEPIPE_SOAK_TEST=1 runs it (.ci/run's second stage)")
def test_short_soak_loses_nothing_and_no_reader_misses_anything_silently(
        tmp_path: Path) -> None:
    params = SoakParams(duration_s=60, rate=300, symbols=6, publishers=2, workers=2,
                        ws_servers=2, clients=2, fault_interval_s=5.5, stall_s=3,
                        warmup_s=5, drain_timeout_s=30, stream_window_s=6, max_age_s=8,
                        trim_interval_s=1, replica_lag_s=1.5,
                        full_headroom_bytes=64 * 1024, full_timeout_s=20, full_hold_s=2,
                        seed=11)
    summary = run_soak(params, json_path=str(tmp_path / "soak.json"))
    assert sorted({f["kind"] for f in summary["faults"]}) == sorted(FAULT_KINDS)
    details = {f["kind"]: f["detail"] for f in summary["faults"]}
    assert details["redis_full"].startswith("full, first write refused"), details
    once = summary["exactly_once"]
    assert once["published"] > 0
    assert once["lost"] == 0 and once["duplicated"] == 0, once
    # The replica was really behind: the failover lost entries (some of
    # which the workers had persisted before the primary died).
    assert once["failover_lost"] + once["failover_persisted"] > 0, once
    assert summary["drained"]
    assert not summary["unexpected_exits"], summary["unexpected_exits"]
    readers = summary["readers"]
    assert summary["readers_ok"], readers
    assert all(r["received"] > 0 and r["unexplained"] == 0 for r in readers.values())
    # Stopped past the cap, and through a failover while stopped (the plan
    # puts one there), the strategies lost entries from Redis: one was told
    # (from its checkpoint, an epoch gap, which covers what the cap trimmed
    # meanwhile), the other filled the gaps from PostgreSQL and received
    # every entry.
    told, filler = readers["strategy0"], readers["strategy1"]
    assert told["gaps"].get("epoch", 0) > 0 and told["flagged"] > 0, told
    assert filler["gaps"].get("epoch", 0) > 0 and filler["filled"] > 0, filler
    assert filler["received"] == filler["expected"], filler
    assert summary["memory_ok"], summary["memory"]
    assert summary["ok"]
    assert json.loads((tmp_path / "soak.json").read_text())["ok"] is True
