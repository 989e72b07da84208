"""The API fuzzed from its own OpenAPI schema (schemathesis): whatever the
generated parameters, valid or deliberately invalid, no answer is a 5xx.
Entry-ID ranges are fuzzed once more around stored rows (hypothesis), each
answer checked against the rows themselves."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from pricepipe import codec, streams
from pricepipe.clock import now_us
from pricepipe.keys import Keys
from tests.api.helpers import (
    backfill_entry,
    entry_for,
    insert_bars,
    insert_quotes,
    insert_trades,
    minute_bar_rows,
    steady_quotes,
    steady_trades,
)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors_from_generated_requests(
        mode: GenerationMode, make_live_api: Callable[..., str], db: Any, r: Any,
        keys: Keys) -> None:
    # Some data, so that queries have rows to encode and not only errors to report.
    start_us = now_us() - 3_600_000_000
    trades = steady_trades("AAPL", start_us, 200, 10_000_000)
    quotes = steady_quotes("AAPL", start_us, 200, 10_000_000)
    # Backfilled rows too (no entry ID in their JSON), and some stored bars.
    insert_trades(db, trades, [*(backfill_entry(t.ts_us) for t in trades[:50]),
                               *(entry_for(t) for t in trades[50:])])
    insert_quotes(db, quotes)
    insert_bars(db, minute_bar_rows(trades[100:150]))
    streams.register_symbols(r, keys, ["AAPL", "MSFT"])
    streams.append_events(r, keys, [*trades[-3:], *quotes[-3:]])
    base_url = make_live_api()
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    paths = schema.raw_schema["paths"]
    wanted = {"/v1/trades/{symbol}", "/v1/quotes/{symbol}", "/v1/quotes", "/v1/bars/{symbol}",
              "/v1/symbols", "/v1/simulate/gbm"}
    assert wanted <= set(paths) and "/v1/ticks/{symbol}" not in paths
    # First a known-good request per route, rows and all: each answer is
    # what its documented response model says (a schema check of the real
    # JSON; generated requests rarely name a symbol that has data).
    good = {"/v1/trades/{symbol}": {"symbol": "AAPL"}, "/v1/quotes/{symbol}": {"symbol": "AAPL"},
            "/v1/bars/{symbol}": {"symbol": "AAPL"}}
    queries = {"/v1/quotes": {"symbols": "AAPL,MSFT,NONE"}}
    # And the history routes' other kind of page: an entry-ID range.
    id_range = {"after_id": codec.unpack_entry_id(entry_for(trades[60])),
                "until_id": codec.unpack_entry_id(entry_for(trades[90])), "limit": "10"}
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the schema itself is valid
        operations.append(result.ok())
    checked = set()
    for operation in operations:
        extra = [id_range] if operation.path in ("/v1/trades/{symbol}",
                                                 "/v1/quotes/{symbol}") else []
        for query in [queries.get(operation.path), *extra]:
            case = operation.Case(path_parameters=good.get(operation.path), query=query)
            response = case.call(base_url=base_url)
            assert response.status_code == 200, (operation.path, response.text)
            case.validate_response(response)
            if query is id_range:
                body = response.json()
                assert body["count"] == 10 and body["next_cursor"] and body["start"] is None
        checked.add(operation.path)
    assert wanted <= checked
    generated: set[tuple[str, str]] = set()
    seen: set[str] = set()
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not list(operation.iter_parameters()):
            continue  # nothing to make invalid

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def exercise(case: Any) -> None:
            response = case.call(base_url=base_url)
            seen.add(case.operation.path)
            generated.update((case.operation.path, name) for name in case.query or ())
            assert response.status_code < 500, (response.status_code, response.text,
                                                case.as_curl_command())
            if response.status_code >= 400:
                assert response.json()["error"]
            elif "application/json" in str(response.headers.get("content-type")):
                # The documented response model is the real answer's shape.
                case.validate_response(response)

        exercise()
    # Every route was exercised, each with its own examples.
    routes = wanted if mode is GenerationMode.POSITIVE else wanted - {"/v1/symbols"}
    assert routes <= seen, routes - seen
    # The entry-ID range parameters were among the generated ones.
    id_params = {(path, name) for path in ("/v1/trades/{symbol}", "/v1/quotes/{symbol}")
                 for name in ("after_id", "until_id")}
    assert id_params <= generated, id_params - generated


#: Stored trades of test_generated_entry_id_ranges: 40 entries from 1 s
#: apart, two per millisecond, and backfilled rows at the same times.
_BASE_MS = 1_767_571_200_000
_STORED = [(_BASE_MS + 1000 * (i // 2), i % 2) for i in range(40)]


def _id_text(draw: Any) -> str:
    """Entry IDs near the stored ones, at their edges and beyond them."""
    ms = draw(st.one_of(st.sampled_from([ms for ms, _ in _STORED]),
                        st.integers(_BASE_MS - 3000, _BASE_MS + 25_000),
                        st.sampled_from([0, 1, (1 << 42) - 1, 1 << 42, 10**19 - 1])))
    seq = draw(st.one_of(st.integers(0, 3), st.sampled_from([(1 << 21) - 1, 1 << 21,
                                                             10**20 - 1])))
    return f"{ms}-{seq}"


@st.composite
def _id_queries(draw: Any) -> dict[str, str]:
    query = {"after_id": _id_text(draw), "until_id": _id_text(draw)}
    if draw(st.booleans()):
        query["limit"] = str(draw(st.integers(1, 50)))
    fmt = draw(st.sampled_from([None, "csv", "parquet", "arrow"]))
    if fmt is not None:
        query["format"] = fmt
    return query


def test_generated_entry_id_ranges_answer_exactly_or_refuse(client: TestClient,
                                                            db: Any) -> None:
    from pricepipe.events import Trade

    trades = [Trade("FUZZ", ms * 1000 - 250_000 * seq, 10.0 + i, 1.0, "test", f"t{i}")
              for i, (ms, seq) in enumerate(_STORED)]
    entries = [codec.pack_entry_id(f"{ms}-{seq}") for ms, seq in _STORED]
    insert_trades(db, [*trades, *(Trade("FUZZ", t.ts_us + 1, 1.0, None, "bf") for t in trades)],
                  [*entries, *(backfill_entry(t.ts_us + 1) for t in trades)])
    max_packed = (1 << 63) - 1

    def packed(text: str) -> int | None:
        ms, seq = (int(part) for part in text.split("-"))
        return None if ms >= 1 << 42 or seq >= 1 << 21 else codec.pack_entry_id(text)

    @given(query=_id_queries())
    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def exercise(query: dict[str, str]) -> None:
        response = client.get("/v1/trades/FUZZ", params=query)
        after, until = packed(query["after_id"]), packed(query["until_id"])
        valid = (after is not None and until is not None and after < until <= max_packed
                 and (until >> codec.SEQ_BITS) - (after >> codec.SEQ_BITS) <= 366 * 86_400_000)
        if not valid:
            assert response.status_code == 422, (query, response.text)
            assert response.json()["error"]
            return
        assert response.status_code == 200, (query, response.text)
        assert after is not None and until is not None
        want = [codec.unpack_entry_id(e) for e in entries if after < e < until]
        want = want[:int(query.get("limit", 1000))]
        if query.get("format") == "csv":
            got = [row["id"] for row in csv.DictReader(io.StringIO(response.text))]
        elif query.get("format") == "parquet":
            got = pq.read_table(io.BytesIO(response.content)).column("id").to_pylist()
        elif query.get("format") == "arrow":
            got = pa.ipc.open_stream(response.content).read_all().column("id").to_pylist()
        else:
            got = [row["id"] for row in response.json()["trades"]]
        assert got == want, query

    exercise()
