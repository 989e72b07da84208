"""History by entry-ID range (``after_id`` < id < ``until_id``, stream order)
against real PostgreSQL: what fills a gap the websocket or the client
library names."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from psycopg2 import sql

from pricepipe import codec, streams
from pricepipe.api import params, queries
from pricepipe.api.routes import COMPLETE_HEADER
from pricepipe.api.settings import ApiSettings
from pricepipe.clock import us_to_datetime
from pricepipe.events import (
    MAX_EVENT_AGE_AT_APPEND_US,
    MAX_EVENT_LEAD_AT_APPEND_US,
    Quote,
    Side,
    Trade,
)
from pricepipe.keys import PERSIST_GROUP, Keys
from tests.api.helpers import (
    DAY0_US,
    backfill_entry,
    expected_json,
    insert_quotes,
    insert_trades,
)

Event = Trade | Quote
DAY_US = params.US_PER_DAY
#: Midday of DAY0, in ms: the stream's entries of most tests start here.
T0_MS = (DAY0_US + DAY_US // 2) // 1000


def _eid(ms: int, seq: int = 0) -> str:
    return f"{ms}-{seq}"


def _event(channel: str, symbol: str, ts_us: int, i: int, source: str) -> Event:
    if channel == "trades":
        return Trade(symbol, ts_us, 100.0 + i * 0.25, None if i % 5 == 4 else float(i % 3 + 1),
                     source, trade_id=f"{source}-{i}", side=Side.BUY if i % 2 else Side.SELL,
                     recv_ts_us=ts_us + 700)
    mid = 100.0 + (i % 11) * 0.5
    return Quote(symbol, ts_us, mid - 0.05, float(10 + i), mid + 0.05, None, source,
                 ts_us + 700)


def _insert(db: Any, channel: str, rows: list[tuple[Event, int]]) -> None:
    events = [e for e, _ in rows]
    entries = [entry for _, entry in rows]
    if channel == "trades":
        insert_trades(db, [e for e in events if isinstance(e, Trade)], entries)
    else:
        insert_quotes(db, [e for e in events if isinstance(e, Quote)], entries)


def _two_publishers(channel: str, symbol: str, count: int) -> list[tuple[Event, int]]:
    """``count`` entries of one stream from two publishers, in stream order:
    entry ``i`` is appended at ``T0_MS + 10 * (i // 2)`` ms (two per
    millisecond, seq 0 and 1); the even ones come from a feed whose events
    carry their append time, the odd ones from one whose events are 1.5 s
    old when appended. So event-time order is not stream order."""
    out = []
    for i in range(count):
        ms, seq = T0_MS + 10 * (i // 2), i % 2
        ts_us = ms * 1000 + 123 if seq == 0 else ms * 1000 - 1_500_000 + 7 * i
        source = "fast" if seq == 0 else "slow"
        out.append((_event(channel, symbol, ts_us, i, source),
                    codec.pack_entry_id(_eid(ms, seq))))
    return out


def _get(client: TestClient, channel: str, symbol: str, **query: str) -> Any:
    resp = client.get(f"/v1/{channel}/{symbol}", params=query)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _walk(client: TestClient, channel: str, symbol: str, after_id: str, until_id: str,
          limit: int) -> Iterator[dict[str, Any]]:
    """Every page of an ID range, following ``next_cursor``."""
    cursor = None
    while True:
        query = {"after_id": after_id, "until_id": until_id, "limit": str(limit)}
        if cursor is not None:
            query["cursor"] = cursor
        body = _get(client, channel, symbol, **query)
        assert body["count"] == len(body[channel]) <= limit
        yield body
        cursor = body["next_cursor"]
        if cursor is None:
            return


@pytest.mark.parametrize("channel", ["trades", "quotes"])
def test_an_id_range_is_exact_and_in_stream_order(client: TestClient, db: Any,
                                                  channel: str) -> None:
    stream = _two_publishers(channel, "GAPS", 40)
    after, until = stream[5][1], stream[30][1]  # entries 6..29 are the gap
    inside = stream[6:30]
    # What must stay out: backfilled rows at the gap's times (negative IDs),
    # another symbol's entries with the same IDs, and the other channel.
    backfilled = [(_event(channel, "GAPS", e.ts_us + 1, 100 + k, "backfill"),
                   backfill_entry(e.ts_us + 1)) for k, (e, _) in enumerate(inside[:4])]
    other_symbol = [(_event(channel, "OTHER", e.ts_us, k, "fast"), entry)
                    for k, (e, entry) in enumerate(inside)]
    _insert(db, channel, [*stream, *backfilled, *other_symbol])
    other_channel = "quotes" if channel == "trades" else "trades"
    _insert(db, other_channel, [(_event(other_channel, "GAPS", e.ts_us, k, "fast"), entry)
                                for k, (e, entry) in enumerate(inside)])
    after_id, until_id = codec.unpack_entry_id(after), codec.unpack_entry_id(until)
    body = _get(client, channel, "gaps", after_id=after_id, until_id=until_id)
    assert body[channel] == [expected_json(e, entry) for e, entry in inside]
    assert (body["symbol"], body["count"], body["next_cursor"]) == ("GAPS", 24, None)
    assert (body["start"], body["end"], body["after_id"], body["until_id"]) == (
        None, None, after_id, until_id)
    # The same rows by time come in another order: the test would not see a
    # sort by event time otherwise. (And a time range says so in its head.)
    lo_us = min(e.ts_us for e, _ in inside)
    by_time = _get(client, channel, "GAPS", start=str(lo_us),
                   end=str(max(e.ts_us for e, _ in inside) + 1))
    assert by_time["after_id"] is None and by_time["until_id"] is None
    inside_ids = {codec.unpack_entry_id(entry) for _, entry in inside}
    timed = [row for row in by_time[channel] if row["id"] in inside_ids]
    assert sorted(timed, key=lambda row: codec.parse_entry_id(row["id"])) == body[channel]
    assert timed != body[channel]
    # Both bounds are exclusive, to the sequence number.
    assert _get(client, channel, "GAPS", after_id=_eid(T0_MS + 30, 0),
                until_id=_eid(T0_MS + 40, 1))[channel] == [
        expected_json(e, entry) for e, entry in stream[7:9]]
    assert _get(client, channel, "GAPS", after_id=_eid(T0_MS + 30, 0),
                until_id=_eid(T0_MS + 30, 1))[channel] == []
    # IDs between stored ones: whatever is strictly between.
    assert [row["id"] for row in _get(client, channel, "GAPS", after_id=_eid(T0_MS + 31, 5),
                                      until_id=_eid(T0_MS + 59, 999))[channel]] == [
        codec.unpack_entry_id(entry) for _, entry in stream[8:12]]


@pytest.mark.parametrize("channel", ["trades", "quotes"])
def test_event_times_anywhere_within_the_append_bounds_are_found(
        client: TestClient, db: Any, channel: str) -> None:
    # Entries appended around a midnight, with events as old and as far
    # ahead as the bounds allow: their rows sit in partitions days apart.
    midnight_ms = (DAY0_US + DAY_US) // 1000
    first_ms, last_ms = midnight_ms - 2_000, midnight_ms + 3_000
    rows = [
        (first_ms, 1, first_ms * 1000 - MAX_EVENT_AGE_AT_APPEND_US),  # oldest allowed
        (first_ms, 2, first_ms * 1000 + MAX_EVENT_LEAD_AT_APPEND_US),  # into the next day
        (midnight_ms, 0, midnight_ms * 1000 - 3 * DAY_US),
        (midnight_ms + 5, 0, midnight_ms * 1000 + 5_000),
        (last_ms, 0, last_ms * 1000 + MAX_EVENT_LEAD_AT_APPEND_US + 999),  # furthest ahead
        (last_ms, 1, last_ms * 1000 - MAX_EVENT_AGE_AT_APPEND_US + 1),
    ]
    stream = [(_event(channel, "BOUND", ts_us, i, "test"),
               codec.pack_entry_id(_eid(ms, seq))) for i, (ms, seq, ts_us) in enumerate(rows)]
    outside = [(_event(channel, "BOUND", first_ms * 1000, 50, "test"),
                codec.pack_entry_id(_eid(first_ms, 0))),
               (_event(channel, "BOUND", last_ms * 1000, 51, "test"),
                codec.pack_entry_id(_eid(last_ms, 2)))]
    _insert(db, channel, [*stream, *outside])
    body = _get(client, channel, "BOUND", after_id=_eid(first_ms, 0),
                until_id=_eid(last_ms, 2))
    assert body[channel] == [expected_json(e, entry) for e, entry in stream]


@pytest.mark.parametrize("channel", ["trades", "quotes"])
def test_id_range_pages_walk_every_entry_once_in_stream_order(
        client: TestClient, db: Any, monkeypatch: Any, channel: str) -> None:
    stream = _two_publishers(channel, "PAGED", 30)
    # A Redis that lost its data may hand out an ID again, for another
    # event: both rows are stored (the key holds ts), both are in the range,
    # ordered by time, and the cursor must not lose the second.
    reused = (_event(channel, "PAGED", stream[10][0].ts_us + 5_000, 99, "fast"), stream[10][1])
    _insert(db, channel, [*stream, reused])
    want = [expected_json(e, entry) for e, entry in
            sorted([*stream[1:29], reused], key=lambda p: (p[1], p[0].ts_us))]
    after_id, until_id = _eid(T0_MS, 0), _eid(T0_MS + 140, 1)
    whole = _get(client, channel, "PAGED", after_id=after_id, until_id=until_id,
                 limit="1000")
    assert whole[channel] == want and whole["next_cursor"] is None
    for limit in (1, 2, 3, 7, 28, 29):
        pages = list(_walk(client, channel, "PAGED", after_id, until_id, limit))
        assert [row for page in pages for row in page[channel]] == want
        assert len(pages) == -(-len(want) // limit)  # the last one ends with no cursor
        for page in pages:
            assert (page["after_id"], page["until_id"], page["start"]) == (
                after_id, until_id, None)
        # The cursor names the last row: its entry ID, then its time.
        first = pages[0]
        if first["next_cursor"] is not None:
            last = first[channel][-1]
            assert first["next_cursor"] == f"{last['id']}_{last['ts_us']}"
    # Split pages (two connections) are the same pages.
    monkeypatch.setattr(queries, "SPLIT_PAGE_ROWS", 1)
    for limit in (1, 4, 29, 100):
        pages = list(_walk(client, channel, "PAGED", after_id, until_id, limit))
        assert [row for page in pages for row in page[channel]] == want


def test_id_range_csv_in_stream_order(make_client: Callable[..., TestClient], db: Any) -> None:
    client = make_client(ApiSettings(rate_limit=None, key_rate_limit=None, csv_chunk_bytes=64))
    trades = _two_publishers("trades", "CSVG", 20)
    quotes = _two_publishers("quotes", "CSVG", 20)
    _insert(db, "trades", [*trades, (_event("trades", "CSVG", trades[5][0].ts_us, 7, "bf"),
                                     backfill_entry(trades[5][0].ts_us))])
    _insert(db, "quotes", quotes)
    window = {"after_id": codec.unpack_entry_id(trades[2][1]),
              "until_id": codec.unpack_entry_id(trades[17][1])}
    for channel, stream in (("trades", trades), ("quotes", quotes)):
        by_param = client.get(f"/v1/{channel}/CSVG", params={**window, "format": "csv"})
        by_accept = client.get(f"/v1/{channel}/CSVG", params=window,
                               headers={"Accept": "text/csv"})
        assert by_param.status_code == by_accept.status_code == 200, by_param.text
        assert by_param.content == by_accept.content
        assert by_param.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(by_param.text)))
        want = [expected_json(e, entry) for e, entry in stream[3:17]]
        assert [list(row) for row in rows] == [list(w) for w in want]
        assert [(row["id"], int(row["ts_us"]), row["source"]) for row in rows] == [
            (w["id"], w["ts_us"], w["source"]) for w in want]
        limited = client.get(f"/v1/{channel}/CSVG",
                             params={**window, "format": "csv", "limit": "4"})
        assert [row["id"] for row in csv.DictReader(io.StringIO(limited.text))] == [
            w["id"] for w in want[:4]]
        # A JSON page's cursor continues the download too.
        page = _get(client, channel, "CSVG", **window, limit="5")
        rest = client.get(f"/v1/{channel}/CSVG",
                          params={**window, "format": "csv", "cursor": page["next_cursor"]})
        assert [row["id"] for row in csv.DictReader(io.StringIO(rest.text))] == [
            w["id"] for w in want[5:]]


def test_id_range_parameters_are_checked(make_client: Callable[..., TestClient],
                                         db: Any) -> None:
    client = make_client(ApiSettings(rate_limit=None, key_rate_limit=None, max_range_days=2))
    a, b = _eid(T0_MS), _eid(T0_MS + 1000)
    time_cursor = params.Cursor(DAY0_US, 5).encode()
    id_cursor = params.Cursor(DAY0_US, codec.pack_entry_id(a), stream_order=True).encode()
    day_ms = DAY_US // 1000
    cases: list[tuple[dict[str, str], str, str]] = [
        ({"after_id": a}, "until_id", "together"),
        ({"until_id": b}, "after_id", "together"),
        ({"after_id": "abc", "until_id": b}, "after_id", "not a stream entry ID"),
        ({"after_id": str(T0_MS), "until_id": b}, "after_id", "<ms>-<seq>"),
        ({"after_id": a, "until_id": "1-2-3"}, "until_id", "not a stream entry ID"),
        ({"after_id": "-1-0", "until_id": b}, "after_id", "not a stream entry ID"),
        ({"after_id": f" {a}", "until_id": b}, "after_id", "not a stream entry ID"),
        ({"after_id": "1.5-0", "until_id": b}, "after_id", "not a stream entry ID"),
        ({"after_id": "\u0661-\u0660", "until_id": b}, "after_id", "not a stream entry ID"),
        ({"after_id": a, "until_id": "*"}, "until_id", "not a stream entry ID"),
        ({"after_id": a, "until_id": f"{T0_MS}-{1 << 21}"}, "until_id", "beyond"),
        ({"after_id": f"{1 << 42}-0", "until_id": f"{1 << 43}-0"}, "after_id", "beyond"),
        ({"after_id": a, "until_id": "9" * 49}, "until_id", "48"),
        ({"after_id": b, "until_id": a}, "after_id", "before until_id"),
        ({"after_id": a, "until_id": a}, "after_id", "before until_id"),
        ({"after_id": _eid(T0_MS, 10), "until_id": _eid(T0_MS, 9)}, "after_id", "before"),
        ({"after_id": a, "until_id": _eid(T0_MS + 2 * day_ms + 1)}, "until_id", "2 days"),
        ({"after_id": a, "until_id": b, "start": str(DAY0_US)}, "start", "not both"),
        ({"after_id": a, "until_id": b, "end": str(DAY0_US)}, "end", "not both"),
        ({"after_id": a, "until_id": b, "cursor": time_cursor}, "cursor", "time range"),
        ({"start": str(DAY0_US), "end": str(DAY0_US + 10), "cursor": id_cursor}, "cursor",
         "after_id"),
        ({"after_id": a, "until_id": b, "cursor": f"{1 << 43}-0_{DAY0_US}"}, "cursor",
         "out of range"),
        ({"after_id": a, "until_id": b, "cursor": f"{a}_5"}, "cursor", "out of range"),
        ({"after_id": a, "until_id": b, "limit": "0"}, "limit", "greater"),
        ({"after_id": a, "until_id": b, "format": "xml"}, "format", "json"),
    ]
    for channel in ("trades", "quotes"):
        for query, param, words in cases:
            resp = client.get(f"/v1/{channel}/AAPL", params=query)
            assert resp.status_code == 422, (query, resp.status_code, resp.text)
            body = resp.json()
            assert words in body["error"], (query, body)
            assert body["detail"][0]["loc"][-1] == param, (query, body)
    # At the cap is fine; so is an empty range between neighbours.
    ok = {"after_id": a, "until_id": _eid(T0_MS + 2 * day_ms, 5)}
    assert client.get("/v1/trades/AAPL", params=ok).json()["count"] == 0
    assert client.get("/v1/quotes/AAPL", params={"after_id": "0-0", "until_id": "0-1"}
                      ).json()["quotes"] == []


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _plan_nodes(child)


def _scans(conn: Any, query: bytes) -> list[tuple[str, str, str | None]]:
    """``(node type, relation, index)`` of every table scan in the plan of
    ``query``: the index an index scan reads, or the one a bitmap heap
    scan's single bitmap index scan reads; None for any other scan (a
    sequential one)."""
    with conn.cursor() as cur:
        cur.execute(b"EXPLAIN (FORMAT JSON) " + query)
        found = cur.fetchone()
    assert found is not None
    out: list[tuple[str, str, str | None]] = []
    for node in _plan_nodes(found[0][0]["Plan"]):
        if "Relation Name" not in node:
            continue
        index = None
        if node["Node Type"] in ("Index Scan", "Index Only Scan"):
            index = node["Index Name"]
        elif node["Node Type"] == "Bitmap Heap Scan":
            children = node.get("Plans", [])
            if len(children) == 1 and children[0]["Node Type"] == "Bitmap Index Scan":
                index = children[0]["Index Name"]
        out.append((node["Node Type"], node["Relation Name"], index))
    return out


@pytest.mark.parametrize("channel", ["trades", "quotes"])
def test_an_id_range_reads_the_primary_key_of_the_partitions_it_can_be_in(
        db: Any, channel: str) -> None:
    # Twelve days of a busy stream and of another symbol, analysed, so the
    # planner weighs real tables: rows every 30 s, events 1 s old.
    first_day_us = DAY0_US - 9 * DAY_US
    rows: list[tuple[Event, int]] = []
    for symbol in ("PLAN", "NOISE"):
        for i in range(12 * 2880):
            ms = first_day_us // 1000 + i * 30_000
            rows.append((_event(channel, symbol, ms * 1000 - 1_000_000, i, "test"),
                         codec.pack_entry_id(_eid(ms))))
    _insert(db, channel, rows)
    with db.cursor() as cur:
        cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(channel)))
    table = queries.EVENT_TABLES[codec.Channel(channel)]
    # Ten minutes at noon of DAY0: events up to 7 days older, 5 minutes ahead.
    span = params.IdRange(codec.pack_entry_id(_eid(T0_MS)),
                          codec.pack_entry_id(_eid(T0_MS + 600_000)))
    days = {us_to_datetime(DAY0_US - k * DAY_US).strftime("%Y%m%d") for k in range(8)}
    wanted = {f"{channel}_{day}" for day in days}
    cursor = params.Cursor(T0_MS * 1000 + 120_000_000, codec.pack_entry_id(_eid(T0_MS + 121_000)),
                           stream_order=True)
    plans = {
        "page": _scans(db, queries.event_page_sql(db, table, "PLAN", span, None, 1000)),
        "next page": _scans(db, queries.event_page_sql(db, table, "PLAN", span, cursor, 5)),
        "csv": _scans(db, queries.event_csv_sql(db, table, "PLAN", span, None, None)),
    }
    for name, scans in plans.items():
        assert scans, name
        # Each partition through its primary key (an index scan, or a bitmap
        # of the key's matches where the planner expects few rows; never a
        # sequential scan), and only the partitions the range's events can be
        # in (the cursor's entry is 2 minutes in: still the same days).
        assert all(index == f"{relation}_pkey" for _, relation, index in scans), (name, scans)
        assert {relation for _, relation, _ in scans} == wanted, (name, scans)
    # A page smaller than the range is read in key order, merged across the
    # partitions, no sort: the stream order is the key's.
    assert {node for node, _, _ in plans["next page"]} == {"Index Scan"}
    # A page's rows are the range's, by the API's own query.
    page = queries.event_page(db, table, "PLAN", span, None, 1000)
    assert page.rows.count == 19 and page.next_cursor is None  # 30 s apart, ends excluded


def _append(r: Any, keys: Keys, events: list[Event], ids: list[str]) -> None:
    """Entries with the given IDs, encoded as publishers append them."""
    for event, entry_id in zip(events, ids, strict=True):
        field, value = codec.encode_event(event)
        channel = codec.channel_of(event)
        r.xadd(keys.stream(event.symbol, channel), {field: value}, id=entry_id)


def test_complete_says_when_every_entry_of_the_range_is_stored(
        client: TestClient, db: Any, r: Any, keys: Keys) -> None:
    streams.register_symbols(r, keys, ["LIVE"])
    ids = [_eid(T0_MS + 10 * i) for i in range(6)]
    trades = [_event("trades", "LIVE", (T0_MS + 10 * i) * 1000 - 400, i, "gbm")
              for i in range(6)]
    _append(r, keys, trades, ids)
    stream = keys.trades("LIVE")

    def page(until_id: str, **extra: str) -> Any:
        return _get(client, "trades", "LIVE", after_id=_eid(T0_MS - 1), until_id=until_id,
                    **extra)

    # Nothing delivered to the persist group yet: nothing is known stored.
    first = page(ids[3])
    assert (first["complete"], first["count"]) == (False, 0)
    # A worker took three entries, committed them, acknowledged two.
    got = r.xreadgroup(PERSIST_GROUP, "w1", {stream: ">"}, count=3)
    assert [entry_id.decode() for entry_id, _ in got[0][1]] == ids[:3]
    _insert(db, "trades", [(t, codec.pack_entry_id(i)) for t, i in zip(trades[:3], ids[:3],
                                                                       strict=True)])
    r.xack(stream, PERSIST_GROUP, ids[0], ids[1])
    assert (page(ids[2])["complete"], page(ids[2])["count"]) == (True, 2)
    assert page(ids[3])["complete"] is False  # the third is pending still
    r.xack(stream, PERSIST_GROUP, ids[2])
    # Entries after the last delivered one may still come: not complete.
    assert page(ids[3])["complete"] is False
    r.xreadgroup(PERSIST_GROUP, "w1", {stream: ">"})
    _insert(db, "trades", [(t, codec.pack_entry_id(i)) for t, i in zip(trades[3:], ids[3:],
                                                                       strict=True)])
    r.xack(stream, PERSIST_GROUP, *ids[3:])
    done = page(ids[5], limit="2")
    assert (done["complete"], done["count"], done["next_cursor"] is not None) == (True, 2, True)
    assert [row["id"] for row in done["trades"]] == ids[:2]
    # The CSV says it in a header.
    resp = client.get("/v1/trades/LIVE", params={"after_id": _eid(T0_MS - 1),
                                                  "until_id": ids[5], "format": "csv"})
    assert resp.headers[COMPLETE_HEADER] == "true"
    assert [row["id"] for row in csv.DictReader(io.StringIO(resp.text))] == ids[:5]
    # No persist group (quotes of an unregistered symbol): unknown. A time
    # range has no such flag.
    unknown = client.get("/v1/quotes/NOGROUP", params={"after_id": ids[0], "until_id": ids[1],
                                                       "format": "csv"})
    assert unknown.status_code == 200 and unknown.headers[COMPLETE_HEADER] == "unknown"
    assert _get(client, "quotes", "NOGROUP", after_id=ids[0],
                until_id=ids[1])["complete"] is None
    timed = _get(client, "trades", "LIVE", start=str(DAY0_US), end=str(DAY0_US + DAY_US))
    assert timed["complete"] is None and timed["count"] == 6
    assert COMPLETE_HEADER not in client.get("/v1/trades/LIVE", params={
        "start": str(DAY0_US), "end": str(DAY0_US + DAY_US), "format": "csv"}).headers


def test_an_id_range_is_served_while_redis_is_down(db: Any, db_settings: Any) -> None:
    from pricepipe.api.app import create_app
    from pricepipe.config import RedisSettings
    from pricepipe.embedded import free_port

    stream = _two_publishers("trades", "NOREDIS", 6)
    _insert(db, "trades", stream)
    nobody = RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=2.0)
    app = create_app(ApiSettings(rate_limit=None, key_rate_limit=None), nobody, db_settings)
    with TestClient(app) as client:
        body = _get(client, "trades", "NOREDIS", after_id=_eid(T0_MS - 1),
                    until_id=_eid(T0_MS + 100))
    assert body["complete"] is None
    assert body["trades"] == [expected_json(e, entry) for e, entry in stream]
