"""The client library's DataFrames over HTTP (the API's Parquet downloads
under a real uvicorn) equal, exactly, those it reads straight from
PostgreSQL; the API's caps and keys reach the caller as errors; and the
research example runs over ``--api``."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests

from pricepipe.api.settings import ApiSettings
from pricepipe.events import Quote, Side, Trade
from pricepipe.subscriber.client import (
    HttpHistory,
    bars_frame,
    quotes_frame,
    trades_frame,
)
from tests.api.helpers import (
    DAY0_US,
    backfill_entry,
    entry_for,
    insert_bars,
    insert_quotes,
    insert_trades,
    minute_bar_rows,
    steady_quotes,
    steady_trades,
)

ROOT = Path(__file__).parents[2]
DAY0, DAY1 = "2026-01-05", "2026-01-06"
SYMBOLS = ["MSFT", "AAPL", "EMPTY"]


def _seed(db: Any) -> None:
    """Two symbols with trades at shared instants, backfilled rows, trades
    without size or side, stored rollups for some minutes, one-sided quotes."""
    aapl = steady_trades("AAPL", DAY0_US, 500, 700_000)
    msft = steady_trades("MSFT", DAY0_US, 300, 1_400_000, price0=400.0)
    odd = [Trade("AAPL", DAY0_US + 1_400_000, 0.1 + 0.2, None, "venue-x", "NULL", None,
                 DAY0_US + 1_400_017),
           Trade("MSFT", DAY0_US + 7_000_000_000, 1e-9, 1e9, "venue-y", None, Side.BUY)]
    backfilled = [Trade("AAPL", DAY0_US + 2_100_000, 99.0, 1.0, "backfill", "b-1"),
                  Trade("AAPL", DAY0_US + 2_100_000, 98.0, None, "backfill", "b-2")]
    insert_trades(db, [*aapl, *msft, *odd, *backfilled],
                  [*(entry_for(t) for t in aapl), *(entry_for(t) for t in msft),
                   entry_for(odd[0], seq=5), entry_for(odd[1]),
                   backfill_entry(backfilled[0].ts_us), backfill_entry(backfilled[1].ts_us, 1)])
    insert_bars(db, minute_bar_rows(aapl[100:300]))
    quotes = [*steady_quotes("AAPL", DAY0_US, 200, 1_000_000),
              *steady_quotes("MSFT", DAY0_US, 100, 2_000_000, price0=400.0),
              Quote("MSFT", DAY0_US + 2_000_000, None, None, 401.0, None, "venue-x"),
              Quote("AAPL", DAY0_US + 5_000_000, 100.5, 3.0, None, None, "venue-x",
                    DAY0_US + 5_000_001)]
    insert_quotes(db, quotes, [*(entry_for(q) for q in quotes[:-2]), entry_for(quotes[-2], 1),
                               entry_for(quotes[-1], 1)])


def test_frames_over_http_equal_frames_from_postgresql(make_live_api: Callable[..., str],
                                                        db: Any) -> None:
    _seed(db)
    base_url = make_live_api()
    http = HttpHistory(base_url)
    loads: list[tuple[Callable[..., pd.DataFrame], dict[str, Any]]] = [
        (trades_frame, {}), (quotes_frame, {}),
        *((bars_frame, {"interval": interval}) for interval in ("1m", "5m", "1h", "1d")),
    ]
    for load, extra in loads:
        from_pg = load(db, SYMBOLS, DAY0, DAY1, **extra)
        assert len(from_pg) > 0 and set(from_pg["symbol"]) == {"AAPL", "MSFT"}
        for source in (http, base_url):  # the base URL alone works too
            pd.testing.assert_frame_equal(load(source, SYMBOLS, DAY0, DAY1, **extra), from_pg,
                                          check_exact=True)
        # An empty range: the same empty frame.
        pd.testing.assert_frame_equal(load(http, SYMBOLS, "2025-01-01", "2025-01-02", **extra),
                                      load(db, SYMBOLS, "2025-01-01", "2025-01-02", **extra),
                                      check_exact=True)
    # Several symbols: in time order, ties by the order given.
    trades = trades_frame(http, ["MSFT", "AAPL"], DAY0, DAY1)
    assert trades.index.is_monotonic_increasing
    at_tie = trades.loc[pd.Timestamp(DAY0_US * 1000, tz="UTC")]
    assert at_tie["symbol"].tolist() == ["MSFT", "AAPL"]


def test_the_api_caps_and_keys_reach_the_caller(make_live_api: Callable[..., str],
                                                db: Any) -> None:
    insert_trades(db, steady_trades("AAPL", DAY0_US, 10, 1_000_000))
    base_url = make_live_api(ApiSettings(rate_limit=None, key_rate_limit=None,
                                         max_range_days=2, max_bars=10,
                                         api_keys=("k-1",), api_key_required=True))
    with pytest.raises(requests.HTTPError, match="401"):
        trades_frame(base_url, "AAPL", DAY0, DAY1)
    keyed = HttpHistory(base_url, api_key="k-1")
    assert "k-1" not in repr(keyed)
    assert len(trades_frame(keyed, "AAPL", DAY0, DAY1)) == 10
    with pytest.raises(requests.HTTPError, match="time range too long: at most 2 days"):
        trades_frame(keyed, "AAPL", "2026-01-01", DAY1)
    with pytest.raises(requests.HTTPError, match="at most 10"):
        bars_frame(keyed, "AAPL", DAY0, DAY1)
    assert len(bars_frame(keyed, "AAPL", DAY0, DAY1, interval="1d")) == 1


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk of a PNG (checked to be one)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


def test_the_research_example_over_the_api(make_live_api: Callable[..., str], db: Any,
                                           tmp_path: Path) -> None:
    _seed(db)
    base_url = make_live_api()
    out = tmp_path / "aapl.png"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "research_day.py"), "--symbol", "AAPL",
         "--day", DAY0, "--api", base_url, "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl")})
    assert done.returncode == 0, done.stdout + done.stderr
    # 503 trades over 500 x 0.7 s: minutes 0 to 5 of the day.
    assert "503 trades of AAPL" in done.stdout and "\n6 minutes\n" in done.stdout
    width, height = _png_size(out.read_bytes())
    assert (width, height) == (1000, 600) and out.stat().st_size > 10_000


def _snippet(text: str, after: str) -> str:
    """The first ```python block after ``after`` in ``text``."""
    block = text.split(after, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert 2 <= len(block.strip().splitlines()) <= 3, block
    return block


@pytest.mark.parametrize(("doc", "after"), [("README.md", "For research, history comes"),
                                            ("docs/subscriber.md", "### Research: DataFrames")])
def test_the_three_line_snippets_give_a_day_of_trades(doc: str, after: str,
                                                      make_live_api: Callable[..., str],
                                                      db: Any) -> None:
    _seed(db)
    base_url = make_live_api()
    code = _snippet((ROOT / doc).read_text(), after)
    assert "http://127.0.0.1:8000" in code
    done = subprocess.run([sys.executable, "-c",
                           code.replace("http://127.0.0.1:8000", base_url)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # The one-minute OHLC of AAPL's day: minutes 0 to 5, the first opening at 100.
    lines = done.stdout.strip().splitlines()
    assert lines[0].split() == ["open", "high", "low", "close"]
    assert lines[2].startswith("2026-01-05 00:00:00+00:00")
    assert float(lines[2].split()[2]) == 100.0
    assert len(lines) == 2 + 6
