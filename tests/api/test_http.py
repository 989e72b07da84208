"""Trade and quote history, symbols and the plumbing of pages against real
Redis and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from pricepipe import codec, streams
from pricepipe.clock import format_us
from pricepipe.events import Quote, Side, Trade
from pricepipe.keys import Keys
from tests.api.helpers import (
    DAY0_US,
    backfill_entry,
    entry_for,
    expected_json,
    insert_quotes,
    insert_trades,
    steady_quotes,
    steady_trades,
)


def _assert_sane_quotes(quotes: list[dict[str, Any]]) -> None:
    """What a reader of any quote page relies on, whatever the rows: no crossed
    book (Quote refuses bid > ask; a locked bid == ask is a market), sizes not
    negative and only beside their price, rows in event time then entry ID."""
    for q in quotes:
        if q["bid"] is not None and q["ask"] is not None:
            assert q["bid"] <= q["ask"], q
        for price, size in (("bid", "bid_size"), ("ask", "ask_size")):
            assert q[size] is None or (q[price] is not None and q[size] >= 0.0), q
    order = [(q["ts_us"], codec.parse_entry_id(q["id"])) for q in quotes]
    assert order == sorted(order)


def test_trades_json_matches_the_codec(client: TestClient, db: Any) -> None:
    trades = [
        Trade("AAPL", DAY0_US + 1, 187.25, 3.0, "test", "884213", Side.BUY, DAY0_US + 900),
        Trade("AAPL", DAY0_US + 2_000_000, 0.1 + 0.2, None, "gbm"),
        Trade("AAPL", DAY0_US + 3_000_000, 1e-7, 0.5, "test", "a-b:c.d_9", Side.SELL),
        Trade("AAPL", DAY0_US + 4_000_000, 1e22, 1e-9, "test"),
        Trade("MSFT", DAY0_US + 1_500_000, 400.0, 1.0, "test"),
    ]
    insert_trades(db, trades)
    resp = client.get("/v1/trades/aapl", params={"start": format_us(DAY0_US),
                                                 "end": str(DAY0_US // 1000 + 10_000)})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["symbol"] == "AAPL" and body["count"] == 4 and body["next_cursor"] is None
    assert body["trades"] == [expected_json(t, entry_for(t)) for t in trades[:4]]
    # Key for key, in the codec's order: the page is what the websocket sends.
    assert [list(t) for t in body["trades"]] == [list(codec.event_to_dict(trades[0], "1-0"))] * 4


def test_quotes_json_matches_the_codec(client: TestClient, db: Any) -> None:
    quotes = [
        Quote("AAPL", DAY0_US + 1, 187.24, 300.0, 187.26, 0.0, "test", DAY0_US + 5),
        Quote("AAPL", DAY0_US + 2, None, None, 187.3, None, "test"),  # one-sided
        Quote("AAPL", DAY0_US + 3, 0.1 + 0.2, 7.0, None, None, "gbm"),
        Quote("AAPL", DAY0_US + 4, 5.0, None, 5.0, 1.5, "gbm"),  # locked, not crossed
    ]
    insert_quotes(db, quotes)
    body = client.get("/v1/quotes/AAPL", params={"start": str(DAY0_US),
                                                  "end": str(DAY0_US + 10)}).json()
    assert body["count"] == 4 and body["next_cursor"] is None
    assert body["quotes"] == [expected_json(q, entry_for(q)) for q in quotes]
    assert [list(q) for q in body["quotes"]] == [list(codec.event_to_dict(quotes[0], "1-0"))] * 4
    # The exact round trip above holds for these rows; the invariants hold for any
    # (the locked quote keeps the crossed-book check at the model's bid > ask).
    _assert_sane_quotes(body["quotes"])


def test_epoch_microseconds_are_exact_up_to_2100(client: TestClient, db: Any) -> None:
    import random

    from pricepipe.events import MAX_TS_US

    rng = random.Random(11)
    # The float8 arithmetic of the SQL is tightest near the end of the range.
    stamps = sorted({MAX_TS_US - 1, MAX_TS_US - 999_999, DAY0_US + 1,
                     *(rng.randrange(MAX_TS_US - 86_400 * 10**6, MAX_TS_US) for _ in range(200)),
                     *(rng.randrange(DAY0_US, DAY0_US + 86_400 * 10**6) for _ in range(200))})
    trades = [Trade("EXACT", ts, 1.0, None, "test", recv_ts_us=ts) for ts in stamps]
    quotes = [Quote("EXACT", ts, 1.0, None, None, None, "test", ts) for ts in stamps]
    insert_trades(db, trades)
    insert_quotes(db, quotes)
    for path, name in (("/v1/trades/EXACT", "trades"), ("/v1/quotes/EXACT", "quotes")):
        for start, end in ((DAY0_US, DAY0_US + 86_400 * 10**6),
                           (MAX_TS_US - 86_400 * 10**6, MAX_TS_US)):
            got = client.get(path, params={"start": str(start), "end": str(end),
                                           "limit": "1000"}).json()[name]
            want = [ts for ts in stamps if start <= ts < end]
            assert [(g["ts_us"], g["recv_ts_us"], g["ts"]) for g in got] == [
                (ts, ts, format_us(ts)) for ts in want]


def _walk(client: TestClient, path: str, name: str, limit: int, **window: str
          ) -> tuple[int, list[dict[str, Any]]]:
    """Every row of a range, page by page: (pages, rows)."""
    rows: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        query = {"start": str(DAY0_US), "end": str(DAY0_US + 10**9), "limit": str(limit),
                 **window}
        if cursor:
            query["cursor"] = cursor
        resp = client.get(path, params=query)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        pages += 1
        assert body["count"] == len(body[name]) <= limit
        rows.extend(body[name])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages, rows


def test_cursor_pagination_walks_every_row_once(client: TestClient, db: Any) -> None:
    trades = steady_trades("PAGE", DAY0_US, 25, 1000)
    # Two entries at the same instant: the cursor must split them correctly.
    twin = Trade("PAGE", trades[10].ts_us, 55.5, None, "test")
    insert_trades(db, [*trades, twin], [*(entry_for(t) for t in trades), entry_for(twin, 1)])
    pages, rows = _walk(client, "/v1/trades/PAGE", "trades", 4)
    assert pages == 7
    seen = [t["id"] for t in rows]
    assert len(seen) == 26 and len(set(seen)) == 26
    assert seen == sorted(seen, key=codec.parse_entry_id)
    quotes = steady_quotes("PAGE", DAY0_US, 9, 1000)
    insert_quotes(db, quotes)
    pages, got = _walk(client, "/v1/quotes/PAGE", "quotes", 2)
    assert pages == 5 and got == [expected_json(q, entry_for(q)) for q in quotes]
    # Page boundaries must not reorder the book: time order holds across them.
    _assert_sane_quotes(got)


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 100])
def test_backfilled_rows_have_no_id_and_page_like_the_others(
        client: TestClient, db: Any, limit: int) -> None:
    # Backfilled trades (negative synthetic entry IDs), several at one instant,
    # then live ones (stream entry IDs) at the same instants.
    at = [DAY0_US + 5, DAY0_US + 5, DAY0_US + 5, DAY0_US + 9, DAY0_US + 12]
    backfilled = [Trade("BACK", ts, 10.0 + i, 1.0, "test", trade_id=f"b{i}")
                  for i, ts in enumerate(at)]
    ranks = [0, 1, 2, 0, 0]
    live = [Trade("BACK", DAY0_US + 5, 20.0, 1.0, "test"),
            Trade("BACK", DAY0_US + 12, 21.0, 1.0, "test")]
    rows = [*backfilled, *live]
    entries = [*(backfill_entry(t.ts_us, k) for t, k in zip(backfilled, ranks, strict=True)),
               entry_for(live[0]), entry_for(live[1])]
    insert_trades(db, rows, entries)
    ordered = sorted(zip(rows, entries, strict=True), key=lambda p: (p[0].ts_us, p[1]))
    _, got = _walk(client, "/v1/trades/BACK", "trades", limit)
    assert got == [expected_json(t, e) for t, e in ordered]
    assert [t["id"] is None for t in got].count(True) == 5


def test_symbols_merge_registry_instruments_and_last_price(
        client: TestClient, db: Any, r: Any, keys: Keys) -> None:
    streams.register_symbols(r, keys, ["LIVE", "BOTH", "BAD"])
    live = Trade("LIVE", DAY0_US + 5_000_000, 12.5, None, "gbm")
    streams.append_events(r, keys, [live, Quote("LIVE", DAY0_US + 6_000_000, 12.4, 1.0, 12.6,
                                                1.0, "gbm"),
                                    Quote("BOTH", DAY0_US, 3.0, None, 3.5, None, "gbm")])
    # An unreadable newest trade: the stored one is shown instead.
    r.xadd(keys.trades("BAD"), {"t": "garbage"})
    with db.cursor() as cur:
        cur.execute("INSERT INTO instruments (symbol, name, logo_url, week52_high, week52_low)"
                    " VALUES ('BOTH', 'Both Inc', 'https://x/b.png', 20, 5),"
                    " ('DBONLY', 'Stored Ltd', NULL, NULL, NULL)")
    insert_trades(db, [Trade("DBONLY", DAY0_US, 7.0, None, "test"),
                       Trade("DBONLY", DAY0_US + 60_000_000, 7.5, None, "test"),
                       Trade("BAD", DAY0_US, 3.25, None, "test"),
                       Trade("LIVE", DAY0_US + 9_000_000, 99.0, None, "test")])
    insert_quotes(db, [Quote("BOTH", DAY0_US, 1.0, None, 2.0, None, "test")])
    body = client.get("/v1/symbols").json()
    by_symbol = {s["symbol"]: s for s in body["symbols"]}
    assert list(by_symbol) == ["BAD", "BOTH", "DBONLY", "LIVE"]
    # The stream wins over the database; a quote is not a price.
    assert by_symbol["LIVE"]["last_price"] == 12.5 and by_symbol["LIVE"]["registered"]
    assert by_symbol["LIVE"]["last_ts_us"] == live.ts_us
    assert by_symbol["LIVE"]["last_ts"] == format_us(live.ts_us)
    assert by_symbol["BOTH"]["name"] == "Both Inc" and by_symbol["BOTH"]["week52_high"] == 20
    assert by_symbol["BOTH"]["last_price"] is None
    assert by_symbol["DBONLY"]["last_price"] == 7.5 and not by_symbol["DBONLY"]["registered"]
    assert by_symbol["DBONLY"]["last_ts_us"] == DAY0_US + 60_000_000
    assert by_symbol["BAD"]["last_price"] == 3.25


def test_healthz_reports_both_servers(client: TestClient) -> None:
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "redis": "ok", "database": "ok"}


def test_bad_parameters_are_422_with_a_json_error(client: TestClient) -> None:
    cases = [
        ("/v1/trades/bad%20symbol", "symbol"),
        ("/v1/trades/AAPL?start=yesterday", "start"),
        ("/v1/quotes/AAPL?start=2026-01-02&end=2026-01-01", "start"),
        ("/v1/trades/AAPL?start=2000-01-01&end=2026-01-01", "time range too long"),
        ("/v1/quotes/AAPL?limit=0", "limit"),
        ("/v1/trades/AAPL?limit=abc", "limit"),
        ("/v1/trades/AAPL?cursor=1;DROP", "cursor"),
        ("/v1/quotes/AAPL?cursor=1767571200000000_--1", "cursor"),
        ("/v1/trades/AAPL?start=99999999999999999999999", "start"),
        ("/v1/quotes/AAPL?format=xml", "format"),
        ("/v1/quotes/A%7BB%7D", "symbol"),
    ]
    # The tick history is gone.
    assert client.get("/v1/ticks/AAPL").status_code == 404
    for url, word in cases:
        resp = client.get(url)
        assert resp.status_code == 422, (url, resp.status_code, resp.text)
        assert resp.headers["content-type"].startswith("application/json")
        assert word in resp.json()["error"], (url, resp.json())


def test_json_rows_join_with_commas_in_any_chunk_size() -> None:
    from pricepipe.api.queries import JsonRows

    lines = bytearray(b'{"a":1}\n{"b":[2,3]}\n{"c":"x"}\n')
    want = b'{"a":1},{"b":[2,3]},{"c":"x"}'
    for chunk_bytes in (1, 2, 7, 8, 9, len(lines) - 1, len(lines), 1 << 20):
        rows = JsonRows(lines, 3)
        assert b"".join(rows.joined_chunks(chunk_bytes)) == want
        assert rows.joined_bytes == len(want)
    empty = JsonRows(bytearray(), 0)
    assert empty.joined_bytes == 0 and list(empty.joined_chunks(4)) == []


def test_a_page_larger_than_a_chunk_has_its_exact_length(client: TestClient, db: Any) -> None:
    trades = steady_trades("BIG", DAY0_US, 3000, 1000)
    insert_trades(db, trades)
    resp = client.get("/v1/trades/BIG", params={"start": str(DAY0_US), "limit": "2999",
                                                "end": str(DAY0_US + 3000 * 1000 * 1000)})
    assert resp.status_code == 200
    assert int(resp.headers["content-length"]) == len(resp.content) > 256 * 1024
    body = resp.json()
    assert body["count"] == 2999 and len(body["trades"]) == 2999
    assert [t["ts_us"] for t in body["trades"]] == [t.ts_us for t in trades[:2999]]
    assert body["next_cursor"] is not None


@pytest.mark.parametrize("name", ["trades", "quotes"])
def test_split_pages_are_the_pages_of_one_query(client: TestClient, db: Any,
                                                monkeypatch: Any, name: str) -> None:
    from pricepipe.api import queries

    # Entries at the same instant as others: the split key holds the entry ID too.
    if name == "trades":
        trades = steady_trades("SPLIT", DAY0_US, 40, 1000)
        twins = [Trade("SPLIT", trades[i].ts_us, 60.0 + i, None, "test") for i in (0, 9, 10, 39)]
        insert_trades(db, [*trades, *twins],
                      [*(entry_for(t) for t in trades), *(entry_for(t, 1) for t in twins)])
    else:
        quotes = steady_quotes("SPLIT", DAY0_US, 40, 1000)
        books = [Quote("SPLIT", quotes[i].ts_us, 60.0, None, None, None, "test")
                 for i in (0, 9, 10, 39)]
        insert_quotes(db, [*quotes, *books],
                      [*(entry_for(q) for q in quotes), *(entry_for(q, 1) for q in books)])
    splits: list[int] = []
    split_rows = queries._split_rows

    def counting_split(*a: Any, **k: Any) -> Any:
        splits.append(1)
        return split_rows(*a, **k)

    monkeypatch.setattr(queries, "_split_rows", counting_split)

    def walk(limit: int) -> list[tuple[int, list[str], str | None]]:
        pages: list[tuple[int, list[str], str | None]] = []
        cursor = None
        while True:
            query = {"start": str(DAY0_US), "end": str(DAY0_US + 10**9), "limit": str(limit)}
            if cursor:
                query["cursor"] = cursor
            body = client.get(f"/v1/{name}/SPLIT", params=query).json()
            pages.append((body["count"], [t["id"] for t in body[name]], body["next_cursor"]))
            cursor = body["next_cursor"]
            if cursor is None:
                return pages

    for limit in (1, 2, 5, 21, 43, 44, 100):
        monkeypatch.setattr(queries, "SPLIT_PAGE_ROWS", 10**9)
        whole = walk(limit)
        assert not splits
        monkeypatch.setattr(queries, "SPLIT_PAGE_ROWS", 1)
        assert walk(limit) == whole
        assert splits
        splits.clear()
        ids = [i for page in whole for i in page[1]]
        assert len(ids) == len(set(ids)) == 44 and ids == sorted(ids, key=codec.parse_entry_id)


def test_first_rows_cuts_the_page_and_names_its_last_row() -> None:
    from pricepipe.api.queries import JsonRows, first_rows

    def rows(n: int) -> JsonRows:
        return JsonRows(bytearray(b"".join(b'{"n":%d}\n' % i for i in range(n))), n)

    page, last = first_rows(rows(4), 4)
    assert last is None and page.count == 4
    page, last = first_rows(rows(5), 4)  # the usual extra row
    assert (page.count, bytes(page.lines), last) == (
        4, b'{"n":0}\n{"n":1}\n{"n":2}\n{"n":3}\n', b'{"n":3}\n')
    page, last = first_rows(rows(9), 2)  # rows arrived between the halves
    assert (page.count, bytes(page.lines), last) == (2, b'{"n":0}\n{"n":1}\n', b'{"n":1}\n')
    page, last = first_rows(rows(3), 1)
    assert (page.count, bytes(page.lines), last) == (1, b'{"n":0}\n', b'{"n":0}\n')
