from typing import Any

import psycopg2
import psycopg2.errors
import pytest

from pricepipe.migrate import available, migrate


def test_migrations_are_recorded_and_safe_to_run_twice(database_url: str) -> None:
    conn = psycopg2.connect(database_url)
    try:
        # The template was migrated already: nothing left to apply, twice.
        assert migrate(conn) == []
        assert migrate(conn) == []
        with conn.cursor() as cur:
            cur.execute("SELECT version FROM schema_migrations ORDER BY version")
            assert [v for (v,) in cur.fetchall()] == [m.version for m in available()]
    finally:
        conn.close()


def test_fresh_database_migrates_from_zero(pg_server: Any) -> None:
    from tests.conftest import recreate_database

    url = recreate_database(pg_server, "pricepipe_fresh", template="template0")
    conn = psycopg2.connect(url)
    try:
        assert migrate(conn) == [m.version for m in available()]
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('ticks'), to_regclass('instruments')")
            assert all(cur.fetchone() or ())
    finally:
        conn.close()


def test_the_database_refuses_what_the_tick_model_refuses(database_url: str) -> None:
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for price, size in [("NaN", None), ("Infinity", None), ("0", None), ("-1", None),
                                ("1", "-1"), ("1", "NaN")]:
                with pytest.raises(psycopg2.errors.CheckViolation):
                    cur.execute(
                        "INSERT INTO ticks (symbol, ts, price, size, source, entry_id)"
                        " VALUES ('AAPL', now(), %s::float8, %s::float8, 'test', 1)",
                        (price, size))
            cur.execute("INSERT INTO ticks (symbol, ts, price, size, source, entry_id)"
                        " VALUES ('AAPL', now(), 1.5, 0, 'test', 1)")
    finally:
        conn.close()
