"""Least privilege: the API reads through pricepipe_reader and cannot write."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
from fastapi.testclient import TestClient
from psycopg2 import sql

from pricepipe.acl import with_credentials
from pricepipe.config import DatabaseSettings
from pricepipe.events import Trade
from tests.api.helpers import DAY0_US, insert_trades

LOGIN = "pp_api_test_reader"
PASSWORD = secrets.token_urlsafe(16)


@pytest.fixture
def reader_url(database_url: str, db: Any) -> str:
    with db.cursor() as cur:
        # Roles are cluster-wide and outlive the per-test database.
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (LOGIN,))
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE pricepipe_reader").format(
                sql.Identifier(LOGIN)))
        # The test servers require passwords (SCRAM), as deployments do.
        cur.execute(sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(LOGIN)),
                    (PASSWORD,))
    return with_credentials(database_url, LOGIN, PASSWORD)


def test_reader_role_is_nologin_and_reads_but_cannot_write(db: Any, reader_url: str) -> None:
    with db.cursor() as cur:
        cur.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'pricepipe_reader'")
        assert cur.fetchone() == (False,)
    insert_trades(db, [Trade("RO", DAY0_US, 1.0, None, "test")])
    conn = psycopg2.connect(reader_url)  # a plain session: only the grants stop writes
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM trades WHERE symbol = 'RO'")
            assert cur.fetchone() == (1,)
            for statement in (
                "INSERT INTO instruments (symbol) VALUES ('X')",
                "DELETE FROM trades",
                "DELETE FROM quotes",
                "UPDATE bars_1m SET close = 0",
                "CREATE TABLE sneaky (x int)",
            ):
                with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    cur.execute(statement)
    finally:
        conn.close()
    # The writer's role can.
    with db.cursor() as cur:
        cur.execute("INSERT INTO instruments (symbol) VALUES ('X')")


def test_api_serves_through_the_reader_and_its_pool_cannot_write(
        make_client: Callable[..., TestClient], database_url: str, reader_url: str,
        db: Any) -> None:
    insert_trades(db, [Trade("RO", DAY0_US + 1, 2.0, None, "test")])
    client = make_client(db=DatabaseSettings(url=database_url, read_url=reader_url,
                                             statement_timeout_ms=1234))
    body = client.get("/v1/trades/RO", params={"start": str(DAY0_US), "end": str(DAY0_US + 10)})
    assert body.status_code == 200 and body.json()["count"] == 1
    pool = client.app.state.services.pool  # type: ignore[attr-defined]
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user, current_setting('statement_timeout'),"
                    " current_setting('transaction_read_only')")
        assert cur.fetchone() == (LOGIN, "1234ms", "on")
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO instruments (symbol) VALUES ('Y')")
