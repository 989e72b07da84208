"""The walking skeleton's endpoints against real Redis and PostgreSQL."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from pricepipe import codec, streams
from pricepipe.clock import format_us
from pricepipe.keys import Keys
from pricepipe.tick import Tick
from tests.api.helpers import DAY0_US, entry_for, insert_ticks, steady_ticks


def test_ticks_json_matches_the_codec(client: TestClient, db: Any) -> None:
    ticks = [
        Tick("AAPL", DAY0_US + 1, 187.25, 3.0, "test", DAY0_US + 900),
        Tick("AAPL", DAY0_US + 2_000_000, 0.1 + 0.2, None, "gbm"),
        Tick("AAPL", DAY0_US + 3_000_000, 1e-7, 0.5, "test"),
        Tick("MSFT", DAY0_US + 1_500_000, 400.0, 1.0, "test"),
    ]
    insert_ticks(db, ticks)
    resp = client.get("/v1/ticks/aapl", params={"start": format_us(DAY0_US),
                                                "end": str(DAY0_US // 1000 + 10_000)})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["symbol"] == "AAPL" and body["count"] == 3 and body["next_cursor"] is None
    expected = []
    for tick in ticks[:3]:
        want = codec.tick_to_dict(tick, codec.unpack_entry_id(entry_for(tick)))
        want.setdefault("recv_ts_us", None)
        expected.append(want)
    assert body["ticks"] == expected


def test_epoch_microseconds_are_exact_up_to_2100(client: TestClient, db: Any) -> None:
    import random

    from pricepipe.tick import MAX_TS_US

    rng = random.Random(11)
    # The float8 arithmetic of the SQL is tightest near the end of the range.
    stamps = sorted({MAX_TS_US - 1, MAX_TS_US - 999_999, DAY0_US + 1,
                     *(rng.randrange(MAX_TS_US - 86_400 * 10**6, MAX_TS_US) for _ in range(200)),
                     *(rng.randrange(DAY0_US, DAY0_US + 86_400 * 10**6) for _ in range(200))})
    ticks = [Tick("EXACT", ts, 1.0, None, "test", ts) for ts in stamps]
    insert_ticks(db, ticks)
    for start, end in ((DAY0_US, DAY0_US + 86_400 * 10**6), (MAX_TS_US - 86_400 * 10**6,
                                                             MAX_TS_US)):
        got = client.get("/v1/ticks/EXACT", params={"start": str(start), "end": str(end),
                                                   "limit": "1000"}).json()["ticks"]
        want = [t for t in ticks if start <= t.ts_us < end]
        assert [(g["ts_us"], g["recv_ts_us"], g["ts"]) for g in got] == [
            (t.ts_us, t.ts_us, format_us(t.ts_us)) for t in want]


def test_ticks_cursor_pagination_walks_every_row_once(client: TestClient, db: Any) -> None:
    ticks = steady_ticks("PAGE", DAY0_US, 25, 1000)
    # Two entries at the same instant: the cursor must split them correctly.
    twin = Tick("PAGE", ticks[10].ts_us, 55.5, None, "test")
    insert_ticks(db, [*ticks, twin], [*(entry_for(t) for t in ticks), entry_for(twin, 1)])
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = {"start": str(DAY0_US), "end": str(DAY0_US + 10**9), "limit": "4"}
        if cursor:
            query["cursor"] = cursor
        body = client.get("/v1/ticks/PAGE", params=query).json()
        pages += 1
        seen.extend(t["id"] for t in body["ticks"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 7
    assert len(seen) == 26 and len(set(seen)) == 26
    ordered = sorted(seen, key=codec.parse_entry_id)
    assert seen == ordered


def test_symbols_merge_registry_instruments_and_last_price(
        client: TestClient, db: Any, r: Any, keys: Keys) -> None:
    streams.register_symbols(r, keys, ["LIVE", "BOTH"])
    live = Tick("LIVE", DAY0_US + 5_000_000, 12.5, None, "gbm")
    streams.append_ticks(r, keys, [live])
    with db.cursor() as cur:
        cur.execute("INSERT INTO instruments (symbol, name, logo_url, week52_high, week52_low)"
                    " VALUES ('BOTH', 'Both Inc', 'https://x/b.png', 20, 5),"
                    " ('DBONLY', 'Stored Ltd', NULL, NULL, NULL)")
    insert_ticks(db, [Tick("DBONLY", DAY0_US, 7.0, None, "test"),
                      Tick("DBONLY", DAY0_US + 60_000_000, 7.5, None, "test")])
    body = client.get("/v1/symbols").json()
    by_symbol = {s["symbol"]: s for s in body["symbols"]}
    assert list(by_symbol) == ["BOTH", "DBONLY", "LIVE"]
    assert by_symbol["LIVE"]["last_price"] == 12.5 and by_symbol["LIVE"]["registered"]
    assert by_symbol["LIVE"]["last_ts_us"] == live.ts_us
    assert by_symbol["BOTH"]["name"] == "Both Inc" and by_symbol["BOTH"]["week52_high"] == 20
    assert by_symbol["BOTH"]["last_price"] is None
    assert by_symbol["DBONLY"]["last_price"] == 7.5 and not by_symbol["DBONLY"]["registered"]


def test_healthz_reports_both_servers(client: TestClient) -> None:
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "redis": "ok", "database": "ok"}


def test_bad_parameters_are_422_with_a_json_error(client: TestClient) -> None:
    cases = [
        ("/v1/ticks/bad%20symbol", "symbol"),
        ("/v1/ticks/AAPL?start=yesterday", "start"),
        ("/v1/ticks/AAPL?start=2026-01-02&end=2026-01-01", "start"),
        ("/v1/ticks/AAPL?start=2000-01-01&end=2026-01-01", "time range too long"),
        ("/v1/ticks/AAPL?limit=0", "limit"),
        ("/v1/ticks/AAPL?limit=abc", "limit"),
        ("/v1/ticks/AAPL?cursor=1;DROP", "cursor"),
        ("/v1/ticks/AAPL?start=99999999999999999999999", "start"),
        ("/v1/ticks/AAPL?format=xml", "format"),
    ]
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
    ticks = steady_ticks("BIG", DAY0_US, 3000, 1000)
    insert_ticks(db, ticks)
    resp = client.get("/v1/ticks/BIG", params={"start": str(DAY0_US), "limit": "2999",
                                               "end": str(DAY0_US + 3000 * 1000 * 1000)})
    assert resp.status_code == 200
    assert int(resp.headers["content-length"]) == len(resp.content) > 256 * 1024
    body = resp.json()
    assert body["count"] == 2999 and len(body["ticks"]) == 2999
    assert [t["ts_us"] for t in body["ticks"]] == [t.ts_us for t in ticks[:2999]]
    assert body["next_cursor"] is not None


def test_split_pages_are_the_pages_of_one_query(client: TestClient, db: Any,
                                                monkeypatch: Any) -> None:
    from pricepipe.api import queries

    ticks = steady_ticks("SPLIT", DAY0_US, 40, 1000)
    # Entries at the same instant as others: the split key holds the entry ID too.
    twins = [Tick("SPLIT", ticks[i].ts_us, 60.0 + i, None, "test") for i in (0, 9, 10, 39)]
    insert_ticks(db, [*ticks, *twins],
                 [*(entry_for(t) for t in ticks), *(entry_for(t, 1) for t in twins)])
    splits: list[int] = []
    split_rows = queries._split_tick_rows

    def counting_split(*a: Any, **k: Any) -> Any:
        splits.append(1)
        return split_rows(*a, **k)

    monkeypatch.setattr(queries, "_split_tick_rows", counting_split)

    def walk(limit: int) -> list[tuple[int, list[str], str | None]]:
        pages: list[tuple[int, list[str], str | None]] = []
        cursor = None
        while True:
            query = {"start": str(DAY0_US), "end": str(DAY0_US + 10**9), "limit": str(limit)}
            if cursor:
                query["cursor"] = cursor
            body = client.get("/v1/ticks/SPLIT", params=query).json()
            pages.append((body["count"], [t["id"] for t in body["ticks"]], body["next_cursor"]))
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
    page, last = first_rows(rows(9), 2)  # ticks arrived between the halves
    assert (page.count, bytes(page.lines), last) == (2, b'{"n":0}\n{"n":1}\n', b'{"n":1}\n')
    page, last = first_rows(rows(3), 1)
    assert (page.count, bytes(page.lines), last) == (1, b'{"n":0}\n', b'{"n":0}\n')
