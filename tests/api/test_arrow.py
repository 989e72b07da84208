"""Parquet and Arrow IPC downloads of trades, quotes and bars against real
PostgreSQL: the same rows as the JSON, exactly (values, types, UTC), the
same caps and errors as CSV, readable by pandas as downloaded, and streamed
with memory that does not grow with the range."""

from __future__ import annotations

import http.client
import io
import socket
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
from fastapi.testclient import TestClient

from pricepipe import codec
from pricepipe.api import arrow, params, routes
from pricepipe.api.routes import COMPLETE_HEADER
from pricepipe.api.settings import ApiSettings
from pricepipe.clock import datetime_to_us, format_us, us_to_datetime
from pricepipe.config import DatabaseSettings
from pricepipe.events import Quote, Side, Trade
from pricepipe.exceptions import InvalidParameterError
from tests.api.helpers import (
    DAY0_US,
    MINUTE_US,
    backfill_entry,
    entry_for,
    expected_json,
    insert_bars,
    insert_quotes,
    insert_trades,
    minute_bar_rows,
    steady_quotes,
    steady_trades,
)

PARQUET = "application/vnd.apache.parquet"
ARROW = "application/vnd.apache.arrow.stream"
DAY0 = "2026-01-05"
WINDOW = {"start": format_us(DAY0_US), "end": format_us(DAY0_US + 3600 * 10**6)}


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many record batches and row groups from few rows: every seam is crossed."""
    monkeypatch.setattr(arrow, "BLOCK_BYTES", 300)
    monkeypatch.setattr(arrow, "ROW_GROUP_ROWS", 7)


def _read(response: Any) -> pa.Table:
    """The table of a Parquet or Arrow response, checked to be what its
    content type says."""
    assert response.status_code == 200, response.text
    kind = response.headers["content-type"]
    if kind == PARQUET:
        return pq.read_table(io.BytesIO(response.content))
    assert kind == ARROW, kind
    with pa.ipc.open_stream(response.content) as reader:
        return reader.read_all()


def _us(value: Any) -> int | None:
    return None if value is None else datetime_to_us(value)


def _as_json(table: pa.Table) -> list[dict[str, Any]]:
    """The rows of an event download in the JSON's shape (``ts`` as text and
    ``ts_us``, ``recv_ts_us``), to compare with what the JSON pages say."""
    out = []
    for row in table.to_pylist():
        ts_us = _us(row.pop("ts"))
        assert ts_us is not None
        recv = _us(row.pop("recv_ts"))
        entry = row.pop("id")
        symbol = row.pop("symbol")
        source = row.pop("source")
        out.append({"symbol": symbol, "ts": format_us(ts_us), "ts_us": ts_us, **row,
                    "source": source, "recv_ts_us": recv, "id": entry})
    return out


def _bars_as_json(table: pa.Table) -> list[dict[str, Any]]:
    out = []
    for row in table.to_pylist():
        bucket_us = _us(row.pop("bucket"))
        assert bucket_us is not None
        del row["symbol"]
        out.append({"bucket": format_us(bucket_us), "bucket_us": bucket_us, **row})
    return out


def _trades() -> tuple[list[Trade], list[int]]:
    """Trades with every kind of value: sizes and sides missing, a receive
    time, trade ids that read as null to a careless CSV parser, two at one
    instant, a backfilled one."""
    trades = steady_trades("PQT", DAY0_US, 40, 1_000_000)
    odd = [Trade("PQT", DAY0_US + 50_000_000, 0.1 + 0.2, None, "venue-x", "NULL", None,
                 DAY0_US + 50_000_123),
           Trade("PQT", DAY0_US + 50_000_000, 1e-7, 3.5, "venue-x", "NaN", Side.BUY),
           Trade("PQT", DAY0_US + 51_000_001, 123456.789, 0.001, "venue-y", None, Side.SELL)]
    backfilled = Trade("PQT", DAY0_US + 52_000_000, 99.5, 2.0, "backfill", "b-1")
    entries = [*(entry_for(t) for t in trades), entry_for(odd[0]), entry_for(odd[1], seq=1),
               entry_for(odd[2]), backfill_entry(backfilled.ts_us)]
    return [*trades, *odd, backfilled], entries


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_trades_round_trip_exactly(fmt: str, make_client: Callable[..., TestClient], db: Any,
                                   small_batches: None) -> None:
    client = make_client(ApiSettings(rate_limit=None, key_rate_limit=None, csv_chunk_bytes=100))
    trades, entries = _trades()
    insert_trades(db, trades, entries)
    response = client.get("/v1/trades/pqt", params={**WINDOW, "format": fmt})
    table = _read(response)
    assert table.schema == arrow.TRADES.schema
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    ext = "parquet" if fmt == "parquet" else "arrows"
    assert f'filename="PQT-trades.{ext}"' in response.headers["content-disposition"]
    # Exactly the JSON page's rows, which are exactly the codec's JSON of the events.
    page = client.get("/v1/trades/PQT", params={**WINDOW, "limit": "1000"}).json()["trades"]
    assert _as_json(table) == page
    want = sorted((expected_json(t, e) for t, e in zip(trades, entries, strict=True)),
                  key=lambda row: row["ts_us"])
    assert sorted(_as_json(table), key=lambda row: row["ts_us"]) == want
    assert [row["trade_id"] for row in page if row["source"] == "venue-x"] == ["NULL", "NaN"]
    if fmt == "parquet":  # several row groups, each with the one schema
        assert pq.ParquetFile(io.BytesIO(response.content)).num_row_groups > 1
    else:
        with pa.ipc.open_stream(response.content) as reader:
            assert sum(1 for _ in reader) > 1
    # The same bytes asked for by Accept; JSON still wins a tie.
    media_type = PARQUET if fmt == "parquet" else ARROW
    by_accept = client.get("/v1/trades/PQT", params=WINDOW,
                           headers={"Accept": f"application/json;q=0.5, {media_type}"})
    assert by_accept.content == response.content
    tie = client.get("/v1/trades/PQT", params=WINDOW,
                     headers={"Accept": f"{media_type}, application/json"})
    assert tie.headers["content-type"] == "application/json"
    # limit and cursor as for CSV: the first rows, or those after a page.
    limited = _read(client.get("/v1/trades/PQT", params={**WINDOW, "format": fmt, "limit": "5"}))
    assert _as_json(limited) == page[:5]
    first = client.get("/v1/trades/PQT", params={**WINDOW, "limit": "10"}).json()
    rest = _read(client.get("/v1/trades/PQT", params={**WINDOW, "format": fmt,
                                                       "cursor": first["next_cursor"]}))
    assert _as_json(rest) == page[10:]


def test_text_the_pipeline_never_writes_still_round_trips(client: TestClient, db: Any,
                                                         small_batches: None) -> None:
    # Stored by hand, past the events' checks: commas, quotes, newlines, a
    # NULL-looking text and an empty one.
    # Many rows, so that batch boundaries fall next to and inside them.
    odd = ['a,"b"\nc', "\n", "NULL", "", '"'] * 12
    with db.cursor() as cur:
        cur.execute("SELECT ensure_partitions('trades', %s::date, %s::date)", (DAY0, DAY0))
        for i, text in enumerate(odd):
            cur.execute("INSERT INTO trades (symbol, ts, price, size, side, trade_id, source,"
                        " recv_ts, entry_id) VALUES ('ODD', %s, 1.5, NULL, NULL, %s, 'x', NULL,"
                        " %s)", (us_to_datetime(DAY0_US + i), text, entry_for(
                            Trade("ODD", DAY0_US + i, 1.0, None, "x"))))
    page = client.get("/v1/trades/ODD", params=WINDOW).json()["trades"]
    assert [row["trade_id"] for row in page] == odd
    for fmt in ("parquet", "arrow"):
        table = _read(client.get("/v1/trades/ODD", params={**WINDOW, "format": fmt}))
        assert _as_json(table) == page


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_quotes_by_time_and_by_entry_id_range(fmt: str, client: TestClient, db: Any,
                                              small_batches: None) -> None:
    quotes = [*steady_quotes("PQQ", DAY0_US, 30, 1_000_000),
              Quote("PQQ", DAY0_US + 40_000_000, None, None, 4.5, 2.0, "test", DAY0_US),
              Quote("PQQ", DAY0_US + 41_000_000, 4.25, None, None, None, "test")]
    # Stream order differs from time order: the last-appended quote is the oldest.
    late = Quote("PQQ", DAY0_US + 500_000, 1.0, 1.0, 1.5, 1.0, "late")
    entries = [*(entry_for(q) for q in quotes),
               codec.pack_entry_id(f"{DAY0_US // 1000 + 45_000}-0")]
    insert_quotes(db, [*quotes, late], entries)
    table = _read(client.get("/v1/quotes/PQQ", params={**WINDOW, "format": fmt}))
    assert table.schema == arrow.QUOTES.schema
    page = client.get("/v1/quotes/PQQ", params=WINDOW).json()["quotes"]
    assert len(page) == 33 and _as_json(table) == page
    assert page[-1]["ask"] is None and page[-2]["bid"] is None
    ids = {"after_id": codec.unpack_entry_id(entries[3]),
           "until_id": f"{DAY0_US // 1000 + 50_000}-0"}
    response = client.get("/v1/quotes/PQQ", params={**ids, "format": fmt})
    id_page = client.get("/v1/quotes/PQQ", params=ids).json()
    assert response.headers[COMPLETE_HEADER] == "unknown"  # no persist group in Redis
    by_ids = _as_json(_read(response))
    assert by_ids == id_page["quotes"] and by_ids[-1]["source"] == "late"
    assert [row["id"] for row in by_ids] == [codec.unpack_entry_id(e) for e in entries[4:]]


@pytest.mark.parametrize("interval", ["1m", "5m", "1h"])
def test_bars_are_the_json_bars(interval: str, client: TestClient, db: Any,
                                small_batches: None) -> None:
    trades = steady_trades("PQB", DAY0_US, 600, 1_500_000)
    insert_trades(db, trades)
    # Stored rollups for some minutes, raw trades for the rest.
    insert_bars(db, minute_bar_rows(trades[200:400]))
    query = {**WINDOW, "interval": interval}
    want = client.get("/v1/bars/PQB", params=query).json()["bars"]
    assert len(want) > 1 or interval == "1h"
    for fmt in ("parquet", "arrow"):
        response = client.get("/v1/bars/PQB", params={**query, "format": fmt})
        table = _read(response)
        assert table.schema == arrow.BARS.schema
        assert set(table.column("symbol").to_pylist()) == {"PQB"}
        assert _bars_as_json(table) == want
        assert f"PQB-bars-{interval}." in response.headers["content-disposition"]


def test_format_negotiation() -> None:
    choose = params.response_format
    assert choose("parquet", "text/csv") == "parquet" and choose("arrow", None) == "arrow"
    assert choose(None, PARQUET) == "parquet" and choose(None, ARROW) == "arrow"
    assert choose(None, f"text/csv;q=0.5, {ARROW};q=0.8, application/json;q=0.1") == "arrow"
    assert choose(None, f"{PARQUET};q=0.5, application/json") == "json"
    assert choose(None, f"{PARQUET}, {ARROW}") == "parquet"  # a tie: the order offered
    assert choose(None, "*/*") == "json" and choose(None, None) == "json"
    # What the server cannot make, Accept does not get; format= names it all the same.
    assert choose(None, PARQUET, offered=("json", "csv")) == "json"
    assert choose("parquet", None, offered=("json", "csv")) == "parquet"
    with pytest.raises(InvalidParameterError, match="json, csv, parquet, arrow"):
        choose("xlsx", None)


def test_caps_and_validation_are_those_of_csv(make_client: Callable[..., TestClient]) -> None:
    client = make_client(ApiSettings(rate_limit=None, key_rate_limit=None, max_range_days=2,
                                     max_bars=100))
    day = 86_400_000_000
    cases = [
        ("/v1/trades/AAPL", {"start": str(DAY0_US), "end": str(DAY0_US + 2 * day + 1)}),
        ("/v1/quotes/AAPL", {"start": str(DAY0_US), "end": str(DAY0_US)}),
        ("/v1/trades/A%7BB", {}),
        ("/v1/trades/AAPL", {"after_id": "1-0"}),
        ("/v1/trades/AAPL", {"after_id": "1-0", "until_id": "2-0", "start": "1767571200"}),
        ("/v1/quotes/AAPL", {"after_id": "5-0", "until_id": "4-0"}),
        ("/v1/trades/AAPL", {"after_id": "1-0", "until_id": f"{3 * day // 1000}-0"}),
        ("/v1/trades/AAPL", {"cursor": "garbage"}),
        ("/v1/trades/AAPL", {"after_id": "1-0", "until_id": "9-0", "cursor": "1767571200000000_5"}),
        ("/v1/trades/AAPL", {"limit": "0"}),
        ("/v1/bars/AAPL", {"interval": "1m", "start": str(DAY0_US),
                           "end": str(DAY0_US + 101 * MINUTE_US)}),
        ("/v1/bars/AAPL", {"interval": "2m"}),
    ]
    for path, query in cases:
        answers = [client.get(path, params={**query, "format": fmt})
                   for fmt in ("csv", "parquet", "arrow")]
        assert {a.status_code for a in answers} == {422}, (path, query)
        assert answers[0].json() == answers[1].json() == answers[2].json(), (path, query)
    # An unknown format is refused by name.
    bad = client.get("/v1/trades/AAPL", params={"format": "xlsx"})
    assert bad.status_code == 422 and "format" in bad.json()["error"]


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_an_empty_range_is_a_file_of_the_schema(fmt: str, client: TestClient) -> None:
    for path, layout in (("trades", arrow.TRADES), ("quotes", arrow.QUOTES),
                         ("bars", arrow.BARS)):
        table = _read(client.get(f"/v1/{path}/NONE", params={**WINDOW, "format": fmt}))
        assert table.num_rows == 0 and table.schema == layout.schema
        frame = table.to_pandas()
        assert str(frame.dtypes["ts" if path != "bars" else "bucket"]) == "datetime64[us, UTC]"


@pytest.fixture
def without_pyarrow(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The server as installed without the research extra."""
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` raises ImportError
    monkeypatch.delitem(sys.modules, "pricepipe.api.arrow")
    routes._arrow_module.cache_clear()
    yield
    routes._arrow_module.cache_clear()


def test_without_pyarrow_binary_formats_are_406_and_the_rest_works(
        client: TestClient, db: Any, without_pyarrow: None) -> None:
    insert_trades(db, steady_trades("NOPA", DAY0_US, 5, 1_000_000))
    for path in ("/v1/trades/NOPA", "/v1/quotes/NOPA", "/v1/bars/NOPA"):
        for fmt in ("parquet", "arrow"):
            response = client.get(path, params={**WINDOW, "format": fmt})
            assert response.status_code == 406, response.text
            assert "pricepipe[research]" in response.json()["error"]
    # Accept only prefers: without pyarrow it gets what the server has.
    page = client.get("/v1/trades/NOPA", params=WINDOW, headers={"Accept": PARQUET})
    assert page.status_code == 200 and page.json()["count"] == 5
    csv_text = client.get("/v1/trades/NOPA", params={**WINDOW, "format": "csv"}).text
    assert len(csv_text.splitlines()) == 6


def test_a_curl_download_opens_in_pandas(make_live_api: Callable[..., str], db: Any,
                                         tmp_path: Any) -> None:
    trades, entries = _trades()
    insert_trades(db, trades, entries)
    base_url = make_live_api()
    # What `curl -o aapl.parquet '.../v1/trades/PQT?format=parquet'` does.
    with requests.get(f"{base_url}/v1/trades/PQT", params={**WINDOW, "format": "parquet"},
                      stream=True, timeout=30) as response:
        assert response.status_code == 200 and response.headers["content-type"] == PARQUET
        path = tmp_path / "pqt.parquet"
        with path.open("wb") as out:
            for chunk in response.iter_content(chunk_size=1 << 16):
                out.write(chunk)
    frame = pd.read_parquet(path)
    assert len(frame) == len(trades)
    assert str(frame["ts"].dtype) == "datetime64[us, UTC]"
    assert frame["ts"].is_monotonic_increasing
    assert frame["price"].dtype == "float64" and frame["size"].isna().sum() > 0
    json_rows = requests.get(f"{base_url}/v1/trades/PQT", params={**WINDOW, "limit": "100"},
                             timeout=30).json()["trades"]
    assert [int(ts.value // 1000) for ts in frame["ts"]] == [row["ts_us"] for row in json_rows]
    assert frame["price"].tolist() == [row["price"] for row in json_rows]
    assert [None if pd.isna(v) else v for v in frame["id"]] == [row["id"] for row in json_rows]
    # And the Arrow stream, read as it arrives.
    with requests.get(f"{base_url}/v1/trades/PQT", params={**WINDOW, "format": "arrow"},
                      stream=True, timeout=30) as response:
        response.raw.decode_content = True
        with pa.ipc.open_stream(response.raw) as reader:
            streamed = reader.read_pandas()
    pd.testing.assert_frame_equal(streamed, frame)


def _peak_growth_while_reading(url: str, query: dict[str, str]) -> tuple[int, int]:
    """Bytes of a streamed response, and the most that Python's and pyarrow's
    allocations (the server's and the reader's, all in this process) grew
    above where they started, sampled after every chunk."""
    def held() -> int:
        return tracemalloc.get_traced_memory()[0] + pa.total_allocated_bytes()

    tracemalloc.start()
    try:
        base = held()
        peak, size = 0, 0
        with requests.get(url, params=query, stream=True, timeout=60) as response:
            assert response.status_code == 200, response.text
            for chunk in response.iter_content(chunk_size=1 << 16):
                size += len(chunk)
                peak = max(peak, held() - base)
    finally:
        tracemalloc.stop()
    return size, peak


def test_memory_stays_flat_whatever_the_size_of_the_range(
        make_live_api: Callable[..., str], db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Batches and row groups small against the data, as a day is against a year.
    # Small enough, too, that every buffer between PostgreSQL and this reader
    # full at once (a loaded machine's thread timing) stays far under the bound.
    monkeypatch.setattr(arrow, "BLOCK_BYTES", 32 * 1024)
    monkeypatch.setattr(arrow, "ROW_GROUP_ROWS", 2048)
    count = 250_000
    insert_trades(db, steady_trades("BIG", DAY0_US, count, 300_000))
    base_url = make_live_api(ApiSettings(rate_limit=None, key_rate_limit=None,
                                         csv_chunk_bytes=16 * 1024))
    url = f"{base_url}/v1/trades/BIG"
    query = {"start": format_us(DAY0_US), "end": format_us(DAY0_US + 2 * 86_400_000_000)}
    # The IPC stream is the table as it sits in memory: what buffering the
    # whole response would hold.
    ipc_bytes, ipc_peak = _peak_growth_while_reading(url, {**query, "format": "arrow"})
    parquet_bytes, parquet_peak = _peak_growth_while_reading(url, {**query, "format": "parquet"})
    assert ipc_bytes > count * 50  # the data really went through
    assert 0 < parquet_bytes < ipc_bytes
    # Streamed, each peaked at 1.5-2.4 MB of 21, on a loaded machine too; buffered
    # whole, the IPC one at 58; buffering half the CSV, the Parquet one at 5.6
    # (with four times these buffers, when it also peaked near 3 MB streamed).
    assert ipc_peak < ipc_bytes / 4, (ipc_peak, ipc_bytes)
    assert parquet_peak < ipc_bytes / 4, (parquet_peak, ipc_bytes)


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_a_client_leaving_early_stops_the_download_and_frees_its_connection(
        fmt: str, make_live_api: Callable[..., str], db: Any, database_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arrow, "BLOCK_BYTES", 64 * 1024)
    monkeypatch.setattr(arrow, "ROW_GROUP_ROWS", 1000)
    # Uncompressed: a body far larger than the sockets' buffers can hold.
    monkeypatch.setattr(arrow, "PARQUET_COMPRESSION", "none")
    produced: list[int] = []
    encode = arrow.encode

    def counted(*args: Any) -> Iterator[bytes]:
        for chunk in encode(*args):
            produced.append(len(chunk))
            yield chunk

    monkeypatch.setattr(arrow, "encode", counted)
    insert_trades(db, steady_trades("BIG", DAY0_US, 400_000, 5_000))
    # One connection only: if the abandoned COPY kept it, the next request
    # would wait pool_wait_s and fail with 503.
    base_url = make_live_api(ApiSettings(rate_limit=None, key_rate_limit=None,
                                         csv_chunk_bytes=16 * 1024, pool_wait_s=30),
                             DatabaseSettings(url=database_url, pool_max=1))
    path = f"/v1/trades/BIG?start={DAY0_US}&end={DAY0_US + 3 * 10**9}&format={fmt}"
    whole = len(requests.get(base_url + path, timeout=60).content)
    assert whole == sum(produced) > 15_000_000  # the sockets hold 4 MB or so
    produced.clear()
    parts = urlsplit(base_url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # no window to fill
    sock.settimeout(30)
    sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port)
    conn.sock = sock
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200
        first = response.read(4096)
        assert first[:4] == (b"PAR1" if fmt == "parquet" else b"\xff\xff\xff\xff")
    finally:
        conn.close()  # walk away mid-download
    # The connection is back in the pool, and the download stopped early.
    page = requests.get(f"{base_url}/v1/trades/BIG", params={**WINDOW, "limit": "3"},
                        timeout=60)
    assert page.status_code == 200 and page.json()["count"] == 3
    assert sum(produced) < whole / 2, (sum(produced), whole)
