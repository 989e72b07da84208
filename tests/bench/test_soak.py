"""A short soak: load, every kind of fault once, then the full check."""

from __future__ import annotations

import json
from pathlib import Path

from pricepipe.bench.soak import FAULT_KINDS, SoakParams, run_soak


def test_short_soak_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    params = SoakParams(duration_s=45, rate=300, symbols=8, publishers=2, workers=2,
                        ws_servers=2, clients=2, fault_interval_s=5.5, stall_s=4,
                        warmup_s=5, drain_timeout_s=30, stream_window_s=60, seed=11)
    summary = run_soak(params, json_path=str(tmp_path / "soak.json"))
    assert sorted({f["kind"] for f in summary["faults"]}) == sorted(FAULT_KINDS)
    once = summary["exactly_once"]
    assert once["published"] > 0
    assert once["lost"] == 0 and once["duplicated"] == 0, once
    assert summary["drained"]
    assert summary["clients_ok"], summary["clients"]
    assert all(c["ticks"] > 0 for c in summary["clients"].values())
    assert summary["memory_ok"], summary["memory"]
    assert summary["ok"]
    assert json.loads((tmp_path / "soak.json").read_text())["ok"] is True
