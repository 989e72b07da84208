"""The API fuzzed from its own OpenAPI schema (schemathesis): whatever the
generated parameters, valid or deliberately invalid, no answer is a 5xx."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from pricepipe import streams
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
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the schema itself is valid
        operations.append(result.ok())
    checked = set()
    for operation in operations:
        case = operation.Case(path_parameters=good.get(operation.path),
                              query=queries.get(operation.path))
        response = case.call(base_url=base_url)
        assert response.status_code == 200, (operation.path, response.text)
        case.validate_response(response)
        checked.add(operation.path)
    assert wanted <= checked
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
