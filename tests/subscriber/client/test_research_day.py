"""examples/research_day.py: its resampling, and the script itself on a
seeded database, down to the PNG it draws."""

from __future__ import annotations

import importlib.util
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd

from pricepipe.events import Trade
from pricepipe.subscriber.client import trades_frame
from tests.api.helpers import DAY0_US, insert_trades, steady_trades

ROOT = Path(__file__).parents[3]
SCRIPT = ROOT / "examples" / "research_day.py"
MINUTE_US = 60_000_000


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("research_day", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _seed(db: Any) -> list[Trade]:
    """Minutes 0-2 and 10-11 of the day (a gap between: no bar there), and
    trades of another symbol and another day, which are not drawn."""
    trades = [*steady_trades("AAPL", DAY0_US, 180, 1_000_000),
              *steady_trades("AAPL", DAY0_US + 10 * MINUTE_US + 500_000, 90, 1_000_000)]
    insert_trades(db, [*trades, *steady_trades("MSFT", DAY0_US, 50, 1_000_000),
                       *steady_trades("AAPL", DAY0_US + 86_400_000_000, 50, 1_000_000)])
    return trades


def test_minute_bars_are_ohlc_and_volume_of_each_minute(db: Any) -> None:
    trades = _seed(db)
    bars = _module().minute_bars(trades_frame(db, "AAPL", "2026-01-05", "2026-01-06"))
    minutes: dict[int, list[Trade]] = {}
    for trade in trades:
        minutes.setdefault(trade.ts_us - trade.ts_us % MINUTE_US, []).append(trade)
    assert [int(ts.value // 1000) for ts in bars.index] == sorted(minutes)
    for (_, row), group in zip(bars.iterrows(), (minutes[m] for m in sorted(minutes)),
                               strict=True):
        assert (row["open"], row["close"]) == (group[0].price, group[-1].price)
        assert (row["high"], row["low"]) == (max(t.price for t in group),
                                             min(t.price for t in group))
        assert row["volume"] == sum(t.size or 0.0 for t in group)
        assert row["trades"] == len(group)
    assert isinstance(bars, pd.DataFrame)


def test_the_script_draws_a_day_from_postgresql(pipeline_env: dict[str, str], db: Any,
                                                tmp_path: Path) -> None:
    _seed(db)
    out = tmp_path / "day.png"
    env = {**pipeline_env, "PYTHONPATH": str(ROOT), "MPLCONFIGDIR": str(tmp_path / "mpl")}
    done = subprocess.run([sys.executable, str(SCRIPT), "--symbol", "AAPL", "--day",
                           "2026-01-05", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "270 trades of AAPL on 2026-01-05" in done.stdout
    assert "\n5 minutes\n" in done.stdout and f"chart: {out}" in done.stdout
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind, width, height = struct.unpack(">I4sII", data[8:24])
    assert (length, kind) == (13, b"IHDR") and (width, height) == (1000, 600)
    assert len(data) > 10_000  # axes, lines and bars, not a blank canvas
    # A day without trades: said so, no chart.
    empty = subprocess.run([sys.executable, str(SCRIPT), "--symbol", "AAPL", "--day",
                            "2026-02-01", "--out", str(tmp_path / "none.png")],
                           env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert empty.returncode == 1 and "no trades that day" in empty.stderr
    assert not (tmp_path / "none.png").exists()
