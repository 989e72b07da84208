"""Bars, CSV downloads, quotes and the GBM simulator against real servers."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from pricepipe.api.settings import ApiSettings

from pricepipe import codec, streams
from pricepipe.clock import format_us
from pricepipe.keys import Keys
from pricepipe.tick import Tick
from tests.api.helpers import (
    DAY0_US,
    MINUTE_US,
    entry_for,
    insert_bars,
    insert_ticks,
    minute_bar_rows,
    steady_ticks,
)


def _reference_bars(ticks: list[Tick], width_us: int) -> list[dict[str, Any]]:
    """Bars computed in Python from raw ticks, the way the API must."""
    groups: dict[int, list[Tick]] = {}
    for tick in sorted(ticks, key=lambda t: (t.ts_us, entry_for(t))):
        groups.setdefault(tick.ts_us - tick.ts_us % width_us, []).append(tick)
    return [
        {"bucket": format_us(b), "bucket_us": b, "open": g[0].price,
         "high": max(t.price for t in g), "low": min(t.price for t in g),
         "close": g[-1].price, "volume": sum(t.size or 0.0 for t in g), "tick_count": len(g)}
        for b, g in sorted(groups.items())
    ]


def _window() -> dict[str, str]:
    return {"start": format_us(DAY0_US), "end": format_us(DAY0_US + 3600 * 10**6)}


def test_bars_computed_from_ticks_at_every_interval(client: TestClient, db: Any) -> None:
    # 21 minutes of ticks every 7 s, so buckets hold uneven numbers of ticks.
    ticks = steady_ticks("BARS", DAY0_US + 3_000_000, 180, 7_000_000)
    insert_ticks(db, ticks)
    for interval, width_us in (("1m", MINUTE_US), ("5m", 5 * MINUTE_US),
                               ("15m", 15 * MINUTE_US), ("1h", 60 * MINUTE_US)):
        resp = client.get("/v1/bars/BARS", params={**_window(), "interval": interval})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["interval"] == interval
        assert body["bars"] == _reference_bars(ticks, width_us), interval
    day = client.get("/v1/bars/BARS", params={"interval": "1d", "start": str(DAY0_US),
                                               "end": str(DAY0_US + 86_400 * 10**6)}).json()
    assert day["bars"] == _reference_bars(ticks, 86_400 * 10**6)


def test_bars_prefer_stored_rollups_and_fill_in_from_ticks(client: TestClient, db: Any) -> None:
    ticks = steady_ticks("MIX", DAY0_US, 120, 5_000_000)  # minutes 0..9
    insert_ticks(db, ticks)
    stored = [t for t in ticks if 3 * MINUTE_US <= t.ts_us - DAY0_US < 7 * MINUTE_US]
    rows = minute_bar_rows(stored)
    # Mark the stored bars: a volume the ticks cannot produce shows which was used.
    insert_bars(db, [(*row[:6], 1000.0 + i, *row[7:]) for i, row in enumerate(rows)])
    one_minute = client.get("/v1/bars/MIX", params={**_window(), "interval": "1m"}).json()
    volumes = [b["volume"] for b in one_minute["bars"]]
    reference = _reference_bars(ticks, MINUTE_US)
    assert len(volumes) == 10
    assert volumes[3:7] == [1000.0, 1001.0, 1002.0, 1003.0]
    assert volumes[:3] + volumes[7:] == [b["volume"] for b in reference[:3] + reference[7:]]
    for got, want in zip(one_minute["bars"], reference, strict=True):
        assert (got["open"], got["high"], got["low"], got["close"], got["tick_count"]) == (
            want["open"], want["high"], want["low"], want["close"], want["tick_count"])
    five = client.get("/v1/bars/MIX", params={**_window(), "interval": "5m"}).json()["bars"]
    ref5 = _reference_bars(ticks, 5 * MINUTE_US)
    for got, want in zip(five, ref5, strict=True):
        assert (got["open"], got["high"], got["low"], got["close"], got["tick_count"]) == (
            want["open"], want["high"], want["low"], want["close"], want["tick_count"])


def test_bars_csv_and_range_caps(make_client: Callable[..., TestClient], db: Any) -> None:
    client = make_client(ApiSettings(rate_limit=None, key_rate_limit=None, max_bars=100))
    ticks = steady_ticks("CSVB", DAY0_US, 30, 10_000_000)
    insert_ticks(db, ticks)
    resp = client.get("/v1/bars/CSVB", params={**_window(), "format": "csv"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    ref = _reference_bars(ticks, MINUTE_US)
    assert [r["bucket"] for r in rows] == [b["bucket"] for b in ref]
    assert [float(r["close"]) for r in rows] == [b["close"] for b in ref]
    assert [int(r["tick_count"]) for r in rows] == [b["tick_count"] for b in ref]
    # 101 one-minute bars would exceed max_bars=100; 1h bars over the same range do not.
    too_long = {"start": str(DAY0_US), "end": str(DAY0_US + 101 * MINUTE_US)}
    refused = client.get("/v1/bars/CSVB", params={**too_long, "interval": "1m"})
    assert refused.status_code == 422 and "at most 100" in refused.json()["error"]
    assert client.get("/v1/bars/CSVB", params={**too_long, "interval": "1h"}).status_code == 200
    assert client.get("/v1/bars/CSVB", params={"interval": "2m"}).status_code == 422


def test_ticks_csv_by_format_or_accept_header(make_client: Callable[..., TestClient],
                                              db: Any) -> None:
    # Tiny chunks: the download arrives as many COPY chunks, all of them in order.
    client = make_client(ApiSettings(rate_limit=None, key_rate_limit=None, csv_chunk_bytes=64))
    ticks = steady_ticks("CSVT", DAY0_US, 300, 1_000_000)
    ticks.append(Tick("CSVT", DAY0_US + 400_000_000, 9.5, None, "test", DAY0_US + 400_000_001))
    insert_ticks(db, ticks)
    window = {"start": str(DAY0_US), "end": str(DAY0_US + 10**9)}
    by_param = client.get("/v1/ticks/CSVT", params={**window, "format": "csv"})
    by_accept = client.get("/v1/ticks/CSVT", params=window, headers={"Accept": "text/csv"})
    assert by_param.status_code == by_accept.status_code == 200
    assert by_param.content == by_accept.content
    assert "CSVT-ticks.csv" in by_param.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(by_param.text)))
    assert len(rows) == len(ticks)
    for row, tick in zip(rows, ticks, strict=True):
        assert row["ts"] == format_us(tick.ts_us) and int(row["ts_us"]) == tick.ts_us
        assert float(row["price"]) == tick.price
        assert (float(row["size"]) if row["size"] else None) == tick.size
        assert row["id"] == codec.unpack_entry_id(entry_for(tick))
    assert rows[-1]["recv_ts_us"] == str(DAY0_US + 400_000_001) and rows[0]["recv_ts_us"] == ""
    limited = client.get("/v1/ticks/CSVT", params={**window, "format": "csv", "limit": "5"})
    assert len(limited.text.strip().splitlines()) == 6
    # JSON stays the default for browsers' Accept headers.
    html_accept = "text/html,application/xhtml+xml,*/*;q=0.8"
    assert client.get("/v1/ticks/CSVT", params=window,
                      headers={"Accept": html_accept}).json()["count"] == 301


def test_quotes_from_the_streams(client: TestClient, r: Any, keys: Keys) -> None:
    streams.register_symbols(r, keys, ["QA", "QB"])
    ids = streams.append_ticks(r, keys, [Tick("QA", DAY0_US, 1.5, None, "gbm"),
                                         Tick("QA", DAY0_US + 1, 1.75, 2.0, "gbm")])
    # A corrupt entry is reported, not a 500.
    r.xadd(keys.stream("QB"), {"sym": "QB", "ts": "x"})
    body = client.get("/v1/quotes", params={"symbols": "qa,QB,NONE,QA"}).json()
    assert list(body["quotes"]) == ["QA", "QB", "NONE"]
    assert body["quotes"]["QA"] == codec.tick_to_dict(
        Tick("QA", DAY0_US + 1, 1.75, 2.0, "gbm"), ids[1].decode())
    assert body["quotes"]["QB"] is None and "unreadable" in body["errors"]["QB"]
    assert body["quotes"]["NONE"] is None and "NONE" not in body["errors"]
    many = ",".join(f"S{i}" for i in range(101))
    assert client.get("/v1/quotes", params={"symbols": many}).status_code == 422
    assert client.get("/v1/quotes", params={"symbols": ","}).status_code == 422


def test_gbm_simulation_is_seeded_and_validated(client: TestClient) -> None:
    import numpy as np

    from pricepipe.gbm import gbm_path

    query = {"periods": "50", "start_price": "10", "mu": "0.1", "sigma": "0.3",
             "delta": "0.01", "seed": "42"}
    body = client.get("/v1/simulate/gbm", params=query).json()
    expected = gbm_path(10.0, 0.1, 0.3, 0.01, 50, np.random.default_rng(42))
    assert body["prices"] == expected.tolist() and body["seed"] == 42
    unseeded = client.get("/v1/simulate/gbm").json()
    assert len(unseeded["prices"]) == 253 and unseeded["prices"][0] == 100.0
    again = client.get("/v1/simulate/gbm", params={"seed": str(unseeded["seed"])}).json()
    assert again["prices"] == unseeded["prices"]
    for bad in ({"periods": "0"}, {"periods": "100001"}, {"sigma": "-1"}, {"sigma": "nan"},
                {"start_price": "inf"}, {"delta": "0"}, {"seed": "-3"},
                {"mu": "100", "delta": "1000", "periods": "10"}):
        resp = client.get("/v1/simulate/gbm", params=bad)
        assert resp.status_code == 422, (bad, resp.text)
        assert resp.json()["error"]
