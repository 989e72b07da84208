"""The API when things go wrong: PostgreSQL restarts, clients walk away."""

from __future__ import annotations

import http.client
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from fastapi.testclient import TestClient

from pricepipe.api.settings import ApiSettings
from pricepipe.config import DatabaseSettings
from pricepipe.embedded import PostgresServer
from tests.api.helpers import DAY0_US, insert_trades, steady_trades

WINDOW = f"start={DAY0_US}&end={DAY0_US + 10**11}"


def test_database_outage_is_503_and_the_pool_recovers(
        client: TestClient, db: Any, pg_server: PostgresServer) -> None:
    insert_trades(db, steady_trades("DOWN", DAY0_US, 10, 1000))
    assert client.get(f"/v1/trades/DOWN?{WINDOW}").json()["count"] == 10
    db.close()
    pg_server.stop()
    try:
        resp = client.get(f"/v1/trades/DOWN?{WINDOW}")
        assert resp.status_code == 503
        assert resp.json() == {"error": "database unavailable"}
        assert resp.headers["Retry-After"] == "1"
        assert client.get("/healthz").json()["database"].startswith("unreachable")
    finally:
        pg_server.start()
    # The dead pooled connection was dropped; the next request reconnects.
    assert client.get(f"/v1/trades/DOWN?{WINDOW}").json()["count"] == 10
    assert client.get("/healthz").status_code == 200


def test_csv_client_leaving_early_frees_its_connection(
        make_live_api: Callable[..., str], make_client: Callable[..., TestClient],
        db: Any, database_url: str) -> None:
    insert_trades(db, steady_trades("BIG", DAY0_US, 20_000, 1000))
    # One connection only: if the abandoned COPY kept it, the next request would wait
    # pool_wait_s and fail with 503.
    settings = ApiSettings(rate_limit=None, key_rate_limit=None, csv_chunk_bytes=1024,
                           pool_wait_s=30)
    base = make_live_api(settings, DatabaseSettings(url=database_url, pool_max=1))
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.request("GET", f"/v1/trades/BIG?{WINDOW}&format=csv")
        resp = conn.getresponse()
        assert resp.status == 200
        first = resp.read(4096)
        assert first.startswith(b"symbol,ts,ts_us,price,size,side,trade_id")
    finally:
        conn.close()  # walk away mid-download
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    try:
        conn.request("GET", f"/v1/trades/BIG?{WINDOW}&limit=3")
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        assert b'"count":3' in resp.read()
    finally:
        conn.close()


def test_timeouts_and_a_busy_pool_map_to_504_and_503(
        redis_settings: Any, db_settings: DatabaseSettings) -> None:
    import psycopg2.errors

    from pricepipe.api.app import create_app
    from pricepipe.api.pool import PoolBusyError

    app = create_app(ApiSettings(rate_limit=None, key_rate_limit=None), redis_settings,
                     db_settings)
    failures: dict[str, BaseException] = {
        "timeout": psycopg2.errors.QueryCanceled("canceling statement due to statement timeout"),
        "busy": PoolBusyError("no free database connection within 5 s"),
    }

    def fail(kind: str) -> None:
        raise failures[kind]

    app.add_api_route("/test-only/{kind}", fail)
    with TestClient(app) as client:
        timeout = client.get("/test-only/timeout")
        assert timeout.status_code == 504 and "statement timeout" in timeout.json()["error"]
        busy = client.get("/test-only/busy")
        assert busy.status_code == 503 and busy.json()["error"].startswith("database busy")
        assert busy.headers["Retry-After"] == "1"


def test_a_spare_connection_is_lent_only_when_one_is_free(database_url: str) -> None:
    from pricepipe.api.pool import ReadPool

    pool = ReadPool(database_url, size=2, statement_timeout_ms=5000, wait_s=60)
    try:
        with pool.connection() as first, pool.spare_connection() as second:
            assert second is not None and second is not first
            with second.cursor() as cur:
                cur.execute("SHOW transaction_read_only")
                assert cur.fetchone() == ("on",)
            # Every connection is lent: None at once, not a 60 s wait.
            with pool.spare_connection() as third:
                assert third is None
        with pool.spare_connection() as again:
            assert again is not None
    finally:
        pool.close()
    with pool.spare_connection() as closed:
        assert closed is None


def test_connections_are_reused_until_they_fail_or_lose_their_server(
        database_url: str, db: Any) -> None:
    import psycopg2.errors
    import pytest

    from pricepipe.api.pool import ReadPool

    def backend(pool: ReadPool) -> int:
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            row = cur.fetchone()
            assert row is not None
            return int(row[0])

    pool = ReadPool(database_url, size=2, statement_timeout_ms=5000, wait_s=5)
    try:
        first = backend(pool)
        assert backend(pool) == first  # kept, not reconnected per request
        with pytest.raises(psycopg2.errors.DivisionByZero):
            with pool.connection() as conn, conn.cursor() as cur:
                cur.execute("SELECT 1 / 0")
        second = backend(pool)
        assert second != first  # the one that failed was closed
        with pool.connection() as a, pool.connection() as b:
            pids = {a.get_backend_pid(), b.get_backend_pid()}
        # Both idle now; the server drops them (as a restart would), and
        # waits until they are gone (the timeout argument, PostgreSQL 14+).
        with db.cursor() as cur:
            cur.execute("SELECT bool_and(pg_terminate_backend(pid, 10000))"
                        "  FROM unnest(%s::int[]) AS pid", (sorted(pids),))
            assert cur.fetchone() == (True,)
        third = backend(pool)
        assert third not in pids
    finally:
        pool.close()
