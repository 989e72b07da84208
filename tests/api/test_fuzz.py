"""The API fuzzed from its own OpenAPI schema (schemathesis): whatever the
generated parameters, valid or deliberately invalid, no answer is a 5xx."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from pricepipe import streams
from pricepipe.clock import now_us
from pricepipe.keys import Keys
from tests.api.helpers import insert_ticks, steady_ticks


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors_from_generated_requests(
        mode: GenerationMode, make_live_api: Callable[..., str], db: Any, r: Any,
        keys: Keys) -> None:
    # Some data, so that queries have rows to encode and not only errors to report.
    recent = steady_ticks("AAPL", now_us() - 3_600_000_000, 200, 10_000_000)
    insert_ticks(db, recent)
    streams.register_symbols(r, keys, ["AAPL", "MSFT"])
    streams.append_ticks(r, keys, recent[-3:])
    base_url = make_live_api()
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    paths = schema.raw_schema["paths"]
    assert "/v1/ticks/{symbol}" in paths and "/v1/simulate/gbm" in paths
    seen: set[str] = set()

    @given(case=schema.as_strategy(generation_mode=mode))
    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def exercise(case: Any) -> None:
        response = case.call(base_url=base_url)
        seen.add(case.operation.label)
        assert response.status_code < 500, (response.status_code, response.text,
                                            case.as_curl_command())
        if response.status_code >= 400:
            assert response.json()["error"]

    exercise()
    assert len(seen) >= 4
