"""Guessing keys and reading health (issue 16): a wrong or missing API key
counts against the client's address like any request, so guessing is rate
limited by the API itself; ``/healthz`` names the failing server with a fixed
reason and logs the driver's error instead; the API listens on loopback by
default."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from pricepipe.api.app import create_app
from pricepipe.api.settings import ApiSettings
from pricepipe.config import DatabaseSettings, RedisSettings
from pricepipe.embedded import free_port

STRANGER = ("203.0.113.9", 50000)
URL = "/v1/simulate/gbm?periods=1&seed=1"


def test_wrong_api_keys_are_rate_limited_per_address(
        make_client: Callable[..., TestClient]) -> None:
    limit = 4
    client = make_client(ApiSettings(rate_limit=f"{limit}/minute", key_rate_limit=None,
                                     api_keys=("the-right-key",)), client=STRANGER)
    statuses = [client.get(URL, headers={"X-API-Key": f"guess-{i}"}).status_code
                for i in range(limit + 2)]
    assert statuses == [401] * limit + [429, 429]
    # The address's budget is what the guesses spent: a keyless request is refused too...
    assert client.get(URL).status_code == 429
    # ...while the holder of the real key keeps its own budget.
    assert client.get(URL, headers={"X-API-Key": "the-right-key"}).status_code == 200


def test_missing_keys_are_rate_limited_when_a_key_is_required(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client(ApiSettings(rate_limit="2/minute", key_rate_limit=None,
                                     api_keys=("k-1234",), api_key_required=True),
                         client=STRANGER)
    statuses = [client.get(URL).status_code for _ in range(3)]
    assert statuses == [401, 401, 429]
    assert client.get(URL, headers={"X-API-Key": "k-1234"}).status_code == 200


@pytest.mark.parametrize("down", ["redis", "database"])
def test_healthz_gives_a_fixed_reason_and_logs_the_error_once(
        down: str, redis_settings: RedisSettings, db_settings: DatabaseSettings,
        caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens there
    password = "pw-not-for-callers"
    if down == "redis":
        redis_settings = RedisSettings(url=f"redis://:{password}@127.0.0.1:{port}/0",
                                       prefix=redis_settings.prefix, shards=redis_settings.shards)
    else:
        db_settings = DatabaseSettings(
            url=f"postgresql://reader:{password}@127.0.0.1:{port}/pricepipe")
    app = create_app(ApiSettings(rate_limit=None, key_rate_limit=None), redis_settings,
                     db_settings)
    caplog.set_level(logging.INFO, logger="pricepipe.api.routes")
    with TestClient(app) as client:
        answers = [client.get("/healthz") for _ in range(3)]
    for answer in answers:
        assert answer.status_code == 503
        up = "database" if down == "redis" else "redis"
        assert answer.json() == {"status": "unavailable", down: "unreachable", up: "ok"}
        assert str(port) not in answer.text and password not in answer.text
    logged = [r.getMessage() for r in caplog.records
              if r.getMessage().startswith(f"healthz: {down} unreachable")]
    assert len(logged) == 1  # one outage, one line, however often it is probed
    assert str(port) in logged[0]  # the detail is in the log, for the operator


def test_listens_on_loopback_by_default() -> None:
    assert ApiSettings().host == "127.0.0.1"
