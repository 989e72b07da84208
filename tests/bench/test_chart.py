"""The e2e ramp's chart: drawn from the steps, a real PNG."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from pricepipe.bench.chart import ramp_chart, ramp_series

STEPS: list[dict[str, Any]] = [
    {"target_events_per_s": 1000, "published_events_per_s": 998.0,
     "persisted_events_per_s": 997.0, "ws_events_per_s": 998.0,
     "persist_lag_p99_ms": 40.0, "ws_latency_p99_ms": 9.0},
    {"target_events_per_s": 5000, "published_events_per_s": 4990.0,
     "persisted_events_per_s": 4100.0, "ws_events_per_s": 4990.0,
     "persist_lag_p99_ms": 2600.0, "ws_latency_p99_ms": None},
]


def test_series_follow_the_steps() -> None:
    series = ramp_series(STEPS)
    assert series["offered"] == [1000.0, 5000.0]
    assert series["persisted"] == [997.0, 4100.0]
    assert series["ws_latency_p99_ms"] == [9.0, None]


def test_the_chart_is_a_png_of_the_ramp(tmp_path: Path) -> None:
    path = tmp_path / "ramp.png"
    assert ramp_chart(STEPS, path, title="test", goal_events_per_s=50_000,
                      goal_lag_ms=1000, goal_ws_ms=50)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1100, 462)  # 10 x 4.2 inches at 110 dpi
    assert len(data) > 20_000  # lines and text drawn, not a blank canvas
    assert not ramp_chart([], tmp_path / "none.png", title="", goal_events_per_s=1,
                          goal_lag_ms=1, goal_ws_ms=1)
