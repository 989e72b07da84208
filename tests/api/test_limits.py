"""Rate limits (Redis-backed, per real client address), API keys, metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from pricepipe import streams
from pricepipe.api.app import create_app
from pricepipe.api.settings import ApiSettings
from pricepipe.config import DatabaseSettings, RedisSettings
from pricepipe.embedded import RedisServer
from pricepipe.keys import Keys
from tests.api.helpers import DAY0_US, insert_trades, steady_trades

PROXY = ("127.0.0.1", 50000)
STRANGER = ("203.0.113.9", 50000)


def test_429_with_retry_after_counted_per_forwarded_client(
        make_client: Callable[..., TestClient], r: Any, keys: Keys) -> None:
    settings = ApiSettings(rate_limit="3/minute", key_rate_limit=None)
    via_proxy = make_client(settings, client=PROXY)
    url = "/v1/simulate/gbm?periods=1&seed=1"
    alice = {"X-Forwarded-For": "198.51.100.1"}
    bob = {"X-Forwarded-For": "198.51.100.2"}
    for _ in range(3):
        assert via_proxy.get(url, headers=alice).status_code == 200
    refused = via_proxy.get(url, headers=alice)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "rate limit" in refused.json()["error"]
    # Another client behind the same proxy has its own budget.
    assert via_proxy.get(url, headers=bob).status_code == 200
    # The counters live in Redis under the deployment's prefix.
    assert r.keys(keys.rate_limits() + "*")
    # Health checks and metrics are never limited.
    assert via_proxy.get("/healthz", headers=alice).status_code == 200


def test_forwarded_for_from_an_untrusted_peer_is_ignored(
        make_client: Callable[..., TestClient]) -> None:
    settings = ApiSettings(rate_limit="2/minute", key_rate_limit=None)
    direct = make_client(settings, client=STRANGER)
    url = "/v1/simulate/gbm?periods=1&seed=1"
    statuses = [direct.get(url, headers={"X-Forwarded-For": f"10.0.0.{i}"}).status_code
                for i in range(3)]
    assert statuses == [200, 200, 429]


def test_api_keys_optional_or_required(make_client: Callable[..., TestClient]) -> None:
    url = "/v1/simulate/gbm?periods=1&seed=1"
    optional = make_client(ApiSettings(rate_limit="1/minute", key_rate_limit="5/minute",
                                       api_keys=("k-one", "k-two")), client=STRANGER)
    assert optional.get(url).status_code == 200
    assert optional.get(url).status_code == 429  # the address's budget is spent...
    for _ in range(5):  # ...but a key has its own, larger one
        assert optional.get(url, headers={"X-API-Key": "k-two"}).status_code == 200
    assert optional.get(url, headers={"X-API-Key": "k-two"}).status_code == 429
    assert optional.get(url, headers={"X-API-Key": "k-one"}).status_code == 200
    wrong = optional.get(url, headers={"X-API-Key": "nope"})
    # A wrong key counts against the address (tests/api/test_secrets.py): spent, so 429.
    assert wrong.status_code == 429

    required = make_client(ApiSettings(rate_limit=None, key_rate_limit=None, api_keys=("k",),
                                       api_key_required=True))
    assert required.get(url).status_code == 401
    assert required.get(url, headers={"X-API-Key": "k"}).status_code == 200
    assert required.get("/healthz").status_code == 200


def test_settings_hide_keys_and_reject_bad_limits() -> None:
    import pytest

    from pricepipe.exceptions import ConfigError

    assert "secret-key" not in repr(ApiSettings(api_keys=("secret-key",)))
    with pytest.raises(ConfigError):
        ApiSettings.from_env({"PRICEPIPE_API_RATE_LIMIT": "lots per day"})
    with pytest.raises(ConfigError):
        ApiSettings.from_env({"PRICEPIPE_API_TRUSTED_PROXIES": "not-an-ip"})


def test_rate_limiter_fails_open_when_redis_is_down(
        make_client: Callable[..., TestClient], redis_server: Any) -> None:
    client = make_client(ApiSettings(rate_limit="1/minute", key_rate_limit=None))
    url = "/v1/simulate/gbm?periods=1&seed=1"
    assert client.get(url).status_code == 200
    redis_server.stop()
    # Counting is impossible: requests pass, the skipped checks are counted.
    assert client.get(url).status_code == 200
    assert client.get(url).status_code == 200
    metrics = client.get("/metrics").text
    assert "pricepipe_api_rate_limit_errors_total 2.0" in metrics
    health = client.get("/healthz")
    assert health.status_code == 503 and health.json()["redis"] == "unreachable"
    quotes = client.get("/v1/quotes?symbols=A")
    assert quotes.status_code == 503 and quotes.json()["error"] == "redis unavailable"


def test_a_full_redis_costs_only_the_rate_limit_counts(
        make_redis_server: Callable[..., RedisServer], db_settings: DatabaseSettings,
        db: Any, keys: Keys) -> None:
    """``maxmemory`` + ``noeviction`` refuses the limiter's writes: requests
    pass and the skipped checks are counted; every read (history, the quote
    board, symbols, health) goes on as before."""
    server = make_redis_server()
    settings = RedisSettings(url=server.url, prefix=keys.prefix, shards=keys.shards)
    admin = redis.Redis.from_url(server.url)
    insert_trades(db, steady_trades("FULL", DAY0_US, 5, 1000))
    streams.register_symbols(admin, keys, ["FULL"])
    app = create_app(ApiSettings(rate_limit="100/minute", key_rate_limit=None), settings,
                     db_settings)
    history = f"/v1/trades/FULL?start={DAY0_US}&end={DAY0_US + 10**9}"
    try:
        with TestClient(app) as client:
            assert client.get(history).json()["count"] == 5
            admin.config_set("maxmemory", 1)
            with pytest.raises(redis.OutOfMemoryError):
                admin.set("proof-it-is-full", 1)
            for _ in range(3):
                assert client.get(history).json()["count"] == 5
            assert client.get("/v1/quotes?symbols=FULL").status_code == 200
            assert [s["symbol"] for s in client.get("/v1/symbols").json()["symbols"]] == ["FULL"]
            assert client.get("/healthz").json()["redis"] == "ok"
            metrics = client.get("/metrics").text
            # The three history reads and the two others, not the first.
            assert "pricepipe_api_rate_limit_errors_total 5.0" in metrics
            admin.config_set("maxmemory", 0)
            client.get(history)
            assert "pricepipe_api_rate_limit_errors_total 5.0" in client.get("/metrics").text
    finally:
        admin.close()


def test_metrics_count_and_time_requests_per_route_template(client: TestClient) -> None:
    client.get("/v1/trades/AAA?start=2026-01-05&end=2026-01-06")
    client.get("/v1/trades/BBB?start=2026-01-05&end=2026-01-06")
    client.get("/v1/trades/BBB?limit=-1")
    client.get("/v1/quotes/AAA?start=2026-01-05&end=2026-01-06")
    client.get("/no/such/page")
    text = client.get("/metrics").text
    assert ('pricepipe_api_requests_total{method="GET",route="/v1/trades/{symbol}",'
            'status="200"} 2.0') in text
    assert ('pricepipe_api_requests_total{method="GET",route="/v1/trades/{symbol}",'
            'status="422"} 1.0') in text
    assert ('pricepipe_api_requests_total{method="GET",route="/v1/quotes/{symbol}",'
            'status="200"} 1.0') in text
    assert 'route="unmatched",status="404"' in text
    assert ('pricepipe_api_request_duration_seconds_count{method="GET",'
            'route="/v1/trades/{symbol}"} 3.0') in text
    assert "AAA" not in text
